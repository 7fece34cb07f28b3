"""Manifest reading and row validation on real manifest files: rows failing alone, manifest-wide errors."""

from __future__ import annotations

import pandas as pd
import pytest

from jobs.render import main as render_main
from pipelines.manifest import ManifestError, read_manifest, validate_rows
from tests.pipelines.helpers import write_jsonl


def test_jsonl_ids_are_read_as_written_when_a_row_lacks_its_id(tmp_path):
    """Regression: a row without `id` made pandas read the id column as floats, so id 1 became '1.0'."""
    manifest = write_jsonl(tmp_path / "m.jsonl", [
        {"id": 1, "portrait": "a.png", "audio": "a.wav", "seed": 7},
        {"portrait": "b.png", "audio": "b.wav"},
        {"id": 2, "portrait": "c.png", "audio": "c.wav"},
    ])
    rows, failures = validate_rows(read_manifest(str(manifest)), str(manifest))
    assert [(r.id, r.seed) for r in rows] == [("1", 7), ("2", 0)]
    assert [(f.row, f.error) for f in failures] == [(1, "row 1 (id ''): missing id")]


def test_out_of_range_seeds_fail_their_row_only(tmp_path):
    """Regression: seed '1e400' raised OverflowError out of validate_rows; seeds beyond int64 were accepted."""
    df = pd.DataFrame({"id": ["inf", "huge", "neg", "ok"], "portrait": "p.png", "audio": "a.wav",
                       "seed": ["1e400", str(2**64), "-1", "9"]})
    rows, failures = validate_rows(df, str(tmp_path / "m.csv"))
    assert [(r.id, r.seed) for r in rows] == [("ok", 9)]
    errors = {f.id: f.error for f in failures}
    assert errors["inf"].startswith("row 0 (id 'inf'): fps/seed must be finite numbers")
    assert errors["huge"] == f"row 1 (id 'huge'): seed {2**64} outside [0, 2**63)"
    assert errors["neg"] == "row 2 (id 'neg'): seed -1 outside [0, 2**63)"


def test_tag_columns_named_like_result_columns_are_refused(tmp_path):
    """Regression: a manifest column `status` (or `row`, a metric, ...) gave duplicate Parquet columns after rendering."""
    df = pd.DataFrame({"id": ["a"], "portrait": "p.png", "audio": "a.wav", "status": "new", "sync_confidence": "1",
                       "row": "3", "language": "en"})
    with pytest.raises(ManifestError, match=r"column\(s\) \['row', 'status', 'sync_confidence'\] are reserved"):
        validate_rows(df, "m.csv")


def test_reserved_manifest_column_is_a_usage_error_before_rendering(tmp_path, random_tiny_checkpoint):
    manifest = write_jsonl(tmp_path / "m.jsonl", [{"id": "a", "portrait": "p.png", "audio": "a.wav", "width": 3}])
    out = tmp_path / "out"
    assert render_main([str(manifest), "--output", str(out), "--checkpoint", str(random_tiny_checkpoint)]) == 2
    assert not out.exists()  # nothing rendered, nothing written
