"""The results Parquet schema: one row per manifest row, versioned and checked when read.

A results file holds the render columns (`BASE_COLUMNS`), the per-video metrics (`METRIC_COLUMNS`, all
nullable: a metric that could not be measured is null and, for learned metrics, `learned_metrics_reason`
says why) and free-form manifest tags as strings. The schema version travels in the Parquet key-value
metadata under `eartalk.results_schema_version`; `read_results` refuses files of another major version
and files whose known columns have the wrong type.

Version history: 1 - first version.
"""

from __future__ import annotations

import pyarrow as pa

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
    "render_s": pa.float64(),
    "encode_s": pa.float64(),
    "model_version": pa.string(),
    "run_id": pa.string(),
}

# name -> (type, unit / meaning). Every metric is nullable.
METRIC_DOCS: dict[str, tuple[pa.DataType, str]] = {
    # audio-visual sync (metrics/sync.py)
    "sync_offset_frames": (pa.float64(), "frames; > 0: the audio lags the video (sound comes after the mouth)"),
    "sync_confidence": (pa.float64(), "peak correlation x (peak - runner-up) of the lag curve; ~0 for unrelated audio"),
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

# direction, for comparisons and for ranking a run's worst rows
HIGHER_IS_BETTER = frozenset({"sync_confidence", "face_detected_ratio", "yaw_corr", "pitch_corr", "roll_corr",
                              "blink_corr", "sharpness", "ref_psnr", "ref_ssim", "lse_c", "csim_arcface"})
LOWER_IS_BETTER = frozenset({"identity_distance_mean", "identity_distance_max", "identity_drift", "yaw_mae_deg",
                             "pitch_mae_deg", "roll_mae_deg", "blink_mae", "landmark_jitter", "background_flicker",
                             "brisque", "ref_lmd", "lse_d", "metrics_s"})
ABS_LOWER_IS_BETTER = frozenset({"sync_offset_frames"})  # best at 0, either sign is worse
REPORT_METRIC = "sync_confidence"  # ranks the worst rows of a run report


class SchemaError(ValueError):
    """A results file that does not follow this schema."""


def results_schema(tag_columns: list[str] | tuple[str, ...] = ()) -> pa.Schema:
    """The Arrow schema of a results file (base + metrics + string tags), with the version in its metadata."""
    fields = [pa.field(n, t) for n, t in BASE_COLUMNS.items()] + [pa.field(n, t) for n, t in METRIC_COLUMNS.items()]
    fields += [pa.field(n, pa.string()) for n in tag_columns if n not in BASE_COLUMNS and n not in METRIC_COLUMNS]
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
    known = BASE_COLUMNS | METRIC_COLUMNS
    for field in schema:
        expected = known.get(field.name)
        if expected is None:
            if not (pa.types.is_string(field.type) or pa.types.is_large_string(field.type) or pa.types.is_null(field.type)):
                raise SchemaError(f"{source}: tag column {field.name!r} has type {field.type}, tags must be strings")
        elif field.type != expected and not pa.types.is_null(field.type):
            raise SchemaError(f"{source}: column {field.name!r} has type {field.type}, expected {expected}")


def conform(table: pa.Table) -> pa.Table:
    """Cast a table built from Python rows to the results schema (adds missing metric columns as nulls)."""
    tags = [n for n in table.column_names if n not in BASE_COLUMNS and n not in METRIC_COLUMNS]
    schema = results_schema(tags)
    columns = []
    for field in schema:
        if field.name in table.column_names:
            columns.append(table[field.name].cast(field.type))
        else:
            columns.append(pa.nulls(len(table), field.type))
    return pa.Table.from_arrays(columns, schema=schema)


def read_results(uri: str):
    """Read a results Parquet file or folder (local path, file:// or s3://) into pandas, checking the schema."""
    import fsspec
    import pyarrow.dataset as ds

    fs, path = fsspec.core.url_to_fs(uri)
    try:
        dataset = ds.dataset(path, filesystem=fs, format="parquet")
    except (FileNotFoundError, OSError) as e:
        raise SchemaError(f"{uri}: cannot read results ({e})") from None
    files = list(dataset.files)
    if not files:
        raise SchemaError(f"{uri}: no Parquet files")
    import pyarrow.parquet as pq

    for file in files:
        with fs.open(file, "rb") as f:
            validate_schema(pq.read_schema(f), f"{uri} ({file})" if len(files) > 1 else uri)
    return dataset.to_table().to_pandas()
