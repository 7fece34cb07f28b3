"""`eartalk metrics` on the real talking video, as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

from jobs import metrics as metrics_cli

REQUIRED = {"sync_offset_frames", "sync_confidence", "identity_distance_mean", "identity_distance_max",
            "identity_drift", "blinks_per_min", "yaw_range_deg"}


def test_metrics_command_prints_one_json_object_for_the_real_video(shared_media, tmp_path):
    video = shared_media / "video" / "talking_512px_8s.mp4"
    controls = tmp_path / "controls.json"
    controls.write_text(json.dumps({"yaw": [0.0] * 100 + [None] * 100, "blink": [1.0] * 200}))
    done = subprocess.run([sys.executable, "-m", "jobs.cli", "metrics", str(video), "--portrait",
                           str(shared_media / "portraits" / "biden.jpg"), "--controls", str(controls), "--json"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert REQUIRED <= set(result)
    assert abs(result["sync_offset_frames"]) <= 1  # the video's own audio track
    assert result["identity_distance_mean"] > 0.6  # not Biden
    assert result["yaw_mae_deg"] is not None and result["blink_mae"] is not None


def test_metrics_command_names_the_bad_input(tmp_path, shared_media, capsys):
    assert metrics_cli.main([str(tmp_path / "nope.mp4"), "--json"]) == 2
    assert "nope.mp4: video file not found" in capsys.readouterr().err
    bad = tmp_path / "controls.json"
    bad.write_text(json.dumps({"wobble": [1, 2]}))
    video = str(shared_media / "video" / "talking_512px_8s.mp4")
    assert metrics_cli.main([video, "--controls", str(bad), "--json"]) == 2
    assert "unknown control(s) ['wobble']" in capsys.readouterr().err
    npz = tmp_path / "controls.npz"
    np.savez(npz, yaw=np.array([1.0, np.nan]))
    assert np.isnan(metrics_cli.load_controls(str(npz))["yaw"][1])
