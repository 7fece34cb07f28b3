"""The expert sync loss (training/sync_expert.py): the shipped sync network, frozen, judges aligned frames
against their speech, prefers a real mouth on its own speech to the same mouth out of time, and passes its
gradient to the frames; LossConfig.sync_weight adds it to stage 2's loss."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from faces.align import align_face
from media.video import read_video
from metrics import sync_net
from model import CONTROL_NAMES
from model.config import ConfigError
from tests.model.conftest import small_generator
from training.config import LossConfig
from training.losses import transformer_loss
from training.sync_expert import SyncExpert

SECONDS = 3.0


@pytest.fixture(scope="module")
def expert() -> SyncExpert:
    return SyncExpert()


@pytest.fixture(scope="module")
def real_speaker(shared_media):
    """(frames (1, F, 3, 128, 128) aligned as the generator draws them, audio (1, N)) of a speaker the
    shipped sync network never trained on."""
    name = "megactor_ENTF_2.mp4"
    assert name in sync_net.HELD_OUT_SPEAKERS
    clip = read_video(shared_media / "corpus" / name, max_frames=int(SECONDS * 25) + 1)
    aligned = np.stack([align_face(f, 128).image for f in clip.frames])
    frames = torch.from_numpy(aligned).permute(0, 3, 1, 2).float().div(255)[None]
    return frames, torch.from_numpy(np.asarray(clip.audio, np.float32))[None], clip.fps, clip.sample_rate


def test_the_mouth_crop_sits_on_the_aligned_mouth(real_speaker, expert):
    frames, *_ = real_speaker
    windows = expert.mouth_windows(frames)
    assert windows.shape == (1, frames.shape[1] - 4, 5, 32, 48)
    # the lips are the darkest band of the crop, in its middle rows (the crop centre sits just below them)
    rows = frames[0, :, 1].mean(0)  # green channel, time-averaged (128, 128)
    from training.sync_expert import mouth_grid

    grid = mouth_grid(128)[0]  # (32, 48, 2) in [-1, 1]
    y_pixels = ((grid[:, 0, 1] + 1) * 128 - 1) / 2
    band = rows[y_pixels.round().long(), 44:84].mean(1)  # brightness of each crop row over the mouth's width
    assert 8 <= int(band.argmin()) <= 24


def test_the_expert_prefers_a_real_mouth_on_its_own_speech_to_the_same_mouth_out_of_time(real_speaker, expert):
    frames, audio, fps, rate = real_speaker
    F = frames.shape[1]
    shifts = list(range(-8, 9, 2))  # the speech moved by up to 320 ms against the mouth
    with torch.no_grad():
        losses = [float(expert.loss(frames, expert.audio_windows(audio, rate, fps, torch.tensor([s]), F)))
                  for s in shifts]
    assert abs(shifts[int(np.argmin(losses))]) <= 2, losses
    in_time = losses[shifts.index(0)]
    for shift in (-6, 6):  # 240 ms early or late: far from the in-time loss
        assert losses[shifts.index(shift)] > in_time + 1.0, losses


def test_the_gradient_reaches_the_frames_and_the_network_stays_frozen(real_speaker, expert):
    frames, audio, fps, rate = real_speaker
    frames = frames[:, :12].clone().requires_grad_(True)
    loss = expert.loss(frames, expert.audio_windows(audio, rate, fps, torch.tensor([0]), 12))
    loss.backward()
    mouth = frames.grad[0, :, :, 78:105, 44:84].abs().mean()
    forehead = frames.grad[0, :, :, 10:40, 44:84].abs().mean()
    assert mouth > 0 and forehead == 0  # only the mouth crop's pixels are judged
    assert all(p.grad is None and not p.requires_grad for p in expert.net.parameters())


def test_sync_weight_adds_the_expert_term_to_stage_two(expert):
    g = small_generator().train()
    S, F = g.config.image_size, 8
    torch.manual_seed(0)
    portrait, frames = torch.rand(2, 3, S, S), torch.rand(2, F, 3, S, S)
    audio = torch.randn(2, int(F * 16000 / 25)) * 0.1
    controls = torch.full((2, F, len(CONTROL_NAMES)), math.nan)
    torch.manual_seed(1)
    plain = transformer_loss(g, LossConfig(control_dropout=0.0), portrait, frames, audio, 25.0, controls)
    torch.manual_seed(1)
    loss = transformer_loss(g, LossConfig(control_dropout=0.0, sync_weight=0.5), portrait, frames, audio, 25.0,
                            controls, sync_expert=expert, sample_rate=16000)
    assert "sync_expert" not in plain and loss["sync_expert"] > 0
    torch.testing.assert_close(loss["total"], plain["total"] + 0.5 * loss["sync_expert"])
    loss["total"].backward()
    assert g.head.weight.grad is not None
    with pytest.raises(ValueError, match="sync_expert"):
        transformer_loss(g, LossConfig(sync_weight=0.5), portrait, frames, audio, 25.0, controls)


def test_sync_weight_is_refused_for_the_flow_head_and_below_zero():
    from model import get_preset

    with pytest.raises(ConfigError, match="sync_weight"):
        LossConfig(sync_weight=-1.0)
    with pytest.raises(ConfigError, match="flow head"):
        LossConfig(sync_weight=1.0).check_fits(get_preset("tiny", head="flow"), "preset tiny")


def test_train_refuses_a_sync_expert_that_is_not_a_sync_network(tmp_path, capsys):
    from jobs.train import main

    (tmp_path / "sync_net.json").write_text('{"format": "something-else"}')
    rc = main(["--dataset", "synthetic", "--output", str(tmp_path / "run"), "--sync-weight", "1",
               "--sync-expert", str(tmp_path)])
    assert rc == 2
    err = capsys.readouterr().err
    assert "--sync-expert" in err and "is not a sync network" in err
    assert not (tmp_path / "run").exists()
