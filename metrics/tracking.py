"""MLflow stores and experiments that several jobs may open at the same moment.

MLflow creates a fresh sqlite store on its first client call by running its Alembic migrations; two
processes doing that at once race, and one of them fails ("table _alembic_tmp_experiments already
exists"). `open_client` therefore takes an exclusive file lock beside a local sqlite database for that
first touch. MLflow keeps one store object per URI in a process, so the fluent API (`mlflow.start_run`)
reuses the store opened here. `experiment_id` treats an experiment that another job created between the
look-up and the create as found, not as an error. Other stores (a tracking server, Postgres) already
serialise this themselves.
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"  # relative to the working directory, like MLflow's own
SQLITE_PREFIX = "sqlite:///"


def sqlite_database(tracking_uri: str) -> Path | None:
    """The database file of a local sqlite URI (`sqlite:///rel.db`, `sqlite:////abs.db`), else None."""
    if not tracking_uri.startswith(SQLITE_PREFIX):
        return None
    path = tracking_uri[len(SQLITE_PREFIX):].split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


@contextlib.contextmanager
def store_lock(tracking_uri: str) -> Iterator[None]:
    """Held while a job opens the store; a no-op for anything but a local sqlite file."""
    database = sqlite_database(tracking_uri)
    if database is None:
        yield
        return
    database.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{database}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def open_client(tracking_uri: str | None) -> MlflowClient:
    """A client whose store exists and is migrated, safe to call from concurrent jobs."""
    tracking_uri = tracking_uri or DEFAULT_TRACKING_URI
    with store_lock(tracking_uri):
        client = MlflowClient(tracking_uri)
        client.search_experiments(max_results=1)  # the first call creates and migrates a fresh store
    return client


def experiment_id(client: MlflowClient, name: str) -> str:
    """The id of experiment `name`, created if missing; a concurrent job creating it too is no error."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name)
    except MlflowException as error:
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        return client.get_experiment_by_name(name).experiment_id
