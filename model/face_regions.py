"""Where the eyes and the mouth sit in the aligned canonical crop, for the loss terms that weight them.

faces/align.py puts the eyes 0.26 of the side apart at y = 0.42 and the mouth centre at (0.50, 0.70),
so the chin sits near y = 0.9; tests/faces pins both regions on real aligned faces. model/ does not
import faces/, hence the copy. Regions are (x0, y0, x1, y1) as fractions of the side, with room for the
synthetic data's head pose (yaw up to 25 deg moves a feature by about 0.05).
"""

from __future__ import annotations

import torch

MOUTH_REGION = (0.30, 0.58, 0.70, 0.98)  # lips, jaw and chin
EYES_REGION = (0.22, 0.30, 0.78, 0.52)  # both eyes and their lids, below the brows


def region_cells(size: int, region: tuple[float, float, float, float] = MOUTH_REGION) -> torch.Tensor:
    """(size, size) 0/1 map of the grid cells (latent cells, or pixels) that overlap `region`."""
    x0, y0, x1, y1 = region
    edges = torch.arange(size + 1) / size  # cell c spans [edges[c], edges[c + 1])
    cols = (edges[1:] > x0) & (edges[:-1] < x1)
    rows = (edges[1:] > y0) & (edges[:-1] < y1)
    return (rows[:, None] & cols[None, :]).float()
