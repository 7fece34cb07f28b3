"""Comparing a run's results with a baseline's: metrics best at 0 are compared by their absolute size."""

from __future__ import annotations

import pandas as pd
import pytest

from metrics.compare import compare_frames, worst_rows


def results(offsets: list[float]) -> pd.DataFrame:
    return pd.DataFrame({"id": [f"r{i}" for i in range(len(offsets))], "status": ["ok"] * len(offsets),
                         "sync_offset_frames": offsets})


def test_offsets_of_either_sign_do_not_cancel_out():
    baseline, current = results([0.0, 1.0, -1.0, 0.0]), results([5.0, -5.0, 5.0, -5.0])  # signed means 0 and 0
    table, _ = compare_frames(current, baseline)
    row = table.set_index("metric").loc["sync_offset_frames"]
    assert row["baseline"] == pytest.approx(0.5) and row["current"] == pytest.approx(5.0)  # means of |offset|
    assert row["delta"] == pytest.approx(4.5) and row["regressed"]
    assert list(worst_rows(baseline, "sync_offset_frames", 2)["sync_offset_frames"].abs()) == [1.0, 1.0]
