"""The acceptance harness (training.acceptance) end to end on short held-out clips and the shipped checkpoint."""

from __future__ import annotations

import json

import pytest

from tests.conftest import trimmed_wav
from training.acceptance import main

pytestmark = pytest.mark.slow


def test_acceptance_measures_every_bar_and_surveys_more_speech(tmp_path, shared_media):
    english = trimmed_wav(shared_media / "speech" / "english.wav", tmp_path / "english.wav", 3.0)
    german = trimmed_wav(shared_media / "speech" / "german.wav", tmp_path / "german.wav", 3.0)
    output = tmp_path / "acc"
    code = main(["--portrait", str(shared_media / "portraits" / "biden.jpg"), "--speech", str(english),
                 "--output", str(output), "--long-seconds", "4", "--blink-seconds", "4", "--more-speech", str(german)])
    report = json.loads((output / "acceptance.json").read_text())
    assert code == (0 if report["all_pass"] else 1)
    for name in ("sync_model.mp4", "sync_puppet.mp4", "sync_german_model.mp4", "sync_german_puppet.mp4",
                 "identity_long.mp4", "yaw_sweep.mp4", "blinks.mp4"):
        assert (output / name).stat().st_size > 1000, name
    # the puppet's mouth is a function of the speech: the harness must read its own video as in sync
    for clip in (report["sync"], report["sync_survey"]["clips"][0]):
        assert clip["by_landmarks"]["puppet"]["offset_frames"] == 0 and clip["by_landmarks"]["puppet"]["confidence"] > 0.1
    assert report["sync_survey"]["of"] == 1 and report["sync_survey"]["clips"][0]["speech"] == str(german)
    assert report["identity"]["frames_sampled"] == 20  # 4 s at 25 fps, every 5th frame
    assert report["blinks"]["commanded"] == 2  # the 3 s clip looped to 4 s: blinks at 0.8 s and 2.4 s
    # the shipped checkpoint keeps the held-out face's identity (dlib's same-person threshold)
    assert report["identity"]["fraction_below_0.6"] >= 0.95


def test_acceptance_refuses_missing_inputs_before_rendering(tmp_path, capsys):
    assert main(["--speech", str(tmp_path / "gone.wav"), "--output", str(tmp_path / "acc")]) == 2
    assert "no such file" in capsys.readouterr().err and not (tmp_path / "acc").exists()
