"""Control track parsing: malformed cells are ControlTrackErrors naming the cell, never other exceptions."""

from __future__ import annotations

import json

import pytest

from pipelines.controls import ControlTrackError, parse_control_track


@pytest.mark.parametrize("value", [{"a": 1}, [1, 2]])
def test_json_object_or_list_in_a_cell_names_the_cell(value):
    """Regression: float(dict) raised TypeError, which escaped the asset stage and aborted the whole run."""
    data = json.dumps([{"frame": 0, "yaw": 1.0}, {"frame": 1, "yaw": value}]).encode()
    with pytest.raises(ControlTrackError, match=r"column 'yaw', entry 1: .* is not a number"):
        parse_control_track(data, "c.json", 25.0, 10)
