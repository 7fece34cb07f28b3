"""GPT-style causal transformer over frame blocks with Sink Frame Window Attention (SFA).

Tokens come in blocks of Pb tokens, one block per frame (block 0: the reference portrait). Inside a
block attention is bidirectional; across blocks it is causal and limited by the SFA policy: block b
sees the `sinks` first blocks (b' < sinks) and the `window` most recent blocks (b - window < b' <= b).
Rotary embeddings (RoPE) over block positions carry time; see kv_cache.py for the position scheme that
keeps every position inside [0, sinks + window).

Shapes: B batch, T tokens, H heads, D head dim, Pb tokens per block, d_model token width.

Two ways through attention, which must agree (tests/model/test_sfa_attention.py):
- no cache (`forward_full`): the whole sequence at once under the explicit SFA mask; the reference
  path, also used for teacher-forced training;
- cached (`forward_cached`): prefill of the reference block, then decode one block per frame against
  the KV cache; each batch row is at its own block (kv_cache.py), so rows are independent videos.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .config import GeneratorConfig
from .kv_cache import KVCache, LayerCache, StepMetadata


def sfa_mask(num_blocks: int, block_tokens: int, sinks: int, window: int, device=None) -> torch.Tensor:
    """(T, T) bool, True where query token i may attend to key token j (T = num_blocks * block_tokens)."""
    blk = torch.arange(num_blocks, device=device).repeat_interleave(block_tokens)  # (T,)
    q, k = blk[:, None], blk[None, :]
    return (k <= q) & ((k < sinks) | (k > q - window))


def sink_shift(blocks: torch.Tensor, sinks: int, window: int) -> torch.Tensor:
    """How far the window has slid past the sinks for each block: oldest_window_block - sinks."""
    return (blocks - window + 1 - sinks).clamp(min=0)


class Rotary(nn.Module):
    def __init__(self, head_dim: int, base: float):
        super().__init__()
        inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)  # (D/2,)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Rotate (..., T, D) by positions (T,) (any leading dims), or (B, H, T, D) by per-row positions (B, T)."""
        angles = positions.to(torch.float32)[..., None] * self.inv_freq  # (T, D/2) or (B, T, D/2)
        cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
        if positions.dim() == 2:  # one row of positions per batch row, shared by its heads
            cos, sin = cos[:, None], sin[:, None]  # (B, 1, T, D/2)
        x1, x2 = x[..., 0::2], x[..., 1::2]
        out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)  # (..., T, D/2, 2)
        return out.flatten(-2)


class Attention(nn.Module):
    def __init__(self, config: GeneratorConfig, rotary: Rotary):
        super().__init__()
        self.config, self.rotary = config, rotary
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model)
        self.out = nn.Linear(config.d_model, config.d_model)

    def split_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, T, d_model) -> queries, keys, values, each (B, H, T, D)."""
        B, T, _ = x.shape
        qkv = self.qkv(x).view(B, T, 3, self.config.n_heads, self.config.head_dim)  # (B, T, 3, H, D)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, H, T, D)
        return q, k, v

    def merge_heads(self, y: torch.Tensor) -> torch.Tensor:
        B, H, T, D = y.shape
        return self.out(y.transpose(1, 2).reshape(B, T, H * D))  # (B, T, d_model)

    def forward_full(self, x: torch.Tensor, num_blocks: int) -> torch.Tensor:
        """No cache: every block at once under the SFA mask (the reference path)."""
        config = self.config
        Pb = x.shape[1] // num_blocks
        q, k, v = self.split_heads(x)
        blk = torch.arange(num_blocks, device=x.device).repeat_interleave(Pb)  # (T,)
        n_sink = config.sink_frames * Pb  # sink tokens
        # window keys: true block positions, so q.k depends on the true frame distance
        qr, kr = self.rotary(q, blk), self.rotary(k, blk)
        window = sfa_mask(num_blocks, Pb, config.sink_frames, config.window_frames, x.device)
        window[:, :n_sink] = False
        scores_w = qr @ kr.transpose(-1, -2)  # (B, H, T, T)
        # sink keys: the query sees them as if they sat right before its window (kv_cache.py)
        qs = self.rotary(q, blk - sink_shift(blk, config.sink_frames, config.window_frames))
        ks = self.rotary(k[:, :, :n_sink], blk[:n_sink])
        scores_s = qs @ ks.transpose(-1, -2)  # (B, H, T, n_sink)
        sink_ok = blk[None, :n_sink] <= blk[:, None]  # (T, n_sink)
        scores = torch.cat((scores_s.masked_fill(~sink_ok, float("-inf")),
                            scores_w.masked_fill(~window, float("-inf"))), dim=-1)  # (B, H, T, n_sink + T)
        attn = torch.softmax(scores * config.head_dim**-0.5, dim=-1)
        y = attn[..., :n_sink] @ v[:, :, :n_sink] + attn[..., n_sink:] @ v  # (B, H, T, D)
        return self.merge_heads(y)

    def forward_cached(self, x: torch.Tensor, cache: LayerCache, meta: StepMetadata) -> torch.Tensor:
        """Prefill or decode one block of each decoded row against the cache (both are the same code: one
        block per step). x (n, Pb, d_model); each row at its own block, with its own positions and mask."""
        q, k, v = self.split_heads(x)  # (n, H, Pb, D)
        cache.write(meta, k, v)
        keys, values = cache.read(meta)  # (n, H, ring * Pb, D)
        qr = self.rotary(q, meta.query_positions)  # positions (n, Pb)
        kr = self.rotary(keys, meta.key_positions)  # positions (n, ring * Pb)
        y = F.scaled_dot_product_attention(qr, kr, values, attn_mask=meta.key_valid[:, None, None, :])
        return self.merge_heads(y)


class TransformerBlock(nn.Module):
    def __init__(self, config: GeneratorConfig, rotary: Rotary):
        super().__init__()
        self.ln1 = nn.LayerNorm(config.d_model)
        self.attn = Attention(config, rotary)
        self.ln2 = nn.LayerNorm(config.d_model)
        hidden = int(config.d_model * config.mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(config.d_model, hidden), nn.GELU(), nn.Linear(hidden, config.d_model))

    def forward(self, x, num_blocks=None, cache: LayerCache | None = None, meta: StepMetadata | None = None):
        h = self.ln1(x)
        x = x + (self.attn.forward_full(h, num_blocks) if cache is None else self.attn.forward_cached(h, cache, meta))
        return x + self.mlp(self.ln2(x))


class FrameTransformer(nn.Module):
    def __init__(self, config: GeneratorConfig):
        super().__init__()
        self.config = config
        self.rotary = Rotary(config.head_dim, config.rope_base)
        self.layers = nn.ModuleList(TransformerBlock(config, self.rotary) for _ in range(config.n_layers))
        self.ln_f = nn.LayerNorm(config.d_model)

    def forward_full(self, x: torch.Tensor, num_blocks: int) -> torch.Tensor:
        """(B, num_blocks * Pb, d_model) -> same shape, no cache."""
        for layer in self.layers:
            x = layer(x, num_blocks=num_blocks)
        return self.ln_f(x)

    def forward_cached(self, x: torch.Tensor, cache: KVCache, block: int | Sequence[int],
                       rows: Sequence[int] | None = None) -> torch.Tensor:
        """(n, Pb, d_model) tokens -> (n, Pb, d_model), reading and extending the cache.

        `block`: the block every row decodes (an int), or each decoded row's own; `rows`: which batch rows of
        the cache x holds (default: all of them, in order).
        """
        meta = cache.step(block, rows)  # once per step, shared by all layers
        for layer, layer_cache in zip(self.layers, cache.layers):
            x = layer(x, cache=layer_cache, meta=meta)
        return self.ln_f(x)

    def new_cache(self, batch: int, block_tokens: int, device, dtype) -> KVCache:
        config = self.config
        return KVCache(config.n_layers, batch, config.n_heads, config.head_dim, block_tokens,
                       config.sink_frames, config.window_frames, device, dtype)
