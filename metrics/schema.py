"""The results table: one row per manifest row; its schema, its one writer and reader, and its worst rows.

A results file holds the render columns (`BASE_COLUMNS`), the per-video metrics (`METRIC_COLUMNS`, all
nullable: a metric that could not be measured is null and, for learned metrics, `learned_metrics_reason`
says why) and free-form manifest tags as strings. The schema version travels in the Parquet key-value
metadata under `eartalk.results_schema_version`; `read_results` refuses files of another major version
and files whose known columns have the wrong type.

Every results file is written by `write_results` (the render job's per-run file, the nightly's per-night
file) and read by `read_results` (compare, the nightly, tests), so a column is added here once and every
producer and consumer follows. Time columns (`TIMING_COLUMNS`) describe how busy the machine was, not how
good a video is: they carry no quality direction, and compare reports them apart.

Version history: 1 - first version.
"""

from __future__ import annotations

import io

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

import storage

RESULT_SCHEMA_VERSION = 1
SCHEMA_VERSION_KEY = b"eartalk.results_schema_version"

BASE_COLUMNS: dict[str, pa.DataType] = {
    "id": pa.string(),
    "status": pa.string(),  # 'ok' | 'failed' | 'skipped'
    "error": pa.string(),
    "output_uri": pa.string(),
    "frames": pa.int64(),
    "duration_s": pa.float64(),
    "fps": pa.float64(),
    "width": pa.int64(),
    "height": pa.int64(),
    "framing": pa.string(),  # 'portrait' (the face composited into the portrait) | 'crop' (faces/composite.py)
    "face_upscaled": pa.bool_(),  # the portrait's face is smaller than the model's crop, so the crop was upscaled
    "render_s": pa.float64(),
    "encode_s": pa.float64(),
    "model_version": pa.string(),
    "run_id": pa.string(),
}

# name -> (type, unit / meaning). Every metric is nullable.
METRIC_DOCS: dict[str, tuple[pa.DataType, str]] = {
    # audio-visual sync (metrics/sync.py)
    "sync_offset_frames": (pa.float64(), "frames; > 0: the audio lags the video (sound comes after the mouth)"),
    "sync_confidence": (pa.float64(), "lag-curve peak above chance, in null std units (metrics.sync); ~0 for unrelated audio"),
    "sync_measure": (pa.string(), "version of the sync measure (metrics.sync.measure_version): compare sync within one"),
    # identity (dlib 128-d embedding distance to the portrait; < 0.6 = same person)
    "identity_distance_mean": (pa.float64(), "mean embedding distance of sampled frames to the portrait"),
    "identity_distance_max": (pa.float64(), "worst sampled frame's distance to the portrait"),
    "identity_drift": (pa.float64(), "distance between mean embeddings of the first and last 10 % of frames"),
    # face tracking coverage
    "face_detected_ratio": (pa.float64(), "fraction of analysed frames with a face"),
    # control adherence (measured vs commanded where commanded; null without controls)
    "yaw_corr": (pa.float64(), "Pearson correlation of measured and commanded yaw"),
    "yaw_mae_deg": (pa.float64(), "degrees, mean |measured - commanded| yaw"),
    "pitch_corr": (pa.float64(), "Pearson correlation of measured and commanded pitch"),
    "pitch_mae_deg": (pa.float64(), "degrees"),
    "roll_corr": (pa.float64(), "Pearson correlation of measured and commanded roll"),
    "roll_mae_deg": (pa.float64(), "degrees"),
    "blink_corr": (pa.float64(), "Pearson correlation of measured and commanded eye openness"),
    "blink_mae": (pa.float64(), "eye openness 0..1"),
    # motion and stability
    "blinks_per_min": (pa.float64(), "blinks per minute (eye-openness dips)"),
    "yaw_range_deg": (pa.float64(), "degrees, p95 - p5 of measured yaw"),
    "pitch_range_deg": (pa.float64(), "degrees, p95 - p5 of measured pitch"),
    "roll_range_deg": (pa.float64(), "degrees, p95 - p5 of measured roll"),
    "landmark_jitter": (pa.float64(), "median |second difference| of landmarks over inter-ocular distance"),
    "background_flicker": (pa.float64(), "mean |frame-to-frame change| of the border region, 0..255 grey levels"),
    # image quality
    "brisque": (pa.float64(), "BRISQUE no-reference score (OpenCV, LIVE model); lower is better, ~0..100"),
    "sharpness": (pa.float64(), "variance of the Laplacian of the face region (grey levels^2)"),
    # reference metrics (only with a reference video)
    "ref_psnr": (pa.float64(), "dB against the reference video"),
    "ref_ssim": (pa.float64(), "SSIM against the reference video, 0..1"),
    "ref_lmd": (pa.float64(), "mean landmark distance to the reference, pixels at 256 px face width"),
    # learned metrics (only with configured local weights; see metrics/learned.py)
    "lse_c": (pa.float64(), "SyncNet LSE-C (confidence)"),
    "lse_d": (pa.float64(), "SyncNet LSE-D (distance)"),
    "csim_arcface": (pa.float64(), "ArcFace cosine similarity to the portrait"),
    "learned_metrics_reason": (pa.string(), "why learned metrics are null (e.g. no weights configured)"),
    # bookkeeping
    "metrics_s": (pa.float64(), "seconds spent computing this row's metrics"),
    "metrics_frames": (pa.int64(), "frames analysed for landmarks"),
    "metrics_error": (pa.string(), "why this row's metrics are null (the render itself succeeded)"),
}
METRIC_COLUMNS: dict[str, pa.DataType] = {name: t for name, (t, _) in METRIC_DOCS.items()}
KNOWN_COLUMNS: dict[str, pa.DataType] = BASE_COLUMNS | METRIC_COLUMNS
TIMING_COLUMNS = ("render_s", "encode_s", "metrics_s")  # seconds per row: the machine's load, not quality

# direction, for comparisons and for ranking a run's worst rows
HIGHER_IS_BETTER = frozenset({"sync_confidence", "face_detected_ratio", "yaw_corr", "pitch_corr", "roll_corr",
                              "blink_corr", "sharpness", "ref_psnr", "ref_ssim", "lse_c", "csim_arcface"})
LOWER_IS_BETTER = frozenset({"identity_distance_mean", "identity_distance_max", "identity_drift", "yaw_mae_deg",
                             "pitch_mae_deg", "roll_mae_deg", "blink_mae", "landmark_jitter", "background_flicker",
                             "brisque", "ref_lmd", "lse_d"})
ABS_LOWER_IS_BETTER = frozenset({"sync_offset_frames"})  # best at 0, either sign is worse
REPORT_METRIC = "sync_confidence"  # ranks the worst rows of a run report
WORST_ROWS = 5  # rows a comparison lists


def direction(metric: str) -> str:
    """'higher', 'lower' or 'abs_lower' (best at 0) is better; 'none' for bookkeeping and timings."""
    if metric in HIGHER_IS_BETTER:
        return "higher"
    if metric in LOWER_IS_BETTER or metric == "failure_rate":
        return "lower"
    if metric in ABS_LOWER_IS_BETTER:
        return "abs_lower"
    return "none"


class SchemaError(ValueError):
    """A results file that does not follow this schema."""


def results_schema(tag_columns: list[str] | tuple[str, ...] = ()) -> pa.Schema:
    """The Arrow schema of a results file (base + metrics + string tags), with the version in its metadata."""
    fields = [pa.field(n, t) for n, t in KNOWN_COLUMNS.items()]
    fields += [pa.field(n, pa.string()) for n in tag_columns if n not in KNOWN_COLUMNS]
    return pa.schema(fields, metadata={SCHEMA_VERSION_KEY: str(RESULT_SCHEMA_VERSION).encode()})


def validate_schema(schema: pa.Schema, source: str = "results") -> None:
    """Raise SchemaError naming `source` when the version is missing/other or a known column has another type."""
    version = (schema.metadata or {}).get(SCHEMA_VERSION_KEY)
    if version is None:
        raise SchemaError(f"{source}: no {SCHEMA_VERSION_KEY.decode()} in the Parquet metadata (not an eartalk results file?)")
    if int(version.decode().split(".")[0]) != RESULT_SCHEMA_VERSION:
        raise SchemaError(f"{source}: results schema version {version.decode()}, this code reads version {RESULT_SCHEMA_VERSION}")
    missing = [n for n in ("id", "status") if n not in schema.names]
    if missing:
        raise SchemaError(f"{source}: missing required column(s) {missing}")
    for field in schema:
        expected = KNOWN_COLUMNS.get(field.name)
        if expected is None:
            if not (pa.types.is_string(field.type) or pa.types.is_large_string(field.type) or pa.types.is_null(field.type)):
                raise SchemaError(f"{source}: tag column {field.name!r} has type {field.type}, tags must be strings")
        elif field.type != expected and not pa.types.is_null(field.type):
            raise SchemaError(f"{source}: column {field.name!r} has type {field.type}, expected {expected}")


def results_frame(records: list[dict], tag_columns: list[str]) -> pd.DataFrame:
    """Result records as a results table: every schema column in schema order (missing ones null), then
    the tags; other keys of the records (the pipeline's own columns) are dropped."""
    frame = pd.DataFrame.from_records(records)
    columns = list(KNOWN_COLUMNS) + [c for c in tag_columns if c not in KNOWN_COLUMNS]
    for column in columns:
        if column not in frame:
            frame[column] = None
    return frame[columns]


def results_table(frame: pd.DataFrame) -> pa.Table:
    """A results DataFrame as an Arrow table of the schema: missing known columns null, every column not in
    the schema a tag, its values as strings (an integer tag such as the nightly's `attempt` included)."""
    tags = [c for c in frame.columns if c not in KNOWN_COLUMNS]
    schema = results_schema(tags)
    frame = frame.reindex(columns=schema.names)
    frame = frame.astype(object).where(frame.notna(), None)
    for column in tags:
        frame[column] = [None if v is None else str(v) for v in frame[column]]
    return pa.Table.from_pandas(frame, schema=schema, preserve_index=False)


def write_results(frame: pd.DataFrame, uri: str, options: storage.StorageOptions | None = None) -> None:
    """Publish `frame` as one results Parquet file at `uri` (all at once: readers never see half a file)."""
    buffer = io.BytesIO()
    pq.write_table(results_table(frame), buffer)
    storage.publish_bytes(buffer.getvalue(), uri, options)


def read_results(uri: str, options: storage.StorageOptions | None = None) -> pd.DataFrame:
    """A results Parquet file, or every one under a folder (local path, file:// or s3://), as one DataFrame;
    each file's schema is checked, and tag columns one file lacks are null in its rows."""
    fs, path = storage.filesystem(uri, options)
    try:
        files = [path] if fs.isfile(path) else sorted(fs.glob(f"{path.rstrip('/')}/**/*.parquet"))
    except OSError as e:
        raise SchemaError(f"{uri}: cannot read results ({e})") from None
    if not files:
        raise SchemaError(f"{uri}: no Parquet files")
    tables = []
    for file in files:
        with fs.open(file, "rb") as f:
            table = pq.read_table(f)
        validate_schema(table.schema, f"{uri} ({file})" if len(files) > 1 else uri)
        tables.append(table)
    return pa.concat_tables(tables, promote_options="default").to_pandas()


def worst_rows(results: pd.DataFrame, metric: str | None = REPORT_METRIC, count: int = WORST_ROWS) -> pd.DataFrame:
    """The `count` worst rows: failed ones first, then the worst by `metric` in its direction (rows
    without a value for it before measured ones); all columns kept, original order among ties."""
    value = pd.to_numeric(results[metric], errors="coerce") if metric in results else \
        pd.Series(float("nan"), index=results.index)
    way = direction(metric) if metric else "none"
    badness = -value if way == "higher" else (value.abs() if way == "abs_lower" else value)
    failed = (results["status"] != "ok") if "status" in results else pd.Series(False, index=results.index)
    order = pd.DataFrame({"failed": failed, "bad": badness.fillna(float("inf"))}, index=results.index)
    order = order.sort_values(["failed", "bad"], ascending=[False, False], kind="stable")
    return results.loc[order.index].head(count).reset_index(drop=True)
