"""The two training stages' losses, weighted by a LossConfig, and the modules a DeepSpeed engine wraps.

Stage 1, `vae_loss`: the frame VAE reconstructs frames against their clips' portraits (its decoder
warps the portrait). Stage 2, `transformer_loss`: with the VAE frozen, the rest of the generator
predicts each frame's latent from the previous one (teacher forcing under the SFA mask), controls
hidden at random so that absent controls leave the model free (FCIC's "control dropout"). With the flow
head (GeneratorConfig.head = "flow") the prediction is scored by flow matching instead of squared error
(`flow_matching_error`).

Shapes: B batch, F frames, S image side, Cl latent channels, L latent grid side, d_model token width.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from model.controls import CONTROL_NAMES
from model.face_regions import EYES_REGION, MOUTH_REGION, region_cells
from training.config import LossConfig

# the KL term is tiny (as in latent-diffusion autoencoders): the latent is for reconstruction, not sampling
KL_WEIGHT = 1e-6


def weighted_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    weights = weights.expand_as(values)
    return (values * weights).sum() / weights.sum().clamp(min=1e-6)


def concordance_error(pred: torch.Tensor, target: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
    """1 - Lin's concordance correlation of each latent cell's track over the window, averaged over `cells`.

    pred, target (B, F, Cl, L, L); cells (L, L) weights. Concordance 2 cov / (var_p + var_t + (mean_p -
    mean_t)^2) is 1 only for the same track: a prediction in step but shrunk toward its mean (what squared
    error settles on where several mouth shapes fit a sound) loses by its lost spread, one of the right
    size but out of step by its lost covariance. Each track weighs by its true variance, so cells that
    barely move in a window (their concordance is noise) count little.
    """
    mean_p, mean_t = pred.mean(dim=1), target.mean(dim=1)  # (B, Cl, L, L)
    dev_p, dev_t = pred - mean_p[:, None], target - mean_t[:, None]
    var_p, var_t = dev_p.pow(2).mean(dim=1), dev_t.pow(2).mean(dim=1)
    cov = (dev_p * dev_t).mean(dim=1)
    concordance = 2 * cov / (var_p + var_t + (mean_p - mean_t).pow(2)).clamp(min=1e-8)
    return weighted_mean(1 - concordance, var_t.detach() * cells)


def drop_controls(values: torch.Tensor, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Hide each control of each clip entirely with probability p: (B, F, C) values, NaN = absent."""
    B, _, C = values.shape
    hide = torch.rand(B, 1, C, generator=generator, device=values.device) < p  # (B, 1, C)
    return values.masked_fill(hide, math.nan)


def vae_loss(vae: nn.Module, losses: LossConfig, frames: torch.Tensor, portraits: torch.Tensor,
             blink: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Reconstruction of frames (B, 3, S, S) against their clips' portraits (B, 3, S, S), in [0, 1].

    L1 + MSE over the frame, plus L1 weighted by how much each pixel differs from the portrait: most
    of a talking head is static, and the mouth and eyes would otherwise drown in it. With
    `vae_region_weight`, also the squared error over the eyes' and mouth's pixels (face_regions): a
    closed lid is a few pixels at 128 px, and a squared error, unlike L1, grows its gradient with the
    error, so the few badly drawn lid pixels outweigh the many slightly blurred ones. With
    `vae_blink_weight` and labels `blink` (B,) (1 open, 0 closed, NaN unknown), the lid layer's readout
    learns the label from the latent's eye cells.
    """
    mean, logvar, _ = vae.posterior(frames)
    z = mean + torch.randn_like(mean) * (0.5 * logvar).exp()
    recon = vae.decode(z, vae.reference(portraits))
    error = (recon - frames).abs()
    moved = F.avg_pool2d((frames - portraits).abs().mean(1, keepdim=True), 5, stride=1, padding=2)
    motion_l1 = (error * moved).sum() / (3 * moved.sum()).clamp(min=1e-6)
    squared = error.pow(2)
    size = frames.shape[-1]
    features = torch.maximum(region_cells(size, EYES_REGION), region_cells(size, MOUTH_REGION))  # (S, S)
    region_mse = (squared * features.to(error)).sum() / (error.shape[0] * 3 * features.sum())
    l1 = error.mean()
    mse = squared.mean()
    kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).mean()
    total = l1 + mse + motion_l1 + losses.vae_region_weight * region_mse + KL_WEIGHT * kl
    out = {"l1": l1, "mse": mse, "motion_l1": motion_l1, "region_mse": region_mse, "kl": kl}
    if losses.vae_blink_weight > 0 and blink is not None:
        known = torch.isfinite(blink)
        error = (vae.read_blink(mean) - blink.nan_to_num()).pow(2)
        out["blink_mse"] = (error * known).sum() / known.sum().clamp(min=1)
        total = total + losses.vae_blink_weight * out["blink_mse"]
    return {"total": total, **out}


def flow_matching_error(head: nn.Module, cond: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Squared error (..., K) of the flow head's velocity on the straight path from noise to `target`.

    cond (..., D) hidden states, target (..., K) token deltas. Per token: t ~ U[0, 1],
    x_0 ~ N(0, noise_std^2), x_t = (1 - t) x_0 + t x_1; the velocity to regress is x_1 - x_0 (rectified flow).
    """
    x0 = torch.randn_like(target) * head.noise_std
    t = torch.rand(target.shape[:-1], device=target.device, dtype=target.dtype)  # (...)
    xt = (1 - t[..., None]) * x0 + t[..., None] * target
    return (head.velocity(xt, t, cond) - (target - x0)).pow(2)


def flow_transformer_loss(generator: nn.Module, losses: LossConfig, ref: torch.Tensor, target: torch.Tensor,
                          prev: torch.Tensor, audio_tokens: torch.Tensor,
                          control_tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """Stage 2's loss for the flow head: flow matching of each frame token's delta from the portrait.

    Latents ref (B, Cl, L, L), target and history prev (B, F, Cl, L, L). The regression loss's weights on
    what moved (`motion_mse`, `change_weight`) depend on the target, so under flow matching they would tilt
    the learned distribution towards large motions; the mouth term's weight depends on the cell only, so it
    stays (`mouth_weight`).
    """
    P = generator.config.frame_tokens
    hidden = generator.hidden_full(ref, prev, audio_tokens, control_tokens)[:, :, :P]  # (B, F, P, d_model)
    deltas = generator.patchify(target - ref[:, None])  # (B, F, P, K)
    squared = flow_matching_error(generator.flow_head, hidden, deltas)  # (B, F, P, K)
    flow_mse = squared.mean()
    cells = region_cells(target.shape[-1]).to(target.device, target.dtype)  # (L, L)
    mouth = generator.patchify(cells.expand(target.shape[2], -1, -1))  # (P, K)
    mouth_mse = weighted_mean(squared, mouth)
    return {"total": flow_mse + losses.mouth_weight * mouth_mse, "flow_mse": flow_mse, "mouth_mse": mouth_mse}


def self_forced_history(generator: nn.Module, share: float, prev: torch.Tensor, ref: torch.Tensor,
                        audio_tokens: torch.Tensor, control_tokens: torch.Tensor) -> torch.Tensor:
    """Replace the teacher-forced history of a random `share` of clips by the model's own rollout.

    prev (B, F, Cl, L, L) latents of frames -1..F-2; ref (B, Cl, L, L); audio (B, F, A, d_model) and
    control tokens (B, F, C, d_model). Why: with the true previous frame in its block, the model learns to
    copy its pose and ignore the control tokens (the pose barely changes between frames). Its own rollout
    drifts from the truth, as in inference, so the target pose and blink can only come from the controls
    (and the mouth from the audio). The rollout runs without gradients, so the step costs one cached pass more.
    """
    own = torch.rand(prev.shape[0], device=prev.device) < share  # (B,)
    if not own.any():
        return prev
    with torch.no_grad():
        rolled = list(generator.rollout(ref[own], audio_tokens[own, :-1], control_tokens[own, :-1]))
    prev = prev.clone()
    if rolled:
        prev[own, 1:] = torch.stack(rolled, dim=1).to(prev.dtype)
    return prev


def transformer_loss(generator: nn.Module, losses: LossConfig, portrait: torch.Tensor | None,
                     frames: torch.Tensor | None, audio: torch.Tensor, fps: float,
                     controls: torch.Tensor | None = None,
                     latents: tuple[torch.Tensor, torch.Tensor] | None = None,
                     audio_start: torch.Tensor | None = None, sync_expert=None,
                     sample_rate: int | None = None) -> dict[str, torch.Tensor]:
    """Stage-2 loss on a batch of clips of equal length.

    portrait (B, 3, S, S) and frames (B, F, 3, S, S) in [0, 1]; audio (B, N) 16 kHz starting at the
    clip's first frame, or, with `audio_start` (B,), a longer recording in which the clip starts at
    frame audio_start[b] (so the audio encoder sees the sound around the clip and the utterance's
    level, as in inference); controls (B, F, C) in CONTROL_NAMES order with NaN = absent, or None.
    The VAE is used frozen, so a caller that has its latents cached passes `latents` = (portrait
    (B, Cl, L, L), frames (B, F, Cl, L, L)) instead of the images. Control dropout, history noise and
    self-forcing apply in training mode only. With `sync_weight`, `sync_expert` (sync_expert.SyncExpert)
    judges the predicted frames, decoded against `portrait`, with the audio at `sample_rate`.
    """
    if latents is None:
        with torch.no_grad():
            latents = generator.vae.encode(portrait), generator.encode_frames(frames)
    ref, target = latents  # (B, Cl, L, L), (B, F, Cl, L, L)
    B, F_ = target.shape[:2]
    if audio_start is None:
        audio_tokens = generator.audio(audio, fps, F_)  # (B, F, A, d_model)
    else:
        starts = audio_start.to(target.device, torch.long)  # (B,)
        every = generator.audio(audio, fps, int(starts.max()) + F_)  # (B, F_all, A, d_model)
        frame = starts[:, None] + torch.arange(F_, device=target.device)  # (B, F)
        audio_tokens = every[torch.arange(B, device=target.device)[:, None], frame]  # (B, F, A, d_model)
    values = controls if controls is not None else torch.full((B, F_, len(CONTROL_NAMES)), math.nan)
    values = values.to(target.device, target.dtype)
    if generator.training:
        values = drop_controls(values, losses.control_dropout)
    control_tokens = generator.controls(values)
    prev = torch.cat((ref[:, None], target[:, :-1]), dim=1)  # teacher forcing: (B, F, Cl, L, L)
    changed = (target - prev).abs()  # what moved since the true previous frame (blinks, jaw drops)
    if generator.training and losses.self_forcing > 0:
        prev = self_forced_history(generator, losses.self_forcing, prev, ref, audio_tokens, control_tokens)
    if generator.training and losses.history_noise > 0:
        prev = prev + torch.randn_like(prev) * losses.history_noise * target.std()
    if generator.config.head == "flow":
        return flow_transformer_loss(generator, losses, ref, target, prev, audio_tokens, control_tokens)
    pred = generator.forward_full(ref, prev, audio_tokens, control_tokens)
    squared = (pred - target).pow(2)
    latent_mse = squared.mean()
    # motion matters more than the static face: weight the error on what moved from the portrait
    motion_mse = weighted_mean(squared, (target - ref[:, None]).abs())
    # ... but "moved from the portrait" is dominated by slow head pose; fast events (a blink lasts 4
    # frames, a jaw drop 2-3) are where the frame changes most from the one before, so weight those too
    change_mse = weighted_mean(squared, changed)
    # ... and the jaw's few-pixel drop is a small share of either mean, beside the pose, though the audio
    # window alone predicts the opening; a term on the mouth and chin's cells (a fifth of the grid) makes
    # it count
    mouth = region_cells(target.shape[-1]).to(target.device, target.dtype)  # (L, L)
    mouth_mse = weighted_mean(squared, mouth)
    total = latent_mse + motion_mse + losses.change_weight * change_mse + losses.mouth_weight * mouth_mse
    terms = {"latent_mse": latent_mse, "motion_mse": motion_mse, "change_mse": change_mse, "mouth_mse": mouth_mse}
    if losses.mouth_concordance_weight > 0:
        terms["mouth_concordance"] = concordance_error(pred, target, mouth)
        total = total + losses.mouth_concordance_weight * terms["mouth_concordance"]
    if losses.sync_weight > 0:
        if sync_expert is None or portrait is None or sample_rate is None:
            raise ValueError("sync_weight needs a sync_expert, the portraits and the audio's sample_rate")
        run = sync_expert.judged_run(F_)
        starts = torch.zeros(B, dtype=torch.long) if audio_start is None else audio_start.cpu()
        heard = sync_expert.audio_windows(audio, sample_rate, fps, starts + run.start, run.stop - run.start)
        terms["sync_expert"] = sync_expert.loss(generator.decode_latents(pred[:, run], portrait), heard)
        total = total + losses.sync_weight * terms["sync_expert"]
    return {"total": total, **terms}


class VAELoss(nn.Module):
    """Stage 1's module for the engine: frames, their clips' portraits (B, 3, S, S) and blinks -> vae_loss."""

    def __init__(self, vae: nn.Module, losses: LossConfig | None = None):
        super().__init__()
        self.vae = vae
        self.losses = losses or LossConfig()

    def forward(self, frames: torch.Tensor, portraits: torch.Tensor, blink: torch.Tensor) -> dict[str, torch.Tensor]:
        return vae_loss(self.vae, self.losses, frames, portraits, blink)


class TransformerLoss(nn.Module):
    """Stage 2's module for the engine: a clip batch (images, or cached latents) -> transformer_loss.

    The sync expert is frozen and not the run's to save, so it is held outside the module's parameters."""

    def __init__(self, generator: nn.Module, fps: float, losses: LossConfig | None = None, sync_expert=None,
                 sample_rate: int | None = None):
        super().__init__()
        self.generator = generator
        self.fps = fps
        self.losses = losses or LossConfig()
        self.__dict__["sync_expert"] = sync_expert  # not a registered sub-module
        self.sample_rate = sample_rate

    def forward(self, audio, controls, portrait=None, frames=None, ref_latent=None, target_latents=None,
                audio_start=None):
        latents = None if ref_latent is None else (ref_latent, target_latents)
        return transformer_loss(self.generator, self.losses, portrait=portrait, frames=frames, audio=audio,
                                fps=self.fps, controls=controls, latents=latents, audio_start=audio_start,
                                sync_expert=self.sync_expert, sample_rate=self.sample_rate)
