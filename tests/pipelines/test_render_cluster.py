"""The render job on real Ray clusters: `ray job submit` on loopback, a killed actor, a removed node."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import REPO_ROOT, free_port, wait_for_port
from tests.pipelines.helpers import check_video, short_speech, write_jsonl

RAY = str(Path(sys.executable).parent / "ray")
pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def clips(tmp_path_factory, astronaut_png, speech_wav, shared_media):
    d = tmp_path_factory.mktemp("clips")
    speech = short_speech(speech_wav, d / "speech.wav", 1.0)
    portraits = [astronaut_png] + [shared_media / "portraits" / p for p in ("obama.jpg", "obama2.jpg", "biden.jpg")]
    portraits = [Path(shutil.copy(p, d)) for p in portraits]  # inside the manifest's folder: the input policy's default root
    rows = [{"id": f"clip{i}", "portrait": str(portraits[i % 4]), "audio": str(speech)} for i in range(6)]
    return write_jsonl(d / "manifest.jsonl", rows)


def assert_every_row_exactly_once(out: Path, run_id: str, ids: list[str]) -> None:
    df = pd.read_parquet(out / "results" / f"{run_id}.parquet")
    assert sorted(df["id"]) == sorted(ids)
    assert (df["status"] == "ok").all(), df[["id", "status", "error"]]
    assert sorted(p.name for p in (out / "videos" / run_id).iterdir()) == sorted(f"{i}.mp4" for i in ids)
    assert sorted(p.name for p in (out / "state" / run_id).iterdir()) == sorted(f"{i}.json" for i in ids)
    for i in ids:
        check_video(out / "videos" / run_id / f"{i}.mp4", expected_audio_s=1.0)


def stop_cluster(temp_dir: str) -> None:
    """Stop only the head started under temp_dir: `ray stop` would kill every Ray on the machine,
    including this test session's own local Ray."""
    import psutil

    procs = [p for p in psutil.process_iter(["cmdline"]) if temp_dir in " ".join(p.info["cmdline"] or [])]
    procs += [c for p in procs for c in p.children(recursive=True)]
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=30)


def test_ray_job_submit_on_loopback_runs_the_render_job(tmp_path, clips, random_tiny_checkpoint):
    port, dashboard = free_port(), free_port()
    temp_dir = f"/tmp/rj{uuid.uuid4().hex[:6]}"
    # Ray >= 2.59 enforces token authentication on clusters it starts: share one token with the CLI
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": uuid.uuid4().hex * 2}
    subprocess.run([RAY, "start", "--head", f"--port={port}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
                    "--num-cpus=2", "--include-dashboard=true", f"--temp-dir={temp_dir}", "--disable-usage-stats",
                    # the session's own local Ray holds the default agent ports: this head needs its own
                    f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
                    f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}"],
                   check=True, env=env, capture_output=True, timeout=180)
    try:
        out = tmp_path / "out"
        for _ in range(30):  # the dashboard port opens before the head's job agent is ready
            submit = subprocess.run(
                [RAY, "job", "submit", "--address", f"http://127.0.0.1:{dashboard}", "--submission-id", "render-test",
                 "--working-dir", str(REPO_ROOT), "--", sys.executable, "-m", "jobs.render", str(clips),
                 "--output", str(out), "--run-id", "jobrun", "--checkpoint", str(random_tiny_checkpoint),
                 "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--no-metrics"],
                env=env, capture_output=True, text=True, timeout=600)
            if "No available agent" not in submit.stdout + submit.stderr:
                break
            time.sleep(2)
        status = subprocess.run([RAY, "job", "status", "--address", f"http://127.0.0.1:{dashboard}", "render-test"],
                                env=env, capture_output=True, text=True, timeout=60)
        assert submit.returncode == 0 and "succeeded" in (status.stdout + status.stderr).lower(), (
            submit.stdout[-2000:], submit.stderr[-2000:], status.stdout, status.stderr)
        assert "6 ok, 0 failed" in submit.stdout
        assert_every_row_exactly_once(out, "jobrun", [f"clip{i}" for i in range(6)])
    finally:
        stop_cluster(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_render_survives_a_killed_actor(tmp_path, clips, random_tiny_checkpoint, ray_local):
    """Regression guard: a render actor that dies mid-run must not lose or duplicate a row."""
    import threading

    import psutil

    from pipelines.render import RenderConfig, run_render

    out = tmp_path / "out"
    killed: list[int] = []

    def kill_first_render_actor() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not killed:
            state = out / "state" / "killrun"
            if state.is_dir() and any(state.iterdir()):  # one row published: the actor is mid-run
                for proc in psutil.process_iter(["pid", "cmdline"]):
                    title = " ".join(proc.info["cmdline"] or [])
                    if title.startswith("ray::") and "MapWorker" in title:  # Ray titles actor processes
                        os.kill(proc.info["pid"], 9)
                        killed.append(proc.info["pid"])
                        return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_first_render_actor, daemon=True)
    killer.start()
    outcome = run_render(RenderConfig(manifest_uri=str(clips), output_uri=str(out), run_id="killrun",
                                      checkpoint=str(random_tiny_checkpoint), metrics=False, rows_per_batch=1,
                                      tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}"))
    killer.join(timeout=5)
    assert killed, "the test never found a render actor to kill"
    assert outcome.exit_code == 0 and outcome.counts["ok"] == 6
    assert_every_row_exactly_once(out, "killrun", [f"clip{i}" for i in range(6)])


CLUSTER_SCRIPT = textwrap.dedent('''
    import sys, threading, time
    from pathlib import Path
    import ray
    from ray.cluster_utils import Cluster
    from pipelines.render import RenderConfig, run_render

    manifest, out, checkpoint, tracking = sys.argv[1:5]
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    workers = [cluster.add_node(num_cpus=1, resources={"worker": 1}) for _ in range(2)]
    ray.init(address=cluster.address)
    removed = []

    def remove_a_worker():
        state = Path(out) / "state" / "noderun"
        while not removed:
            if state.is_dir() and any(state.iterdir()):
                cluster.remove_node(workers[0], allow_graceful=False)
                removed.append(True)
                return
            time.sleep(0.05)

    threading.Thread(target=remove_a_worker, daemon=True).start()
    outcome = run_render(RenderConfig(manifest_uri=manifest, output_uri=out, run_id="noderun", checkpoint=checkpoint,
                                      metrics=False, rows_per_batch=1, actors=2, tracking_uri=tracking))
    print("REMOVED", bool(removed), "OK", outcome.counts["ok"], "EXIT", outcome.exit_code, flush=True)
    ray.shutdown()
    cluster.shutdown()
''')


def test_render_survives_a_worker_node_removed_mid_run(tmp_path, clips, random_tiny_checkpoint):
    out = tmp_path / "out"
    script = tmp_path / "cluster_run.py"
    script.write_text(CLUSTER_SCRIPT)
    proc = subprocess.run([sys.executable, str(script), str(clips), str(out), str(random_tiny_checkpoint),
                           f"sqlite:///{tmp_path / 'mlflow.db'}"], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    assert "REMOVED True OK 6 EXIT 0" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert_every_row_exactly_once(out, "noderun", [f"clip{i}" for i in range(6)])
