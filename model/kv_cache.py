"""The KV cache of Sink Frame Window Attention: `sinks` sink blocks plus a ring of `window` recent frame blocks.

Shapes: B batch, H heads, D head dim, Pb tokens in one frame block; slots = sinks + window.

Three parts, as in mistral-inference's cache:
1. storage, allocated once: per layer, keys and values of shape (B, H, slots * Pb, D). Memory never grows
   with video length.
2. per-step metadata, computed once per frame step and shared by every layer (`StepMetadata`): where the
   new block is written, each slot's position, which slots hold something.
3. a per-layer view (`LayerCache`) handed to attention.

Keys are stored WITHOUT rotary embedding and rotated each step with positions inside the cache (as
streaming-llm does), so a video of any length never uses a position the model did not see in training.

Position scheme (blocks are numbered b = 0 for the reference portrait, b = t + 1 for video frame t):
sinks keep positions 0..sinks-1; the window's blocks sit right after them in age order, and the query
block is last. With sinks = 1 and window = 3, decoding block b = 10 attends to blocks {0} + {8, 9, 10}
at positions {0} + {1, 2, 3}; block 11 attends to {0} + {9, 10, 11} at the same positions
{0} + {1, 2, 3}. While b < sinks + window, positions equal block numbers, so the first frames see
exactly what a full pass sees. Distances inside the window equal true frame distances; only the sink's
distance is clamped to at most sinks + window - 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def oldest_window_block(block: int, sinks: int, window: int) -> int:
    """First non-sink block still inside the window of `block` (== sinks during warm-up)."""
    return max(sinks, block - window + 1)


@dataclass
class StepMetadata:
    """Everything about one decode step that does not depend on the layer."""

    block: int  # block being decoded
    write_start: int  # first token slot the block's keys/values go to
    query_position: int  # position of the block's tokens
    key_positions: torch.Tensor  # (slots * Pb,) position of every token slot
    key_valid: torch.Tensor  # (slots * Pb,) bool: slot holds a block inside the attention span


@dataclass
class LayerCache:
    """One layer's keys and values, handed to attention."""

    keys: torch.Tensor  # (B, H, slots * Pb, D), not rotated
    values: torch.Tensor  # (B, H, slots * Pb, D)

    def write(self, meta: StepMetadata, k: torch.Tensor, v: torch.Tensor) -> None:
        n = k.shape[2]  # Pb tokens of the new block
        self.keys[:, :, meta.write_start : meta.write_start + n] = k
        self.values[:, :, meta.write_start : meta.write_start + n] = v


class KVCache:
    def __init__(self, n_layers: int, batch: int, n_heads: int, head_dim: int, block_tokens: int,
                 sinks: int, window: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        self.sinks, self.window, self.block_tokens = sinks, window, block_tokens
        self.slots = sinks + window
        shape = (batch, n_heads, self.slots * block_tokens, head_dim)
        self.layers = [
            LayerCache(torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype))
            for _ in range(n_layers)
        ]
        # which block each slot holds (-1: empty); the only state besides the tensors
        self.slot_block = [-1] * self.slots
        self.device = torch.device(device)

    @property
    def nbytes(self) -> int:
        return sum(c.keys.numel() * c.keys.element_size() * 2 for c in self.layers)

    def slot_of(self, block: int) -> int:
        if block < self.sinks:
            return block
        return self.sinks + (block - self.sinks) % self.window

    def step(self, block: int) -> StepMetadata:
        """Book `block` into its slot and compute the metadata every layer uses for it."""
        slot = self.slot_of(block)
        self.slot_block[slot] = block
        first = oldest_window_block(block, self.sinks, self.window)
        positions, valid = [], []
        for s, b in enumerate(self.slot_block):
            inside = b >= 0 and b <= block and (b < self.sinks or b >= first)
            valid.append(inside)
            positions.append(b if b < self.sinks else self.sinks + b - first)
        Pb = self.block_tokens
        key_positions = torch.tensor(positions, device=self.device).repeat_interleave(Pb)  # (slots * Pb,)
        key_valid = torch.tensor(valid, device=self.device).repeat_interleave(Pb)  # (slots * Pb,)
        query_position = block if block < self.sinks else self.sinks + block - first
        return StepMetadata(block, slot * Pb, query_position, key_positions, key_valid)
