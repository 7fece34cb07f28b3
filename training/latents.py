"""The frozen frame VAE's latents of each training clip, encoded on first use and kept for stage 2."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from model.frames import images_to_tensor
from training.shards import ClipDataset


class ClipLatents:
    """The frozen VAE's latents of each clip (portrait, frames), encoded on first use and kept.

    Stage 2 draws every clip many times and the VAE no longer changes, so each frame is encoded once
    instead of at every step: on a CPU the encoder is a large part of a step's time.
    """

    def __init__(self, dataset: ClipDataset, vae: nn.Module):
        self.dataset = dataset
        self.vae = vae
        self._memo: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Clip `index` -> portrait latent (Cl, L, L), frame latents (F, Cl, L, L), on the CPU."""
        if index not in self._memo:
            clip = self.dataset[index]
            param = next(self.vae.parameters())
            images = images_to_tensor(np.concatenate((clip.portrait[None], clip.frames)))  # (1 + F, 3, S, S)
            with torch.no_grad():
                latents = self.vae.encode(images.to(param.device, param.dtype)).float().cpu()
            self._memo[index] = latents[0], latents[1:]
        return self._memo[index]
