"""Continuous batching of videos: B slots, each streaming one video at its own frame, refilled as videos end.

The idea vLLM and TGI apply to language models, applied to frames. A lockstep batch (every video at the
same frame until the longest ends) computes frames that are thrown away and publishes a short video only
when its batch's longest is done. Here each slot is one batch row of the KV cache with its own length
(kv_cache.py), its own reference portrait, audio and control tokens, its own flow-head noise
(`TokenNoise`, one torch.Generator per video) and its previous latent. `add` resets a free slot's cache
row and prefills its reference block; `step` decodes one frame for every busy slot (only those: an idle
slot costs nothing) and frees each slot whose video has ended, so the caller can `add` the next video
at once while the others go on.

A video rendered in a slot equals the video rendered alone (tests/model/test_slots.py): every per-video
input is kept per slot, and a step's batch rows never mix.

Shapes: B slots, n busy slots in a step, S image side, Cl latent channels, L latent grid side, A audio and
C control tokens per frame, d_model token width.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from .flow_head import TokenNoise
from .frame_vae import Reference
from .mouth_motion import magnify, motion_rates, mouth_cells, start_motion


class SlotNoise(TokenNoise):
    """The busy slots' noise generators, in the step's row order (each slot keeps its video's generator)."""

    def __init__(self, generators: list[torch.Generator]):
        self.generators = generators


@dataclass
class SlotVideo:
    """One video in a slot: its conditioning for every frame and how far it has got."""

    key: Any  # the caller's name for the video (a row id)
    num_frames: int
    audio: torch.Tensor  # (F, A, d_model) audio tokens
    controls: torch.Tensor  # (F, C, d_model) control tokens
    noise: torch.Generator | None  # the flow head's, seeded by the request; None for the regression head
    next_frame: int = 0


@dataclass
class StepFrames:
    """What one `step` produced: a frame for each busy slot, in `slots` order."""

    slots: list[int]  # the slots stepped
    keys: list[Any]  # their videos' keys
    indices: list[int]  # each frame's index in its video
    frames: torch.Tensor  # (n, 3, S, S) in [0, 1]
    ended: list[bool] = field(default_factory=list)  # the video ended with this frame (its slot is now free)


class SlotStream:
    """B slots of one generator: `add(request)` -> slot, `step()` -> one frame of every busy slot.

    Memory is constant in video length: one KV cache of B rows and per-slot reference tensors; each video's
    conditioning tokens (F frames of audio and controls) are computed once at `add`.
    """

    def __init__(self, generator, slots: int):
        if slots < 1:
            raise ValueError(f"slots must be >= 1, got {slots}")
        self.generator, self.capacity = generator, slots
        self.cache = generator.new_cache(slots)
        self.videos: list[SlotVideo | None] = [None] * slots
        # per-slot rows of the decoder's reference and of the previous latent, allocated at the first add
        self._reference: Reference | None = None
        self._prev: torch.Tensor | None = None  # (B, Cl, L, L)
        # mouth_motion.py's per-slot state: the mouth's baseline and smoothed track (B, 2, Cl, L, L), their rates (B, 2)
        self._motion: torch.Tensor | None = None
        self._motion_rates = torch.zeros(slots, 2, device=generator.device, dtype=generator.dtype)
        self._mouth_cells = mouth_cells(generator.config.latent_size).to(generator.device, generator.dtype)
        self.frames_computed = 0  # frames decoded in all (each busy slot's, per step)

    # ------------------------------------------------------------------ slots
    @property
    def free(self) -> list[int]:
        return [s for s, v in enumerate(self.videos) if v is None]

    @property
    def busy(self) -> list[int]:
        return [s for s, v in enumerate(self.videos) if v is not None]

    def __len__(self) -> int:  # busy slots
        return len(self.busy)

    @torch.no_grad()
    def add(self, request, key: Any = None) -> int:
        """Start `request` in a free slot (its cache row reset, its reference block prefilled) -> the slot.

        Raises ValueError for a request the model cannot render (portrait size, unknown control) and
        RuntimeError when every slot is busy; neither changes any slot.
        """
        g = self.generator
        free = self.free
        if not free:
            raise RuntimeError(f"all {self.capacity} slots are busy")
        S = g.config.image_size
        if tuple(request.portrait.shape) != (3, S, S):
            raise ValueError(f"portrait must be (3, {S}, {S}), got {tuple(request.portrait.shape)}")
        frames = g.num_frames(request.audio.numel(), request.fps)
        audio, controls = g.condition_tokens([request], frames)  # (1, F, A, d), (1, F, C, d); raises on bad controls
        reference = g.vae.reference(request.portrait[None].to(g.device, g.dtype))
        slot = free[0]
        self._store_reference(slot, reference)
        self.cache.reset(slot)
        g.transformer.forward_cached(g.reference_block(reference.latent), self.cache, block=0, rows=[slot])
        self._prev[slot] = reference.latent[0]
        self._motion[slot] = start_motion(reference.latent)[0]
        self._motion_rates[slot] = motion_rates(request.fps)
        noise = torch.Generator().manual_seed(int(request.seed)) if g.config.head == "flow" else None
        self.videos[slot] = SlotVideo(key, frames, audio[0], controls[0], noise)
        return slot

    def cancel(self, slot: int) -> None:
        """Free a slot without finishing its video."""
        self.videos[slot] = None

    def _store_reference(self, slot: int, ref: Reference) -> None:
        if self._reference is None:
            B = self.capacity

            def rows(x: torch.Tensor) -> torch.Tensor:
                return x.new_zeros(B, *x.shape[1:])

            self._reference = Reference(rows(ref.image), tuple(rows(f) for f in ref.features), rows(ref.latent))
            self._prev = rows(ref.latent)
            self._motion = rows(start_motion(ref.latent))
        self._reference.image[slot] = ref.image[0]
        for mine, theirs in zip(self._reference.features, ref.features):
            mine[slot] = theirs[0]
        self._reference.latent[slot] = ref.latent[0]

    # ------------------------------------------------------------------ frames
    @torch.no_grad()
    def step(self) -> StepFrames:
        """Decode the next frame of every busy slot; free the slots whose video ends with it."""
        g = self.generator
        busy = self.busy
        if not busy:
            raise RuntimeError("no busy slot to step")
        videos = [self.videos[s] for s in busy]
        everyone = len(busy) == self.capacity  # all rows in order: the cache and references are used as they are
        index = None if everyone else torch.tensor(busy, device=g.device)

        def pick(x: torch.Tensor) -> torch.Tensor:
            return x if index is None else x.index_select(0, index)

        t = [v.next_frame for v in videos]
        audio = torch.stack([v.audio[i] for v, i in zip(videos, t)])[:, None]  # (n, 1, A, d_model)
        controls = torch.stack([v.controls[i] for v, i in zip(videos, t)])[:, None]  # (n, 1, C, d_model)
        ref = self._reference if index is None else Reference(
            pick(self._reference.image), tuple(pick(f) for f in self._reference.features), pick(self._reference.latent))
        prev = pick(self._prev)  # (n, Cl, L, L)
        block = g.frame_blocks(prev[:, None], audio, controls)[:, 0]  # (n, Pb, d_model)
        # blocks and rows as tensors: a compiled forward_cached (inference.py) guards on their shapes, not values
        hidden = g.transformer.forward_cached(block, self.cache, block=torch.tensor(t) + 1,
                                              rows=None if everyone else torch.tensor(busy))  # (n, Pb, d_model)
        noise = SlotNoise([v.noise for v in videos]) if g.config.head == "flow" else None
        latent = g.predict_latents(hidden[:, None], ref.latent, audio, noise)[:, 0]  # (n, Cl, L, L)
        if index is None:
            self._prev.copy_(latent)
        else:
            self._prev.index_copy_(0, index, latent)
        frames = g.vae.decode(self._shown(latent, index), ref)  # (n, 3, S, S)
        self.frames_computed += len(busy)
        ended = []
        for s, v in zip(busy, videos):
            v.next_frame += 1
            ended.append(v.next_frame >= v.num_frames)
            if ended[-1]:
                self.videos[s] = None
        return StepFrames(busy, [v.key for v in videos], t, frames, ended)

    def _shown(self, latent: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
        """The busy rows' (n, Cl, L, L) latents as decoded: magnified mouth motion (mouth_motion.py) when the
        config asks for it; `index` holds their slots, None when every slot is busy."""
        gain = self.generator.config.mouth_magnification
        if gain == 1.0:
            return latent
        if index is None:
            shown, self._motion = magnify(latent, self._motion, self._motion_rates, self._mouth_cells, gain)
            return shown
        shown, motion = magnify(latent, self._motion.index_select(0, index),
                                self._motion_rates.index_select(0, index), self._mouth_cells, gain)
        self._motion.index_copy_(0, index, motion)
        return shown
