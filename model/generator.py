"""The EARTalking generator: portrait + speech (+ FCIC controls) -> video, one frame at a time.

Pipeline per frame t (block b = t + 1; block 0 is the reference portrait, the attention sink):

    prev latent (frame t-1, or the portrait for t = 0) -> P frame tokens ┐
    audio around frame t                                 -> A audio tokens ├─ block (Pb = P + A + C tokens)
    controls of frame t (absent -> learned embedding)    -> C control tokens┘
    block -> SFA transformer (KV cache: sinks + ring of W blocks) -> hidden of the P frame tokens
          -> head -> latent delta; frame t latent = portrait latent + delta
          -> VAE decoder against the portrait (warp + paint, frame_vae.py) -> RGB frame

Design note, the output head. The paper's exact head could not be established offline, so this uses a
deterministic regression head in the VAE's latent space, predicting each frame's latent as the
reference latent plus a delta. Why: (1) the tiny preset must train in under an hour on 2 CPU cores and
render faster than real time there, which rules out a diffusion / flow-matching head's tens of
denoising steps per frame; (2) anchoring every frame on the portrait's latent keeps identity by
construction, with the SFA sink reinforcing it; (3) exposure bias of the autoregressive rollout is
fought in training by noising the history (`history_noise`) and by training a share of clips on the
model's own rollout as history (`self_forcing`), which also makes it read the controls. The cost: a
regression head predicts the mean motion, so mouth shapes are slightly averaged. `RenderRequest.seed` is accepted for
interface stability; this head draws no random numbers, so output is identical for every seed.

Departures from the paper: frames are single VAE latents rather than a discrete tokenizer; control
values use fixed ranges (controls.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Iterator

import torch
from torch import nn

from .audio_encoder import AudioEncoder
from .config import AUDIO_SAMPLE_RATE, TRAINING_ONLY_FIELDS, GeneratorConfig
from .controls import CONTROL_NAMES, ControlEmbedding, drop_controls, stack_controls
from .face_regions import region_cells
from .frame_vae import FrameVAE
from .kv_cache import KVCache
from .transformer import FrameTransformer


@dataclass
class RenderRequest:
    portrait: torch.Tensor  # (3, S, S) float in [0, 1]: the aligned canonical crop
    audio: torch.Tensor  # (N,) float32 mono at 16 kHz
    fps: float = 25.0  # frames per second of the output video
    controls: dict[str, torch.Tensor] | None = None  # name -> (F,) per-frame values, NaN = absent
    seed: int = 0  # accepted for interface stability; the regression head is deterministic


def weighted_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    weights = weights.expand_as(values)
    return (values * weights).sum() / weights.sum().clamp(min=1e-6)


def num_frames_for(num_samples: int, fps: float) -> int:
    """Frames covering the audio: ceil, so the video is never shorter than the speech (at most 1 frame longer)."""
    return max(1, math.ceil(num_samples * fps / AUDIO_SAMPLE_RATE - 1e-9))


class Generator(nn.Module):
    def __init__(self, cfg: GeneratorConfig):
        super().__init__()
        self.config = cfg
        D, P = cfg.d_model, cfg.frame_tokens
        self.vae = FrameVAE(cfg)
        self.audio = AudioEncoder(cfg)
        self.controls = ControlEmbedding(D)
        self.transformer = FrameTransformer(cfg)
        self.frame_in = nn.Linear(cfg.token_features, D)
        self.frame_pos = nn.Parameter(torch.randn(P, D) * 0.02)  # where in the face a token sits
        self.reference_type = nn.Parameter(torch.randn(D) * 0.02)
        self.frame_type = nn.Parameter(torch.randn(D) * 0.02)
        self.audio_type = nn.Parameter(torch.randn(D) * 0.02)
        # the reference block has no audio or controls: learned tokens fill those places
        self.reference_fill = nn.Parameter(torch.randn(cfg.audio_tokens + len(CONTROL_NAMES), D) * 0.02)
        self.head = nn.Linear(D, cfg.token_features)
        nn.init.zeros_(self.head.weight)  # start as "the portrait, unmoved"
        nn.init.zeros_(self.head.bias)
        if cfg.audio_mouth:
            # Why: the trained transformer moves the mouth's cells with r ~0.5 against the truth where an MLP
            # on the same audio window reads the opening at r ~0.9; this tests whether the sound's distance
            # from the head is the cause (for the tiny checkpoint it was not: README, "Tried with phase 6")
            cells = torch.nonzero(region_cells(cfg.latent_size).flatten()).flatten()  # (n,) flat cell indices
            self.register_buffer("mouth_index", cells, persistent=False)
            self.audio_mouth = nn.Linear(cfg.audio_tokens * D, cfg.latent_channels * cells.numel())
            nn.init.zeros_(self.audio_mouth.weight)  # starts as no change: a fine-tune starts from its network
            nn.init.zeros_(self.audio_mouth.bias)

    def set_training_fields(self, **changes) -> None:
        """Change training-only hyperparameters (config.TRAINING_ONLY_FIELDS) in place, as a resumed run may.

        Every part that keeps its own reference to the config (the frame VAE's loss reads its region weight
        there) gets the new one too, so no part trains with a stale value.
        """
        architecture = sorted(set(changes) - TRAINING_ONLY_FIELDS)
        if architecture:
            raise ValueError(f"{architecture} shape the weights; only training-only fields may change in place")
        self.config = replace(self.config, **changes)
        for part in self.modules():
            if isinstance(getattr(part, "cfg", None), GeneratorConfig):
                part.cfg = self.config

    # ------------------------------------------------------------------ sizes
    @property
    def block_tokens(self) -> int:  # Pb
        return self.config.frame_tokens + self.config.audio_tokens + len(CONTROL_NAMES)

    @staticmethod
    def num_frames(num_samples: int, fps: float) -> int:
        return num_frames_for(num_samples, fps)

    @property
    def dtype(self) -> torch.dtype:
        return self.frame_pos.dtype

    @property
    def device(self) -> torch.device:
        return self.frame_pos.device

    # ------------------------------------------------------------------ latents <-> tokens
    def patchify(self, latent: torch.Tensor) -> torch.Tensor:
        """(..., Cl, L, L) -> (..., P, Cl * p * p)."""
        p, L = self.config.latent_patch, self.config.latent_size
        lead, Cl = latent.shape[:-3], latent.shape[-3]
        x = latent.reshape(-1, Cl, L // p, p, L // p, p)  # (N, Cl, Lp, p, Lp, p)
        x = x.permute(0, 2, 4, 1, 3, 5).reshape(-1, (L // p) ** 2, Cl * p * p)  # (N, P, Cl*p*p)
        return x.reshape(*lead, *x.shape[1:])

    def unpatchify(self, tokens: torch.Tensor) -> torch.Tensor:
        """(..., P, Cl * p * p) -> (..., Cl, L, L)."""
        p, L, Cl = self.config.latent_patch, self.config.latent_size, self.config.latent_channels
        lead = tokens.shape[:-2]
        x = tokens.reshape(-1, L // p, L // p, Cl, p, p)  # (N, Lp, Lp, Cl, p, p)
        x = x.permute(0, 3, 1, 4, 2, 5).reshape(-1, Cl, L, L)  # (N, Cl, L, L)
        return x.reshape(*lead, Cl, L, L)

    def encode_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """(..., 3, S, S) in [0, 1] -> (..., Cl, L, L) latents."""
        lead = frames.shape[:-3]
        lat = self.vae.encode(frames.reshape(-1, *frames.shape[-3:]))
        return lat.reshape(*lead, *lat.shape[1:])

    def decode_latents(self, latents: torch.Tensor, portraits: torch.Tensor) -> torch.Tensor:
        """Latents (B, F, Cl, L, L) of videos with portraits (B, 3, S, S) -> frames (B, F, 3, S, S) in [0, 1]."""
        B, F_ = latents.shape[:2]
        img = self.vae.decode(latents.flatten(0, 1), self.vae.reference(portraits).repeat_frames(F_))
        return img.view(B, F_, *img.shape[1:])

    # ------------------------------------------------------------------ blocks
    def reference_block(self, ref_latent: torch.Tensor) -> torch.Tensor:
        """(B, Cl, L, L) -> (B, Pb, D)."""
        B = ref_latent.shape[0]
        frame = self.frame_in(self.patchify(ref_latent)) + self.frame_pos + self.reference_type  # (B, P, D)
        return torch.cat((frame, self.reference_fill.expand(B, -1, -1)), dim=1)

    def frame_blocks(self, prev_latents: torch.Tensor, audio_tokens: torch.Tensor, control_tokens: torch.Tensor) -> torch.Tensor:
        """(B, F, Cl, L, L), (B, F, A, D), (B, F, C, D) -> (B, F, Pb, D)."""
        frame = self.frame_in(self.patchify(prev_latents)) + self.frame_pos + self.frame_type  # (B, F, P, D)
        return torch.cat((frame, audio_tokens + self.audio_type, control_tokens), dim=2)

    def predict_latents(self, hidden: torch.Tensor, ref_latent: torch.Tensor, audio_tokens: torch.Tensor) -> torch.Tensor:
        """Hidden states of frame blocks (B, F, Pb, D) and their audio tokens (B, F, A, D) -> latents (B, F, Cl, L, L)."""
        P = self.config.frame_tokens
        delta = self.unpatchify(self.head(hidden[:, :, :P]))  # (B, F, Cl, L, L)
        if self.config.audio_mouth:
            B, F_, Cl, L, _ = delta.shape
            mouth = self.audio_mouth(audio_tokens.flatten(2)).view(B, F_, Cl, -1)  # (B, F, Cl, n)
            grid = delta.new_zeros(B, F_, Cl, L * L)
            grid[..., self.mouth_index] = mouth
            delta = delta + grid.view_as(delta)
        return ref_latent[:, None] + delta

    def condition_tokens(self, requests: list[RenderRequest], num_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Audio and control tokens for every frame of every request: (B, F, A, D), (B, F, C, D).

        Audio is encoded per request so that padding in a batch never changes a video's features.
        """
        audio, controls = [], []
        for r in requests:
            wave = r.audio.to(self.device, torch.float32).flatten()[None]  # (1, N)
            audio.append(self.audio(wave, r.fps, num_frames)[0])
            controls.append(stack_controls(r.controls, num_frames))
        control_values = torch.stack(controls).to(self.device, self.dtype)  # (B, F, C)
        return torch.stack(audio).to(self.dtype), self.controls(control_values)

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def stream(self, requests: list[RenderRequest]) -> Iterator[torch.Tensor]:
        """Yield (B, 3, S, S) frames in [0, 1], one frame step at a time, until the longest request ends.

        Requests may differ in length and fps; the caller keeps the first `num_frames` frames of each.
        Memory is constant in video length (KV cache of S sink + W window blocks).
        """
        S = self.config.image_size
        for r in requests:
            if tuple(r.portrait.shape) != (3, S, S):
                raise ValueError(f"portrait must be (3, {S}, {S}), got {tuple(r.portrait.shape)}")
        total = max(self.num_frames(r.audio.numel(), r.fps) for r in requests)
        portraits = torch.stack([r.portrait for r in requests]).to(self.device, self.dtype)  # (B, 3, S, S)
        reference = self.vae.reference(portraits)  # the portraits' latents and decoder features, once
        audio_tokens, control_tokens = self.condition_tokens(requests, total)
        for latent in self.rollout(reference.latent, audio_tokens, control_tokens):
            yield self.vae.decode(latent, reference)

    def rollout(self, ref_latent: torch.Tensor, audio_tokens: torch.Tensor,
                control_tokens: torch.Tensor) -> Iterator[torch.Tensor]:
        """The autoregressive loop in latent space: yield each frame's latent (B, Cl, L, L) in turn.

        ref_latent (B, Cl, L, L); audio (B, F, A, D) and control tokens (B, F, C, D) for F frames. Each
        frame's block holds the previous frame's own prediction (the portrait for frame 0), as in
        inference; training's self-forcing uses it too, under no_grad.
        """
        cache = self.new_cache(ref_latent.shape[0])
        self.transformer.forward_cached(self.reference_block(ref_latent), cache, block=0)  # prefill the sink
        prev = ref_latent
        for t in range(audio_tokens.shape[1]):
            block = self.frame_blocks(prev[:, None], audio_tokens[:, t : t + 1], control_tokens[:, t : t + 1])[:, 0]
            hidden = self.transformer.forward_cached(block, cache, block=t + 1)  # (B, Pb, D)
            prev = self.predict_latents(hidden[:, None], ref_latent, audio_tokens[:, t : t + 1])[:, 0]
            yield prev

    def new_cache(self, batch: int) -> KVCache:
        return self.transformer.new_cache(batch, self.block_tokens, self.device, self.dtype)

    # ------------------------------------------------------------------ reference path and training
    def self_forced_history(self, prev: torch.Tensor, ref: torch.Tensor, audio_tokens: torch.Tensor,
                            control_tokens: torch.Tensor) -> torch.Tensor:
        """Replace the teacher-forced history of a random `self_forcing` share of clips by the model's own rollout.

        Why: with the true previous frame in its block, the model learns to copy its pose and ignore the
        control tokens (the pose barely changes between frames). Its own rollout drifts from the truth, as
        in inference, so the target pose and blink can only come from the controls (and the mouth from the
        audio). The rollout runs without gradients, so the step costs one cached pass more.
        """
        own = torch.rand(prev.shape[0], device=prev.device) < self.config.self_forcing  # (B,)
        if not own.any():
            return prev
        with torch.no_grad():
            rolled = list(self.rollout(ref[own], audio_tokens[own, :-1], control_tokens[own, :-1]))
        prev = prev.clone()
        if rolled:
            prev[own, 1:] = torch.stack(rolled, dim=1).to(prev.dtype)
        return prev

    def forward_full(self, ref_latent: torch.Tensor, prev_latents: torch.Tensor,
                     audio_tokens: torch.Tensor, control_tokens: torch.Tensor) -> torch.Tensor:
        """Teacher forcing over a whole clip under the explicit SFA mask (no cache).

        ref_latent (B, Cl, L, L); prev_latents (B, F, Cl, L, L) = latents of frames -1..F-2 (frame -1 is
        the portrait); audio (B, F, A, D); controls (B, F, C, D) -> predicted latents (B, F, Cl, L, L).
        """
        B, F_ = prev_latents.shape[:2]
        blocks = torch.cat((self.reference_block(ref_latent)[:, None],
                            self.frame_blocks(prev_latents, audio_tokens, control_tokens)), dim=1)  # (B, 1+F, Pb, D)
        hidden = self.transformer.forward_full(blocks.flatten(1, 2), num_blocks=F_ + 1)  # (B, (1+F)*Pb, D)
        hidden = hidden.view(B, F_ + 1, self.block_tokens, -1)[:, 1:]  # (B, F, Pb, D)
        return self.predict_latents(hidden, ref_latent, audio_tokens)

    def training_loss(self, portrait: torch.Tensor | None, frames: torch.Tensor | None, audio: torch.Tensor,
                      fps: float, controls: torch.Tensor | None = None,
                      latents: tuple[torch.Tensor, torch.Tensor] | None = None,
                      audio_start: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Stage-2 loss on a batch of clips of equal length.

        portrait (B, 3, S, S) and frames (B, F, 3, S, S) in [0, 1]; audio (B, N) 16 kHz starting at the
        clip's first frame, or, with `audio_start` (B,), a longer recording in which the clip starts at
        frame audio_start[b] (so the audio encoder sees the sound around the clip and the utterance's
        level, as in inference); controls (B, F, C) in CONTROL_NAMES order with NaN = absent, or None.
        The VAE is used frozen, so a caller that has its latents cached passes `latents` = (portrait
        (B, Cl, L, L), frames (B, F, Cl, L, L)) instead of the images.
        """
        if latents is None:
            with torch.no_grad():
                latents = self.vae.encode(portrait), self.encode_frames(frames)
        ref, target = latents  # (B, Cl, L, L), (B, F, Cl, L, L)
        B, F_ = target.shape[:2]
        if audio_start is None:
            audio_tokens = self.audio(audio, fps, F_)  # (B, F, A, D)
        else:
            starts = audio_start.to(target.device, torch.long)  # (B,)
            every = self.audio(audio, fps, int(starts.max()) + F_)  # (B, F_all, A, D)
            frame = starts[:, None] + torch.arange(F_, device=target.device)  # (B, F)
            audio_tokens = every[torch.arange(B, device=target.device)[:, None], frame]  # (B, F, A, D)
        values = controls if controls is not None else torch.full((B, F_, len(CONTROL_NAMES)), math.nan)
        values = values.to(target.device, target.dtype)
        if self.training:
            values = drop_controls(values, self.config.control_dropout)
        control_tokens = self.controls(values)
        prev = torch.cat((ref[:, None], target[:, :-1]), dim=1)  # teacher forcing: (B, F, Cl, L, L)
        changed = (target - prev).abs()  # what moved since the true previous frame (blinks, jaw drops)
        if self.training and self.config.self_forcing > 0:
            prev = self.self_forced_history(prev, ref, audio_tokens, control_tokens)
        if self.training and self.config.history_noise > 0:
            prev = prev + torch.randn_like(prev) * self.config.history_noise * target.std()
        pred = self.forward_full(ref, prev, audio_tokens, control_tokens)
        squared = (pred - target).pow(2)
        latent_mse = squared.mean()
        # motion matters more than the static face: weight the error on what moved from the portrait
        motion_mse = weighted_mean(squared, (target - ref[:, None]).abs())
        # ... but "moved from the portrait" is dominated by slow head pose; fast events (a blink lasts 4
        # frames, a jaw drop 2-3) are where the frame changes most from the one before, so weight those too
        change_mse = weighted_mean(squared, changed)
        # ... and the jaw's few-pixel drop is a small share of either mean, beside the pose: the model learned
        # it at half the puppet's travel, though the audio window alone predicts the opening (an MLP on it:
        # held-out R^2 0.73); a term on the mouth and chin's cells (a fifth of the grid) makes it count
        mouth = region_cells(target.shape[-1]).to(target.device, target.dtype)  # (L, L)
        mouth_mse = weighted_mean(squared, mouth)
        total = (latent_mse + motion_mse + self.config.change_weight * change_mse
                 + self.config.mouth_weight * mouth_mse)
        return {"total": total, "latent_mse": latent_mse, "motion_mse": motion_mse, "change_mse": change_mse,
                "mouth_mse": mouth_mse}
