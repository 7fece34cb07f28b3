"""Mouth-motion magnification on the decode path (`GeneratorConfig.mouth_magnification`).

The regression head predicts the mean of the mouth shapes that fit a sound, and the frame VAE shrinks
motion once more, so the tiny checkpoint's mouth follows the speech at a fraction of its teacher's
amplitude (docs/model-card-tiny.md). Eulerian video magnification's idea, applied to the latent grid:
the frame shown decodes the mouth and chin cells (face_regions.MOUTH_REGION) at their slow baseline plus
`gain` times their change from it, so the syllable-rate motion the model already draws is shown larger,
while slow changes (a head turn) and every other cell are decoded as predicted. Only the decoded frame
changes: the latent fed back to the transformer is the model's own, so the rollout stays the one it
trained on.

The baseline is an exponential average of the latent with a BASELINE_S time constant, so its cut-off
(~0.6 Hz) sits under the syllable rate (3-7 Hz) at any frame rate.
"""

from __future__ import annotations

import math

import torch

from .face_regions import MOUTH_REGION, region_cells

BASELINE_S = 0.25  # time constant of the slow baseline the change is measured from


def baseline_rate(fps: float) -> float:
    """Per-frame weight of the newest latent in the exponential baseline at `fps`."""
    return 1.0 - math.exp(-1.0 / (fps * BASELINE_S))


def mouth_cells(latent_size: int) -> torch.Tensor:
    """(L, L) 0/1 map of the latent cells whose motion is magnified."""
    return region_cells(latent_size, MOUTH_REGION)


def magnify(latent: torch.Tensor, baseline: torch.Tensor, rate: torch.Tensor, cells: torch.Tensor,
            gain: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One frame: latents (n, Cl, L, L), their baselines (n, Cl, L, L) and per-row rates (n,)
    -> (the latents to decode, the updated baselines)."""
    baseline = baseline + rate.view(-1, 1, 1, 1) * (latent - baseline)
    return latent + (gain - 1.0) * cells * (latent - baseline), baseline
