"""Render jobs that meet each other or stop early: two run ids on one output, a signalled driver (a real
`python -m jobs.render` subprocess with its own local Ray)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from tests.pipelines.helpers import check_video, short_speech, write_jsonl

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def two_manifests(tmp_path_factory, astronaut_png, speech_wav, shared_media) -> tuple[Path, Path]:
    """Two manifests with the same row ids and different portraits: job A's clip0 is not job B's clip0."""
    d = tmp_path_factory.mktemp("two")
    speech = short_speech(speech_wav, d / "speech.wav", 1.0)
    a = [Path(shutil.copy(astronaut_png, d)), Path(shutil.copy(shared_media / "portraits" / "obama.jpg", d))]
    b = [Path(shutil.copy(shared_media / "portraits" / "biden.jpg", d)),
         Path(shutil.copy(shared_media / "portraits" / "obama2.jpg", d))]
    return tuple(write_jsonl(d / f"{name}.jsonl", [{"id": f"clip{i}", "portrait": str(p), "audio": str(speech)}
                                                   for i, p in enumerate(portraits)])
                 for name, portraits in (("a", a), ("b", b)))


def digest(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_two_jobs_on_one_output_each_describe_their_own_videos(tmp_path, two_manifests, random_tiny_checkpoint,
                                                               ray_local):
    """Regression guard: videos were keyed by row id alone (videos/<id>.mp4), so job B overwrote job A's
    videos and A's results (and a later resume of A) described B's video, with exit 0."""
    from metrics.schema import read_results
    from pipelines.render import RenderConfig, run_render

    out = tmp_path / "out"

    def render(manifest: Path, run_id: str):
        return run_render(RenderConfig(manifest_uri=str(manifest), output_uri=str(out), run_id=run_id,
                                       checkpoint=str(random_tiny_checkpoint), metrics=False,
                                       tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}"))

    first = render(two_manifests[0], "job-a")
    a_digests = {r.id: digest(r.output_uri) for r in first.results.itertuples()}
    second = render(two_manifests[1], "job-b")
    assert first.counts["ok"] == second.counts["ok"] == 2
    a = read_results(first.results_uri).set_index("id")
    b = read_results(second.results_uri).set_index("id")
    for row_id in ("clip0", "clip1"):
        assert a.loc[row_id, "output_uri"] == str(out / "videos" / "job-a" / f"{row_id}.mp4")
        assert b.loc[row_id, "output_uri"] == str(out / "videos" / "job-b" / f"{row_id}.mp4")
        check_video(Path(b.loc[row_id, "output_uri"]), expected_audio_s=1.0)
        # job B rendered other portraits: its files differ, and job A's are untouched by it
        assert digest(a.loc[row_id, "output_uri"]) == a_digests[row_id] != digest(b.loc[row_id, "output_uri"])
    resumed = render(two_manifests[0], "job-a")  # A again, after B: skips its rows and keeps its own videos
    assert resumed.counts == {"ok": 0, "failed": 0, "skipped": 2}
    again = read_results(resumed.results_uri).set_index("id")
    assert again["output_uri"].to_dict() == a["output_uri"].to_dict()
    assert {i: digest(u) for i, u in again["output_uri"].items()} == a_digests


def test_a_resume_measures_what_an_earlier_run_published_unmeasured(tmp_path, two_manifests, random_tiny_checkpoint,
                                                                    ray_local):
    """Regression guard: rows published by a run without metrics came back 'skipped' on every later run with
    every metric null and nothing saying why; now the resume measures them, and says why when it cannot."""

    from pipelines.render import RenderConfig, run_render

    out = tmp_path / "out"

    def render(metrics: bool):
        return run_render(RenderConfig(manifest_uri=str(two_manifests[0]), output_uri=str(out), run_id="late",
                                       checkpoint=str(random_tiny_checkpoint), metrics=metrics,
                                       tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}"))

    assert render(metrics=False).counts["ok"] == 2
    unmeasured = render(metrics=False).results.set_index("id")  # still off: the table says why the figures are null
    assert unmeasured["face_detected_ratio"].isna().all()
    assert unmeasured["metrics_error"].str.contains("not measured: metrics are off").all()
    resumed = render(metrics=True)
    df = resumed.results.set_index("id")
    assert (df["status"] == "skipped").all() and "remeasure" in resumed.stage_s
    assert (df["metrics_error"] == "").all(), df["metrics_error"].tolist()
    assert df["face_detected_ratio"].notna().all() and df["identity_distance_mean"].notna().all()
    saved = json.loads((out / "state" / "late" / "clip0.json").read_text())  # republished with its figures
    assert saved["face_detected_ratio"] == df.loc["clip0", "face_detected_ratio"]
    again = render(metrics=True)  # measured once: a later resume keeps the figures without measuring again
    assert "remeasure" not in again.stage_s
    assert again.results.set_index("id")["identity_distance_mean"].tolist() == df["identity_distance_mean"].tolist()


@pytest.fixture(scope="module")
def ten_clips(tmp_path_factory, astronaut_png, speech_wav, shared_media) -> Path:
    """Ten 1 s rows: three render batches, so a signal after the first published row finds work left."""
    d = tmp_path_factory.mktemp("ten")
    speech = short_speech(speech_wav, d / "speech.wav", 1.0)
    portraits = [Path(shutil.copy(p, d)) for p in (astronaut_png, shared_media / "portraits" / "biden.jpg")]
    return write_jsonl(d / "manifest.jsonl", [{"id": f"clip{i}", "portrait": str(portraits[i % 2]),
                                               "audio": str(speech)} for i in range(10)])


# A driver subprocess starts its own local Ray (RAY_ADDRESS=local): left to find one, `ray.init()` joins the
# session-scoped instance of the pytest process, whose CPUs other tests' actors may hold, and waits for them.
DRIVER_ENV = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_ADDRESS": "local"}


def render_driver(manifest: Path, out: Path, run_id: str, checkpoint: Path, tracking: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "jobs.render", str(manifest), "--output", str(out), "--run-id", run_id,
                             "--checkpoint", str(checkpoint), "--tracking-uri", tracking, "--no-metrics"],
                            cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=DRIVER_ENV)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signalled_driver_records_what_finished_and_a_rerun_finishes_the_job(tmp_path, ten_clips,
                                                                               random_tiny_checkpoint, signum):
    """Regression guard: Ctrl-C or SIGTERM (`ray job stop`, Kubernetes) ended the driver with a raw traceback,
    no results Parquet and no MLflow run, though finished rows were in state/."""
    from mlflow.tracking import MlflowClient

    from metrics.schema import read_results

    out, run_id, tracking = tmp_path / "out", "sig", f"sqlite:///{tmp_path / 'mlflow.db'}"
    ids = [f"clip{i}" for i in range(10)]
    driver = render_driver(ten_clips, out, run_id, random_tiny_checkpoint, tracking)
    state, published = out / "state" / run_id, out / "videos" / run_id
    deadline = time.monotonic() + 300
    # the first video out (not one being published, .tmp-*): the render actor still has rows in hand
    while not (published.is_dir() and any(p.suffix == ".mp4" and not p.name.startswith(".tmp-")
                                          for p in published.iterdir())):
        assert driver.poll() is None and time.monotonic() < deadline, driver.communicate()
        time.sleep(0.05)
    first_done = {p.stem for p in state.iterdir() if p.suffix == ".json" and not p.name.startswith(".tmp-")} \
        if state.is_dir() else set()
    driver.send_signal(signum)
    stdout, stderr = driver.communicate(timeout=300)
    assert driver.returncode == 128 + signum, (stdout[-2000:], stderr[-4000:])
    assert "Traceback" not in stderr, stderr[-4000:]
    assert f"stopped by {signal.Signals(signum).name}" in stderr

    df = read_results(str(out / "results" / f"{run_id}.parquet")).set_index("id")
    assert sorted(df.index) == ids  # every row has a result
    ok = set(df.index[df.status == "ok"])
    interrupted = set(df.index[df.error.str.contains("interrupted", na=False)])
    assert first_done <= ok  # rows published before the signal are recorded as done
    assert interrupted and ok | interrupted == set(ids) and not ok & interrupted, df[["status", "error"]]
    assert (df.loc[sorted(interrupted), "status"] == "failed").all()

    client = MlflowClient(tracking)
    [run] = client.search_runs([client.get_experiment_by_name("eartalk-render").experiment_id],
                               f"tags.`eartalk.run_id` = '{run_id}'")
    assert run.info.status == "KILLED"
    assert run.data.tags["eartalk.interrupted"] == signal.Signals(signum).name
    assert (run.data.metrics["rows_ok"], run.data.metrics["rows_failed"]) == (len(ok), len(interrupted))

    videos = out / "videos" / run_id
    # the videos of the rows recorded ok; a video published without its record yet is rendered again (identically)
    mtimes = {f"{i}.mp4": (videos / f"{i}.mp4").stat().st_mtime_ns for i in ok}
    rerun = render_driver(ten_clips, out, run_id, random_tiny_checkpoint, tracking)
    stdout, stderr = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, (stdout[-2000:], stderr[-4000:])
    again = read_results(str(out / "results" / f"{run_id}.parquet")).set_index("id")
    assert sorted(again.index) == ids and set(again.status) <= {"ok", "skipped"}, again[["status", "error"]]
    # exactly once: what the first driver published is skipped and untouched; the rest rendered now
    assert ok <= set(again.index[again.status == "skipped"])
    assert all(videos.joinpath(name).stat().st_mtime_ns == t for name, t in mtimes.items())
    assert sorted(p.name for p in videos.iterdir()) == [f"{i}.mp4" for i in sorted(ids)]
    assert sorted(p.name for p in state.iterdir()) == [f"{i}.json" for i in sorted(ids)]
    for i in ids:
        check_video(videos / f"{i}.mp4", expected_audio_s=1.0)


def test_an_object_store_lost_mid_run_fails_the_job_clearly_with_a_local_copy_and_an_mlflow_run(
        tmp_path, monkeypatch, ten_clips, random_tiny_checkpoint, ray_local):
    """Regression guard: with the S3 endpoint stopped mid-run, the driver crashed writing the results with a
    raw EndpointConnectionError: no summary and no MLflow run. A moto server of this test's own, stopped
    once the first row is published."""
    import threading

    import boto3
    from mlflow.tracking import MlflowClient

    from metrics.schema import read_results
    from pipelines.render import RenderConfig, run_render
    from tests.conftest import free_port, wait_for_port

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the driver keeps its local copy
    try:
        wait_for_port(port, proc=server)
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        s3.create_bucket(Bucket="lost")

        def stop_after_first_row() -> None:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                listed = s3.list_objects_v2(Bucket="lost", Prefix="out/state/").get("Contents", [])
                if any("/.tmp-" not in o["Key"] for o in listed):  # a record published, not one in flight
                    server.kill()
                    return
                time.sleep(0.1)

        watcher = threading.Thread(target=stop_after_first_row, daemon=True)
        watcher.start()
        tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
        manifest = write_jsonl(ten_clips.parent / "three.jsonl",
                               [json.loads(line) for line in ten_clips.read_text().splitlines()[:3]])
        outcome = run_render(RenderConfig(manifest_uri=str(manifest), output_uri="s3://lost/out", run_id="lost",
                                          checkpoint=str(random_tiny_checkpoint), metrics=False, rows_per_batch=1,
                                          s3_endpoint=endpoint, tracking_uri=tracking))
        watcher.join(timeout=5)
    finally:
        server.kill()
        server.wait(timeout=30)
    assert server.returncode is not None and outcome.exit_code == 1
    assert outcome.store_error.startswith("the results could not be written to s3://lost/out/results/lost.parquet")
    local = tmp_path / "eartalk-results-lost.parquet"
    assert outcome.results_uri == str(local) and f"a local copy is at {local}" in outcome.store_error
    df = read_results(str(local))
    assert sorted(df["id"]) == ["clip0", "clip1", "clip2"] and set(df["status"]) <= {"ok", "failed"}
    # the server is killed once a state record is listed; that record's own reply may still be in flight,
    # so its row can come back failed too: every failure names the lost endpoint, none is lost
    failed = df[df["status"] == "failed"]
    assert all(f"127.0.0.1:{port}" in e for e in failed["error"]), list(failed["error"])
    client = MlflowClient(tracking)
    run = client.get_run(outcome.mlflow_run_id)
    assert run.data.tags["eartalk.store_error"] == outcome.store_error
    assert run.data.tags["eartalk.results_uri"] == str(local)


def test_a_newer_driver_taking_the_runs_lease_stops_the_older_drivers_actors_publishing(
        tmp_path, ten_clips, random_tiny_checkpoint, ray_local):
    """Regression guard: a worker outlived its driver and kept publishing. The actors check the driver's
    lease (pipelines/lease.py) before each upload; here a newer holder takes it once the first video is out,
    while the older driver (this process, on real Ray) still runs: its actors upload nothing more."""
    import threading

    import storage
    from pipelines.lease import DriverLease
    from pipelines.render import RenderConfig, run_render

    out, run_id = tmp_path / "out", "taken"
    videos = out / "videos" / run_id
    taken: dict[str, float] = {}

    def take_over_after_the_first_video() -> None:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if videos.is_dir() and any(p.suffix == ".mp4" and not p.name.startswith(".tmp-") for p in videos.iterdir()):
                newer = DriverLease(str(out), run_id, storage.StorageOptions.from_env())
                newer.renew()
                taken.update(at=time.time(), holder=newer.holder)
                return
            time.sleep(0.02)

    watcher = threading.Thread(target=take_over_after_the_first_video, daemon=True)
    watcher.start()
    outcome = run_render(RenderConfig(manifest_uri=str(ten_clips), output_uri=str(out), run_id=run_id,
                                      checkpoint=str(random_tiny_checkpoint), metrics=False, max_failed_fraction=1.0,
                                      tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}"))
    watcher.join(timeout=5)
    assert taken, "no video was published"
    df = outcome.results.set_index("id")
    refused = df[df.error.str.contains("another driver", na=False)]
    assert len(refused) >= 1, df[["status", "error"]]  # rows were left when the lease was taken
    assert (refused.status == "failed").all()
    assert refused.error.str.contains(f"another driver \\({taken['holder']}\\) holds this run's lease").all()
    assert set(df.status) <= {"ok", "failed"} and set(df.index[df.status == "failed"]) == set(refused.index)
    # nothing uploaded after the takeover: refused rows have no video, ok rows' videos came before it
    published = {p.stem: p.stat().st_mtime for p in videos.iterdir() if p.suffix == ".mp4" and not p.name.startswith(".tmp-")}
    assert not set(refused.index) & set(published)
    assert max(published.values()) <= taken["at"] + 1.0, (published, taken)


def test_a_sigkilled_driver_leaves_no_worker_publishing_and_a_rerun_finishes_exactly_once(
        tmp_path, ten_clips, random_tiny_checkpoint):
    """A real driver (`python -m jobs.render`, its own local Ray) SIGKILLed once its first video is out: every
    upload after the kill happens within the lease's timeout (Ray may stop the workers sooner; the lease bounds
    it on any cluster), and a rerun with the same run id renders the rest once."""
    from metrics.schema import read_results
    from pipelines.lease import LEASE_TIMEOUT_S

    out, run_id, tracking = tmp_path / "out", "killed", f"sqlite:///{tmp_path / 'mlflow.db'}"
    videos = out / "videos" / run_id
    args = [sys.executable, "-m", "jobs.render", str(ten_clips), "--output", str(out), "--run-id", run_id,
            "--checkpoint", str(random_tiny_checkpoint), "--tracking-uri", tracking, "--no-metrics"]
    env = DRIVER_ENV
    # its own session: the Ray processes it starts can be found (and ended) by its process group afterwards
    driver = subprocess.Popen(args, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        # a published video, not one being published (.tmp-*)
        while not (videos.is_dir() and any(p.suffix == ".mp4" and not p.name.startswith(".tmp-") for p in videos.iterdir())):
            assert driver.poll() is None and time.monotonic() < deadline, driver.communicate()[1][-4000:]
            time.sleep(0.02)
        driver.kill()
        killed = time.time()
        driver.wait(timeout=30)
        time.sleep(LEASE_TIMEOUT_S + 10)  # what a surviving worker could still upload, and then some
        late = {p.name: round(p.stat().st_mtime - killed, 2) for p in videos.iterdir() if p.stat().st_mtime > killed}
        print(f"uploads after the kill (s after it): {late}")
        assert all(t <= LEASE_TIMEOUT_S + 2 for t in late.values()), late
    finally:
        try:
            os.killpg(driver.pid, signal.SIGKILL)  # the killed driver's Ray processes that are still there
        except ProcessLookupError:
            pass
    first = {p.name: p.stat().st_mtime_ns for p in videos.iterdir() if p.suffix == ".mp4"}
    rerun = subprocess.run(args, cwd=REPO_ROOT, capture_output=True, text=True, env=env, timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-4000:]
    ids = [f"clip{i}" for i in range(10)]
    df = read_results(str(out / "results" / f"{run_id}.parquet")).set_index("id")
    assert sorted(df.index) == ids and set(df.status) <= {"ok", "skipped"}, df[["status", "error"]]
    assert sorted(p.name for p in videos.iterdir()) == [f"{i}.mp4" for i in ids]
    # a video published with its state record is skipped and untouched; one without is rendered again
    for name in df.index[df.status == "skipped"]:
        assert (videos / f"{name}.mp4").stat().st_mtime_ns == first[f"{name}.mp4"]
    for i in ids:
        check_video(videos / f"{i}.mp4", expected_audio_s=1.0)
