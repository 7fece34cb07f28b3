"""Control track parsing: malformed cells are ControlTrackErrors naming the cell, never other exceptions."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipelines.controls import ControlTrackError, parse_control_track, tracks_from_json, tracks_to_json


@pytest.mark.parametrize("value", [{"a": 1}, [1, 2]])
def test_json_object_or_list_in_a_cell_names_the_cell(value):
    """Regression: float(dict) raised TypeError, which escaped the asset stage and aborted the whole run."""
    data = json.dumps([{"frame": 0, "yaw": 1.0}, {"frame": 1, "yaw": value}]).encode()
    with pytest.raises(ControlTrackError, match=r"column 'yaw', entry 1: .* is not a number"):
        parse_control_track(data, "c.json", 25.0, 10)


def test_parsed_tracks_travel_between_stages_as_json_without_changing_a_value():
    """The asset stage parses a track once; rendering and metrics read these values back from its JSON."""
    data = b"time,yaw,blink,expression\n0,-20.3,,1\n0.5,13.1,0.3,\n1.7,0.1,0.9,3\n"
    tracks = parse_control_track(data, "c.csv", 25.0, 60)
    back = tracks_from_json(tracks_to_json(tracks))
    assert back.keys() == tracks.keys() == {"yaw", "blink", "expression"}
    for name, track in tracks.items():
        assert back[name].dtype == np.float32 and np.array_equal(back[name], track, equal_nan=True), name
    assert np.isnan(back["yaw"][-1]) and not np.isnan(back["yaw"]).all()  # absent after 1.7 s, given before
    assert tracks_from_json("") == {} and tracks_from_json(tracks_to_json({})) == {}
