"""Shared fixtures: real services started for real (local Ray, moto S3 server, MLflow on sqlite) and real media.

Every fixture here starts the genuine component on loopback; nothing is mocked. Session-scoped where
starting is slow (Ray, the S3 server), function-scoped where state must not leak (MLflow stores, buckets).

The test tiers (markers registered in pyproject.toml): a test that uses one of the service fixtures below
is marked for that service (`ray`, `s3`, `mlflow_server`, `browser`) when collected; tests that start a
service some other way (a subprocess, `ray start`) or that train carry the mark themselves. Every such
test is also `slow`, the umbrella `make test-fast` deselects (`pytest -m "not slow"`).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_MEDIA = REPO_ROOT.parent / "shared" / "media"
CODEC2_SPEECH = Path("/usr/share/codec2/raw/speech_orig_16k.wav")  # Debian codec2-examples, Harvard sentences


# ---------------------------------------------------------------- test tiers

# fixture -> the marker of the service it starts; fixtures that depend on these are followed by pytest
SERVICE_FIXTURES = {
    "ray_local": "ray",
    "s3_server": "s3",
    "s3_bucket": "s3",
    "mlflow_server": "mlflow_server",
    "inspect_in_chromium": "browser",
}
# a test carrying any of these is slow as well
SLOW_MARKERS = ("ray", "s3", "mlflow_server", "browser", "training")


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects, so the added marks count
def pytest_collection_modifyitems(config, items):
    for item in items:
        for marker in sorted({SERVICE_FIXTURES[name] for name in item.fixturenames if name in SERVICE_FIXTURES}):
            item.add_marker(marker)
        if any(item.get_closest_marker(name) for name in SLOW_MARKERS):
            item.add_marker("slow")


def _ray_running() -> bool:
    ray = sys.modules.get("ray")  # never imports Ray itself
    return ray is not None and ray.is_initialized()


def _refuse_unmarked_ray(item, phase):
    """A test (or its fixtures) that starts Ray in this process without the `ray` mark fails: unmarked, it
    would run in the fast tier. Ray started in a subprocess is out of sight here."""
    ray_before = _ray_running()
    result = yield
    if not ray_before and _ray_running() and item.get_closest_marker("ray") is None:
        pytest.fail(f"{item.nodeid} starts Ray in its {phase} but is not marked `ray` (use the ray_local "
                    "fixture or @pytest.mark.ray)", pytrace=False)
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    return (yield from _refuse_unmarked_ray(item, "setup"))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    return (yield from _refuse_unmarked_ray(item, "call"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout_s: float = 60.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening on {port}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout_s}s")


# ---------------------------------------------------------------- real media


def trimmed_wav(source: Path, target: Path, seconds: float) -> Path:
    """The first `seconds` of real speech as 16 kHz mono WAV (ffmpeg), for short renders."""
    target.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-i", str(source), "-t", str(seconds), "-ac", "1",
                    "-ar", "16000", str(target)], check=True)
    return target


@pytest.fixture(scope="session")
def shared_media() -> Path:
    """../shared/media: real portraits, speech in five languages, a real talking-head video."""
    if not SHARED_MEDIA.is_dir():
        pytest.fail(f"real test media missing: {SHARED_MEDIA} (clone the repo beside shared/)")
    return SHARED_MEDIA


@pytest.fixture(scope="session")
def speech_wav() -> Path:
    """Real human speech, 16 kHz mono (Debian codec2-examples)."""
    if not CODEC2_SPEECH.exists():
        pytest.fail(f"{CODEC2_SPEECH} missing: install Debian codec2-examples (scripts/setup.sh does)")
    return CODEC2_SPEECH


@pytest.fixture(scope="session")
def astronaut_png(tmp_path_factory) -> Path:
    """A real portrait: skimage.data.astronaut() (NASA, public domain) written as PNG."""
    from PIL import Image
    from skimage import data

    path = tmp_path_factory.mktemp("portraits") / "astronaut.png"
    Image.fromarray(data.astronaut()).save(path)
    return path


# ---------------------------------------------------------------- Ray


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray instance with 2 CPUs, shared by the session (starting Ray costs seconds).

    address="local" always starts a fresh instance, even when a `ray start --head` cluster of another
    test is running on this machine.
    """
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


# ---------------------------------------------------------------- S3 (moto server)


@dataclass
class S3Server:
    endpoint_url: str
    access_key: str = "testing"
    secret_key: str = "testing"
    region: str = "us-east-1"

    def storage_options(self) -> dict:
        return {
            "key": self.access_key,
            "secret": self.secret_key,
            "client_kwargs": {"endpoint_url": self.endpoint_url, "region_name": self.region},
        }

    def env(self) -> dict[str, str]:
        """Environment variables a subprocess (CLI, ray job) needs to reach this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
        }

    def filesystem(self):
        import s3fs

        return s3fs.S3FileSystem(**self.storage_options())

    def new_bucket(self) -> str:
        import boto3

        name = f"test-{uuid.uuid4().hex[:12]}"
        boto3.client("s3", endpoint_url=self.endpoint_url, aws_access_key_id=self.access_key,
                     aws_secret_access_key=self.secret_key, region_name=self.region).create_bucket(Bucket=name)
        return name


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 API (moto's standalone server) on 127.0.0.1 with an explicit endpoint."""
    port = free_port()
    exe = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or shutil.which("moto_server")
    cmd = [exe, "-H", "127.0.0.1", "-p", str(port)] if exe else [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, proc=proc)
        yield S3Server(endpoint_url=f"http://127.0.0.1:{port}")
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def s3_bucket(s3_server) -> str:
    """A fresh, empty bucket on the moto server."""
    return s3_server.new_bucket()


# ---------------------------------------------------------------- MLflow


@pytest.fixture
def mlflow_tracking_uri(tmp_path) -> str:
    """MLflow on a fresh sqlite store (the project's default backend)."""
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture
def mlflow_server(tmp_path):
    """`mlflow server` on 127.0.0.1 for tests that need the REST API; yields its URL."""
    port = free_port()
    artifacts = tmp_path / "mlartifacts"
    exe = str(Path(sys.executable).parent / "mlflow")
    proc = subprocess.Popen(
        [exe, "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow-server.db'}",
         "--artifacts-destination", str(artifacts), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, timeout_s=300, proc=proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@pytest.fixture(autouse=True)
def _no_stray_tracking_uri(monkeypatch):
    """Tests never write to a developer's own MLflow server or ./mlruns by accident."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")


# ---------------------------------------------------------------- checkpoints


@pytest.fixture(scope="session")
def random_tiny_checkpoint(tmp_path_factory) -> Path:
    """A real `tiny` checkpoint (safetensors + config.json) with random weights, for plumbing tests.

    Its output head starts at zero, so it renders the encoded portrait, unmoved: enough for tests of
    the pipeline, never a stand-in for the shipped checkpoint's quality.
    """
    import torch

    from model import Generator, get_preset, save_checkpoint

    torch.manual_seed(0)
    return save_checkpoint(Generator(get_preset("tiny")), tmp_path_factory.mktemp("ckpt") / "tiny-random")
