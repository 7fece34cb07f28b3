"""The sync measure on a fixed part of the real corpus (four speakers), full frame and at the 128 px render
size, with bars a chance-level method fails; and the training commands of its learned parts end to end.

The four speakers are the ones the shipped sync network never trained on (sync_net.HELD_OUT_SPEAKERS); the
regressor is refitted here without each one."""

from __future__ import annotations

import json

import numpy as np
import pytest

from metrics.sync_validation import delayed, fitted, validate
from metrics import sync_model, sync_net
from metrics.sync import SyncConfig, measure_sync
from metrics.sync_corpus import SAMPLE_RATE, load_clip

# four speakers, 25 and 30 fps, 3-5 s each (the shortest clips, so extraction stays within seconds)
SUBSET = sync_net.HELD_OUT_SPEAKERS
SHIFTS = (-6, -3, 0, 3, 6)


@pytest.fixture(scope="module")
def corpus(shared_media):
    return shared_media / "corpus"


@pytest.fixture(scope="module")
def clips(corpus, tmp_path_factory):
    cache = tmp_path_factory.mktemp("sync_cache")
    return [load_clip(corpus / name, cache) for name in SUBSET]


def held_out_models(clips, view: str) -> list:
    """For each clip, the regressor fitted on the other clips only: the shipped weights saw every corpus
    speaker, so judging them on these four would not test speakers the measure never trained on."""
    def example(c):
        return (c.landmarks, c.crops, c.audio, SAMPLE_RATE, c.fps) if view == "full" else \
               (c.landmarks_128, c.crops_128, c.audio, SAMPLE_RATE, c.fps)
    return [sync_model.fit([example(c) for j, c in enumerate(clips) if j != i]) for i in range(len(clips))]


@pytest.mark.parametrize("view", ["full", "128"])
def test_shifts_are_recovered_within_a_frame_of_the_clips_own_reading(clips, view):
    """A chance-level offset (uniform over +-15 frames) lands within 1 frame of the truth ~10 % of the time."""
    report = validate(clips, view, held_out_models(clips, view), shifts=SHIFTS, mismatches=1)
    assert report["clips_unmeasured"] == 0
    assert report["within_1_frame_relative"] >= 0.85, report


@pytest.mark.parametrize("view", ["full", "128"])
def test_mismatched_speech_reads_under_the_clips_own_confidence(clips, view):
    """Each clip with another speaker's speech (the other three clips' audio) against its own."""
    wins = 0
    for i, (clip, model) in enumerate(zip(clips, held_out_models(clips, view))):
        landmarks, crops = (clip.landmarks, clip.crops) if view == "full" else (clip.landmarks_128, clip.crops_128)
        own = measure_sync(landmarks, clip.audio, SAMPLE_RATE, clip.fps, crops=crops, model=model).confidence
        others = [measure_sync(landmarks, fitted(donor.audio, len(clip.audio)), SAMPLE_RATE, clip.fps, crops=crops,
                               model=model).confidence
                  for j, donor in enumerate(clips) if j != i]
        wins += sum(own > other for other in others)
    assert wins >= 10, wins  # of 12 pairs; chance is 6


def test_confidence_of_unrelated_speech_sits_near_zero(clips):
    """The confidence is in null standard deviations above what chance picks as a peak: unrelated speech ~0."""
    values = [measure_sync(c.landmarks, fitted(clips[(i + 1) % len(clips)].audio, len(c.audio)), SAMPLE_RATE, c.fps,
                           crops=c.crops).confidence for i, c in enumerate(clips)]
    assert abs(np.mean(values)) < 1.0, values


def test_an_advanced_audio_reads_a_negative_offset(clips):
    clip = clips[2]  # real3dportrait May: reads 0 or 1 in sync
    base = measure_sync(clip.landmarks, clip.audio, SAMPLE_RATE, clip.fps, crops=clip.crops).offset_frames
    early = measure_sync(clip.landmarks, delayed(clip.audio, -5, clip.fps), SAMPLE_RATE, clip.fps, crops=clip.crops)
    assert abs(early.offset_frames - base + 5) <= 1, (base, early.offset_frames)


def test_training_command_fits_two_clips_and_the_weights_load_through_safetensors(corpus, clips, tmp_path):
    out = tmp_path / "weights"
    cache = tmp_path / "cache"
    code = sync_model.main(["--corpus", str(corpus), "--out", str(out), "--cache", str(cache),
                            "--clips", SUBSET[0], SUBSET[1]])
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == [sync_model.CONFIG_FILE, sync_model.WEIGHTS_FILE]
    spec = json.loads((out / sync_model.CONFIG_FILE).read_text())
    assert spec["meta"]["clips"] == sorted(SUBSET[:2])
    assert spec["meta"]["command"].startswith("python -m metrics.sync_model")
    model = sync_model.load(out)
    assert model.weights.shape == (len(model.config.taps_s) * model.config.n_mels, len(sync_model.TARGETS))
    held_out = clips[2]  # a speaker neither training clip has
    result = measure_sync(held_out.landmarks, held_out.audio, SAMPLE_RATE, held_out.fps, crops=held_out.crops, model=model)
    assert result is not None and np.isfinite(result.confidence) and np.isfinite(result.curve).all()


def test_weights_of_another_format_are_refused(tmp_path):
    shipped = sync_model.load()
    sync_model.save(shipped, tmp_path)
    spec = json.loads((tmp_path / sync_model.CONFIG_FILE).read_text())
    spec["format"] = "pickle"
    (tmp_path / sync_model.CONFIG_FILE).write_text(json.dumps(spec))
    with pytest.raises(ValueError, match="format 'pickle'"):
        sync_model.load(tmp_path)


def test_model_config_names_the_bad_field():
    with pytest.raises(ValueError, match="ridge must be >= 0"):
        sync_model.SyncModelConfig(ridge=-1.0)


def test_the_shipped_network_never_trained_on_the_speakers_judged_here():
    meta = sync_net.shipped().meta
    assert set(SUBSET) == set(meta["held_out"]) and not set(SUBSET) & set(meta["clips"]), meta


@pytest.mark.parametrize("view", ["full", "128"])
def test_the_network_alone_recovers_shifts(clips, view):
    """The network's opinion alone (no landmark track votes, and it votes whatever its confidence): a
    chance-level lag is within a frame ~10 %."""
    alone = SyncConfig(regressor_weight=0.0, energy_weight=0.0, net_weight=1.0, net_min_confidence=float("-inf"))
    hits, cases = 0, 0
    for clip in clips:
        landmarks, crops = (clip.landmarks, clip.crops) if view == "full" else (clip.landmarks_128, clip.crops_128)
        base = measure_sync(landmarks, clip.audio, SAMPLE_RATE, clip.fps, alone, crops=crops).offset_frames
        for k in (-6, -3, 3, 6):
            shifted = measure_sync(landmarks, delayed(clip.audio, k, clip.fps), SAMPLE_RATE, clip.fps, alone, crops=crops)
            hits += abs(shifted.offset_frames - base - k) <= 1
            cases += 1
    assert hits >= 0.75 * cases, (hits, cases)


def test_network_training_command_trains_on_two_clips_and_the_weights_load_through_safetensors(corpus, clips, tmp_path):
    out = tmp_path / "net"
    code = sync_net.main(["--corpus", str(corpus), "--out", str(out), "--cache", str(tmp_path / "cache"),
                          "--clips", SUBSET[0], SUBSET[1], "--steps", "30"])
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == [sync_net.CONFIG_FILE, sync_net.WEIGHTS_FILE]
    spec = json.loads((out / sync_net.CONFIG_FILE).read_text())
    assert spec["meta"]["clips"] == sorted(SUBSET[:2]) and spec["config"]["steps"] == 30
    assert spec["meta"]["command"].startswith("python -m metrics.sync_net")
    net = sync_net.load(out)
    assert not net.training
    held_out = clips[2]  # a speaker neither training clip has
    result = measure_sync(held_out.landmarks, held_out.audio, SAMPLE_RATE, held_out.fps, crops=held_out.crops, net=net)
    assert result is not None and np.isfinite(result.confidence) and np.isfinite(result.curve).all()


def test_network_training_refuses_a_corpus_of_one_clip(corpus, tmp_path, capsys):
    code = sync_net.main(["--corpus", str(corpus), "--out", str(tmp_path / "net"), "--cache", str(tmp_path / "cache"),
                          "--clips", SUBSET[0]])
    assert code == 2 and "needs >= 2 MP4 clips" in capsys.readouterr().err
    assert not (tmp_path / "net").exists()


def test_network_weights_of_another_format_or_shape_are_refused(tmp_path):
    net = sync_net.shipped()
    sync_net.save(net, tmp_path)
    spec = json.loads((tmp_path / sync_net.CONFIG_FILE).read_text())
    spec["config"]["embed_dim"] = 32
    (tmp_path / sync_net.CONFIG_FILE).write_text(json.dumps(spec))
    with pytest.raises(ValueError, match="weights do not fit the config"):
        sync_net.load(tmp_path)
    spec["format"] = "pickle"
    (tmp_path / sync_net.CONFIG_FILE).write_text(json.dumps(spec))
    with pytest.raises(ValueError, match="format 'pickle'"):
        sync_net.load(tmp_path)


def test_network_config_names_the_bad_field():
    with pytest.raises(ValueError, match="window_frames must be odd"):
        sync_net.SyncNetConfig(window_frames=4)
