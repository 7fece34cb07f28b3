"""A per-token flow-matching head: a small MLP denoiser that samples each frame token's latent delta.

As in MAR ("Autoregressive image generation without vector quantization", Li et al. 2024) and DyStream's
streaming flow head: the transformer runs once per frame, and this MLP, conditioned on one frame token's
hidden state, turns Gaussian noise into that token's latent values in a few steps. A regression head,
trained with squared error, predicts the mean of the many mouth shapes that fit a sound, which lands near
closed; a sampling head draws one of them.

The path is rectified flow (Liu et al. 2022; Lipman et al.'s flow matching with the straight path):
x_t = (1 - t) x_0 + t x_1 with x_0 ~ N(0, noise_std^2) and x_1 the target, t in [0, 1]; the network
predicts the velocity x_1 - x_0 (training/losses.py, `flow_matching_error`); sampling integrates
dx/dt = v(x, t, hidden) from t = 0 to 1 with `steps` Euler steps.

Network (MAR's SimpleMLPAdaLN, smaller): the noisy token enters a residual MLP whose every block is
modulated by adaLN (shift, scale, gate) from c = time embedding + projected hidden state; the gates and
the output layer start at zero (DiT's adaLN-Zero), so the untrained head predicts zero velocity.
Departures from MAR: (1) the modulation is linear in c (no SiLU before it, as DiT and MAR have), so it
splits into a hidden-state part, computed once per token for all sampling steps, and a time part,
computed once per step for all tokens: what is left per token and step is the blocks' MLPs, about a third
of the multiply-adds (the modulations are the largest layers), which is what keeps the head a small
share of a CPU frame; (2) the target is the token's delta from the portrait's latent (generator.py), so
the anchor on the portrait that keeps identity holds for this head too.

Randomness: `TokenNoise` holds one torch.Generator per video, seeded from its request's seed, drawn on
the CPU and moved to the model's device: the same seed gives the same video whatever the batch it is
rendered in and whatever the device; different seeds give different videos.

Shapes: N tokens (any leading dims flattened), K token features (Cl * p * p), D conditioning width
(d_model), W the head's width.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """(N,) times in [0, 1] -> (N, dim) sinusoidal features (DiT's, on t scaled to [0, 1000])."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = (t.float() * 1000.0)[:, None] * freqs[None]  # (N, half)
    emb = torch.cat((torch.cos(args), torch.sin(args)), dim=-1)  # (N, 2 * half)
    if dim % 2:
        emb = torch.cat((emb, emb.new_zeros(emb.shape[0], 1)), dim=-1)
    return emb.to(t.dtype)


class AdaLNBlock(nn.Module):
    """x + gate * MLP(LayerNorm(x) * (1 + scale) + shift), with (shift, scale, gate) from the condition."""

    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.modulation = nn.Linear(width, 3 * width)
        nn.init.zeros_(self.modulation.weight)  # gate 0: the block starts as the identity
        nn.init.zeros_(self.modulation.bias)

    def forward(self, x: torch.Tensor, modulation: torch.Tensor) -> torch.Tensor:
        """x (N, W), modulation (N, 3W) = self.modulation(c), precomputed by the caller."""
        shift, scale, gate = modulation.chunk(3, dim=-1)  # 3 x (N, W)
        return x + gate * self.mlp(self.norm(x) * (1 + scale) + shift)


class FlowHead(nn.Module):
    """v(x_t, t, hidden): the velocity of the straight path from noise to a token's latent delta."""

    def __init__(self, features: int, cond_width: int, width: int, layers: int, steps: int, noise_std: float):
        super().__init__()
        self.features, self.steps, self.noise_std = features, steps, noise_std
        self.x_in = nn.Linear(features, width)
        self.t_in = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.cond_in = nn.Linear(cond_width, width)
        self.blocks = nn.ModuleList(AdaLNBlock(width) for _ in range(layers))
        self.out_norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.out_modulation = nn.Linear(width, 2 * width)
        self.out = nn.Linear(width, features)
        for layer in (self.out_modulation, self.out):  # zero velocity at the start
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def modulations(self, c: torch.Tensor, bias: bool) -> list[torch.Tensor]:
        """Every block's modulation of c (N, W), then the output's: [(N, 3W)] * layers + [(N, 2W)].

        Linear in c, so the hidden-state part (with the biases) and the time part add up to the whole.
        """
        layers = [block.modulation for block in self.blocks] + [self.out_modulation]
        return [nn.functional.linear(c, m.weight, m.bias if bias else None) for m in layers]

    def time_features(self, t: torch.Tensor) -> torch.Tensor:
        """(N,) times in [0, 1] -> (N, W) time embedding."""
        return self.t_in(timestep_embedding(t, self.x_in.out_features))

    def _velocity(self, x: torch.Tensor, modulations: list[torch.Tensor]) -> torch.Tensor:
        """x (N, K) with the summed modulations of its tokens (broadcastable to N rows) -> (N, K)."""
        h = self.x_in(x)  # (N, W)
        for block, modulation in zip(self.blocks, modulations):
            h = block(h, modulation)
        shift, scale = modulations[-1].chunk(2, dim=-1)  # 2 x (N, W)
        return self.out(self.out_norm(h) * (1 + scale) + shift)

    def velocity(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """x (..., K) noisy tokens, t (...) their times, cond (..., D) their hidden states -> (..., K)."""
        lead = x.shape[:-1]
        x, cond = x.reshape(-1, x.shape[-1]), cond.reshape(-1, cond.shape[-1])  # (N, K), (N, D)
        t = t.expand(lead).reshape(-1)  # (N,)
        c = self.time_features(t) + self.cond_in(cond)  # (N, W)
        return self._velocity(x, self.modulations(c, bias=True)).reshape(*lead, -1)  # (..., K)

    def sample(self, cond: torch.Tensor, noise: torch.Tensor, steps: int | None = None) -> torch.Tensor:
        """Euler integration from x_0 = noise_std * noise (..., K) at t = 0 to t = 1, conditioned on cond (..., D).

        The hidden states' modulations are computed once, the time's once per step (one row for all tokens).
        """
        steps = steps or self.steps
        lead = noise.shape[:-1]
        x = noise.reshape(-1, noise.shape[-1]) * self.noise_std  # (N, K)
        held = self.modulations(self.cond_in(cond.reshape(-1, cond.shape[-1])), bias=True)  # per token, all steps
        dt = 1.0 / steps
        for i in range(steps):
            t = torch.full((1,), i * dt, device=x.device, dtype=x.dtype)
            timed = self.modulations(self.time_features(t), bias=False)  # (1, ...) for every token
            x = x + dt * self._velocity(x, [a + b for a, b in zip(held, timed)])
        return x.reshape(*lead, -1)


class TokenNoise:
    """Standard normal draws for a batch of videos, each from its own torch.Generator seeded by its request."""

    def __init__(self, seeds: list[int]):
        self.generators = [torch.Generator().manual_seed(int(seed)) for seed in seeds]

    def draw(self, shape: tuple[int, ...], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """(B, *shape): one draw of `shape` per video, on the CPU (so any device sees the same numbers)."""
        return torch.stack([torch.randn(shape, generator=g) for g in self.generators]).to(device, dtype)


def draw_noise(noise: TokenNoise | None, batch: int, shape: tuple[int, ...], device: torch.device,
               dtype: torch.dtype) -> torch.Tensor:
    """(batch, *shape) from `noise`, or from the global RNG where there is none (training's rollouts)."""
    if noise is None:
        return torch.randn(batch, *shape, device=device, dtype=dtype)
    if len(noise.generators) != batch:
        raise ValueError(f"TokenNoise holds {len(noise.generators)} generators for a batch of {batch}")
    return noise.draw(shape, device, dtype)
