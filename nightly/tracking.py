"""MLflow names for nightly runs, and the queries the dashboards use.

One MLflow run per night and catalog (scope `night`), with one nested run per language (scope `language`),
all in the experiment `eartalk-nightly`. Metric names are the render job's aggregate names
(`quality/<metric>/mean|p10|p50|p90`, `quality/failure_rate`, from metrics.aggregate) plus the nightly's
counts (`nightly/...`), so a chart of `quality/sync/mean` over the night runs, grouped by the tag
`eartalk.language` or `eartalk.model_version`, is the regression dashboard. Every metric is logged with
step = days since 1970-01-01 of the night, so its history lines up with the nights, not with when a re-run
happened, and timestamp = when it was logged: MLflow's latest value of a metric is the one of the highest
(step, timestamp, value), so a re-run of the night, logging at the same step, must log later to replace
the figures of the earlier try (on a tie, the largest value would win).

The documented query (docs/nightly.md)::

    mlflow.search_runs(
        experiment_names=["eartalk-nightly"],
        filter_string="tags.`eartalk.job` = 'nightly' AND tags.`eartalk.nightly.scope` = 'language'",
        order_by=["tags.`eartalk.nightly.date` DESC"], max_results=30 * 8)

gives one row per (night, language) with columns `metrics.quality/...` and `tags.eartalk.language`,
`tags.eartalk.model_version`, `tags.eartalk.nightly.date`.
"""

from __future__ import annotations

import datetime as dt
import time

import mlflow
import pandas as pd
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

import metrics.tracking

EXPERIMENT = "eartalk-nightly"

TAG_JOB = "eartalk.job"                  # 'nightly' (docs/ARCHITECTURE.md)
TAG_RUN_ID = "eartalk.run_id"            # nightly-<date>
TAG_RESULTS = "eartalk.results_uri"      # the night's consolidated results Parquet
TAG_OUTPUT = "eartalk.output_uri"        # the night's dated prefix
TAG_MANIFEST = "eartalk.manifest_uri"    # the last attempt's manifest
TAG_MODEL = "eartalk.model_version"
TAG_LANGUAGE = "eartalk.language"        # language runs only
TAG_DATE = "eartalk.nightly.date"        # YYYY-MM-DD
TAG_CATALOG = "eartalk.nightly.catalog"  # catalog URI
TAG_SCOPE = "eartalk.nightly.scope"      # 'night' | 'language'
TAG_LANGUAGES = "eartalk.nightly.languages"  # comma-separated, night runs
TAG_BASELINE = "eartalk.nightly.baseline_run"  # the previous nightly it was compared with
TAG_RENDER_RUNS = "eartalk.nightly.render_runs"  # MLflow run ids of tonight's render attempts
TAG_STATUS = "eartalk.nightly.status"    # 'ok' | 'regression' | 'failures' | 'nothing-new'

SCOPE_NIGHT = "night"
SCOPE_LANGUAGE = "language"


def night_step(night: str) -> int:
    """Days since 1970-01-01: a monotone x-axis over nights."""
    return (dt.date.fromisoformat(night) - dt.date(1970, 1, 1)).days


def _quote(value: str) -> str:
    return value.replace("'", "\\'")


def nightly_filter(scope: str, catalog: str | None = None, night: str | None = None,
                   language: str | None = None) -> str:
    clauses = [f"tags.`{TAG_JOB}` = 'nightly'", f"tags.`{TAG_SCOPE}` = '{scope}'"]
    if catalog is not None:
        clauses.append(f"tags.`{TAG_CATALOG}` = '{_quote(catalog)}'")
    if night is not None:
        clauses.append(f"tags.`{TAG_DATE}` = '{night}'")
    if language is not None:
        clauses.append(f"tags.`{TAG_LANGUAGE}` = '{_quote(language)}'")
    return " AND ".join(clauses)


def experiment_id(client: MlflowClient, name: str = EXPERIMENT) -> str:
    """The nightly experiment's id (created if missing, safe against a concurrent job creating it)."""
    return metrics.tracking.experiment_id(client, name)


def find_run(client: MlflowClient, experiments: str | list[str], filter_string: str) -> str | None:
    """The newest run matching the filter (used to resume a night instead of opening a second run)."""
    ids = [experiments] if isinstance(experiments, str) else experiments
    runs = client.search_runs(ids, filter_string, order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0].info.run_id if runs else None


def previous_night_run(client: MlflowClient, experiment: str, catalog: str, night: str) -> str | None:
    """The latest earlier night of this catalog that rendered something (the comparison baseline)."""
    runs = client.search_runs([experiment], nightly_filter(SCOPE_NIGHT, catalog), max_results=1000)
    earlier = [r for r in runs if r.data.tags.get(TAG_DATE, "") < night and r.data.tags.get(TAG_RESULTS)
               and r.data.metrics.get("nightly/rendered_ok", 0) > 0]
    earlier.sort(key=lambda r: (r.data.tags[TAG_DATE], r.info.start_time))
    return earlier[-1].info.run_id if earlier else None


_last_timestamp_ms = 0


def log_timestamp_ms() -> int:
    """Now, in ms since 1970, strictly increasing within the process (two logs in one ms stay ordered)."""
    global _last_timestamp_ms
    _last_timestamp_ms = max(int(time.time() * 1000), _last_timestamp_ms + 1)
    return _last_timestamp_ms


def log_night_metrics(client: MlflowClient, run_id: str, night: str, metrics: dict[str, float]) -> None:
    """Log metrics at the night's step, timestamped now (see the module docstring): the latest log wins."""
    step, timestamp = night_step(night), log_timestamp_ms()
    batch = [Metric(k, float(v), timestamp, step) for k, v in sorted(metrics.items()) if pd.notna(v)]
    for start in range(0, len(batch), 1000):  # MLflow's log_batch limit
        client.log_batch(run_id, metrics=batch[start:start + 1000])


def search_nightly_runs(tracking_uri: str | None, scope: str = SCOPE_LANGUAGE, last_nights: int = 30,
                        catalog: str | None = None, experiment: str = EXPERIMENT) -> pd.DataFrame:
    """The documented mlflow.search_runs query, limited to the last N nights present; oldest night first."""
    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    runs = mlflow.search_runs(experiment_names=[experiment], filter_string=nightly_filter(scope, catalog),
                              order_by=[f"tags.`{TAG_DATE}` DESC"], max_results=50000)
    if runs.empty:
        return runs
    date_column = f"tags.{TAG_DATE}"
    nights = sorted(runs[date_column].dropna().unique())[-last_nights:]
    runs = runs[runs[date_column].isin(nights)]
    return runs.sort_values([date_column, "start_time"]).reset_index(drop=True)
