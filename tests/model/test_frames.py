"""model.frames: the one image <-> tensor conversion of rendering and training."""

from __future__ import annotations

import warnings

import numpy as np
import torch

from model.frames import images_to_tensor, tensor_to_images


def test_images_become_channels_first_floats_and_round_trip_unchanged():
    images = np.random.default_rng(0).integers(0, 256, (2, 5, 8, 8, 3), dtype=np.uint8)  # (B, F, S, S, 3)
    tensor = images_to_tensor(images)
    assert tensor.shape == (2, 5, 3, 8, 8) and tensor.dtype == torch.float32 and tensor.is_contiguous()
    assert torch.equal(tensor[1, 2, 0], torch.from_numpy(images[1, 2, :, :, 0]).float() / 255.0)
    assert np.array_equal(tensor_to_images(tensor), images)


def test_frames_clip_to_the_byte_range_and_round_halves_to_even():
    frames = torch.tensor([-0.5, 0.0, 0.5 / 255, 1.5 / 255, 2.5 / 255, 1.0, 2.0]).reshape(1, 7, 1).expand(3, 7, 1)
    assert tensor_to_images(frames).reshape(7, 3)[:, 0].tolist() == [0, 0, 0, 2, 2, 255, 255]


def test_a_read_only_buffer_converts_without_a_warning_and_stays_untouched():
    """Regression: a portrait read back from a bytes column is read-only, and torch warns on those."""
    data = bytes(range(48))
    portrait = np.frombuffer(data, np.uint8).reshape(4, 4, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tensor = images_to_tensor(portrait)
    tensor.mul_(0)
    assert np.frombuffer(data, np.uint8).tolist() == list(range(48))
