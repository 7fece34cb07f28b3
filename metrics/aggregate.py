"""Run-level aggregates of a results table, under stable MLflow metric names.

`quality/<metric>/mean|p10|p50|p90` for every metric column with data among rows with status 'ok',
`quality/<metric>/abs_mean` (mean of absolute values) for metrics best at 0 (signed sync offsets: +5 and
-5 average to a perfect-looking 0, their absolute values to 5),
`quality/failure_rate` (failed rows over rows that were attempted, skipped ones excluded),
`quality/rows_ok`, and `quality/frames_per_s` (rendered frames over summed render + encode seconds).
Timings (`metrics.schema.TIMING_COLUMNS`, seconds per row) go under `timing/<column>/mean|p10|p50|p90`:
they describe the machine's load, so no dashboard or comparison reads them as quality.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .schema import ABS_LOWER_IS_BETTER, METRIC_COLUMNS, TIMING_COLUMNS

STATS = {"mean": np.mean, "p10": lambda v: np.percentile(v, 10), "p50": np.median, "p90": lambda v: np.percentile(v, 90)}
NOT_AGGREGATED = {"sync_measure", "learned_metrics_reason", "metrics_error", "metrics_frames"}  # text, and frames analysed


def metric_name(metric: str, stat: str) -> str:
    return f"{'timing' if metric in TIMING_COLUMNS else 'quality'}/{metric}/{stat}"


def aggregate_metrics(results: pd.DataFrame) -> dict[str, float]:
    """Aggregates of `results` (one row per manifest row); metrics without data are left out, not zero."""
    out: dict[str, float] = {}
    status = results["status"] if "status" in results else pd.Series(["ok"] * len(results), index=results.index)
    attempted = status.isin(["ok", "failed"])
    out["quality/failure_rate"] = float((status == "failed").sum() / attempted.sum()) if attempted.any() else 0.0
    ok = results[status == "ok"]
    out["quality/rows_ok"] = float(len(ok))
    for metric in dict.fromkeys([*METRIC_COLUMNS, *TIMING_COLUMNS]):
        if metric in NOT_AGGREGATED or metric not in ok:
            continue
        values = pd.to_numeric(ok[metric], errors="coerce").to_numpy(np.float64)
        values = values[np.isfinite(values)]
        if values.size:
            out |= {metric_name(metric, stat): float(fn(values)) for stat, fn in STATS.items()}
            if metric in ABS_LOWER_IS_BETTER:
                out[metric_name(metric, "abs_mean")] = float(np.abs(values).mean())
    if {"frames", "render_s"} <= set(ok.columns) and len(ok):
        seconds = pd.to_numeric(ok["render_s"], errors="coerce").fillna(0).sum()
        if "encode_s" in ok:
            seconds += pd.to_numeric(ok["encode_s"], errors="coerce").fillna(0).sum()
        frames = pd.to_numeric(ok["frames"], errors="coerce").fillna(0).sum()
        if seconds > 0:
            out["quality/frames_per_s"] = float(frames / seconds)
    return out
