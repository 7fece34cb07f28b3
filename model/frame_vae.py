"""Frame codec: a small convolutional VAE between RGB frames and a latent grid.

Each (3, S, S) frame becomes a (latent_channels, S/2^k, S/2^k) grid, k = len(vae_channels); the
transformer sees it cut into P = (latent_size / latent_patch)^2 tokens. GroupNorm rather than BatchNorm,
so a video's frames never depend on which other videos share its batch. The KL weight is tiny (as in
latent-diffusion autoencoders): the latent is for reconstruction, not for sampling.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import GeneratorConfig


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


class FrameVAE(nn.Module):
    kl_weight = 1e-6

    def __init__(self, cfg: GeneratorConfig):
        super().__init__()
        self.cfg = cfg
        chans = cfg.vae_channels
        enc: list[nn.Module] = [nn.Conv2d(3, chans[0], 3, padding=1)]
        c_in = chans[0]
        for c in chans:
            enc += [nn.Conv2d(c_in, c, 4, stride=2, padding=1), ResBlock(c)]  # halves H, W
            c_in = c
        enc += [norm(c_in), nn.SiLU(), nn.Conv2d(c_in, 2 * cfg.latent_channels, 3, padding=1)]
        self.encoder = nn.Sequential(*enc)

        dec: list[nn.Module] = [nn.Conv2d(cfg.latent_channels, chans[-1], 3, padding=1)]
        c_in = chans[-1]
        for c in reversed(chans):
            dec += [ResBlock(c_in), nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c_in, c, 3, padding=1)]
            c_in = c
        dec += [norm(c_in), nn.SiLU(), nn.Conv2d(c_in, 3, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)

    def encode_dist(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, S, S) in [0, 1] -> mean, log-variance, each (B, Cl, L, L)."""
        mean, logvar = self.encoder(frames * 2.0 - 1.0).chunk(2, dim=1)
        return mean, logvar.clamp(-20.0, 10.0)

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """Deterministic latent (the posterior mean): (B, 3, S, S) -> (B, Cl, L, L)."""
        return self.encode_dist(frames)[0]

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, Cl, L, L) -> (B, 3, S, S) in [0, 1]."""
        return (self.decoder(latents).clamp(-1.0, 1.0) + 1.0) / 2.0

    def loss(self, frames: torch.Tensor) -> dict[str, torch.Tensor]:
        """Reconstruction (L1 + MSE) + KL on a (B, 3, S, S) batch in [0, 1]."""
        mean, logvar = self.encode_dist(frames)
        z = mean + torch.randn_like(mean) * (0.5 * logvar).exp()
        recon = (self.decoder(z) + 1.0) / 2.0
        l1 = F.l1_loss(recon, frames)
        mse = F.mse_loss(recon, frames)
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).mean()
        return {"total": l1 + mse + self.kl_weight * kl, "l1": l1, "mse": mse, "kl": kl}
