"""Trend export for the morning dashboard: every metric over the last N nights, as one CSV and one PNG.

Rows come from tracking.search_nightly_runs (the documented mlflow.search_runs query); one line per
language (or model version) per metric. `scripts/export_trends.py` is the command-line entry.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: CI, pods, cron
import matplotlib.dates as mdates  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from nightly import tracking  # noqa: E402

GROUP_TAGS = {"language": tracking.TAG_LANGUAGE, "model_version": tracking.TAG_MODEL}
DEFAULT_METRIC_PREFIXES = ("quality/", "nightly/")
PANEL_INCHES = (4.0, 2.6)  # width, height of one metric's panel
PANEL_COLUMNS = 3


def trend_table(runs: pd.DataFrame, group_by: str = "language",
                prefixes: tuple[str, ...] = DEFAULT_METRIC_PREFIXES) -> pd.DataFrame:
    """Long table: night, group, metric, value (one row per run and metric), oldest night first."""
    if group_by not in GROUP_TAGS:
        raise ValueError(f"group_by must be one of {sorted(GROUP_TAGS)}, got {group_by!r}")
    if runs.empty:
        return pd.DataFrame(columns=["night", group_by, "metric", "value", "run_id"])
    metric_columns = [c for c in runs.columns if c.startswith("metrics.")
                      and c.removeprefix("metrics.").startswith(prefixes)]
    group_column = f"tags.{GROUP_TAGS[group_by]}"
    frame = runs[["run_id", f"tags.{tracking.TAG_DATE}", *metric_columns]].copy()
    frame[group_by] = runs[group_column].fillna("all") if group_column in runs else "all"
    long = frame.melt(id_vars=["run_id", f"tags.{tracking.TAG_DATE}", group_by], value_vars=metric_columns,
                      var_name="metric", value_name="value").dropna(subset=["value"])
    long = long.rename(columns={f"tags.{tracking.TAG_DATE}": "night"})
    long["metric"] = long["metric"].str.removeprefix("metrics.")
    return long[["night", group_by, "metric", "value", "run_id"]].sort_values(["metric", group_by, "night"]) \
        .reset_index(drop=True)


def plot_trends(table: pd.DataFrame, group_by: str, path: Path, title: str = "EARTalking nightly trends") -> Path:
    """One panel per metric, one line per group, nights on the x-axis."""
    metrics = sorted(table["metric"].unique()) if not table.empty else []
    columns = max(1, min(PANEL_COLUMNS, len(metrics)))
    rows = max(1, math.ceil(len(metrics) / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(PANEL_INCHES[0] * columns, PANEL_INCHES[1] * rows),
                                squeeze=False)
    for ax, metric in zip(axes.flat, metrics):
        for group, part in table[table["metric"] == metric].groupby(group_by):
            ax.plot(pd.to_datetime(part["night"]), part["value"], marker="o", label=str(group))
        ax.set_title(metric, fontsize=9)
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%Y-%m-%d"))
        ax.set_xticks(pd.to_datetime(sorted(table.loc[table["metric"] == metric, "night"].unique())))
        ax.tick_params(axis="x", labelrotation=45, labelsize=7)
        ax.tick_params(axis="y", labelsize=7)
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    if not metrics:
        axes.flat[0].text(0.5, 0.5, "no nightly runs yet", ha="center", va="center")
    figure.suptitle(title)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def export_trends(tracking_uri: str | None, out_dir: Path, last_nights: int = 30, group_by: str = "language",
                  catalog: str | None = None, experiment: str = tracking.EXPERIMENT) -> tuple[Path, Path]:
    """Write trends.csv and trends.png for the last N nights into out_dir; returns (csv, png)."""
    scope = tracking.SCOPE_LANGUAGE if group_by == "language" else tracking.SCOPE_NIGHT
    runs = tracking.search_nightly_runs(tracking_uri, scope=scope, last_nights=last_nights, catalog=catalog,
                                        experiment=experiment)
    table = trend_table(runs, group_by)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = out_dir / "trends.csv"
    table.to_csv(csv_path, index=False)
    return csv_path, plot_trends(table, group_by, out_dir / "trends.png",
                                 title=f"EARTalking nightly trends, last {last_nights} nights, by {group_by}")


def report_trends_png(tracking_uri: str | None, catalog: str, experiment: str = tracking.EXPERIMENT,
                      last_nights: int = 30) -> bytes | None:
    """The run report's trend plot: per language, each quality mean and the failure rate over the last
    nights; None before any night has them."""
    runs = tracking.search_nightly_runs(tracking_uri, tracking.SCOPE_LANGUAGE, last_nights, catalog, experiment)
    table = trend_table(runs, "language", prefixes=("quality/",))
    table = table[table["metric"].str.endswith("/mean") | (table["metric"] == "quality/failure_rate")]
    if table.empty:
        return None
    with tempfile.TemporaryDirectory() as scratch:
        return plot_trends(table, "language", Path(scratch) / "trends.png", title="last nights, per language").read_bytes()
