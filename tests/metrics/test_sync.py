"""Audio-visual sync validated on the real talking video (issue 4's proof of measurement)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.io import wavfile

from media import load_audio, read_video
from metrics.sync import frame_mel_energies, measure_sync
from metrics.video import track_landmarks

SAMPLE_RATE = 16000


@pytest.fixture(scope="module")
def talking(shared_media):
    clip = read_video(shared_media / "video" / "talking_512px_8s.mp4", SAMPLE_RATE)
    return clip, track_landmarks(clip.frames)


def delayed(audio: np.ndarray, frames: int, fps: float) -> np.ndarray:
    """The audio delayed by `frames` video frames (negative: advanced), same length, silence padded."""
    shift = int(round(frames * SAMPLE_RATE / fps))
    if shift >= 0:
        return np.concatenate([np.zeros(shift, np.float32), audio[:len(audio) - shift]])
    return np.concatenate([audio[-shift:], np.zeros(-shift, np.float32)])


def test_original_talking_video_reads_in_sync(talking):
    clip, landmarks = talking
    result = measure_sync(landmarks, clip.audio, SAMPLE_RATE, clip.fps)
    assert abs(result.offset_frames) <= 1
    assert result.confidence > 0.05


@pytest.mark.parametrize("k", [-8, -5, -3, 3, 5, 8])
def test_shifting_the_audio_by_k_frames_moves_the_offset_by_k(talking, k):
    clip, landmarks = talking
    base = measure_sync(landmarks, clip.audio, SAMPLE_RATE, clip.fps).offset_frames
    shifted = measure_sync(landmarks, delayed(clip.audio, k, clip.fps), SAMPLE_RATE, clip.fps).offset_frames
    assert abs((shifted - base) - k) <= 1, (k, base, shifted)


LANGUAGES = ["english", "german", "french", "japanese", "chinese"]


def unrelated_confidence(talking, shared_media, language: str) -> float:
    clip, landmarks = talking
    other = load_audio(shared_media / "speech" / f"{language}.wav", SAMPLE_RATE)
    other = np.pad(other, (0, max(0, len(clip.audio) - len(other))))[:len(clip.audio)]
    return measure_sync(landmarks, other, SAMPLE_RATE, clip.fps, frames=clip.frames).confidence


@pytest.mark.parametrize("language", LANGUAGES)
def test_unrelated_speech_has_under_the_in_sync_confidence(talking, shared_media, language):
    """Each unrelated speech under the clip's own. (Under half, per language, was the old measure's bar,
    calibrated on this one clip; the corpus-wide figure is the mismatched-speech AUC in docs/sync.md.)"""
    clip, landmarks = talking
    in_sync = measure_sync(landmarks, clip.audio, SAMPLE_RATE, clip.fps, frames=clip.frames).confidence
    unrelated = unrelated_confidence(talking, shared_media, language)
    assert unrelated < in_sync, (unrelated, in_sync)


def test_unrelated_speech_has_under_half_the_in_sync_confidence_on_average(talking, shared_media):
    clip, landmarks = talking
    in_sync = measure_sync(landmarks, clip.audio, SAMPLE_RATE, clip.fps, frames=clip.frames).confidence
    unrelated = [unrelated_confidence(talking, shared_media, language) for language in LANGUAGES]
    assert np.mean(unrelated) < 0.5 * in_sync, (unrelated, in_sync)


def test_sync_is_not_measured_without_enough_face_or_frames(talking):
    clip, landmarks = talking
    assert measure_sync(landmarks[:30], clip.audio, SAMPLE_RATE, clip.fps) is None  # 1.2 s
    no_face = np.full_like(landmarks, np.nan)
    assert measure_sync(no_face, clip.audio, SAMPLE_RATE, clip.fps) is None
    assert measure_sync(landmarks, np.zeros_like(clip.audio), SAMPLE_RATE, clip.fps) is None


def test_compute_video_metrics_reads_an_external_delayed_audio_file(talking, shared_media, tmp_path):
    from metrics import compute_video_metrics

    clip, _ = talking
    wav = tmp_path / "late.wav"
    wavfile.write(wav, SAMPLE_RATE, delayed(clip.audio, 5, clip.fps))
    result = compute_video_metrics(shared_media / "video" / "talking_512px_8s.mp4", audio_path=wav)
    assert abs(result["sync_offset_frames"] - 5) <= 1
    assert result["face_detected_ratio"] == 1.0


def test_sync_holds_at_the_tiny_models_128px_output_size(talking):
    import cv2

    clip, _ = talking
    small = np.stack([cv2.resize(f, (128, 128), interpolation=cv2.INTER_AREA) for f in clip.frames])
    landmarks = track_landmarks(small)
    assert abs(measure_sync(landmarks, clip.audio, SAMPLE_RATE, clip.fps).offset_frames) <= 1
    assert abs(measure_sync(landmarks, delayed(clip.audio, 5, clip.fps), SAMPLE_RATE, clip.fps).offset_frames - 5) <= 1


def test_a_video_running_whole_frames_past_its_audio_reads_silence_there(talking):
    clip, _ = talking
    fps, frames = 10.0, 30
    audio = clip.audio[:int((frames - 1.5) * SAMPLE_RATE / fps)]  # the last frame's centre 1 frame past the end
    mel = frame_mel_energies(audio, SAMPLE_RATE, fps, frames)
    assert mel.shape == (frames, 20)
    assert np.all(mel[-1] == 0) and mel[:10].sum() > 0


def test_sync_at_frame_rates_too_low_for_the_syllable_bands(talking):
    clip, landmarks = talking
    low = measure_sync(landmarks[:192:6], clip.audio, SAMPLE_RATE, clip.fps / 6)  # 4.2 fps: only the 1-6 Hz band fits
    assert low is not None and np.isfinite(low.offset_frames)
    assert measure_sync(landmarks[:192:12], clip.audio, SAMPLE_RATE, clip.fps / 12) is None  # 2.1 fps: no band fits


def test_sync_of_a_short_video_shorter_than_the_lag_search(talking):
    clip, landmarks = talking
    fps = clip.fps / 5
    short = landmarks[:60:5]  # 12 frames at 5 fps: lags of +-12..15 frames leave no overlap
    assert measure_sync(short, clip.audio[:int(len(short) / fps * SAMPLE_RATE)], SAMPLE_RATE, fps) is None
