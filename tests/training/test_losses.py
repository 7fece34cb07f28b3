"""The training losses (training/losses.py): each weight of a LossConfig adds its term, and the stage-2
history comes from teacher forcing, noise or the model's own rollout as configured."""

from __future__ import annotations

import math

import pytest
import torch

from model import CONTROL_NAMES, get_preset
from model.config import ConfigError
from tests.model.conftest import pinned_decoder, small_generator
from training.config import LossConfig
from training.losses import self_forced_history, transformer_loss, vae_loss


@pytest.fixture
def generator():
    return small_generator()


def test_training_loss_backpropagates_and_hides_controls(generator):
    generator.train()
    S, F = generator.config.image_size, 6
    portrait = torch.rand(2, 3, S, S)
    frames = torch.rand(2, F, 3, S, S)
    audio = torch.randn(2, int(F * 16000 / 25)) * 0.1
    controls = torch.full((2, F, len(CONTROL_NAMES)), math.nan)
    controls[..., 0] = 10.0
    loss = transformer_loss(generator, LossConfig(), portrait, frames, audio, 25.0, controls)
    loss["total"].backward()
    assert torch.isfinite(loss["total"]) and generator.head.weight.grad is not None
    assert all(p.grad is None for p in generator.vae.parameters())  # the VAE is frozen in stage 2
    reconstruction = vae_loss(generator.vae, LossConfig(), frames[0], portrait[:1].expand(F, -1, -1, -1))
    assert set(reconstruction) >= {"total", "l1", "motion_l1", "kl"} and torch.isfinite(reconstruction["total"])


def loss_and_teacher_forced_prediction(g, losses: LossConfig, ref: torch.Tensor, target: torch.Tensor):
    """transformer_loss on latents (1, F, Cl, L, L) with quiet noise as audio, and the prediction it scores."""
    F = target.shape[1]
    audio = torch.randn(1, F * 640) * 0.1
    with torch.no_grad():
        loss = transformer_loss(g, losses, None, None, audio, 25.0, latents=(ref, target))
        prev = torch.cat((ref[:, None], target[:, :-1]), dim=1)
        pred = g.forward_full(ref, prev, g.audio(audio, 25.0, F),
                              g.controls(torch.full((1, F, len(CONTROL_NAMES)), math.nan)))
    return loss, pred


def test_change_weight_adds_the_error_on_what_changed_since_the_previous_frame():
    """Only frame k differs from its predecessor (a step change), so the change term is frame k's error alone."""
    g = small_generator().eval()  # eval: no history noise, dropout or self-forcing
    S, F, k = g.config.image_size, 6, 3
    torch.manual_seed(0)
    ref = g.vae.reference(torch.rand(1, 3, S, S)).latent
    target = ref[:, None].repeat(1, F, 1, 1, 1)
    target[:, k:] += torch.randn_like(ref)[:, None]  # frames k.. moved from the portrait; only k changed
    loss, pred = loss_and_teacher_forced_prediction(g, LossConfig(change_weight=2.0), ref, target)
    changed = (target[:, k] - target[:, k - 1]).abs()
    expected = ((pred[:, k] - target[:, k]).pow(2) * changed).sum() / changed.sum()
    torch.testing.assert_close(loss["change_mse"], expected)
    torch.testing.assert_close(loss["total"], loss["latent_mse"] + loss["motion_mse"] + 2.0 * loss["change_mse"])


def test_mouth_weight_adds_the_error_on_the_mouth_cells():
    """A target that moved only inside MOUTH_REGION: the mouth term is the mean error over those cells."""
    from model.face_regions import region_cells

    g = small_generator().eval()
    S, F = g.config.image_size, 4
    torch.manual_seed(0)
    ref = g.vae.reference(torch.rand(1, 3, S, S)).latent  # (1, Cl, L, L)
    L = ref.shape[-1]
    cells = region_cells(L)
    assert 0 < cells.sum() < L * L and cells[0].sum() == 0 and cells[-1].sum() > 0  # lower face only
    target = ref[:, None] + torch.randn(1, F, *ref.shape[1:]) * cells  # moved in the mouth cells alone
    loss, pred = loss_and_teacher_forced_prediction(g, LossConfig(mouth_weight=3.0), ref, target)
    squared = (pred - target).pow(2)
    expected = (squared * cells).sum() / (cells.sum() * squared.numel() / (L * L))
    torch.testing.assert_close(loss["mouth_mse"], expected)
    torch.testing.assert_close(loss["total"], loss["latent_mse"] + loss["motion_mse"] + 3.0 * loss["mouth_mse"])


def test_self_forcing_trains_on_the_models_own_rollout_as_history():
    """self_forcing=1 puts exactly the inference rollout in each block; 0 leaves teacher forcing."""
    g = small_generator()
    S, F = g.config.image_size, 5
    ref = g.vae.reference(torch.rand(2, 3, S, S)).latent
    teacher = torch.cat((ref[:, None], torch.randn(2, F - 1, *ref.shape[1:])), dim=1)  # (B, F, Cl, L, L)
    audio_tokens = g.audio(torch.randn(2, int(F * 16000 / 25)) * 0.1, 25.0, F)
    control_tokens = g.controls(torch.full((2, F, len(CONTROL_NAMES)), math.nan))
    with torch.no_grad():
        rolled = torch.stack(list(g.rollout(ref, audio_tokens, control_tokens)), dim=1)  # (B, F, Cl, L, L)
        history = self_forced_history(g, 1.0, teacher, ref, audio_tokens, control_tokens)
    assert torch.equal(history[:, 0], ref)  # frame 0 still sees the portrait
    torch.testing.assert_close(history[:, 1:], rolled[:, :-1])
    assert not torch.allclose(history[:, 1:], teacher[:, 1:])

    assert torch.equal(self_forced_history(g, 0.0, teacher, ref, audio_tokens, control_tokens), teacher)


def test_self_forced_training_loss_differs_from_teacher_forcing_and_backpropagates():
    g = small_generator().train()
    S, F = g.config.image_size, 4
    torch.manual_seed(1)
    batch = torch.rand(2, 3, S, S), torch.rand(2, F, 3, S, S), torch.randn(2, F * 640) * 0.1, 25.0
    own = transformer_loss(g, LossConfig(self_forcing=1.0, history_noise=0.0), *batch)
    own["total"].backward()
    assert torch.isfinite(own["total"]) and g.head.weight.grad is not None
    teacher = transformer_loss(g, LossConfig(self_forcing=0.0, history_noise=0.0), *batch)
    assert not torch.isclose(own["total"], teacher["total"])


def test_vae_region_weight_adds_the_error_on_the_eyes_and_mouth_pixels():
    """A frame that differs from the (exactly copied) portrait in one eye only: the region term is that
    squared error over the eyes' and mouth's pixels, and the total grows by vae_region_weight times it."""
    from model import Generator, get_preset
    from model.face_regions import EYES_REGION, MOUTH_REGION, region_cells

    generator = Generator(get_preset("tiny", n_layers=1))
    S = generator.config.image_size
    vae = pinned_decoder(generator, 0.0)  # the reconstruction is the portrait, whatever the frame
    portrait = torch.rand(1, 3, S, S)
    frame = portrait.clone()
    eye = (slice(int(0.40 * S), int(0.44 * S)), slice(int(0.34 * S), int(0.40 * S)))
    frame[:, :, eye[0], eye[1]] = 0.0  # a closed lid, painted dark
    error = (portrait - frame).abs()
    features = torch.maximum(region_cells(S, EYES_REGION), region_cells(S, MOUTH_REGION))
    unweighted = vae_loss(vae, LossConfig(), frame, portrait)
    assert torch.isclose(unweighted["region_mse"], error.pow(2).sum() / (3 * features.sum()), rtol=1e-4)
    # all the error lies in the region, a small share of the frame: the region term is the frame's / share
    assert torch.isclose(unweighted["region_mse"] * features.mean(), unweighted["mse"], rtol=1e-4)
    weighted = vae_loss(vae, LossConfig(vae_region_weight=2.0), frame, portrait)
    torch.testing.assert_close(weighted["total"] - unweighted["total"], 2.0 * unweighted["region_mse"],
                               rtol=1e-4, atol=1e-6)


def test_a_window_in_a_longer_recording_gets_that_recordings_audio_tokens():
    g = small_generator(audio_level=True)
    B, F_, all_frames, fps = 2, 5, 12, 25.0
    torch.manual_seed(1)
    audio = torch.randn(B, all_frames * 640) * 0.1
    ref = torch.randn(B, *g.vae.encode(torch.rand(1, 3, 64, 64)).shape[1:])
    target = torch.randn(B, F_, *ref.shape[1:])
    starts = torch.tensor([0, 6])
    losses = LossConfig(history_noise=0.0, self_forcing=0.0)
    loss = transformer_loss(g, losses, None, None, audio, fps, latents=(ref, target), audio_start=starts)
    every = g.audio(audio, fps, all_frames)  # (B, 12, A, D)
    tokens = torch.stack([every[b, s:s + F_] for b, s in enumerate(starts.tolist())])
    controls = g.controls(torch.full((B, F_, len(CONTROL_NAMES)), math.nan))
    pred = g.forward_full(ref, torch.cat((ref[:, None], target[:, :-1]), 1), tokens, controls)
    assert loss["latent_mse"].item() == pytest.approx((pred - target).pow(2).mean().item(), rel=1e-5)


def test_the_blink_readout_loss_needs_the_lid_layer_and_skips_unknown_labels():
    g = small_generator(vae_lid_layer=True)
    losses = LossConfig(vae_blink_weight=1.0)
    frames = torch.rand(4, 3, 64, 64)
    blink = torch.tensor([1.0, 0.0, float("nan"), 0.5])
    torch.manual_seed(0)
    out = vae_loss(g.vae, losses, frames, frames, blink)
    with torch.no_grad():
        expected = (g.vae.read_blink(g.vae.encode(frames))[[0, 1, 3]] - blink[[0, 1, 3]]).pow(2).mean()
    assert torch.isfinite(out["total"]) and out["blink_mse"].item() == pytest.approx(float(expected), rel=1e-5)
    torch.manual_seed(0)
    without = vae_loss(g.vae, losses, frames, frames)  # no labels (or weight 0): the reconstruction terms only
    assert "blink_mse" not in without
    assert (out["total"] - without["total"]).item() == pytest.approx(out["blink_mse"].item(), rel=1e-4)
    with pytest.raises(ConfigError, match="vae_blink_weight trains the lid layer's readout, which preset base lacks"):
        losses.check_fits(get_preset("base"), "preset base")


def test_concordance_error_is_zero_for_the_true_track_and_pays_for_shrunk_or_shifted_motion():
    from model.face_regions import region_cells
    from training.losses import concordance_error

    torch.manual_seed(0)
    L = 8
    cells = region_cells(L)
    target = torch.randn(2, 24, 3, L, L)
    assert concordance_error(target, target, cells).abs() < 1e-6
    mean = target.mean(dim=1, keepdim=True)
    shrunk = mean + 0.4 * (target - mean)  # in step, 0.4 of the spread: concordance 0.8 / 1.16
    torch.testing.assert_close(concordance_error(shrunk, target, cells), torch.tensor(1 - 0.8 / 1.16))
    shifted = torch.roll(target, 3, dims=1)  # the right size, out of step: white noise has no covariance at lag 3
    assert concordance_error(shifted, target, cells) > 0.8
    # the squared error prefers the shrunk track to the shifted one; concordance too, but it still charges the shrink
    assert (shrunk - target).pow(2).mean() < (shifted - target).pow(2).mean()


def test_mouth_concordance_weight_adds_its_term_to_the_total():
    from model.face_regions import region_cells
    from training.losses import concordance_error

    g = small_generator().eval()
    S, F = g.config.image_size, 6
    torch.manual_seed(0)
    ref = g.vae.reference(torch.rand(1, 3, S, S)).latent
    cells = region_cells(ref.shape[-1])
    target = ref[:, None] + torch.randn(1, F, *ref.shape[1:]) * cells
    torch.manual_seed(1)  # the same audio for both
    plain, _ = loss_and_teacher_forced_prediction(g, LossConfig(), ref, target)
    assert "mouth_concordance" not in plain
    torch.manual_seed(1)
    loss, pred = loss_and_teacher_forced_prediction(g, LossConfig(mouth_concordance_weight=2.0), ref, target)
    torch.testing.assert_close(loss["mouth_concordance"], concordance_error(pred, target, cells))
    assert loss["mouth_concordance"] > 0
    torch.testing.assert_close(loss["total"], plain["total"] + 2.0 * loss["mouth_concordance"])
    with pytest.raises(ConfigError, match="mouth_concordance_weight"):
        LossConfig(mouth_concordance_weight=-1.0)
