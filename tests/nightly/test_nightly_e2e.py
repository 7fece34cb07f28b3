"""Two nightlies end to end: a local catalog, the real render job (Ray, a randomly initialised tiny
checkpoint, PyAV MP4s), `mlflow server` on 127.0.0.1, checked through MLflow's REST API; the report
artifact opened in headless Chromium; a re-run of the same night renders nothing twice."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import requests

from nightly import tracking
from tests import conftest

pytestmark = pytest.mark.slow
CLIP_SECONDS = 1.2  # short clips keep two CPU renders fast


def trimmed_wav(source: Path, target: Path, seconds: float = CLIP_SECONDS) -> Path:
    return conftest.trimmed_wav(source, target, seconds)


@pytest.fixture
def catalog(tmp_path, shared_media) -> Path:
    """obama: English and German dubs; biden: French."""
    root = tmp_path / "catalog"
    for item, portrait, tracks in [("obama", "obama.jpg", {"en": "english", "de": "german"}),
                                   ("biden", "biden.jpg", {"fr": "french"})]:
        (root / item).mkdir(parents=True)
        shutil.copy(shared_media / "portraits" / portrait, root / item / "portrait.jpg")
        for language, speech in tracks.items():
            trimmed_wav(shared_media / "speech" / f"{speech}.wav", root / item / "audio" / f"{language}.wav")
    return root


@pytest.fixture
def tiny_checkpoint(tmp_path) -> Path:
    """A randomly initialised tiny generator, saved the way model/ saves checkpoints."""
    import torch
    from model import Generator, get_preset, save_checkpoint

    torch.manual_seed(0)
    directory = tmp_path / "tiny-checkpoint"
    save_checkpoint(Generator(get_preset("tiny")), directory)
    return directory


class MlflowRest:
    def __init__(self, url: str):
        self.url = url

    def get(self, endpoint: str, **params) -> dict:
        response = requests.get(f"{self.url}/api/2.0/mlflow/{endpoint}", params=params, timeout=30)
        response.raise_for_status()
        return response.json()

    def search(self, experiment_id: str, filter_string: str) -> list[dict]:
        response = requests.post(f"{self.url}/api/2.0/mlflow/runs/search", timeout=30, json={
            "experiment_ids": [experiment_id], "filter": filter_string, "max_results": 100})
        response.raise_for_status()
        return response.json().get("runs", [])

    def artifact(self, run_id: str, path: str) -> bytes:
        response = requests.get(f"{self.url}/get-artifact", params={"path": path, "run_uuid": run_id}, timeout=60)
        response.raise_for_status()
        return response.content


def tags(run: dict) -> dict[str, str]:
    return {t["key"]: t["value"] for t in run["data"].get("tags", [])}


def metrics(run: dict) -> dict[str, float]:
    return {m["key"]: m["value"] for m in run["data"].get("metrics", [])}


def test_two_nightlies_log_runs_tags_metrics_comparison_and_a_playable_report(
        ray_local, mlflow_server, catalog, tiny_checkpoint, tmp_path, shared_media, inspect_in_chromium, capsys):
    from jobs.nightly_dubbing import main

    output = tmp_path / "out"
    common = ["--catalog", str(catalog), "--output", str(output), "--tracking-uri", mlflow_server,
              "--checkpoint", str(tiny_checkpoint), "--actors", "1", "--max-failed-fraction", "0.5"]

    # Night 1: all three pairs are new; there is no earlier night to compare with.
    assert main(common + ["--date", "2026-11-23"]) == 0, capsys.readouterr()
    assert "compared with: - (no earlier night)" in capsys.readouterr().out

    # Night 2: the German dub was re-recorded; only that pair renders, and it is compared with night 1.
    # It regresses (exit 1): tonight's results hold obama's one video while night 1's means hold biden's
    # too, and the two full-frame portraits differ in BRISQUE (whole-frame image quality, set by each
    # portrait's own pixels, not by the model) by more than the 10 % of the baseline allowed a metric
    # without an absolute threshold. Timings are reported, not
    # judged, so how busy the machine is cannot change the exit code.
    trimmed_wav(shared_media / "speech" / "japanese.wav", catalog / "obama" / "audio" / "de.wav")
    second = main(common + ["--date", "2026-11-24"])
    printed = capsys.readouterr().out
    assert second == 1, printed
    assert "pairs: new 0, changed 1, retry 0, unchanged 2" in printed

    ledger = pd.read_parquet(output / "nightly" / "ledger.parquet")
    assert ledger.groupby("night").size().to_dict() == {"2026-11-23": 3, "2026-11-24": 1}
    assert set(ledger["status"]) == {"ok"}
    assert ledger["input_hash"].is_unique, "a pair was rendered twice"
    assert ledger.loc[ledger["night"] == "2026-11-24", "pair_id"].tolist() == ["obama/de"]
    for uri in ledger["output_uri"]:
        assert Path(uri).is_file() and Path(uri).stat().st_size > 0
        assert str(output / "nightly") in uri  # under the night's dated prefix

    # MLflow, read back over REST only.
    rest = MlflowRest(mlflow_server)
    experiment_id = rest.get("experiments/get-by-name", experiment_name="eartalk-nightly")["experiment"]["experiment_id"]
    nights = rest.search(experiment_id, tracking.nightly_filter(tracking.SCOPE_NIGHT))
    by_date = {tags(r)[tracking.TAG_DATE]: r for r in nights}
    assert sorted(by_date) == ["2026-11-23", "2026-11-24"]
    first_run, second_run = by_date["2026-11-23"], by_date["2026-11-24"]
    for run in nights:
        t = tags(run)
        assert t[tracking.TAG_JOB] == "nightly" and t[tracking.TAG_CATALOG] == str(catalog)
        assert t[tracking.TAG_MODEL] and t[tracking.TAG_RESULTS].endswith("results.parquet")
        m = metrics(run)
        assert "quality/failure_rate" in m and any(k.startswith("quality/") and k.endswith("/mean") for k in m)
    assert metrics(first_run)["nightly/rendered_ok"] == 3 and metrics(second_run)["nightly/rendered_ok"] == 1
    assert metrics(second_run)["nightly/pairs_unchanged"] == 2

    languages = rest.search(experiment_id, tracking.nightly_filter(tracking.SCOPE_LANGUAGE))
    assert sorted((tags(r)[tracking.TAG_DATE], tags(r)[tracking.TAG_LANGUAGE]) for r in languages) == [
        ("2026-11-23", "de"), ("2026-11-23", "en"), ("2026-11-23", "fr"), ("2026-11-24", "de")]
    for run in languages:
        assert tags(run)["mlflow.parentRunId"] == by_date[tags(run)[tracking.TAG_DATE]]["info"]["run_id"]
        assert "quality/failure_rate" in metrics(run)
    history = rest.get("metrics/get-history", run_id=second_run["info"]["run_id"], metric_key="nightly/rendered_ok")
    assert [int(m["step"]) for m in history["metrics"]] == [tracking.night_step("2026-11-24")]

    # The comparison with the previous night is an artifact of night 2, and agrees with the exit status.
    second_id = second_run["info"]["run_id"]
    assert tags(second_run)[tracking.TAG_BASELINE] == first_run["info"]["run_id"]
    listed = {f["path"] for f in rest.get("artifacts/list", run_id=second_id, path="comparison")["files"]}
    assert listed == {"comparison/compare.json", "comparison/comparison.csv"}
    printed_comparison = json.loads(rest.artifact(second_id, "comparison/compare.json"))
    assert printed_comparison["regressed"] == (second == 1) and printed_comparison["metrics"]
    assert "brisque" in printed_comparison["regressed_metrics"]
    assert "metrics_s" not in {m["metric"] for m in printed_comparison["metrics"]}
    assert "metrics_s" in {t["metric"] for t in printed_comparison["timings"]}
    # `eartalk compare` itself logs its report under compare/<baseline run id>/ of the night run.
    compare_dir = f"compare/{first_run['info']['run_id']}"
    logged = {f["path"] for f in rest.get("artifacts/list", run_id=second_id, path=compare_dir)["files"]}
    assert f"{compare_dir}/compare.json" in logged
    assert tags(second_run)[tracking.TAG_STATUS] == ("regression" if second == 1 else "ok")

    # The report artifact: its video plays and its plots decode in headless Chromium.
    report = tmp_path / "downloaded" / "report.html"
    report.parent.mkdir()
    report.write_bytes(rest.artifact(second_id, "report/report.html"))
    seen = inspect_in_chromium(report.as_uri())
    assert seen["title"] == "EARTalking nightly 2026-11-24"
    assert len(seen["videos"]) == 1
    video = seen["videos"][0]
    assert video["error"] is None and video["duration"] > 0 and video["currentTime"] > 0, video
    assert {i["alt"] for i in seen["images"]} >= {"metric histograms", "metric trends"}
    assert all(i["complete"] and i["width"] > 0 for i in seen["images"]), seen["images"]
    # ...and the storage copy beside the videos links them relatively.
    assert "src='attempt-01/videos/" in (output / "nightly" / "2026-11-24" / "report.html").read_text()

    # Re-running night 2 resumes: nothing is rendered again and the same MLflow run is reused.
    assert main(common + ["--date", "2026-11-24"]) == second
    assert "pairs: new 0, changed 0, retry 0, unchanged 3" in capsys.readouterr().out
    assert len(pd.read_parquet(output / "nightly" / "ledger.parquet")) == 4
    assert len(rest.search(experiment_id, tracking.nightly_filter(tracking.SCOPE_NIGHT))) == 2
