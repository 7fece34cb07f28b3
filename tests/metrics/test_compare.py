"""Comparing a run's results with a baseline's: metrics best at 0 are compared by their absolute size;
timings are reported, not judged; worst rows rank by each metric's direction."""

from __future__ import annotations

import pandas as pd
import pytest

from metrics.compare import compare_frames, compare_timings, load_thresholds
from metrics.schema import worst_rows


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


def test_a_slower_machine_is_reported_not_judged_a_regression():
    """Regression guard: `metrics_s` (seconds spent measuring) was compared as a lower-is-better quality
    metric, so a night on a busy machine regressed without any video getting worse."""
    baseline = results([1.0, 1.0]).assign(sync_confidence=[0.3, 0.3], metrics_s=[2.0, 2.0], render_s=[1.0, 1.0])
    current = baseline.assign(metrics_s=[9.0, 11.0], render_s=[4.0, 4.0])
    table, _ = compare_frames(current, baseline)
    assert "metrics_s" not in set(table["metric"]) and not table["regressed"].any()
    assert set(table["metric"]) == {"sync_offset_frames", "sync_confidence", "failure_rate"}
    timings = compare_timings(current, baseline).set_index("metric")
    assert list(timings.index) == ["render_s", "metrics_s"]
    assert timings.loc["metrics_s", "delta"] == pytest.approx(8.0) and timings.loc["render_s", "current"] == 4.0


def test_a_threshold_for_a_timing_is_refused(tmp_path):
    path = tmp_path / "thresholds.json"
    path.write_text('{"metrics_s": 1.0}')
    with pytest.raises(ValueError, match=r"unknown metric\(s\) \['metrics_s'\]"):
        load_thresholds(path)


def test_worst_rows_put_failures_first_then_the_worst_in_each_metrics_direction():
    frame = pd.DataFrame({"id": ["row0", "row1", "row2", "row3"], "language": ["en", "de", "de", "fr"],
                          "status": ["ok", "ok", "ok", "failed"],
                          "sync_confidence": [0.9, 0.2, 0.6, None], "identity_distance_mean": [0.3, 0.2, 0.25, None]})
    assert list(worst_rows(frame, "sync_confidence", 3)["id"]) == ["row3", "row1", "row2"]  # higher is better
    assert list(worst_rows(frame, "identity_distance_mean", 2)["id"]) == ["row3", "row0"]  # lower is better
    assert list(worst_rows(frame, "sync_confidence", 2).columns) == list(frame.columns)  # the whole rows


def test_sync_is_not_judged_across_sync_measures_and_the_report_says_so():
    """A new sync measure moves every offset and confidence with no video changed: a baseline measured by
    another one (or before the column existed) shows its sync figures without judging them."""
    from metrics.compare import Comparison, markdown_report

    baseline = results([0.0, 0.0]).assign(sync_confidence=[3.0, 3.0], identity_distance_mean=[0.3, 0.3])
    current = results([6.0, -6.0]).assign(sync_confidence=[0.5, 0.5], identity_distance_mean=[0.5, 0.5],
                                          sync_measure=["aaaa", "aaaa"])
    for old in (baseline, baseline.assign(sync_measure=["bbbb", "bbbb"])):
        table, worst = compare_frames(current, old)
        rows = table.set_index("metric")
        assert not rows.loc["sync_offset_frames", "regressed"] and not rows.loc["sync_confidence", "regressed"]
        assert rows.loc["identity_distance_mean", "regressed"]  # other metrics are judged as before
        report = markdown_report(Comparison("run", "base", table, worst, True, current, old))
        assert "another sync measure" in report and "current aaaa" in report
    table, _ = compare_frames(current, baseline.assign(sync_measure=["aaaa", "aaaa"]))  # the same measure: judged
    assert table.set_index("metric").loc[["sync_offset_frames", "sync_confidence"], "regressed"].all()
