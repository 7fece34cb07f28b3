"""benchmarks/talking_survey.py on the held-out speakers' first seconds: every mode measured, one JSON object."""

from __future__ import annotations

import json

import pytest

from tests.benchmarks.conftest import load_benchmark


@pytest.mark.slow
def test_the_survey_measures_every_mode_on_every_clip(shared_media, capsys):
    survey = load_benchmark("talking_survey")
    assert survey.main(["--held-out-only", "--seconds", "3", "--modes", "drive_on", "unmagnified", "puppet",
                        "--corpus", str(shared_media / "corpus"), "--portrait", str(shared_media / "portraits" / "biden.jpg"),
                        "--per-video", "--sync-without-network"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["clips"] == 4 and out["real_mouth_amplitude"] > 0
    assert "drive_off" not in out and out["checkpoint_lip_from_speech"] is True
    assert out["checkpoint_mouth_magnification"] == 3.0
    for mode in ("drive_on", "unmagnified", "puppet"):
        assert out[mode]["of"] == 4 and len(out["per_video"][mode]) == 4
        assert all(v["sync"] is not None for v in out["per_video"][mode]), "3 s of a face: every video measured"
        assert out[mode]["mouth_amplitude_ratio"] > 0.3, "the mouth moves"
        # the same videos and landmarks read again with the sync measure's network silenced
        silent = out[f"{mode}_no_network"]
        assert silent["of"] == 4 and silent["mouth_amplitude_ratio"] == out[mode]["mouth_amplitude_ratio"]
    # the puppet draws the drive itself: its mouth opens wider than the model's
    assert out["puppet"]["mouth_amplitude_ratio"] > out["unmagnified"]["mouth_amplitude_ratio"]
    # the shipped magnification shows the same mouth motion larger
    assert out["drive_on"]["mouth_amplitude_ratio"] > 1.2 * out["unmagnified"]["mouth_amplitude_ratio"]
