"""The KV cache of Sink Frame Window Attention: `sinks` sink blocks plus a ring of `window` recent frame blocks.

Shapes: B batch rows (slots of a `SlotStream`), n the rows one step decodes, H heads, D head dim, Pb tokens
in one frame block; ring = sinks + window block places per row.

Three parts, as in mistral-inference's cache:
1. storage, allocated once: per layer, keys and values of shape (B, H, ring * Pb, D). Memory never grows
   with video length.
2. per-step metadata, computed once per frame step and shared by every layer (`StepMetadata`): for each
   row it decodes, where the new block is written, each place's position, which places hold something.
3. a per-layer view (`LayerCache`) handed to attention.

Each batch row has its own length (the block it decodes), as mistral-inference tracks a length per
sequence: rows are independent videos, so one row can be `reset` and start a new video at block 0 while
the others go on, and a step may decode only some rows (`rows`), leaving the others untouched.

Keys are stored WITHOUT rotary embedding and rotated each step with positions inside the cache (as
streaming-llm does), so a video of any length never uses a position the model did not see in training.

Position scheme (blocks are numbered b = 0 for the reference portrait, b = t + 1 for video frame t):
sinks keep positions 0..sinks-1; the window's blocks sit right after them in age order, and the query
block is last. With sinks = 1 and window = 3, decoding block b = 10 attends to blocks {0} + {8, 9, 10}
at positions {0} + {1, 2, 3}; block 11 attends to {0} + {9, 10, 11} at the same positions
{0} + {1, 2, 3}. While b < sinks + window, positions equal block numbers, so the first frames see
exactly what a full pass sees. Distances inside the window equal true frame distances; only the sink's
distance is clamped to at most sinks + window - 1. Rows at different blocks get these positions each.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch


def oldest_window_block(block: int, sinks: int, window: int) -> int:
    """First non-sink block still inside the window of `block` (== sinks during warm-up)."""
    return max(sinks, block - window + 1)


@dataclass
class StepMetadata:
    """Everything about one decode step that does not depend on the layer; one entry per decoded row."""

    blocks: torch.Tensor  # (n,) long: block each decoded row writes, on the CPU
    rows: torch.Tensor | None  # (n,) long: the batch rows decoded, on the cache's device; None: all B, in order
    write_start: torch.Tensor  # (n,) long: first token place each row's keys/values go to, on the CPU
    query_positions: torch.Tensor  # (n, Pb) position of each row's query tokens
    key_positions: torch.Tensor  # (n, ring * Pb) position of every token place of each row
    key_valid: torch.Tensor  # (n, ring * Pb) bool: the place holds a block inside the row's attention span
    uniform_write: int | None  # every row of the batch writes at this token place (the lockstep case), else None

    @property
    def block(self) -> int:
        """The block of a step whose rows all decode the same one (a lockstep stream)."""
        if not bool((self.blocks == self.blocks[0]).all()):
            raise ValueError(f"rows decode different blocks: {self.blocks.tolist()}")
        return int(self.blocks[0])


@dataclass
class LayerCache:
    """One layer's keys and values, handed to attention."""

    keys: torch.Tensor  # (B, H, ring * Pb, D), not rotated
    values: torch.Tensor  # (B, H, ring * Pb, D)

    def write(self, meta: StepMetadata, k: torch.Tensor, v: torch.Tensor) -> None:
        """k, v (n, H, Pb, D) of the decoded rows into their places."""
        n = k.shape[2]  # Pb tokens of the new block
        if meta.uniform_write is not None:  # every row, same place: a plain slice
            self.keys[:, :, meta.uniform_write : meta.uniform_write + n] = k
            self.values[:, :, meta.uniform_write : meta.uniform_write + n] = v
            return
        rows = meta.rows if meta.rows is not None else torch.arange(k.shape[0], device=k.device)
        tokens = (meta.write_start[:, None] + torch.arange(n)[None]).to(k.device)  # (n, Pb) token places
        # advanced indices apart from the head slice come first: the target is (n, Pb, H, D)
        self.keys[rows[:, None], :, tokens] = k.transpose(1, 2)
        self.values[rows[:, None], :, tokens] = v.transpose(1, 2)

    def read(self, meta: StepMetadata) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values (n, H, ring * Pb, D) of the decoded rows (the storage itself when all rows are)."""
        if meta.rows is None:
            return self.keys, self.values
        return self.keys[meta.rows], self.values[meta.rows]


class KVCache:
    def __init__(self, n_layers: int, batch: int, n_heads: int, head_dim: int, block_tokens: int,
                 sinks: int, window: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        self.sinks, self.window, self.block_tokens = sinks, window, block_tokens
        self.slots = sinks + window  # block places per row (the ring)
        self.batch = batch
        shape = (batch, n_heads, self.slots * block_tokens, head_dim)
        self.layers = [
            LayerCache(torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype))
            for _ in range(n_layers)
        ]
        # which block each row's places hold (-1: empty); the only state besides the tensors, kept on the CPU
        self.row_blocks = torch.full((batch, self.slots), -1, dtype=torch.long)
        self.device = torch.device(device)

    @property
    def slot_block(self) -> list[int]:
        """Row 0's places (a batch of one's whole bookkeeping)."""
        return self.row_blocks[0].tolist()

    @property
    def nbytes(self) -> int:
        return sum(c.keys.numel() * c.keys.element_size() * 2 for c in self.layers)

    def slot_of(self, block: int) -> int:
        if block < self.sinks:
            return block
        return self.sinks + (block - self.sinks) % self.window

    def reset(self, row: int) -> None:
        """Empty one row for a new video (block 0 next); the other rows are untouched."""
        self.row_blocks[row] = -1
        for c in self.layers:  # masked anyway; zeroed so nothing of the last video can reach the next
            c.keys[row].zero_()
            c.values[row].zero_()

    def step(self, blocks: int | Sequence[int] | torch.Tensor, rows: Sequence[int] | None = None) -> StepMetadata:
        """Book each decoded row's block into its place and compute the metadata every layer uses.

        `blocks`: one block for every row (an int), or one per decoded row; `rows`: the batch rows decoded
        (default: all B in order). A row's blocks must arrive in order from 0 (after `reset`).
        """
        n = self.batch if rows is None else len(rows)
        block = torch.as_tensor(blocks, dtype=torch.long).flatten().expand(n) if isinstance(blocks, int) \
            else torch.as_tensor(blocks, dtype=torch.long).flatten()
        if block.numel() != n:
            raise ValueError(f"{block.numel()} blocks for {n} rows")
        row = torch.arange(self.batch) if rows is None else torch.as_tensor(rows, dtype=torch.long)
        S, W, Pb = self.sinks, self.window, self.block_tokens
        slot = torch.where(block < S, block, S + (block - S) % W)  # (n,) place of the new block
        self.row_blocks[row, slot] = block
        first = torch.clamp(block - W + 1, min=S)  # (n,) oldest non-sink block in the window
        b = self.row_blocks[row]  # (n, ring)
        valid = (b >= 0) & (b <= block[:, None]) & ((b < S) | (b >= first[:, None]))
        positions = torch.where(b < S, b, S + b - first[:, None])  # (n, ring)
        query = torch.where(block < S, block, S + block - first)  # (n,)
        write = slot * Pb
        uniform = int(write[0]) if rows is None and bool((write == write[0]).all()) else None
        return StepMetadata(
            blocks=block,
            rows=None if rows is None else row.to(self.device),
            write_start=write,
            query_positions=query[:, None].expand(n, Pb).to(self.device),  # (n, Pb)
            key_positions=positions.repeat_interleave(Pb, dim=1).to(self.device),  # (n, ring * Pb)
            key_valid=valid.repeat_interleave(Pb, dim=1).to(self.device),  # (n, ring * Pb)
            uniform_write=uniform,
        )
