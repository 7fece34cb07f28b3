"""Headless Debian Chromium driven over the Chrome DevTools Protocol (aiohttp's websocket client)."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
PAGE_TIMEOUT_S = 60.0

# Runs in the page: every <video> is loaded and played (muted) for a moment; every <img> decoded.
INSPECT_PAGE = """(async () => {
  const videos = [...document.querySelectorAll('video')];
  const played = await Promise.all(videos.map(async (v) => {
    if (v.readyState < 1) {
      await new Promise((ok) => { v.addEventListener('loadedmetadata', ok, {once: true});
                                  v.addEventListener('error', ok, {once: true}); v.load(); });
    }
    let error = v.error ? v.error.code : null;
    try { v.muted = true; await v.play(); await new Promise((ok) => setTimeout(ok, 600)); v.pause(); }
    catch (e) { error = error || String(e); }
    return {id: v.dataset.rowId || null, src: v.currentSrc.slice(0, 40), duration: v.duration,
            currentTime: v.currentTime, width: v.videoWidth, height: v.videoHeight, error};
  }));
  const images = [...document.querySelectorAll('img')].map((i) => ({alt: i.alt, complete: i.complete,
      width: i.naturalWidth, height: i.naturalHeight}));
  return JSON.stringify({title: document.title, videos: played, images});
})()"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _inspect(url: str, user_data_dir: Path) -> dict:
    import aiohttp

    port = free_port()
    browser = subprocess.Popen(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={user_data_dir}",
         "--autoplay-policy=no-user-gesture-required", "--allow-file-access-from-files",
         "--remote-debugging-address=127.0.0.1", f"--remote-debugging-port={port}", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        async with aiohttp.ClientSession() as session:
            targets = None
            for _ in range(150):
                try:
                    async with session.get(f"http://127.0.0.1:{port}/json/list") as response:
                        targets = await response.json()
                        break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.2)
            assert targets, "Chromium's DevTools endpoint never came up"
            page = next(t for t in targets if t["type"] == "page")
            async with session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                ids = iter(range(1, 1_000_000))

                async def call(method: str, **params):
                    message_id = next(ids)
                    await ws.send_json({"id": message_id, "method": method, "params": params})
                    while True:
                        message = await ws.receive_json()
                        if message.get("id") == message_id:
                            assert "error" not in message, message
                            return message["result"]

                await call("Page.enable")
                await call("Page.navigate", url=url)
                for _ in range(100):  # until the document has loaded
                    state = await call("Runtime.evaluate", expression="document.readyState", returnByValue=True)
                    if state["result"]["value"] == "complete":
                        break
                    await asyncio.sleep(0.1)
                result = await call("Runtime.evaluate", expression=INSPECT_PAGE, awaitPromise=True,
                                    returnByValue=True)
                return json.loads(result["result"]["value"])
    finally:
        browser.terminate()
        browser.wait(timeout=20)


@pytest.fixture
def inspect_in_chromium(tmp_path):
    """inspect(url) -> {'title', 'videos': [{duration, currentTime, width, error, ...}], 'images': [...]}."""
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        pytest.fail("Debian chromium is missing: scripts/setup.sh installs it")

    def inspect(url: str) -> dict:
        return asyncio.run(asyncio.wait_for(_inspect(url, tmp_path / "chromium-profile"), PAGE_TIMEOUT_S))
    return inspect
