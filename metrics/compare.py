"""Compare a run's per-video metrics with a baseline run's: deltas, thresholds, worst rows, a report.

Each run's results are found through its `eartalk.results_uri` tag (docs/ARCHITECTURE.md). Per metric
the means over 'ok' rows are compared (for metrics best at 0, the means of absolute values: signed offsets
of either sign would cancel out); a metric regresses when it got worse (by its direction in
metrics.schema) by more than its threshold. Thresholds are absolute allowed worsening in the metric's
units (`DEFAULT_THRESHOLDS`; others: 10 % of the baseline's magnitude); a JSON file maps metric names
to numbers to override them. `quality/failure_rate` is compared too (threshold 0.05).

Sync figures are judged only when both runs were measured by the same sync measure (the `sync_measure`
column, metrics.sync.measure_version): a new measure moves every offset and confidence without any
video changing, so across measures they are shown with no threshold and never regress a run.

Timings (`metrics.schema.TIMING_COLUMNS`: seconds spent rendering, encoding and measuring a row) are
reported beside the metrics, mean against mean, and never regress a run: they measure how busy the
machine was, so a loaded night would otherwise read as a worse model.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .aggregate import aggregate_metrics, metric_name
from .plots import histogram_png
from .schema import METRIC_COLUMNS, REPORT_METRIC, TIMING_COLUMNS, direction, read_results, worst_rows

# sync_confidence is in units of a clip's own null spread (metrics/sync.py): unrelated speech reads ~0
# and in-sync speech a few units, so half a unit of the run mean is a real loss of sync, not noise.
DEFAULT_THRESHOLDS: dict[str, float] = {
    "sync_offset_frames": 1.0, "sync_confidence": 0.5, "identity_distance_mean": 0.05, "identity_distance_max": 0.08,
    "identity_drift": 0.05, "face_detected_ratio": 0.05, "yaw_corr": 0.05, "pitch_corr": 0.05, "roll_corr": 0.05,
    "blink_corr": 0.05, "yaw_mae_deg": 2.0, "pitch_mae_deg": 2.0, "roll_mae_deg": 2.0, "blink_mae": 0.05,
    "brisque": 3.0, "ref_psnr": 0.5, "ref_ssim": 0.02, "ref_lmd": 1.0, "failure_rate": 0.05,
}
RELATIVE_DEFAULT = 0.10
WORST_COLUMNS = ("id", "status", "error", "output_uri")  # shown for each worst row, beside the ranking metric
TIMING_TABLE_COLUMNS = ["metric", "baseline", "current", "delta"]  # seconds
DISTRIBUTION_PANEL_INCHES = (4.0, 3.0)  # width, height of one metric's histogram
TAG_KEYS = ("eartalk.tag", "eartalk.baseline")  # a baseline may be named by one of these tags' values
SYNC_METRICS = ("sync_offset_frames", "sync_confidence")  # judged only within one sync measure


class CompareError(ValueError):
    """A run or baseline that cannot be compared (names the run and the cause)."""


@dataclass
class Comparison:
    run_id: str
    baseline_run_id: str
    table: pd.DataFrame  # metric, baseline, current, delta, threshold, direction, regressed
    worst_rows: pd.DataFrame
    regressed: bool
    current: pd.DataFrame = field(repr=False)
    baseline: pd.DataFrame = field(repr=False)
    timings: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=TIMING_TABLE_COLUMNS))

    @property
    def regressed_metrics(self) -> list[str]:
        return [str(m) for m in self.table.loc[self.table["regressed"].astype(bool), "metric"]]

    def to_json(self) -> dict:
        rows = json.loads(self.table.to_json(orient="records"))
        worst = json.loads(self.worst_rows.to_json(orient="records"))
        timings = json.loads(self.timings.to_json(orient="records"))
        return {"run": self.run_id, "baseline": self.baseline_run_id, "regressed": self.regressed,
                "regressed_metrics": self.regressed_metrics, "metrics": rows, "timings": timings,
                "worst_rows": worst, "sync_measures": {"baseline": sync_measures(self.baseline),
                                                       "current": sync_measures(self.current)}}


def load_thresholds(path: str | Path | None) -> dict[str, float]:
    thresholds = dict(DEFAULT_THRESHOLDS)
    if path is None:
        return thresholds
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CompareError(f"{path}: cannot read thresholds ({e})") from None
    if not isinstance(data, dict) or not all(isinstance(v, (int, float)) for v in data.values()):
        raise CompareError(f"{path}: thresholds must be a JSON object of metric name -> number")
    unknown = sorted(set(data) - set(judged_metrics()))
    if unknown:
        raise CompareError(f"{path}: unknown metric(s) {unknown}")
    return thresholds | {k: float(v) for k, v in data.items()}


def judged_metrics() -> list[str]:
    """The metrics a comparison judges: those with a direction, and the failure rate."""
    return [m for m in METRIC_COLUMNS if direction(m) != "none"] + ["failure_rate"]


def sync_measures(results: pd.DataFrame) -> list[str]:
    """The sync measure versions of a results table's measured 'ok' rows (none for tables from before the
    column existed)."""
    if "sync_measure" not in results:
        return []
    ok = results["status"] == "ok" if "status" in results else pd.Series(True, index=results.index)
    return sorted(results.loc[ok, "sync_measure"].dropna().astype(str).unique())


def compare_frames(current: pd.DataFrame, baseline: pd.DataFrame, thresholds: dict[str, float] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per-metric table, worst rows of `current`) for two results tables."""
    thresholds = thresholds or dict(DEFAULT_THRESHOLDS)
    cur_agg, base_agg = aggregate_metrics(current), aggregate_metrics(baseline)
    other_measure = sync_measures(current) != sync_measures(baseline)
    rows = []
    for metric in judged_metrics():
        way = direction(metric)
        stat = "abs_mean" if way == "abs_lower" else "mean"
        key = "quality/failure_rate" if metric == "failure_rate" else metric_name(metric, stat)
        if key not in cur_agg or key not in base_agg:
            continue
        b, c = base_agg[key], cur_agg[key]
        worse_by = b - c if way == "higher" else c - b  # abs_lower: b and c are already means of |x|
        limit = thresholds.get(metric, RELATIVE_DEFAULT * max(abs(b), 1e-9))
        if other_measure and metric in SYNC_METRICS:
            limit = math.nan  # another measure: shown, not judged
        rows.append({"metric": metric, "baseline": b, "current": c, "delta": c - b, "threshold": limit,
                     "direction": way, "regressed": bool(worse_by > limit)})
    table = pd.DataFrame(rows, columns=["metric", "baseline", "current", "delta", "threshold", "direction", "regressed"])
    worst = worst_rows(current).reindex(columns=[c for c in WORST_COLUMNS if c in current] + [REPORT_METRIC])
    return table, worst


def compare_timings(current: pd.DataFrame, baseline: pd.DataFrame) -> pd.DataFrame:
    """Mean seconds per 'ok' row of each timing column both tables measured: reported, never judged."""
    cur_agg, base_agg = aggregate_metrics(current), aggregate_metrics(baseline)
    rows = []
    for column in TIMING_COLUMNS:
        key = metric_name(column, "mean")
        if key in cur_agg and key in base_agg:
            b, c = base_agg[key], cur_agg[key]
            rows.append({"metric": column, "baseline": b, "current": c, "delta": c - b})
    return pd.DataFrame(rows, columns=TIMING_TABLE_COLUMNS)


def resolve_run(client, run_or_tag: str) -> str:
    """A run id as given, or the newest run whose `eartalk.tag`/`eartalk.baseline` tag or name is `run_or_tag`."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_or_tag).info.run_id
    except MlflowException:
        pass
    experiments = [e.experiment_id for e in client.search_experiments()]
    quoted = run_or_tag.replace("'", "\\'")
    for filter_string in [f"tags.`{k}` = '{quoted}'" for k in TAG_KEYS] + [f"tags.`mlflow.runName` = '{quoted}'"]:
        runs = client.search_runs(experiments, filter_string, order_by=["attributes.start_time DESC"], max_results=1)
        if runs:
            return runs[0].info.run_id
    raise CompareError(f"{run_or_tag}: no MLflow run with this id, {' / '.join(TAG_KEYS)} tag or run name")


def run_results(client, run_id: str) -> pd.DataFrame:
    run = client.get_run(run_id)
    uri = run.data.tags.get("eartalk.results_uri")
    if not uri:
        raise CompareError(f"run {run_id}: no eartalk.results_uri tag (not a render/nightly run?)")
    return read_results(uri)


def compare_runs(run: str, baseline: str, tracking_uri: str | None = None, thresholds: dict[str, float] | None = None) -> Comparison:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    run_id, baseline_id = resolve_run(client, run), resolve_run(client, baseline)
    current, base = run_results(client, run_id), run_results(client, baseline_id)
    table, worst = compare_frames(current, base, thresholds)
    return Comparison(run_id, baseline_id, table, worst, bool(table["regressed"].any()), current, base,
                      compare_timings(current, base))


def markdown_report(comparison: Comparison) -> str:
    def fmt(x) -> str:
        return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else (f"{x:.4g}" if isinstance(x, float) else str(x))

    lines = [f"# Metrics comparison: `{comparison.run_id}` vs baseline `{comparison.baseline_run_id}`", "",
             f"**{'REGRESSED' if comparison.regressed else 'no regression'}** "
             f"({int(comparison.table['regressed'].sum())} of {len(comparison.table)} metrics beyond threshold)", ""]
    current, baseline = sync_measures(comparison.current), sync_measures(comparison.baseline)
    if current != baseline:
        lines += [f"Sync was measured by another sync measure (baseline {', '.join(baseline) or 'unrecorded'}, "
                  f"current {', '.join(current) or 'unrecorded'}): its figures are shown, not judged.", ""]
    lines += ["| metric | baseline | current | delta | threshold | better | regressed |", "|---|---|---|---|---|---|---|"]
    for r in comparison.table.itertuples():
        lines.append(f"| {r.metric} | {fmt(r.baseline)} | {fmt(r.current)} | {fmt(r.delta)} | {fmt(r.threshold)} | "
                     f"{r.direction} | {'**yes**' if r.regressed else 'no'} |")
    lines += ["", f"## Worst rows (by {REPORT_METRIC})", "", "| " + " | ".join(comparison.worst_rows.columns) + " |",
              "|" + "---|" * len(comparison.worst_rows.columns)]
    for r in comparison.worst_rows.itertuples(index=False):
        lines.append("| " + " | ".join(fmt(v) for v in r) + " |")
    if len(comparison.timings):
        lines += ["", "## Timings (mean seconds per rendered row; the machine's load, not judged)", "",
                  "| timing | baseline | current | delta |", "|---|---|---|---|"]
        for r in comparison.timings.itertuples():
            lines.append(f"| {r.metric} | {fmt(r.baseline)} | {fmt(r.current)} | {fmt(r.delta)} |")
    lines += ["", "![distributions](distributions.png)", ""]
    return "\n".join(lines)


def distributions_png(comparison: Comparison, max_metrics: int = 12) -> bytes:
    """Baseline and current values of each compared per-video metric, 'ok' rows only."""
    metrics = [m for m in comparison.table["metric"] if m in METRIC_COLUMNS][:max_metrics] or ["(none)"]
    groups = {label: frame[frame["status"] == "ok"] if "status" in frame else frame
              for label, frame in (("baseline", comparison.baseline), ("current", comparison.current))}
    return histogram_png(groups, metrics, DISTRIBUTION_PANEL_INCHES, bins=20)


def log_report(comparison: Comparison, tracking_uri: str | None = None) -> str:
    """Log compare.json, report.md and distributions.png to the compared run; returns the artifact folder."""
    import tempfile

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    folder = f"compare/{comparison.baseline_run_id}"
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch)
        (out / "compare.json").write_text(json.dumps(comparison.to_json(), indent=2))
        (out / "report.md").write_text(markdown_report(comparison))
        (out / "distributions.png").write_bytes(distributions_png(comparison))
        client.log_artifacts(comparison.run_id, str(out), folder)
    return folder
