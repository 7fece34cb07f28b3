"""Learned metrics (SyncNet LSE-C/LSE-D, ArcFace CSIM) run only from weights the user provides locally.

Nothing is downloaded and nothing is estimated: without weights the columns are null and
`learned_metrics_reason` says why. Weights are configured with environment variables
`EARTALK_SYNCNET_WEIGHTS` and `EARTALK_ARCFACE_WEIGHTS` (paths to local files).

Status: the loaders for these networks are not implemented yet in this version; a configured path is
checked and reported, and the columns stay null with that reason. FID/FVD are distribution-level
(per run, not per video) and are not part of the per-video row.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

WEIGHT_VARIABLES = {"syncnet": "EARTALK_SYNCNET_WEIGHTS", "arcface": "EARTALK_ARCFACE_WEIGHTS"}


def learned_metrics(frames: np.ndarray, audio: np.ndarray | None, sample_rate: int, fps: float) -> dict:
    reasons = []
    for name, variable in WEIGHT_VARIABLES.items():
        path = os.environ.get(variable)
        if not path:
            reasons.append(f"{name}: no weights configured ({variable} unset)")
        elif not Path(path).is_file():
            reasons.append(f"{name}: {variable}={path} is not a file")
        else:
            reasons.append(f"{name}: weights at {path} found but this version has no {name} loader")
    return {"lse_c": None, "lse_d": None, "csim_arcface": None, "learned_metrics_reason": "; ".join(reasons)}
