"""`eartalk compare` between two MLflow runs whose results Parquet files are tagged on the runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import mlflow
import numpy as np
import pandas as pd
import pytest

from jobs import compare as compare_cli
from metrics.schema import write_results


def default_experiment(uri: str) -> str:
    """The store's Default experiment, named explicitly: an earlier test's render leaves its own experiment
    active in this process, and that id does not exist in this test's store."""
    return mlflow.MlflowClient(uri).get_experiment_by_name("Default").experiment_id


def make_run(tmp_path, uri: str, name: str, confidence: float, identity: float, tag: str | None = None) -> str:
    n = 20
    rng = np.random.default_rng(len(name))
    frame = pd.DataFrame({"id": [f"{name}-{i}" for i in range(n)], "status": ["ok"] * n,
                          "sync_confidence": confidence + 0.1 * rng.standard_normal(n),
                          "identity_distance_mean": identity + 0.01 * rng.standard_normal(n),
                          "brisque": 20 + rng.standard_normal(n)})
    path = tmp_path / f"{name}.parquet"
    write_results(frame, str(path))
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(run_name=name, experiment_id=default_experiment(uri)) as run:
        mlflow.set_tags({"eartalk.job": "render", "eartalk.results_uri": str(path)} | ({"eartalk.tag": tag} if tag else {}))
    return run.info.run_id


def test_compare_exits_0_when_equal_and_1_on_a_regression_and_logs_a_report(tmp_path, mlflow_tracking_uri):
    baseline = make_run(tmp_path, mlflow_tracking_uri, "base", 3.0, 0.40, tag="golden")
    same = make_run(tmp_path, mlflow_tracking_uri, "same", 3.0, 0.40)
    worse = make_run(tmp_path, mlflow_tracking_uri, "worse", 2.0, 0.55)
    env = dict(os.environ, MLFLOW_TRACKING_URI=mlflow_tracking_uri)  # MLflow's own variable, with no --tracking-uri
    ok = subprocess.run([sys.executable, "-m", "jobs.cli", "compare", same, "--baseline", "golden"],
                        capture_output=True, text=True, env=env, timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["baseline"] == baseline
    bad = subprocess.run([sys.executable, "-m", "jobs.compare", worse, "--baseline", baseline],
                         capture_output=True, text=True, env=env, timeout=300)
    assert bad.returncode == 1, bad.stderr
    out = json.loads(bad.stdout)
    assert set(out["regressed_metrics"]) == {"sync_confidence", "identity_distance_mean"}
    assert {"metric", "baseline", "current", "delta", "regressed"} <= set(out["metrics"][0])
    assert len(out["worst_rows"]) == 5 and out["worst_rows"][0]["id"].startswith("worse-")
    client = mlflow.MlflowClient(mlflow_tracking_uri)
    logged = {a.path for a in client.list_artifacts(worse, out["report"])}
    assert {f"{out['report']}/report.md", f"{out['report']}/distributions.png", f"{out['report']}/compare.json"} <= logged
    report = client.download_artifacts(worse, f"{out['report']}/report.md", str(tmp_path))
    assert "REGRESSED" in open(report).read()


def test_thresholds_file_can_allow_a_change(tmp_path, mlflow_tracking_uri, capsys):
    baseline = make_run(tmp_path, mlflow_tracking_uri, "base", 3.0, 0.40)
    worse = make_run(tmp_path, mlflow_tracking_uri, "worse", 2.0, 0.55)
    loose = tmp_path / "thresholds.json"
    loose.write_text(json.dumps({"sync_confidence": 1.5, "identity_distance_mean": 0.5}))
    assert compare_cli.main([worse, "--baseline", baseline, "--thresholds", str(loose),
                             "--tracking-uri", mlflow_tracking_uri, "--no-log"]) == 0
    capsys.readouterr()
    typo = tmp_path / "typo.json"
    typo.write_text(json.dumps({"sync_confidenz": 0.5}))
    assert compare_cli.main([worse, "--baseline", baseline, "--thresholds", str(typo), "--tracking-uri", mlflow_tracking_uri]) == 2
    assert "unknown metric(s) ['sync_confidenz']" in capsys.readouterr().err


def test_compare_names_a_missing_baseline_or_untagged_run(tmp_path, mlflow_tracking_uri, capsys):
    run = make_run(tmp_path, mlflow_tracking_uri, "run", 0.2, 0.4)
    assert compare_cli.main([run, "--baseline", "no-such-tag", "--tracking-uri", mlflow_tracking_uri]) == 2
    assert "no-such-tag: no MLflow run" in capsys.readouterr().err
    mlflow.set_tracking_uri(mlflow_tracking_uri)
    with mlflow.start_run(experiment_id=default_experiment(mlflow_tracking_uri)) as bare:
        pass
    assert compare_cli.main([bare.info.run_id, "--baseline", run, "--tracking-uri", mlflow_tracking_uri]) == 2
    assert "no eartalk.results_uri tag" in capsys.readouterr().err


@pytest.fixture(autouse=True)
def _reset_tracking_uri():
    yield
    mlflow.set_tracking_uri(None)
