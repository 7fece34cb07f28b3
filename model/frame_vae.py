"""Frame codec: a convolutional VAE between RGB frames and a latent grid, decoded against the portrait.

Each (3, S, S) frame becomes a (latent_channels, S/2^k, S/2^k) grid, k = len(vae_channels); the
transformer sees it cut into P = (latent_size / latent_patch)^2 tokens.

The decoder is reference-conditioned: it sees the video's portrait (the SFA sink frame) through the
encoder's multi-scale features, predicts a dense flow that warps the portrait's pixels, and blends in
newly painted pixels (open mouth, closed lids, disoccluded background) through a mask:

    frame = mask * warp(portrait, flow) + (1 - mask) * painted

With `vae_lid_layer`, a third layer joins the blend (a softmax over three weights instead of a sigmoid):
the portrait's skin sampled a few pixels above each pixel, along a second flow. A closed lid is skin
where the open eye was; painted from nothing it is a few pixels at 128 px that the painted layer learns
last (it blurs them), while copied from above the eye it only needs the blend weight to flip there.
The lid layer also brings a readout of the blink from the latent's eye cells (`read_blink`); trained
against blink labels (training/losses.py) it makes the encoder carry the lid, which the decoder can then
learn to draw with either layer.

Why: a latent of 16x16x8 cannot carry a face's texture sharply, and a blurred face loses its identity
(and its landmarks) — but a talking head's pixels are almost all the portrait's, moved. So the latent
only has to say how the face moved and what opened or closed, identity comes from the portrait by
construction, and the model generalizes to faces it never saw (warping is identity-agnostic). This is
the motion-transfer idea of FOMM / LIA, in the latent the SFA transformer predicts.

GroupNorm rather than BatchNorm, so a video's frames never depend on which videos share its batch. The
encoder is a VAE's (`posterior`: mean and log-variance), but the model only ever uses the mean; the loss
that trains it lives in training/losses.py.

Shapes: B batch, S image side, Cl latent channels, L latent grid side.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .config import GeneratorConfig
from .face_regions import EYES_REGION, region_cells


def norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, channels), channels)


class ResBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            norm(channels), nn.SiLU(), nn.Conv2d(channels, channels, 3, padding=1),
            norm(channels), nn.SiLU(), nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class Reference(NamedTuple):
    """The portrait as the decoder needs it: pixels, encoder features per scale, and its latent."""

    image: torch.Tensor  # (B, 3, S, S) in [0, 1]
    features: tuple[torch.Tensor, ...]  # encoder features at S, S/2, ..., S/2^k (finest first)
    latent: torch.Tensor  # (B, Cl, L, L): the posterior mean

    def repeat_frames(self, frames: int) -> "Reference":
        """Each batch item repeated `frames` times (batch-major), to decode (B * F) latents at once."""
        def rep(x: torch.Tensor) -> torch.Tensor:
            return x.repeat_interleave(frames, dim=0)

        return Reference(rep(self.image), tuple(rep(f) for f in self.features), rep(self.latent))


class FrameVAE(nn.Module):
    max_flow = 0.5  # largest displacement, in grid_sample's [-1, 1] units (a quarter of the frame)
    lid_lift = 5.0 / 128  # the lid layer starts sampling this far above each pixel: the lid skin over an eye
    lid_start_logit = -4.0  # the lid layer's blend logit at the start: e^-4 against the mask's ~e^3, ~0.1 % of the blend

    def __init__(self, config: GeneratorConfig):
        super().__init__()
        self.config = config
        chans = config.vae_channels
        self.stem = nn.Conv2d(3, chans[0], 3, padding=1)
        self.down = nn.ModuleList()
        c_in = chans[0]
        for c in chans:
            self.down.append(nn.Sequential(nn.Conv2d(c_in, c, 4, stride=2, padding=1), ResBlock(c)))  # halves H, W
            c_in = c
        self.to_latent = nn.Sequential(norm(c_in), nn.SiLU(), nn.Conv2d(c_in, 2 * config.latent_channels, 3, padding=1))

        # decoder: at each scale, coarse to fine, join the portrait's features of that scale (1x1 conv)
        ref_chans = (chans[0], *chans)  # encoder feature widths at S, S/2, ..., finest first
        self.from_latent = nn.Conv2d(config.latent_channels, chans[-1], 3, padding=1)
        self.join = nn.ModuleList()
        self.up = nn.ModuleList()
        c_in = chans[-1]
        for level, c in zip(range(len(chans), 0, -1), reversed(chans)):
            self.join.append(nn.Conv2d(c_in + ref_chans[level], c_in, 1))
            self.up.append(nn.Sequential(ResBlock(c_in), nn.Upsample(scale_factor=2, mode="nearest"),
                                         nn.Conv2d(c_in, c, 3, padding=1)))
            c_in = c
        self.join.append(nn.Conv2d(c_in + ref_chans[0], c_in, 1))
        # flow at half resolution (smooth, cheap), upsampled; mask and painted pixels at full resolution
        self.to_flow = nn.Sequential(norm(chans[1]), nn.SiLU(), nn.Conv2d(chans[1], 2, 3, padding=1))
        self.to_paint = nn.Sequential(norm(c_in), nn.SiLU(), nn.Conv2d(c_in, 4, 3, padding=1))
        nn.init.zeros_(self.to_flow[-1].weight)  # start as "the portrait, unmoved"
        nn.init.zeros_(self.to_flow[-1].bias)
        nn.init.constant_(self.to_paint[-1].bias[:1], 3.0)  # mask ~0.95: copy the portrait at first
        if config.vae_lid_layer:
            self.to_lid_flow = nn.Sequential(norm(chans[1]), nn.SiLU(), nn.Conv2d(chans[1], 2, 3, padding=1))
            self.to_lid = nn.Sequential(norm(c_in), nn.SiLU(), nn.Conv2d(c_in, 1, 3, padding=1))
            nn.init.zeros_(self.to_lid_flow[-1].weight)  # start: straight up by lid_lift (y < 0 is up)
            lift = math.atanh(2.0 * self.lid_lift / self.max_flow)  # 2 / side: pixels -> [-1, 1] units
            self.to_lid_flow[-1].bias.data.copy_(torch.tensor([0.0, -lift]))
            nn.init.zeros_(self.to_lid[-1].weight)
            nn.init.constant_(self.to_lid[-1].bias, self.lid_start_logit)
            self.lid_readout = nn.Linear(config.latent_channels, 1)  # eye cells' mean latent -> blink label

    # ------------------------------------------------------------------ encoder
    def posterior(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]]:
        """(B, 3, S, S) in [0, 1] -> mean, log-variance (B, Cl, L, L), features per scale."""
        h = self.stem(frames * 2.0 - 1.0)
        features = [h]
        for stage in self.down:
            h = stage(h)
            features.append(h)
        mean, logvar = self.to_latent(h).chunk(2, dim=1)
        return mean, logvar.clamp(-20.0, 10.0), tuple(features)

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """Deterministic latent (the posterior mean): (B, 3, S, S) -> (B, Cl, L, L)."""
        return self.posterior(frames)[0]

    def reference(self, portraits: torch.Tensor) -> Reference:
        """Encode the portraits once per video: (B, 3, S, S) in [0, 1] -> Reference."""
        mean, _, features = self.posterior(portraits)
        return Reference(portraits, features, mean)

    # ------------------------------------------------------------------ decoder
    def decode(self, latents: torch.Tensor, reference: Reference) -> torch.Tensor:
        """(B, Cl, L, L) latents against their (B-item) reference -> (B, 3, S, S) in [0, 1]."""
        h = self.from_latent(latents)
        levels = len(self.up)
        half = None
        for i, (join, up) in enumerate(zip(self.join, self.up)):
            h = join(torch.cat((h, reference.features[levels - i]), dim=1))
            if i == levels - 1:  # at S/2, with the portrait's S/2 features joined
                half = h
            h = up(h)
        h = self.join[-1](torch.cat((h, reference.features[0]), dim=1))
        paint = self.to_paint(h)
        painted = torch.sigmoid(paint[:, 1:])
        grid = _identity_grid(latents.shape[0], reference.image.shape[-2:], h.device, h.dtype) + self._flow(self.to_flow, half)
        warped = self._sample(reference.image, grid)
        if not self.config.vae_lid_layer:
            mask = torch.sigmoid(paint[:, :1])
            return mask * warped + (1.0 - mask) * painted
        lid = self._sample(reference.image, grid + self._flow(self.to_lid_flow, half))
        weights = torch.softmax(torch.cat((paint[:, :1], self.to_lid(h), torch.zeros_like(paint[:, :1])), dim=1), dim=1)
        return weights[:, :1] * warped + weights[:, 1:2] * lid + weights[:, 2:] * painted

    def _flow(self, head: nn.Module, half: torch.Tensor) -> torch.Tensor:
        """A flow head on the S/2 features -> (B, S, S, 2) displacement as (x, y), bounded by max_flow."""
        flow = F.interpolate(head(half), size=(2 * half.shape[-2], 2 * half.shape[-1]), mode="bilinear",
                             align_corners=False)
        return self.max_flow * torch.tanh(flow).permute(0, 2, 3, 1)

    @staticmethod
    def _sample(image: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        return F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=False)

    # ------------------------------------------------------------------ blink readout and parameter groups
    def read_blink(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, Cl, L, L) latents -> (B,) the blink label they carry (1 open, 0 closed); needs the lid layer."""
        eyes = region_cells(latents.shape[-1], EYES_REGION).to(latents)
        pooled = (latents * eyes).sum((-2, -1)) / eyes.sum()  # (B, Cl)
        return self.lid_readout(pooled)[:, 0]

    def decoder_parameters(self) -> list[nn.Parameter]:
        """What maps a latent to pixels; the rest (the encoder) defines the latent space stage 2 learns in."""
        parts = [self.from_latent, self.join, self.up, self.to_flow, self.to_paint]
        if self.config.vae_lid_layer:
            parts += [self.to_lid_flow, self.to_lid, self.lid_readout]
        return [p for part in parts for p in part.parameters()]


def _identity_grid(batch: int, size: torch.Size, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """grid_sample's sampling grid that returns the input unchanged: (B, H, W, 2) as (x, y) in [-1, 1]."""
    theta = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], device=device, dtype=dtype).expand(batch, 2, 3)
    return F.affine_grid(theta, [batch, 1, *size], align_corners=False)
