"""Mouth-motion magnification on the decode path (`GeneratorConfig.mouth_magnification`).

The regression head predicts the mean of the mouth shapes that fit a sound, and the frame VAE shrinks
motion once more, so the tiny checkpoint's mouth follows the speech at a fraction of its teacher's
amplitude (docs/model-card-tiny.md). Eulerian video magnification's idea, applied to the latent grid:
the frame shown decodes the mouth and chin cells (face_regions.MOUTH_REGION) as predicted plus
`gain - 1` times their band-passed motion, so the syllable-rate motion the model already draws is shown
larger, while slow changes (a head turn), frame-to-frame jitter and every other cell are decoded as
predicted. Only the decoded frame changes: the latent fed back to the transformer is the model's own, so
the rollout stays the one it trained on.

The band is the difference of two exponential averages of the latent: a slow baseline (BASELINE_S, cut-off
~0.6 Hz, under the syllable rate of 3-7 Hz) and a smoothed track (SMOOTHING_S, ~3.6 Hz). Without the
smoothing, the gain also magnifies the landmark-visible jitter the regression head draws out of time with
the speech; with it, the magnified part trails the predicted mouth by about 0.7 frame at 4 Hz, which brings
the model's mouth (about one frame early against the corpus's natural lead) closer to real speakers' timing
(docs/model-card-tiny.md, "Band-passed magnification"). Both are time constants in seconds, so the band is
the same at any frame rate.
"""

from __future__ import annotations

import math

import torch

from .face_regions import MOUTH_REGION, region_cells

BASELINE_S = 0.25  # time constant of the slow baseline the motion is measured from
SMOOTHING_S = 0.044  # time constant of the smoothed track whose motion is magnified (0.6 per frame at 25 fps)


def _rate(fps: float, time_constant_s: float) -> float:
    return 1.0 - math.exp(-1.0 / (fps * time_constant_s))


def motion_rates(fps: float) -> torch.Tensor:
    """(2,) per-frame weights of the newest latent in the baseline and in the smoothed track at `fps`."""
    return torch.tensor([_rate(fps, BASELINE_S), _rate(fps, SMOOTHING_S)])


def start_motion(latent: torch.Tensor) -> torch.Tensor:
    """A video's state before its first frame, from its reference latents (n, Cl, L, L) -> (n, 2, Cl, L, L):
    the baseline and the smoothed track both at the portrait."""
    return torch.stack((latent, latent), dim=1)


def mouth_cells(latent_size: int) -> torch.Tensor:
    """(L, L) 0/1 map of the latent cells whose motion is magnified."""
    return region_cells(latent_size, MOUTH_REGION)


def magnify(latent: torch.Tensor, state: torch.Tensor, rates: torch.Tensor, cells: torch.Tensor,
            gain: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One frame: latents (n, Cl, L, L), their states (n, 2, Cl, L, L) and per-row rates (n, 2)
    -> (the latents to decode, the updated states)."""
    state = state + rates.view(-1, 2, 1, 1, 1) * (latent[:, None] - state)
    baseline, smoothed = state.unbind(1)
    return latent + (gain - 1.0) * cells * (smoothed - baseline), state
