"""Tonight against a baseline night: metrics.compare on the two night runs' results, logged to tonight's run.

The baseline is `--baseline` when given, else the latest earlier night of the same catalog that rendered
something. Tonight's run gets the comparison twice: as `comparison/compare.json` and `comparison.csv`
(what the report shows), and as the `eartalk compare` report under `compare/<baseline run id>/`.
"""

from __future__ import annotations

import json

from mlflow.tracking import MlflowClient

from metrics.compare import Comparison, compare_runs, log_report
from nightly import tracking
from nightly.config import NightlyConfig


def baseline_run(client: MlflowClient, experiment_id: str, config: NightlyConfig) -> str | None:
    return config.baseline_run or tracking.previous_night_run(client, experiment_id, config.catalog_uri,
                                                              config.night)


def compare_with_baseline(client: MlflowClient, config: NightlyConfig, night_run: str, baseline: str) -> Comparison:
    """Compare tonight's run with `baseline`, log both forms of the comparison and the regression count."""
    comparison = compare_runs(night_run, baseline, config.tracking_uri)
    folder = log_report(comparison, config.tracking_uri)
    client.set_tag(night_run, tracking.TAG_BASELINE, comparison.baseline_run_id)
    client.log_text(night_run, json.dumps(comparison.to_json() | {"report": folder}, indent=2),
                    "comparison/compare.json")
    client.log_text(night_run, comparison.table.to_csv(index=False), "comparison/comparison.csv")
    tracking.log_night_metrics(client, night_run, config.night,
                               {"nightly/regressions": float(len(comparison.regressed_metrics))})
    return comparison
