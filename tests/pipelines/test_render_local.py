"""The render job end to end on real inputs, local files, a real local Ray and MLflow on sqlite."""

from __future__ import annotations

import json
import wave

import mlflow
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from jobs.render import main as render_main
from tests.pipelines.helpers import check_video, short_speech, write_jsonl


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, astronaut_png, speech_wav, shared_media):
    d = tmp_path_factory.mktemp("inputs")
    speech = short_speech(speech_wav, d / "speech.wav", 2.0)
    german = short_speech(shared_media / "speech" / "german.wav", d / "german.wav", 1.5)
    (d / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg" + bytes(range(200)))
    gradient = np.tile(np.linspace(0, 255, 256, dtype=np.uint8)[None, :, None], (256, 1, 3))
    Image.fromarray(gradient).save(d / "noface.png")
    (d / "unreadable.wav").write_text("RIFF? no, just text pretending to be audio\n")
    with wave.open(str(d / "empty.wav"), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000), w.writeframes(b"")
    (d / "yaw.csv").write_text("frame,yaw,blink\n" + "".join(f"{i},{-20 + i},\n" for i in range(0, 50)))
    (d / "nan.csv").write_text("frame,yaw\n0,1.0\n1,nan\n")
    (d / "unknown.csv").write_text("frame,yaw,smile_amount\n0,1.0,0.5\n")
    (d / "range.json").write_text(json.dumps([{"frame": 0, "yaw": 10}, {"frame": 1, "yaw": 170}]))
    good = {"portrait": str(astronaut_png), "audio": str(speech)}
    rows = [
        {"id": "astronaut", **good, "language": "en", "controls": "yaw.csv"},
        {"id": "obama2-de", "portrait": str(shared_media / "portraits" / "obama2.jpg"), "audio": "german.wav", "language": "de"},
        {"id": "missing-file", "portrait": "does-not-exist.png", "audio": str(speech)},
        {"id": "corrupt-image", "portrait": "corrupt.jpg", "audio": str(speech)},
        {"id": "no-face", "portrait": "noface.png", "audio": str(speech)},
        {"id": "unreadable-audio", "portrait": str(astronaut_png), "audio": "unreadable.wav"},
        {"id": "empty-audio", "portrait": str(astronaut_png), "audio": "empty.wav"},
        {"id": "controls-nan", **good, "controls": "nan.csv"},
        {"id": "controls-unknown", **good, "controls": "unknown.csv"},
        {"id": "controls-range", **good, "controls": "range.json"},
        {"id": "astronaut", **good},
        {"id": "../x", **good},
    ]
    return write_jsonl(d / "manifest.jsonl", rows)


EXPECTED_ERRORS = {
    "missing-file": "not found",
    "corrupt-image": "corrupt or unsupported image",
    "no-face": "no face found",
    "unreadable-audio": "unreadable audio",
    "empty-audio": "zero length",
    "controls-nan": "NaN/inf are not allowed",
    "controls-unknown": "unknown control column(s) at position(s) [3]",
    "controls-range": "170.0 outside [-45.0, 45.0]",
}


@pytest.fixture(scope="module")
def first_run(inputs, tmp_path_factory, random_tiny_checkpoint, ray_local, astronaut_png, shared_media):
    out = tmp_path_factory.mktemp("out")
    tracking = f"sqlite:///{out / 'mlflow.db'}"
    # the portraits live outside the manifest's folder: the input policy reads them once allowed
    args = [str(inputs), "--output", str(out / "render"), "--run-id", "run1", "--checkpoint", str(random_tiny_checkpoint),
            "--tracking-uri", tracking, "--allow-root", str(astronaut_png.parent), "--allow-root", str(shared_media)]
    code = render_main(args)
    return {"code": code, "out": out / "render", "args": args, "tracking": tracking}


def results(out, run_id) -> pd.DataFrame:
    from metrics.schema import read_results

    return read_results(str(out / "results" / f"{run_id}.parquet"))


def test_good_rows_render_to_checked_mp4s_and_bad_rows_fail_with_their_cause(first_run):
    df = results(first_run["out"], "run1")
    assert len(df) == 12  # one result row per manifest row
    ok = df[df.status == "ok"].set_index("id")
    assert sorted(ok.index) == ["astronaut", "obama2-de"]
    check_video(first_run["out"] / "videos" / "run1" / "astronaut.mp4", expected_audio_s=2.0)
    check_video(first_run["out"] / "videos" / "run1" / "obama2-de.mp4", expected_audio_s=1.5)
    assert ok.loc["astronaut", "frames"] == 50 and ok.loc["obama2-de", "frames"] == 38
    assert ok.loc["astronaut", "language"] == "en"  # free-form tags carried through
    failed = df[df.status == "failed"]
    for row_id, cause in EXPECTED_ERRORS.items():
        error = failed.loc[failed.id == row_id, "error"].item()
        assert cause in error and row_id in error, (row_id, error)
    assert "duplicate id" in failed.loc[failed.id == "astronaut", "error"].item()
    assert "unsafe id" in failed.loc[failed.id == "../x", "error"].item()
    assert not (first_run["out"] / "videos" / "run1" / "no-face.mp4").exists()  # nothing half-written published
    assert sorted(p.name for p in (first_run["out"] / "videos" / "run1").iterdir()) == ["astronaut.mp4", "obama2-de.mp4"]


def test_exit_code_is_1_when_failures_exceed_the_allowed_fraction(first_run):
    assert first_run["code"] == 1


def test_mlflow_run_has_params_counts_and_results_tag(first_run):
    mlflow.set_tracking_uri(first_run["tracking"])
    runs = mlflow.search_runs(experiment_names=["eartalk-render"], filter_string="tags.`eartalk.run_id` = 'run1'")
    assert len(runs) == 1
    run = runs.iloc[0]
    assert run["metrics.rows_ok"] == 2 and run["metrics.rows_failed"] == 10
    assert run["tags.eartalk.results_uri"].endswith("results/run1.parquet")
    assert run["params.checkpoint"]


def test_resume_with_same_run_id_renders_nothing_new_and_loses_nothing(first_run):
    videos = first_run["out"] / "videos" / "run1"
    before = {p.name: p.stat().st_mtime_ns for p in videos.iterdir()}
    args = first_run["args"] + ["--max-failed-fraction", "0.9"]
    assert render_main(args) == 0  # failures (10 of 12) within the allowed fraction
    after = {p.name: p.stat().st_mtime_ns for p in videos.iterdir()}
    assert after == before  # no video re-rendered or re-published
    df = results(first_run["out"], "run1")
    skipped = df[df.status == "skipped"].set_index("id")
    assert sorted(skipped.index) == ["astronaut", "obama2-de"]
    assert skipped.loc["astronaut", "frames"] == 50 and skipped.loc["astronaut", "output_uri"].endswith("astronaut.mp4")
    assert (df.status == "failed").sum() == 10


def test_missing_checkpoint_is_a_usage_error(inputs, tmp_path):
    assert render_main([str(inputs), "--output", str(tmp_path), "--checkpoint", str(tmp_path / "nope")]) == 2


def test_unreadable_manifest_is_a_usage_error(tmp_path, random_tiny_checkpoint):
    bad = tmp_path / "m.jsonl"
    bad.write_text("{not json\n")
    assert render_main([str(bad), "--output", str(tmp_path / "o"), "--checkpoint", str(random_tiny_checkpoint)]) == 2


@pytest.fixture(scope="module")
def resumed_run(inputs, astronaut_png, tmp_path_factory, random_tiny_checkpoint, ray_local):
    """Run 'part': one good row batched with a failed one; then resumed with one more good row (one skipped)."""
    d = tmp_path_factory.mktemp("resume")
    good = {"portrait": str(astronaut_png), "audio": str(inputs.parent / "speech.wav")}
    tracking = f"sqlite:///{d / 'mlflow.db'}"
    args = ["--output", str(d / "render"), "--run-id", "part", "--checkpoint", str(random_tiny_checkpoint),
            "--tracking-uri", tracking, "--no-metrics", "--max-failed-fraction", "1", "--allow-root", str(astronaut_png.parent),
            "--allow-root", str(inputs.parent)]
    first = write_jsonl(d / "first.jsonl", [{"id": "one", **good}, {"id": "gone", **good, "portrait": "nope.png"}])
    second = write_jsonl(d / "second.jsonl", [{"id": "one", **good}, {"id": "two", **good}])
    # pandas blocks keep a failed row's missing figures as NaN (Arrow blocks, Ray's default, turn them into nulls)
    context = ray_local.data.DataContext.get_current()
    arrow_blocks, context.batch_to_block_arrow_format = context.batch_to_block_arrow_format, False
    try:
        assert render_main([str(first), *args]) == 0
    finally:
        context.batch_to_block_arrow_format = arrow_blocks
    assert render_main([str(second), *args]) == 0
    mlflow.set_tracking_uri(tracking)
    runs = mlflow.search_runs(experiment_names=["eartalk-render"], order_by=["start_time ASC"])
    return {"runs": runs, "results": results(d / "render", "part")}


def test_stage_seconds_stay_finite_when_a_batch_mixes_ok_and_failed_rows(resumed_run):
    """Regression: a failed row's NaN render_s (pandas blocks) was kept by `r.get(key) or 0.0`: the stage sums were NaN."""
    first = resumed_run["runs"].iloc[0]
    assert first["metrics.rows_ok"] == 1 and first["metrics.rows_failed"] == 1
    for stage in ("load", "render", "encode", "upload"):
        assert np.isfinite(first[f"metrics.stage_s/{stage}"]), stage
    assert first["metrics.stage_s/render"] > 0


def test_render_rate_of_a_resumed_run_counts_only_rows_rendered_by_it(resumed_run):
    """Regression: render_frames_per_s divided this run's frames by render_s summed over skipped rows too."""
    second = resumed_run["runs"].iloc[1]
    df = resumed_run["results"].set_index("id")
    assert list(df["status"]) == ["skipped", "ok"]
    assert second["metrics.frames"] == 50
    assert second["metrics.render_frames_per_s"] == pytest.approx(50 / df.loc["two", "render_s"])
