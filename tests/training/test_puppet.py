"""The puppet renderer follows its commands, measured on its output with the offline landmarker (faces/)."""

from __future__ import annotations

import numpy as np
import pytest

from training.ingredients import align_portrait, load_rgb, load_speech
from training.puppet import ControlTracks, Puppet, PuppetConfig, render_puppet_video, speech_mouth_track

FPS = 25.0


@pytest.fixture(scope="module")
def obama(shared_media):
    return align_portrait(load_rgb(shared_media / "portraits" / "obama.jpg"), 128, "obama.jpg")


@pytest.fixture(scope="module")
def analyzer():
    from faces import FaceAnalyzer

    return FaceAnalyzer()


def measure(analyzer, frames):
    """Per frame: landmarks of the rendered face (every frame must still show a face)."""
    out = []
    for f, frame in enumerate(frames):
        landmarks = analyzer.landmarks(frame)
        assert landmarks is not None, f"frame {f}: the landmarker lost the puppet's face"
        out.append(landmarks)
    return out


def test_mouth_opening_tracks_the_speech_energy(obama, analyzer, speech_wav):
    from faces import mouth_opening

    audio = load_speech(speech_wav)[: 16000 * 3]  # 3 s of real speech, with pauses
    frames = render_puppet_video(obama.image, obama.landmarks, audio, FPS)
    opening = np.array([mouth_opening(lm) for lm in measure(analyzer, frames)])
    driven = speech_mouth_track(audio, FPS, len(frames)).opening
    assert driven.max() > 0.5 and driven.min() < 0.1, "the speech should both open and close the mouth"
    corr = np.corrcoef(opening, driven)[0, 1]
    assert corr > 0.7, f"measured mouth opening follows the speech drive with r={corr:.2f}"


def test_the_mouth_leads_the_sound_by_mouth_lead_s(speech_wav):
    """Real mouths move before the voice; the puppet's drive is the in-sync drive, 160 ms (4 frames) early."""
    audio = load_speech(speech_wav)[: 16000 * 4]
    led = speech_mouth_track(audio, FPS, 100).opening
    in_sync = speech_mouth_track(audio, FPS, 100, config=PuppetConfig(mouth_lead_s=0.0)).opening
    lags = range(-8, 9)
    corr = [np.corrcoef(led[20:80], in_sync[20 + k:80 + k])[0, 1] for k in lags]
    assert list(lags)[int(np.argmax(corr))] == round(PuppetConfig().mouth_lead_s * FPS) == 4


def test_commanded_yaw_sweep_is_followed(obama, analyzer):
    from faces import head_pose

    n = 21
    controls = ControlTracks.neutral(n)
    controls.yaw = np.linspace(-20, 20, n).astype(np.float32)
    frames = [f.image for f in Puppet(obama.image, obama.landmarks).animate(np.zeros(16000, np.float32), FPS, controls)]
    yaw = np.array([head_pose(lm, frames[0].shape)[0] for lm in measure(analyzer, frames)])
    corr = np.corrcoef(yaw, controls.yaw)[0, 1]
    assert abs(corr) > 0.9, f"measured yaw follows the command with r={corr:.2f}"
    assert np.ptp(yaw) > 10, f"a 40 degree sweep moved the measured yaw by only {np.ptp(yaw):.1f} degrees"


def test_commanded_blink_closes_the_eyes_and_gaze_moves_the_irises(obama, analyzer):
    from faces import eye_openness

    puppet = Puppet(obama.image, obama.landmarks)
    still = {"yaw": 0.0, "pitch": 0.0, "roll": 0.0, "gaze_x": 0.0, "gaze_y": 0.0, "lip": 1.0}
    open_ = puppet.render(0.0, 0.0, {**still, "blink": 1.0}).image
    shut = puppet.render(0.0, 0.0, {**still, "blink": 0.0}).image
    openness = [eye_openness(lm) for lm in measure(analyzer, [open_, shut])]
    assert openness[1] < 0.8 * openness[0], f"eye openness {openness[0]:.3f} -> {openness[1]:.3f} when blinking"
    left = puppet.render(0.0, 0.0, {**still, "blink": 1.0, "gaze_x": -1.0}).image.astype(float)
    right = puppet.render(0.0, 0.0, {**still, "blink": 1.0, "gaze_x": 1.0}).image.astype(float)
    eyes = slice(int(obama.landmarks[36:48, 1].min()) - 2, int(obama.landmarks[36:48, 1].max()) + 3)
    assert np.abs(left - right)[eyes].mean() > 3 * np.abs(left - right).mean() - 1e-9, "gaze changes only the eyes"
    assert np.abs(left - right)[eyes].mean() > 2.0


def test_rendering_is_deterministic(obama, speech_wav):
    audio = load_speech(speech_wav)[:8000]
    a = render_puppet_video(obama.image, obama.landmarks, audio, FPS)
    b = render_puppet_video(obama.image, obama.landmarks, audio, FPS)
    assert a.shape == (13, 128, 128, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)


def test_bad_inputs_are_rejected_with_the_cause(obama):
    with pytest.raises(ValueError, match="square"):
        Puppet(obama.image[:, :100], obama.landmarks)
    with pytest.raises(ValueError, match=r"\(68, 2\)"):
        Puppet(obama.image, obama.landmarks[:5])
    with pytest.raises(ValueError, match="differ in length"):
        ControlTracks(*(np.zeros(5),) * 6, np.zeros(4))
