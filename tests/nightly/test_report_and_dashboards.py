"""The HTML run report in headless Chromium (videos play, plots decode) and the trend export from MLflow."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from nightly import tracking
from nightly.dashboards import export_trends, trend_table
from metrics.schema import worst_rows
from nightly.report import ReportInputs, metric_columns_of, render_html

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def clips(tmp_path_factory, shared_media) -> list[Path]:
    """Three 1 s H.264+AAC clips cut from the real talking-head video (Debian ffmpeg)."""
    folder = tmp_path_factory.mktemp("night") / "attempt-01" / "videos"
    folder.mkdir(parents=True)
    paths = []
    for i in range(3):
        path = folder / f"row{i}.mp4"
        subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-ss", str(i * 2), "-t", "1",
                        "-i", str(shared_media / "video" / "talking_512px_8s.mp4"), "-vf", "scale=128:128",
                        "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", str(path)], check=True)
        paths.append(path)
    return paths


def night_results(clips: list[Path]) -> pd.DataFrame:
    return pd.DataFrame({
        "id": ["row0", "row1", "row2", "row3"], "language": ["en", "de", "de", "fr"],
        "status": ["ok", "ok", "ok", "failed"], "error": ["", "", "", "portrait: no face found"],
        "output_uri": [str(p) for p in clips] + [""],
        "sync_confidence": [0.9, 0.2, 0.6, None], "identity_distance_mean": [0.3, 0.2, 0.25, None],
        "frames": [25, 25, 25, 0],
    })


def test_worst_rows_put_failures_first_then_the_worst_scores(clips):
    rows = worst_rows(night_results(clips), "sync_confidence", 3)  # higher is better: lowest first
    assert list(rows["id"]) == ["row3", "row1", "row2"]
    assert list(worst_rows(night_results(clips), "identity_distance_mean", 2)["id"]) == ["row3", "row0"]
    assert metric_columns_of(night_results(clips)) == ["sync_confidence", "identity_distance_mean"]


@pytest.mark.parametrize("mode", ["relative", "embedded"])
def test_report_videos_play_and_plots_show_in_headless_chromium(clips, mode, inspect_in_chromium):
    import base64

    results = night_results(clips)
    report_dir = clips[0].parents[2] if mode == "relative" else clips[0].parents[3] / "mlflow-copy"
    report_dir.mkdir(exist_ok=True)
    if mode == "relative":
        def src(row):
            return str(Path(row["output_uri"]).relative_to(report_dir))
    else:
        def src(row):
            return "data:video/mp4;base64," + base64.b64encode(Path(row["output_uri"]).read_bytes()).decode()
    comparison = pd.DataFrame({"metric": ["sync_confidence"], "baseline": [0.8], "current": [0.57],
                               "delta": [-0.23], "regressed": [True]})
    timings = pd.DataFrame({"metric": ["metrics_s"], "baseline": [2.0], "current": [9.0], "delta": [7.0]})
    inputs = ReportInputs(title="EARTalking nightly 2026-11-24", results=results, summary={"night": "2026-11-24"},
                          metric_columns=metric_columns_of(results), worst_metric="sync_confidence",
                          comparison=comparison, timings=timings, worst_rows=3)
    page = report_dir / "report.html"
    page.write_text(render_html(inputs, src))
    text = page.read_text()
    assert "Regressed: sync_confidence" in text and "portrait: no face found" in text
    assert "Timings (mean seconds per rendered row" in text and "<td>metrics_s</td>" in text
    assert "by sync_confidence (lowest first)" in text
    if mode == "relative":
        assert "src='attempt-01/videos/row1.mp4'" in text

    seen = inspect_in_chromium(page.as_uri())
    assert seen["title"] == "EARTalking nightly 2026-11-24"
    assert [v["id"] for v in seen["videos"]] == ["row1", "row2"]  # the failed row has no video
    for video in seen["videos"]:
        assert video["error"] is None, video
        assert 0.9 < video["duration"] < 1.2 and video["currentTime"] > 0 and video["width"] == 128, video
    [histogram] = seen["images"]
    assert histogram["alt"] == "metric histograms" and histogram["complete"] and histogram["width"] > 100


def log_three_nights(tracking_uri: str) -> None:
    """Three nights x two languages of language runs and night runs, logged like the nightly does."""
    mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient()
    experiment = tracking.experiment_id(client)
    for day, night in enumerate(["2026-11-22", "2026-11-23", "2026-11-24"]):
        version = "tiny-v1" if day < 2 else "tiny-v2"
        with mlflow.start_run(experiment_id=experiment, run_name=f"nightly-{night}") as parent:
            mlflow.set_tags({tracking.TAG_JOB: "nightly", tracking.TAG_SCOPE: tracking.SCOPE_NIGHT,
                             tracking.TAG_DATE: night, tracking.TAG_MODEL: version, tracking.TAG_CATALOG: "cat"})
            tracking.log_night_metrics(client, parent.info.run_id, night, {"quality/sync/mean": 0.5 + day / 10})
            for language, offset in [("en", 0.0), ("de", -0.1)]:
                with mlflow.start_run(experiment_id=experiment, nested=True) as child:
                    mlflow.set_tags({tracking.TAG_JOB: "nightly", tracking.TAG_SCOPE: tracking.SCOPE_LANGUAGE,
                                     tracking.TAG_DATE: night, tracking.TAG_LANGUAGE: language,
                                     tracking.TAG_MODEL: version, tracking.TAG_CATALOG: "cat"})
                    tracking.log_night_metrics(client, child.info.run_id, night,
                                               {"quality/sync/mean": 0.5 + day / 10 + offset,
                                                "nightly/rendered_ok": 3})


def test_documented_query_returns_one_row_per_night_and_language(mlflow_tracking_uri):
    log_three_nights(mlflow_tracking_uri)
    runs = tracking.search_nightly_runs(mlflow_tracking_uri, last_nights=2)
    assert list(runs[f"tags.{tracking.TAG_DATE}"]) == ["2026-11-23"] * 2 + ["2026-11-24"] * 2
    table = trend_table(runs, "language")
    de = table[(table["metric"] == "quality/sync/mean") & (table["language"] == "de")]
    assert list(de["night"]) == ["2026-11-23", "2026-11-24"] and de["value"].round(3).tolist() == [0.5, 0.6]
    history = MlflowClient().get_metric_history(runs["run_id"].iloc[0], "quality/sync/mean")
    assert [m.step for m in history] == [tracking.night_step("2026-11-23")]
    with pytest.raises(ValueError, match=r"group_by must be one of"):
        trend_table(runs, "speaker")


def test_a_rerun_of_the_night_replaces_its_metrics(mlflow_tracking_uri):
    """Regression guard: both tries logged at the night's step and midnight, and on such a tie MLflow keeps
    the largest value, so after a successful retry the run still showed the first try's 5 failures."""
    client = MlflowClient(mlflow_tracking_uri)
    run_id = client.create_run(tracking.experiment_id(client)).info.run_id
    tracking.log_night_metrics(client, run_id, "2026-11-24", {"nightly/rendered_failed": 5, "quality/sync/mean": 0.4})
    tracking.log_night_metrics(client, run_id, "2026-11-24", {"nightly/rendered_failed": 0, "quality/sync/mean": 0.2})
    assert client.get_run(run_id).data.metrics == {"nightly/rendered_failed": 0.0, "quality/sync/mean": 0.2}
    history = client.get_metric_history(run_id, "nightly/rendered_failed")
    assert {m.step for m in history} == {tracking.night_step("2026-11-24")}


def test_export_trends_writes_csv_and_png_per_model_version(mlflow_tracking_uri, tmp_path):
    log_three_nights(mlflow_tracking_uri)
    csv_path, png_path = export_trends(mlflow_tracking_uri, tmp_path / "trends", last_nights=30,
                                       group_by="model_version")
    table = pd.read_csv(csv_path)
    assert set(table["model_version"]) == {"tiny-v1", "tiny-v2"} and len(table) == 3
    with Image.open(png_path) as image:
        assert image.size[0] > 200 and image.size[1] > 100


def test_export_trends_script_runs_from_the_command_line(mlflow_tracking_uri, tmp_path):
    log_three_nights(mlflow_tracking_uri)
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "export_trends.py"), "--tracking-uri",
                           mlflow_tracking_uri, "--nights", "2", "--out", str(tmp_path / "t")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    table = pd.read_csv(tmp_path / "t" / "trends.csv")
    assert set(table["night"]) == {"2026-11-23", "2026-11-24"}
    assert set(table["metric"]) == {"quality/sync/mean", "nightly/rendered_ok"}
    assert (tmp_path / "t" / "trends.png").stat().st_size > 1000
