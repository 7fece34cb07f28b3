"""The weights-free gaze estimator reads the iris shifts the puppet renders (its unit's definition)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from faces.gaze import GAZE_SHIFT, gaze
from training.ingredients import align_portrait, load_rgb
from training.puppet import ControlTracks, Puppet, PuppetConfig


@pytest.fixture(scope="module")
def analyzer():
    from faces import FaceAnalyzer

    return FaceAnalyzer()


@pytest.mark.parametrize("name", ["obama.jpg", "biden.jpg"])
@pytest.mark.parametrize("axis", ["gaze_x", "gaze_y"])
def test_measured_gaze_follows_the_puppets_iris_sweep(shared_media, analyzer, name, axis):
    portrait = align_portrait(load_rgb(shared_media / "portraits" / name), 128, name)
    controls = ControlTracks.neutral(11)
    command = np.linspace(-0.8, 0.8, 11).astype(np.float32)
    setattr(controls, axis, command)
    frames = [f.image for f in Puppet(portrait.image, portrait.landmarks).animate(np.zeros(16000, np.float32), 25.0, controls)]
    measured = np.array([gaze(f, analyzer.landmarks(f))[0 if axis == "gaze_x" else 1] for f in frames])
    measured -= measured[5]  # relative to the frame looking straight ahead, as training labels are
    assert np.corrcoef(measured, command)[0, 1] > 0.8, measured
    least = 0.5 if axis == "gaze_x" else 0.3  # lids hide part of the iris's vertical travel
    # the travel of the least-squares line over all 11 frames: the end frames alone are the noisiest, as the
    # lids hide most of the iris there (area-averaged crops read obama's lowest gaze back near straight ahead)
    travel = np.polyfit(command, measured, 1)[0] * (command[-1] - command[0])
    assert travel > least, f"a 1.6 gaze sweep moved the measured gaze by {travel:.2f} (fitted): {measured.round(2)}"


def test_the_puppet_renders_gaze_in_the_estimators_unit():
    assert PuppetConfig().gaze_shift == GAZE_SHIFT


def test_no_eyes_to_measure_gives_nan():
    landmarks = np.zeros((68, 2))  # every eye point in one pixel: no contour
    assert all(math.isnan(v) for v in gaze(np.zeros((64, 64, 3), np.uint8), landmarks))
