"""The synthetic data-set builder: deterministic, holds the acceptance inputs out, labels what it renders."""

from __future__ import annotations

import json

import numpy as np
import pytest

from training.shards import ClipDataset, DatasetError
from training.synthetic import MIRROR_68, SyntheticConfig, build_synthetic_dataset, gather_portraits, mirror

SMALL = dict(num_clips=3, clips_per_shard=2, clip_frames=8, video_frame_times=(1.0,), include_flite=False)


@pytest.fixture(scope="module")
def built(tmp_path_factory, shared_media):
    config = SyntheticConfig(seed=7, media_root=str(shared_media), **SMALL)
    a = build_synthetic_dataset(config, tmp_path_factory.mktemp("a"))
    b = build_synthetic_dataset(config, tmp_path_factory.mktemp("b"))
    return config, ClipDataset(a), ClipDataset(b)


def test_same_seed_builds_identical_data(built):
    _, a, b = built
    assert len(a) == len(b) == 3
    for i in range(len(a)):
        for name in ("portrait", "frames", "audio", "controls"):
            np.testing.assert_array_equal(getattr(a[i], name), getattr(b[i], name), err_msg=f"clip {i} {name}")


def test_clips_have_the_documented_shapes_and_label_ranges(built):
    config, ds, _ = built
    clip = ds[0]
    assert clip.frames.shape == (8, 128, 128, 3) and clip.frames.dtype == np.uint8
    assert clip.portrait.shape == (128, 128, 3)
    assert clip.audio.shape == (config.clip_samples,) and clip.audio.dtype == np.float32
    assert ds.controls == ["yaw", "pitch", "roll", "blink", "gaze_x", "gaze_y", "lip"]
    labels = np.concatenate([ds[i].controls for i in range(len(ds))])
    assert np.all(np.abs(labels[:, 0]) <= config.max_yaw + 1e-4)
    assert np.all((labels[:, 3] >= 0) & (labels[:, 3] <= 1)), "blink is eye openness 0..1"
    assert np.all(np.abs(labels[:, 4:6]) <= 1), "gaze is -1..1"
    assert np.abs(clip.audio).max() > 0.01, "a clip carries real speech, not silence"


def test_held_out_portrait_and_speech_never_enter_the_data_set(built):
    _, ds, _ = built
    source = ds.manifest["source"]
    assert "biden.jpg" not in source["portraits"] and "english.wav" not in source["speech"]
    assert "obama.jpg" in source["portraits"] and "astronaut" in source["portraits"]
    with pytest.raises(ValueError, match="held-out portraits also listed"):
        SyntheticConfig(training_portraits=("obama.jpg", "biden.jpg"))
    with pytest.raises(ValueError, match="held-out speech also listed"):
        SyntheticConfig(training_speech=("english.wav",))


def test_a_different_seed_gives_different_clips(shared_media, tmp_path, built):
    _, ds, _ = built
    other = ClipDataset(build_synthetic_dataset(
        SyntheticConfig(seed=8, media_root=str(shared_media), **{**SMALL, "num_clips": 1}), tmp_path))
    assert not np.array_equal(other[0].frames, ds[0].frames)


def test_mirroring_keeps_landmark_semantics(shared_media):
    portrait = gather_portraits(SyntheticConfig(media_root=str(shared_media), training_portraits=("obama.jpg",),
                                                include_astronaut=False, video_frame_times=()))[0]
    flipped = mirror(portrait)
    assert sorted(MIRROR_68) == list(range(68))
    # the image-left eye's outer corner (36) stays left of the image-right eye's (45) after mirroring
    assert flipped.landmarks[36, 0] < flipped.landmarks[45, 0]
    assert flipped.landmarks[0, 0] < flipped.landmarks[16, 0]


def test_a_folder_without_a_data_set_is_refused_with_the_cause(tmp_path):
    with pytest.raises(DatasetError, match="no dataset.json"):
        ClipDataset(tmp_path)
    (tmp_path / "dataset.json").write_text(json.dumps({"format": 99}))
    with pytest.raises(DatasetError, match="format 99"):
        ClipDataset(tmp_path)
