"""The nightly's HTML run report: counts, the comparison with the previous night, metric plots, and the
worst rows with their videos inline.

One self-contained HTML file: plots are PNG data URIs. Videos are either embedded (data URIs: the copy
logged to MLflow, which its artifact viewer shows without other files) or referenced relative to the
report (the copy beside the night's videos in storage), chosen by the `video_src` callable;
`publish_reports` writes both copies.
"""

from __future__ import annotations

import base64
import html
import math
import posixpath
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from mlflow.tracking import MlflowClient

import storage
from metrics.plots import histogram_png
from metrics.schema import METRIC_COLUMNS, REPORT_METRIC, direction, worst_rows

MAX_PLOTTED_METRICS = 12
PANEL_INCHES = (3.2, 2.2)  # width, height of one histogram
MAX_EMBEDDED_VIDEO_BYTES = 16 << 20  # larger clips are copied beside the MLflow report instead
RANKING = {"higher": "lowest first", "lower": "highest first", "abs_lower": "farthest from 0 first",
           "none": "highest first"}


@dataclass
class ReportInputs:
    title: str
    results: pd.DataFrame                 # the night's results rows (results Parquet schema + tags)
    summary: dict[str, object]            # counts and settings shown at the top
    metric_columns: list[str]             # per-video metrics to plot
    worst_metric: str | None = None       # ranks the worst rows, in its direction (metrics.schema)
    comparison: pd.DataFrame | None = None  # metric, baseline, current, delta, regressed
    timings: pd.DataFrame | None = None   # metric, baseline, current, delta: seconds, not judged
    trends_png: bytes | None = None       # dashboards.plot_trends output
    worst_rows: int = 6
    notes: list[str] = field(default_factory=list)


def metric_columns_of(results: pd.DataFrame) -> list[str]:
    """The results schema's numeric per-video metrics with data, bookkeeping (time, frames analysed) left out."""
    candidates = [c for c in METRIC_COLUMNS if not c.startswith("metrics_")]
    return [c for c in candidates if c in results.columns and pd.api.types.is_numeric_dtype(results[c])
            and results[c].notna().any()]


def report_metric(metric_columns: list[str]) -> str | None:
    """The metric ranking the worst rows: metrics.schema's REPORT_METRIC when measured, else the first."""
    return REPORT_METRIC if REPORT_METRIC in metric_columns else (metric_columns[0] if metric_columns else None)


def histograms(results: pd.DataFrame, metrics: list[str]) -> str | None:
    """One panel per metric, one series per language, as a PNG data URI; None without metrics."""
    metrics = metrics[:MAX_PLOTTED_METRICS]
    if not metrics:
        return None
    language = results.get("language", pd.Series("all", index=results.index))
    groups = {str(name): part for name, part in results.groupby(language)}
    png = histogram_png(groups, metrics, PANEL_INCHES, bins=10)
    return "data:image/png;base64," + base64.b64encode(png).decode()


def _table(frame: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row) + "</tr>"
                   for row in frame.itertuples(index=False))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.4g}"
    return "" if value is None else str(value)


CSS = """body{font-family:system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse;margin:1em 0}
td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:left}th{background:#f3f3f3}
.row{display:inline-block;vertical-align:top;margin:0 1em 1em 0;width:300px}.row video{width:300px}
.regressed{color:#b00;font-weight:bold}img{max-width:100%}"""


def render_html(inputs: ReportInputs, video_src: Callable[[pd.Series], str | None]) -> str:
    """The report as one HTML string; video_src(row) gives each worst row's <video src> (None: no video)."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(inputs.title)}</title>"
             f"<style>{CSS}</style></head><body><h1>{html.escape(inputs.title)}</h1>"]
    summary = pd.DataFrame({"": list(inputs.summary), "value": [inputs.summary[k] for k in inputs.summary]})
    parts.append("<h2>Summary</h2>" + _table(summary))
    for note in inputs.notes:
        parts.append(f"<p>{html.escape(note)}</p>")
    if inputs.comparison is not None and not inputs.comparison.empty:
        regressed = inputs.comparison[inputs.comparison.get("regressed", False) == True]  # noqa: E712
        parts.append("<h2>Compared with the previous night</h2>")
        if len(regressed):
            names = ", ".join(map(str, regressed["metric"]))
            parts.append(f"<p class='regressed'>Regressed: {html.escape(names)}</p>")
        parts.append(_table(inputs.comparison))
    if inputs.timings is not None and not inputs.timings.empty:
        parts.append("<h3>Timings (mean seconds per rendered row: the machine's load, not judged)</h3>")
        parts.append(_table(inputs.timings))
    plot = histograms(inputs.results[inputs.results["status"] == "ok"], inputs.metric_columns)
    parts.append("<h2>Tonight's metrics</h2>")
    parts.append(f"<img class='plot' alt='metric histograms' src='{plot}'>" if plot
                 else "<p>No rendered rows with metrics tonight.</p>")
    if inputs.trends_png:
        uri = "data:image/png;base64," + base64.b64encode(inputs.trends_png).decode()
        parts.append(f"<h2>Trends</h2><img class='plot' alt='metric trends' src='{uri}'>")
    rows = worst_rows(inputs.results, inputs.worst_metric, inputs.worst_rows)
    ranking = f" by {inputs.worst_metric} ({RANKING[direction(inputs.worst_metric)]})" if inputs.worst_metric else ""
    parts.append(f"<h2>Worst rows{html.escape(ranking)}</h2>")
    for _, row in rows.iterrows():
        caption = [f"<b>{html.escape(str(row['id']))}</b>", html.escape(str(row.get("language", "")))]
        if row["status"] != "ok":
            caption.append(f"<span class='regressed'>{html.escape(str(row['status']))}: "
                           f"{html.escape(str(row.get('error', '')))}</span>")
        elif inputs.worst_metric:
            caption.append(f"{html.escape(inputs.worst_metric)} = {_fmt(row.get(inputs.worst_metric))}")
        src = video_src(row) if row["status"] == "ok" else None
        video = (f"<video controls muted preload='metadata' data-row-id='{html.escape(str(row['id']), quote=True)}'"
                 f" src='{html.escape(src, quote=True)}'></video>") if src else ""
        parts.append(f"<div class='row'>{video}<br>{'<br>'.join(caption)}</div>")
    parts.append("</body></html>")
    return "\n".join(parts)


# ---------------------------------------------------------------- the two copies


def _storage_path(uri: str) -> str:
    return storage.filesystem(uri)[1]


def relative_video(report_uri: str) -> Callable[[pd.Series], str | None]:
    """<video src> relative to the report in storage: the copy opened beside the night's videos."""
    report_dir = posixpath.dirname(_storage_path(report_uri))

    def src(row: pd.Series) -> str | None:
        uri = row.get("output_uri")
        return posixpath.relpath(_storage_path(uri), report_dir) if isinstance(uri, str) and uri else None
    return src


def embedded_video(copies: dict[str, bytes]) -> Callable[[pd.Series], str | None]:
    """<video src> as a data URI, or for a large clip a file logged beside the report (added to `copies`)."""
    def src(row: pd.Series) -> str | None:
        uri = row.get("output_uri")
        if not (isinstance(uri, str) and uri and storage.exists(uri)):
            return None
        data = storage.read_bytes(uri)
        if len(data) > MAX_EMBEDDED_VIDEO_BYTES:
            copies[f"videos/{row['id']}.mp4"] = data
            return f"videos/{row['id']}.mp4"
        return "data:video/mp4;base64," + base64.b64encode(data).decode()
    return src


def publish_reports(inputs: ReportInputs, report_uri: str, client: MlflowClient, run_id: str) -> None:
    """The report twice: at `report_uri` beside the videos (relative links), and as the MLflow run's
    `report/` artifacts (videos embedded)."""
    storage.publish_bytes(render_html(inputs, relative_video(report_uri)).encode(), report_uri)
    copies: dict[str, bytes] = {}
    embedded = render_html(inputs, embedded_video(copies))
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch) / "report"
        folder.mkdir()
        (folder / "report.html").write_text(embedded)
        for name, data in copies.items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(data)
        client.log_artifacts(run_id, str(folder), "report")
