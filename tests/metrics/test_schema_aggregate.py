"""Results schema (versioned, checked on read) and run aggregates under stable names."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from metrics.aggregate import aggregate_metrics
from metrics.schema import (METRIC_COLUMNS, RESULT_SCHEMA_VERSION, SCHEMA_VERSION_KEY, SchemaError, read_results,
                            results_frame, results_schema, results_table, write_results)


def rows(n: int = 10, failed: int = 1) -> pa.Table:
    data = {"id": [f"r{i}" for i in range(n)], "status": ["failed"] * failed + ["ok"] * (n - failed),
            "frames": [100] * n, "render_s": [2.0] * n, "encode_s": [0.5] * n,
            "sync_confidence": [np.nan] * failed + list(np.linspace(0.1, 0.3, n - failed)),
            "language": ["de"] * n}
    return results_table(pd.DataFrame(data))


def test_results_roundtrip_through_parquet_keeps_version_and_types(tmp_path):
    pq.write_table(rows(), tmp_path / "results.parquet")
    frame = read_results(str(tmp_path / "results.parquet"))
    assert list(frame["id"])[:2] == ["r0", "r1"] and frame["language"].iloc[0] == "de"
    schema = pq.read_schema(tmp_path / "results.parquet")
    assert schema.metadata[SCHEMA_VERSION_KEY] == str(RESULT_SCHEMA_VERSION).encode()
    assert all(schema.field(name).type == t for name, t in METRIC_COLUMNS.items())
    assert results_schema(["language"]).field("language").type == pa.string()


def test_results_of_another_version_or_type_are_refused(tmp_path):
    table = rows()
    old = table.replace_schema_metadata({SCHEMA_VERSION_KEY: b"99"})
    pq.write_table(old, tmp_path / "old.parquet")
    with pytest.raises(SchemaError, match="old.parquet: results schema version 99"):
        read_results(str(tmp_path / "old.parquet"))
    pq.write_table(pa.table({"id": ["a"], "status": ["ok"]}), tmp_path / "plain.parquet")
    with pytest.raises(SchemaError, match="plain.parquet: no eartalk.results_schema_version"):
        read_results(str(tmp_path / "plain.parquet"))
    bad = table.set_column(table.schema.get_field_index("sync_confidence"), "sync_confidence",
                           pa.array(["x"] * len(table))).replace_schema_metadata(table.schema.metadata)
    pq.write_table(bad, tmp_path / "bad.parquet")
    with pytest.raises(SchemaError, match="column 'sync_confidence' has type string"):
        read_results(str(tmp_path / "bad.parquet"))
    with pytest.raises(SchemaError, match="cannot read results|no Parquet files"):
        read_results(str(tmp_path / "missing"))


def test_one_writer_stores_tags_as_strings_and_one_reader_joins_a_folder(tmp_path):
    """The nightly's per-night file carries an integer `attempt` tag and the render's per-run files differ in
    their tags: both go through write_results / read_results."""
    night = pd.DataFrame({"id": ["a", "b"], "status": ["ok", "failed"], "frames": [25.0, None], "attempt": [1, 2]})
    write_results(night, str(tmp_path / "results" / "night.parquet"))
    run = pd.DataFrame({"id": ["c"], "status": ["ok"], "frames": [50], "speaker": ["x"]})
    write_results(run, str(tmp_path / "results" / "sub" / "run.parquet"))
    schema = pq.read_schema(tmp_path / "results" / "night.parquet")
    assert schema.field("attempt").type == pa.string() and schema.field("frames").type == pa.int64()
    frame = read_results(str(tmp_path / "results")).set_index("id")
    assert frame.loc["a", "attempt"] == "1" and frame.loc["b", "attempt"] == "2"
    assert frame.loc["c", "speaker"] == "x" and frame.loc["a", "speaker"] is None
    assert frame["frames"].tolist()[0] == 25 and pd.isna(frame.loc["b", "frames"])
    assert set(METRIC_COLUMNS) <= set(frame.columns)


def test_results_folder_on_s3_is_read(s3_server, monkeypatch):
    import uuid

    import s3fs

    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    # conftest's s3_bucket passes region_name, which moto answers with "location-constraint is not valid"
    fs = s3fs.S3FileSystem(key=s3_server.access_key, secret=s3_server.secret_key,
                           client_kwargs={"endpoint_url": s3_server.endpoint_url})
    s3_bucket = f"metrics-{uuid.uuid4().hex[:10]}"
    fs.mkdir(s3_bucket)
    with fs.open(f"{s3_bucket}/run/results/part-0.parquet", "wb") as f:
        pq.write_table(rows(4, 0), f)
    frame = read_results(f"s3://{s3_bucket}/run/results")
    assert len(frame) == 4


def test_aggregates_use_stable_names_and_skip_failed_and_missing():
    frame = rows().to_pandas()
    agg = aggregate_metrics(frame)
    assert agg["quality/failure_rate"] == pytest.approx(0.1)
    assert agg["quality/sync_confidence/mean"] == pytest.approx(0.2)
    assert agg["quality/sync_confidence/p10"] < agg["quality/sync_confidence/p50"] < agg["quality/sync_confidence/p90"]
    assert agg["quality/frames_per_s"] == pytest.approx(900 / 22.5)
    assert "quality/brisque/mean" not in agg  # no data: left out, not zero
    timed = aggregate_metrics(frame.assign(metrics_s=3.0, metrics_frames=100))
    assert timed["timing/metrics_s/mean"] == 3.0 and timed["timing/render_s/p50"] == 2.0  # seconds, not quality
    assert not any(k.startswith(("quality/metrics_", "quality/render_s")) for k in timed)
    skipped = frame.assign(status=["skipped"] * len(frame))
    assert aggregate_metrics(skipped)["quality/failure_rate"] == 0.0


def test_a_rows_framing_and_upscaled_face_reach_the_results_file(tmp_path):
    """Regression guard: the framing a row was rendered with and the upscaled-face flag were dropped from
    the results Parquet (they were not schema columns), though the render actor reports both."""
    records = [{"id": "p", "status": "ok", "framing": "portrait", "face_upscaled": True, "row": 0},
               {"id": "c", "status": "ok", "framing": "crop", "face_upscaled": False, "row": 1}]
    write_results(results_frame(records, []), str(tmp_path / "r.parquet"))
    table = read_results(str(tmp_path / "r.parquet")).set_index("id")
    assert table.loc["p", "framing"] == "portrait" and bool(table.loc["p", "face_upscaled"]) is True
    assert table.loc["c", "framing"] == "crop" and bool(table.loc["c", "face_upscaled"]) is False
    assert "row" not in table
