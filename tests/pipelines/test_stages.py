"""The render job's operators called directly (no Ray): one row's failure stays that row's."""

from __future__ import annotations

import gc
import os
import json
import tempfile
from pathlib import Path

import pandas as pd
import pytest

from model import checkpoint_version
import storage
from pipelines.stages import RenderActor, load_assets, record, state_uri
from tests.pipelines.helpers import short_speech


def run(actor, rows: list[dict]) -> pd.DataFrame:
    """Every row the actor yields for one batch, in the order it yielded them."""
    return pd.concat(list(actor(pd.DataFrame(rows))), ignore_index=True)


def manifest_row(i: int, row_id: str, portrait, audio) -> dict:
    return {"row": i, "id": row_id, "portrait": str(portrait), "audio": str(audio), "controls": "", "fps": 25.0,
            "seed": 0, "reference_video": "", "tags": "{}", "output_root": ""}


@pytest.fixture(scope="module")
def actor(tmp_path_factory, random_tiny_checkpoint):
    out = tmp_path_factory.mktemp("out")
    return RenderActor(str(random_tiny_checkpoint), str(out), "run", storage.StorageOptions(), device="cpu")


@pytest.fixture(scope="module")
def loaded(tmp_path_factory, actor, astronaut_png, speech_wav):
    """Three real rows through the asset stage: ids a, b, c."""
    speech = short_speech(speech_wav, tmp_path_factory.mktemp("speech") / "speech.wav", 0.6)
    rows = [load_assets(manifest_row(i, name, astronaut_png, speech), image_size=actor.size,
                        options=storage.StorageOptions()) for i, name in enumerate("abc")]
    assert [r["status"] for r in rows] == ["pending"] * 3
    return rows


def test_a_row_that_breaks_the_batch_fails_alone(actor, loaded):
    """Regression: one row whose input made stream() raise failed every row of its batch with that row's error."""
    rows = [dict(r) for r in loaded]
    rows[1]["controls_json"] = json.dumps({"smile": [0.5] * rows[1]["num_frames"]})  # unknown to the model
    out = run(actor, rows).set_index("id").loc[["a", "b", "c"]]
    assert list(out["status"]) == ["ok", "failed", "ok"]
    assert out.loc["b", "error"].startswith("row 1 (id 'b'), render: ValueError: unknown control 'smile'")
    videos = storage.join(actor.output_uri, "videos", "run")
    assert sorted(p.name for p in Path(videos).iterdir()) == ["a.mp4", "c.mp4"]


def test_a_failed_publish_fails_that_row_only(tmp_path, random_tiny_checkpoint, loaded):
    """Regression: when row i's upload raised, the later rows, rendered fine, were marked failed too. The
    upload of a.mp4 fails for real: a folder holds its name in the output."""
    actor = RenderActor(str(random_tiny_checkpoint), str(tmp_path / "out"), "run", storage.StorageOptions(), device="cpu")
    videos = Path(storage.join(actor.output_uri, "videos", "run"))
    (videos / "a.mp4").mkdir(parents=True)
    (videos / "a.mp4" / "keep").write_text("not a video")
    out = run(actor, [dict(r) for r in loaded[:2]]).set_index("id")
    assert out.loc["a", "status"] == "failed" and out.loc["b", "status"] == "ok"
    assert out.loc["a", "error"].startswith("row 0 (id 'a'), encode/publish: IsADirectoryError")
    assert sorted(p.name for p in videos.iterdir()) == ["a.mp4", "b.mp4"]  # no temporary left behind


def test_a_remote_checkpoint_leaves_no_copy_behind(tmp_path, monkeypatch, s3_server, s3_bucket, random_tiny_checkpoint,
                                                   loaded):
    """Regression: the actor copied an S3 checkpoint into a mkdtemp folder never removed, so every actor
    start left a copy of the weights in /tmp. The copy goes once the model is loaded (the actor still
    renders, from memory), and the actor's scratch folder goes with the actor."""
    s3_server.filesystem().put(str(random_tiny_checkpoint), f"{s3_bucket}/checkpoints/tiny", recursive=True)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))  # where this process makes its temporaries
    options = storage.StorageOptions(endpoint_url=s3_server.endpoint_url, key=s3_server.access_key,
                                     secret=s3_server.secret_key, region=s3_server.region)
    actor = RenderActor(f"s3://{s3_bucket}/checkpoints/tiny", str(tmp_path / "out"), "run", options, device="cpu")
    assert actor.model_version == checkpoint_version(random_tiny_checkpoint)
    assert [p.relative_to(tmp) for p in tmp.rglob("*") if actor.workdir not in (p, *p.parents)] == []
    out = run(actor, [dict(loaded[0])])
    assert list(out["status"]) == ["ok"], out["error"].tolist()
    del actor
    gc.collect()
    assert list(tmp.iterdir()) == []


def test_a_long_row_never_holds_up_the_short_ones(tmp_path, random_tiny_checkpoint, astronaut_png, speech_wav):
    """Regression: rows stepped in lockstep until the longest ended and were published only then, so a
    1 s row batched with a long one waited for it. In two slots, a 2 s row and three 0.2 s rows: each
    short row is published and yielded while the long one still renders, the slot it frees taking the
    next row at once, and no frame is computed to be thrown away."""
    out = tmp_path / "out"
    actor = RenderActor(str(random_tiny_checkpoint), str(out), "run", storage.StorageOptions(), device="cpu", slots=2)
    long_speech = short_speech(speech_wav, tmp_path / "long.wav", 2.0)
    short = short_speech(speech_wav, tmp_path / "short.wav", 0.2)
    rows = [load_assets(manifest_row(i, name, astronaut_png, long_speech if name == "long" else short),
                        image_size=actor.size, options=storage.StorageOptions())
            for i, name in enumerate(("long", "s1", "s2", "s3"))]
    long_video = Path(storage.join(str(out), "videos", "run", "long.mp4"))
    order = []
    for frame in actor(pd.DataFrame(rows)):
        row = frame.iloc[0]
        assert row["status"] == "ok", row["error"]
        assert Path(row["output_uri"]).is_file()  # published before it is yielded
        order.append((row["id"], long_video.exists()))
    assert order == [("s1", False), ("s2", False), ("s3", False), ("long", True)]
    assert actor.frames_computed == sum(r["num_frames"] for r in rows)
    assert list(actor.workdir.glob("*.mp4")) == []  # every scratch MP4 went once uploaded


def test_an_unexpected_error_while_loading_fails_just_that_row(monkeypatch, astronaut_png, speech_wav):
    """The asset stage's last resort: an exception no handler names fails the row with its type and message."""
    import media

    def broken(path, **options):
        raise RuntimeError("decoder exploded")

    monkeypatch.setattr(media, "load_audio", broken)
    out = load_assets(manifest_row(4, "e", astronaut_png, speech_wav), image_size=128, options=storage.StorageOptions())
    assert out["status"] == "failed"
    assert out["error"] == "row 4 (id 'e'), audio: RuntimeError: decoder exploded"


def test_the_state_record_is_published_once_by_the_last_stage(tmp_path, random_tiny_checkpoint, loaded):
    """A state record tells a resumed run that a row is done, so it holds the row's final result: the
    render actor publishes the video only, and the record stage writes the record, without stage inputs."""
    out = tmp_path / "out"
    actor = RenderActor(str(random_tiny_checkpoint), str(out), "run", storage.StorageOptions(), device="cpu")
    rows = [{**r, "output_root": str(out)} for r in loaded[:2]]
    rows[1]["controls_json"] = json.dumps({"smile": [0.5] * rows[1]["num_frames"]})  # unknown: fails to render
    rendered = sorted(run(actor, rows).to_dict("records"), key=lambda r: r["id"])
    assert [r["status"] for r in rendered] == ["ok", "failed"]
    assert not (out / "state").exists() and (out / "videos" / "run" / "a.mp4").is_file()
    results = [record(r, options=storage.StorageOptions()) for r in rendered]
    assert not any(c in r for r in results for c in ("portrait_rgb", "audio_pcm", "controls_json"))
    assert sorted(p.name for p in (out / "state" / "run").iterdir()) == ["a.json"]  # failed rows get none
    saved = json.loads(Path(state_uri(str(out), "run", "a")).read_text())
    assert saved["status"] == "ok" and saved["output_uri"] == results[0]["output_uri"]
    assert saved["frames"] == results[0]["frames"] == rows[0]["num_frames"]


ACTOR_THEN_WAIT = """
import sys, time
import storage
from pipelines.stages import RenderActor

actor = RenderActor(sys.argv[1], sys.argv[2], "run", storage.StorageOptions(), device="cpu")
(actor.workdir / "half.mp4").write_bytes(b"the first half of an mp4")  # an encode in progress
print("SCRATCH", actor.workdir, flush=True)
time.sleep(600)
"""


def scratch_of(proc) -> Path:
    for line in proc.stdout:  # other libraries print to stdout too (DeepSpeed's accelerator notice)
        if line.startswith("SCRATCH "):
            return Path(line.removeprefix("SCRATCH ").strip())
    raise AssertionError(f"the actor process ended ({proc.wait()}) before making its scratch")


def test_an_actor_start_removes_the_scratch_of_dead_actors_and_keeps_live_ones(tmp_path, monkeypatch,
                                                                               random_tiny_checkpoint):
    """Regression guard: SIGKILLed actors left half-written MP4s in $TMPDIR/eartalk-render-* that nothing
    removed. Two real actor processes: one SIGKILLed mid-encode, one alive; a third actor's start removes the
    dead one's scratch only."""
    import signal
    import subprocess
    import sys

    from tests.conftest import REPO_ROOT

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    actors = [subprocess.Popen([sys.executable, "-c", ACTOR_THEN_WAIT, str(random_tiny_checkpoint), str(tmp_path / "out")],
                               cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True, env={**os.environ, "TMPDIR": str(tmp)})
              for _ in range(2)]
    try:
        dead, live = (scratch_of(p) for p in actors)
        actors[0].send_signal(signal.SIGKILL)
        actors[0].wait(timeout=30)
        assert (dead / "half.mp4").is_file()  # what a killed actor leaves behind
        unlocked = tmp / "eartalk-render-starting"  # no lock file yet: an actor between mkdir and lock
        unlocked.mkdir()
        monkeypatch.setattr(tempfile, "tempdir", str(tmp))
        actor = RenderActor(str(random_tiny_checkpoint), str(tmp_path / "out"), "run", storage.StorageOptions(),
                            device="cpu")
        assert not dead.exists()
        assert (live / "half.mp4").is_file() and unlocked.is_dir() and actor.workdir.is_dir()
    finally:
        for p in actors:
            p.kill()
            p.wait(timeout=30)


def test_a_call_starts_its_shortest_row_first_then_the_longest():
    """Longest first keeps every slot busy to the call's end (no long row stepping alone at its tail); the
    shortest first publishes a video early."""
    from pipelines.stages import start_order

    rows = [{"id": name, "num_frames": n} for name, n in (("a", 30), ("b", 5), ("c", 90), ("d", 5), ("e", 60))]
    assert [r["id"] for r in start_order(rows)] == ["b", "c", "e", "a", "d"]
    assert start_order(rows[:1]) == rows[:1] and start_order([]) == []
