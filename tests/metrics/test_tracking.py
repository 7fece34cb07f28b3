"""MLflow stores opened by several jobs at once (metrics.tracking)."""

from __future__ import annotations

import subprocess
import sys

from mlflow.tracking import MlflowClient

from metrics.tracking import experiment_id, open_client, sqlite_database

JOB = """
import sys, mlflow
from metrics.tracking import experiment_id, open_client
uri = sys.argv[1]
client = open_client(uri)
mlflow.set_tracking_uri(uri)
with mlflow.start_run(experiment_id=experiment_id(client, "eartalk-render")):
    mlflow.log_metric("rows_ok", 1)
"""


def test_jobs_creating_one_fresh_sqlite_store_at_once_all_succeed(tmp_path):
    """Regression guard: two render jobs creating a fresh sqlite store at the same moment crashed one of
    them in MLflow's migrations ("table _alembic_tmp_experiments already exists")."""
    uri = f"sqlite:///{tmp_path / 'fresh' / 'mlflow.db'}"
    jobs = [subprocess.Popen([sys.executable, "-c", JOB, uri], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            for _ in range(4)]
    outputs = [job.communicate(timeout=300)[0].decode(errors="replace") for job in jobs]
    assert [job.returncode for job in jobs] == [0] * 4, "\n".join(outputs)
    client = MlflowClient(uri)
    [experiment] = [e for e in client.search_experiments() if e.name == "eartalk-render"]
    assert len(client.search_runs([experiment.experiment_id])) == 4


def test_an_existing_experiment_is_found_not_created_again(mlflow_tracking_uri):
    client = open_client(mlflow_tracking_uri)
    first = experiment_id(client, "eartalk-render")
    assert experiment_id(open_client(mlflow_tracking_uri), "eartalk-render") == first


def test_only_local_sqlite_files_are_locked(tmp_path):
    assert sqlite_database(f"sqlite:///{tmp_path}/m.db") == tmp_path / "m.db"
    assert sqlite_database("sqlite:///mlflow.db").name == "mlflow.db"
    assert sqlite_database("http://127.0.0.1:5000") is None
    assert sqlite_database("sqlite:///:memory:") is None
