"""Frame Condition In-Context (FCIC): per-frame control signals as tokens inside each frame's block.

Every frame block carries one token per control (head pose, blink, gaze, expression, lip intensity).
A control given at frame t enters only frame t's block; where nothing is given (NaN) the token is that
control's learned "absent" embedding, so the model moves freely. Training hides each control for whole
clips (training/losses.py), which is what teaches the model the free path.

Departure from the paper: values are normalised to [-1, 1] by the fixed ranges below rather than learned
statistics, so a control track's meaning never depends on the training data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

EXPRESSIONS = ("neutral", "happy", "sad", "angry", "surprised")


@dataclass(frozen=True)
class ControlSpec:
    name: str
    unit: str
    min: float
    max: float
    kind: str = "continuous"  # "continuous" or "categorical"
    categories: tuple[str, ...] = ()

    def normalise(self, values: torch.Tensor) -> torch.Tensor:
        """Map [min, max] to [-1, 1]; NaN stays NaN."""
        return (values - self.min) / (self.max - self.min) * 2.0 - 1.0


CONTROL_SPECS: dict[str, ControlSpec] = {
    s.name: s
    for s in (
        ControlSpec("yaw", "degrees", -45.0, 45.0),
        ControlSpec("pitch", "degrees", -30.0, 30.0),
        ControlSpec("roll", "degrees", -30.0, 30.0),
        ControlSpec("blink", "eye openness (1 open, 0 closed)", 0.0, 1.0),
        ControlSpec("gaze_x", "fraction of eye width (-1 left .. 1 right)", -1.0, 1.0),
        ControlSpec("gaze_y", "fraction of eye height (-1 up .. 1 down)", -1.0, 1.0),
        ControlSpec("expression", "category index", 0, len(EXPRESSIONS) - 1, "categorical", EXPRESSIONS),
        ControlSpec("lip", "lip-motion intensity (0 still .. 1 full)", 0.0, 1.0),
    )
}
CONTROL_NAMES: tuple[str, ...] = tuple(CONTROL_SPECS)


def stack_controls(controls: dict[str, torch.Tensor] | None, num_frames: int) -> torch.Tensor:
    """Dict of per-frame tracks -> (F, C) float tensor in control order, NaN where absent.

    Tracks shorter than num_frames are padded with NaN (absent); longer ones are cut.
    """
    out = torch.full((num_frames, len(CONTROL_NAMES)), math.nan)
    for name, track in (controls or {}).items():
        if name not in CONTROL_SPECS:
            raise ValueError(f"unknown control {name!r}; known controls: {', '.join(CONTROL_NAMES)}")
        track = torch.as_tensor(track, dtype=torch.float32).flatten()[:num_frames]
        out[: track.numel(), CONTROL_NAMES.index(name)] = track
    return out


class ControlEmbedding(nn.Module):
    """(B, F, C) control values with NaN = absent -> (B, F, C, d_model) control tokens (C controls)."""

    def __init__(self, d_model: int):
        super().__init__()
        self.continuous = nn.ModuleDict()
        self.categorical = nn.ModuleDict()
        for spec in CONTROL_SPECS.values():
            if spec.kind == "categorical":
                self.categorical[spec.name] = nn.Embedding(len(spec.categories), d_model)
            else:
                # value -> token through a small MLP so extreme values stay distinct
                self.continuous[spec.name] = nn.Sequential(nn.Linear(1, d_model), nn.SiLU(), nn.Linear(d_model, d_model))
        self.absent = nn.Parameter(torch.randn(len(CONTROL_NAMES), d_model) * 0.02)  # learned "nothing given"
        self.kind = nn.Parameter(torch.randn(len(CONTROL_NAMES), d_model) * 0.02)  # which control this token is

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        tokens = []
        for c, name in enumerate(CONTROL_NAMES):
            v = values[..., c]  # (B, F)
            present = ~torch.isnan(v)
            spec = CONTROL_SPECS[name]
            if spec.kind == "categorical":
                idx = torch.nan_to_num(v, nan=0.0).round().clamp(0, len(spec.categories) - 1).long()
                given = self.categorical[name](idx)  # (B, F, d_model)
            else:
                x = spec.normalise(torch.nan_to_num(v, nan=spec.min)).unsqueeze(-1)  # (B, F, 1)
                given = self.continuous[name](x)  # (B, F, d_model)
            tok = torch.where(present.unsqueeze(-1), given, self.absent[c])  # (B, F, d_model)
            tokens.append(tok + self.kind[c])
        return torch.stack(tokens, dim=2)  # (B, F, C, d_model)
