"""run_nightly on a night that died mid-render and is run again: the real render job (shipped checkpoint;
nothing renders again, since every row of the attempt was already published; the rerun only measures the
published videos that were never measured, on Ray), the ledger and MLflow on sqlite."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlflow
import pandas as pd

from nightly import tracking
from nightly.catalog import hash_pairs, read_catalog
from nightly.ledger import Ledger
from nightly.plan import manifest_rows, plan_night, write_manifest
from nightly.config import NightlyConfig
from nightly.runner import run_nightly
import storage
from pipelines.stages import state_uri, video_uri

NIGHT = "2026-11-24"


def crashed_night(tmp_path: Path, shared_media: Path, **options) -> NightlyConfig:
    """Attempt 1 of NIGHT published every row's video and state record, then died before its results and
    the ledger were written: the re-run gets attempt 1 (same run id) again, and the render skips them all."""
    root = tmp_path / "cat"
    for item, portrait, track in [("obama", "obama.jpg", "english"), ("biden", "biden.jpg", "french")]:
        (root / item / "audio").mkdir(parents=True)
        shutil.copy(shared_media / "portraits" / portrait, root / item / "portrait.jpg")
        shutil.copy(shared_media / "speech" / f"{track}.wav", root / item / "audio" / f"{track[:2]}.wav")
    config = NightlyConfig(catalog_uri=str(root), output_uri=str(tmp_path / "out"), night=NIGHT, **options)
    rows = manifest_rows(plan_night(hash_pairs(read_catalog(config.catalog_uri)), Ledger.load(config.ledger_uri),
                                    NIGHT))
    attempt = config.attempt_uri(1)
    write_manifest(rows, storage.join(attempt, "manifest.jsonl"))
    for row in rows:
        video = video_uri(attempt, f"nightly-{NIGHT}-a01", row["id"])
        storage.publish_bytes(b"an mp4 from the first try", video)
        storage.publish_bytes(json.dumps({"id": row["id"], "status": "ok", "error": "", "output_uri": video,
                                          "model_version": "tiny-1", "frames": 25}).encode(),
                              state_uri(attempt, f"nightly-{NIGHT}-a01", row["id"]))
    return config


def test_rows_published_before_a_crash_count_as_rendered_on_the_rerun(tmp_path, shared_media, mlflow_tracking_uri,
                                                                     ray_local):
    """Regression guard: the render reports such rows as 'skipped'; recorded as is, they counted as failed
    (exit 1) and the next night planned them as new, rendering them a second time."""
    config = crashed_night(tmp_path, shared_media, tracking_uri=mlflow_tracking_uri)
    outcome = run_nightly(config)
    assert (outcome.rendered_ok, outcome.rendered_failed, outcome.exit_code) == (2, 0, 0), outcome
    ledger = Ledger.load(config.ledger_uri)
    assert ledger.table["status"].tolist() == ["ok", "ok"]
    again = plan_night(hash_pairs(read_catalog(config.catalog_uri)), ledger, "2026-11-25")
    assert again.to_render == [] and len(again.unchanged) == 2


def test_tracking_uri_from_the_environment_is_used_by_the_render_too(tmp_path, shared_media, monkeypatch, ray_local):
    """Regression guard: with MLFLOW_TRACKING_URI set and no --tracking-uri, the render switched MLflow to its
    own default (sqlite:///mlflow.db in the working directory) while the nightly's client stayed on the
    environment's store, so the night run was opened in the wrong store."""
    store = f"sqlite:///{tmp_path / 'env-mlflow.db'}"
    mlflow.set_tracking_uri(None)  # what an earlier test set in this process; unsets MLFLOW_TRACKING_URI too
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    config = crashed_night(tmp_path, shared_media)
    outcome = run_nightly(config)

    client = mlflow.MlflowClient(store)
    night = client.get_run(outcome.mlflow_run_id)
    assert night.data.tags[tracking.TAG_DATE] == NIGHT
    [render] = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                  f"tags.`{tracking.TAG_RUN_ID}` = 'nightly-{NIGHT}-a01'")
    assert night.data.tags[tracking.TAG_RENDER_RUNS] == render.info.run_id
    assert not (tmp_path / "cwd" / "mlflow.db").exists()


def test_pairs_the_catalog_cannot_render_fail_alone_and_the_rest_renders(tmp_path, shared_media,
                                                                         mlflow_tracking_uri, ray_local):
    """Regression guard: one item with two portraits, an orphan control track or an unsafe folder name made
    the whole night exit 2 with nothing rendered."""
    config = crashed_night(tmp_path, shared_media, tracking_uri=mlflow_tracking_uri)
    root = Path(config.catalog_uri)
    for item in ("twins", "bad name"):
        (root / item / "audio").mkdir(parents=True)
        shutil.copy(shared_media / "speech" / "german.wav", root / item / "audio" / "de.wav")
        shutil.copy(shared_media / "portraits" / "obama2.jpg", root / item / "portrait.jpg")
    shutil.copy(shared_media / "portraits" / "biden.jpg", root / "twins" / "portrait.png")
    (root / "obama" / "controls").mkdir()
    (root / "obama" / "controls" / "ja.json").write_text(json.dumps({"yaw": [0.0]}))

    outcome = run_nightly(config)
    assert (outcome.rendered_ok, outcome.rendered_failed, outcome.exit_code) == (2, 3, 1), outcome
    ledger = Ledger.load(config.ledger_uri).table.set_index("pair_id")
    assert ledger["status"].to_dict() == {"biden/fr": "ok", "obama/en": "ok", "twins/de": "failed",
                                          "bad name/de": "failed", "obama/ja": "failed"}
    assert "twins: expected exactly one portrait" in ledger.loc["twins/de", "error"]
    assert "bad name: item 'bad name' must match" in ledger.loc["bad name/de", "error"]
    assert "obama: control track 'ja' has no audio track" in ledger.loc["obama/ja", "error"]
    night = pd.read_parquet(outcome.results_uri).set_index("id")
    assert sorted(night["status"]) == ["failed"] * 3 + ["ok"] * 2


def test_a_baseline_that_names_no_run_exits_2_naming_it_after_the_night_is_recorded(tmp_path, shared_media,
                                                                                   mlflow_tracking_uri, capsys,
                                                                                   ray_local):
    from jobs.nightly_dubbing import main

    config = crashed_night(tmp_path, shared_media)
    code = main(["--catalog", config.catalog_uri, "--output", config.output_uri, "--date", NIGHT,
                 "--tracking-uri", mlflow_tracking_uri, "--baseline", "no-such-run"])
    assert code == 2
    assert "no-such-run: no MLflow run" in capsys.readouterr().err
    assert Ledger.load(config.ledger_uri).table["status"].tolist() == ["ok", "ok"]
    client = mlflow.MlflowClient(mlflow_tracking_uri)
    [night] = client.search_runs([tracking.experiment_id(client)], tracking.nightly_filter(tracking.SCOPE_NIGHT))
    assert night.info.status == "FAILED"
