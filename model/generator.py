"""The EARTalking generator: portrait + speech (+ FCIC controls) -> video, one frame at a time.

Pipeline per frame t (block b = t + 1; block 0 is the reference portrait, the attention sink):

    prev latent (frame t-1, or the portrait for t = 0) -> P frame tokens ┐
    audio around frame t                                 -> A audio tokens ├─ block (Pb = P + A + C tokens)
    controls of frame t (absent -> learned embedding)    -> C control tokens┘
      (with `lip_from_speech`, `lip` is the row's intensity times the speech's lip drive: speech_drive.py)
    block -> SFA transformer (KV cache: sink blocks + ring of window blocks) -> hidden of the P frame tokens
          -> head -> latent delta (regressed, or sampled by the flow head); frame t latent = portrait latent + delta
          -> VAE decoder against the portrait (warp + paint, frame_vae.py) -> RGB frame

Shapes: B batch, F frames, P latent tokens per frame, A audio and C control tokens per frame, Pb tokens
per frame block, d_model token width, Cl latent channels, L latent grid side, S image side.

Design note, the output head (`GeneratorConfig.head`): both heads predict each frame's latent as the
reference latent plus a delta, since anchoring every frame on the portrait's latent keeps identity by
construction, with the SFA sink reinforcing it. "regression" (the shipped checkpoint's) maps each frame
token's hidden state to its delta with one linear layer, trained with squared error: it predicts the mean
of the motions that fit the sound, and the mean of many mouth shapes is near closed. "flow" samples the
delta with a small per-token MLP denoiser (flow_head.py, MAR / DyStream style), a few steps of that MLP per
frame and not of the transformer, so CPU real time stays within reach; `RenderRequest.seed` seeds its
noise, one generator per request: the same seed gives the same video, different seeds different videos.
The regression head draws no random numbers, so its output is identical for every seed. The rollout's
exposure bias is fought in training (training/losses.py: noise on the history, clips trained on the
model's own rollout).

Departures from the paper: frames are single VAE latents rather than a discrete tokenizer; control
values use fixed ranges (controls.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

from .audio_encoder import AudioEncoder
from .config import AUDIO_SAMPLE_RATE, GeneratorConfig
from .controls import CONTROL_NAMES, ControlEmbedding, stack_controls
from .face_regions import region_cells
from .flow_head import FlowHead, TokenNoise, draw_noise
from .frame_vae import FrameVAE
from .kv_cache import KVCache
from .speech_drive import speech_lip_drive
from .transformer import FrameTransformer


@dataclass
class RenderRequest:
    portrait: torch.Tensor  # (3, S, S) float in [0, 1]: the aligned canonical crop
    audio: torch.Tensor  # (N,) float32 mono at 16 kHz
    fps: float = 25.0  # frames per second of the output video
    controls: dict[str, torch.Tensor] | None = None  # name -> (F,) per-frame values, NaN = absent
    seed: int = 0  # seeds the flow head's noise (same seed, same video); the regression head ignores it


def num_frames_for(num_samples: int, fps: float) -> int:
    """Frames covering the audio: ceil, so the video is never shorter than the speech (at most 1 frame longer)."""
    return max(1, math.ceil(num_samples * fps / AUDIO_SAMPLE_RATE - 1e-9))


class Generator(nn.Module):
    def __init__(self, config: GeneratorConfig):
        super().__init__()
        self.config = config
        width, P = config.d_model, config.frame_tokens
        self.vae = FrameVAE(config)
        self.audio = AudioEncoder(config)
        self.controls = ControlEmbedding(width)
        self.transformer = FrameTransformer(config)
        self.frame_in = nn.Linear(config.token_features, width)
        self.frame_pos = nn.Parameter(torch.randn(P, width) * 0.02)  # where in the face a token sits
        self.reference_type = nn.Parameter(torch.randn(width) * 0.02)
        self.frame_type = nn.Parameter(torch.randn(width) * 0.02)
        self.audio_type = nn.Parameter(torch.randn(width) * 0.02)
        # the reference block has no audio or controls: learned tokens fill those places
        self.reference_fill = nn.Parameter(torch.randn(config.audio_tokens + len(CONTROL_NAMES), width) * 0.02)
        if config.head == "flow":
            self.flow_head = FlowHead(config.token_features, width, config.flow_width, config.flow_layers,
                                      config.flow_steps, config.flow_noise_std)
        else:
            self.head = nn.Linear(width, config.token_features)
            nn.init.zeros_(self.head.weight)  # start as "the portrait, unmoved"
            nn.init.zeros_(self.head.bias)
        if config.audio_mouth:
            # the audio window alone carries the mouth's opening; this linear path takes it straight to the
            # mouth and chin's cells instead of through attention over the whole block
            cells = torch.nonzero(region_cells(config.latent_size).flatten()).flatten()  # (n,) flat cell indices
            self.register_buffer("mouth_index", cells, persistent=False)
            self.audio_mouth = nn.Linear(config.audio_tokens * width, config.latent_channels * cells.numel())
            nn.init.zeros_(self.audio_mouth.weight)  # starts as no change: a fine-tune starts from its network
            nn.init.zeros_(self.audio_mouth.bias)

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
        B, F = latents.shape[:2]
        img = self.vae.decode(latents.flatten(0, 1), self.vae.reference(portraits).repeat_frames(F))
        return img.view(B, F, *img.shape[1:])

    # ------------------------------------------------------------------ blocks
    def reference_block(self, ref_latent: torch.Tensor) -> torch.Tensor:
        """(B, Cl, L, L) -> (B, Pb, d_model)."""
        B = ref_latent.shape[0]
        frame = self.frame_in(self.patchify(ref_latent)) + self.frame_pos + self.reference_type  # (B, P, d_model)
        return torch.cat((frame, self.reference_fill.expand(B, -1, -1)), dim=1)

    def frame_blocks(self, prev_latents: torch.Tensor, audio_tokens: torch.Tensor, control_tokens: torch.Tensor) -> torch.Tensor:
        """(B, F, Cl, L, L), (B, F, A, d_model), (B, F, C, d_model) -> (B, F, Pb, d_model)."""
        frame = self.frame_in(self.patchify(prev_latents)) + self.frame_pos + self.frame_type  # (B, F, P, d_model)
        return torch.cat((frame, audio_tokens + self.audio_type, control_tokens), dim=2)

    def predict_latents(self, hidden: torch.Tensor, ref_latent: torch.Tensor, audio_tokens: torch.Tensor,
                        noise: TokenNoise | None = None) -> torch.Tensor:
        """Hidden states of frame blocks (B, F, Pb, d_model) and their audio tokens (B, F, A, d_model)
        -> latents (B, F, Cl, L, L). The flow head draws its noise from `noise` (the global RNG without)."""
        P = self.config.frame_tokens
        if self.config.head == "flow":
            delta = self.unpatchify(self.sample_deltas(hidden[:, :, :P], noise))  # (B, F, Cl, L, L)
            return ref_latent[:, None] + delta
        delta = self.unpatchify(self.head(hidden[:, :, :P]))  # (B, F, Cl, L, L)
        if self.config.audio_mouth:
            B, F, Cl, L, _ = delta.shape
            mouth = self.audio_mouth(audio_tokens.flatten(2)).view(B, F, Cl, -1)  # (B, F, Cl, n)
            grid = delta.new_zeros(B, F, Cl, L * L)
            grid[..., self.mouth_index] = mouth
            delta = delta + grid.view_as(delta)
        return ref_latent[:, None] + delta

    def sample_deltas(self, frame_hidden: torch.Tensor, noise: TokenNoise | None) -> torch.Tensor:
        """The flow head's samples for frame tokens' hidden states (B, F, P, d_model) -> deltas (B, F, P, K).

        Noise is drawn frame by frame, as the streaming rollout draws it, so a teacher-forced pass and the
        rollout with the same seeds use the same numbers for the same frame.
        """
        B, F, P = frame_hidden.shape[:3]
        x0 = torch.stack([draw_noise(noise, B, (P, self.config.token_features), frame_hidden.device,
                                     frame_hidden.dtype) for _ in range(F)], dim=1)  # (B, F, P, K)
        return self.flow_head.sample(frame_hidden, x0)

    def condition_tokens(self, requests: list[RenderRequest], num_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Audio and control tokens for every frame of every request: (B, F, A, d_model), (B, F, C, d_model).

        Audio is encoded per request so that padding in a batch never changes a video's features.
        """
        audio, controls = [], []
        for r in requests:
            wave = r.audio.to(self.device, torch.float32).flatten()[None]  # (1, N)
            audio.append(self.audio(wave, r.fps, num_frames)[0])
            values = stack_controls(r.controls, num_frames)  # (F, C)
            if self.config.lip_from_speech:
                self.fill_lip_from_speech(values, r)
            controls.append(values)
        control_values = torch.stack(controls).to(self.device, self.dtype)  # (B, F, C)
        return torch.stack(audio).to(self.dtype), self.controls(control_values)

    def fill_lip_from_speech(self, values: torch.Tensor, request: RenderRequest) -> None:
        """Turn the (F, C) `values`' `lip` column, in place, into the mouth opening to draw: the row's lip
        intensity (1 where absent) times the request's speech lip drive, the opening the puppet draws."""
        lip = values[:, CONTROL_NAMES.index("lip")]
        drive = speech_lip_drive(request.audio.detach().float().cpu().flatten().numpy(), request.fps,
                                 len(lip), self.config.audio_lead_ms / 1000.0)
        intensity = torch.nan_to_num(lip, nan=1.0)
        lip.copy_(intensity * torch.from_numpy(drive).to(lip.dtype))

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def stream(self, requests: list[RenderRequest]) -> Iterator[torch.Tensor]:
        """Yield (B, 3, S, S) frames in [0, 1], one frame step at a time, until the longest request ends.

        Requests may differ in length and fps; the caller keeps the first `num_frames` frames of each (a
        request that has ended repeats its last frame, computing nothing). Built on `slots` with one slot
        per request; memory is constant in video length (a KV cache of sink_frames + window_frames blocks).
        """
        stream = self.slots(len(requests))
        for i, r in enumerate(requests):
            stream.add(r, key=i)
        last: torch.Tensor | None = None
        while len(stream):
            out = stream.step()
            if last is None:
                last = out.frames.new_zeros(len(requests), *out.frames.shape[1:])
            last[out.slots] = out.frames
            yield last.clone()

    def slots(self, batch: int) -> "SlotStream":
        """A continuous-batching stream of `batch` slots (slots.py): add a video to a free slot at any step."""
        from .slots import SlotStream

        return SlotStream(self, batch)

    def rollout(self, ref_latent: torch.Tensor, audio_tokens: torch.Tensor, control_tokens: torch.Tensor,
                noise: TokenNoise | None = None) -> Iterator[torch.Tensor]:
        """The autoregressive loop in latent space: yield each frame's latent (B, Cl, L, L) in turn.

        ref_latent (B, Cl, L, L); audio (B, F, A, d_model) and control tokens (B, F, C, d_model) for F
        frames. Each frame's block holds the previous frame's own prediction (the portrait for frame 0),
        as in inference; training's self-forcing (training/losses.py) uses it too, under no_grad. The flow
        head draws from `noise` (one generator per video), or from the global RNG without it.
        """
        cache = self.new_cache(ref_latent.shape[0])
        self.transformer.forward_cached(self.reference_block(ref_latent), cache, block=0)  # prefill the sink
        prev = ref_latent
        for t in range(audio_tokens.shape[1]):
            block = self.frame_blocks(prev[:, None], audio_tokens[:, t : t + 1], control_tokens[:, t : t + 1])[:, 0]
            hidden = self.transformer.forward_cached(block, cache, block=t + 1)  # (B, Pb, d_model)
            prev = self.predict_latents(hidden[:, None], ref_latent, audio_tokens[:, t : t + 1], noise)[:, 0]
            yield prev

    def new_cache(self, batch: int) -> KVCache:
        return self.transformer.new_cache(batch, self.block_tokens, self.device, self.dtype)

    # ------------------------------------------------------------------ reference path
    def forward_full(self, ref_latent: torch.Tensor, prev_latents: torch.Tensor,
                     audio_tokens: torch.Tensor, control_tokens: torch.Tensor,
                     noise: TokenNoise | None = None) -> torch.Tensor:
        """Teacher forcing over a whole clip under the explicit SFA mask (no cache).

        ref_latent (B, Cl, L, L); prev_latents (B, F, Cl, L, L) = latents of frames -1..F-2 (frame -1 is
        the portrait); audio (B, F, A, d_model); controls (B, F, C, d_model)
        -> predicted latents (B, F, Cl, L, L) (sampled with `noise` by the flow head).
        """
        hidden = self.hidden_full(ref_latent, prev_latents, audio_tokens, control_tokens)
        return self.predict_latents(hidden, ref_latent, audio_tokens, noise)

    def hidden_full(self, ref_latent: torch.Tensor, prev_latents: torch.Tensor,
                    audio_tokens: torch.Tensor, control_tokens: torch.Tensor) -> torch.Tensor:
        """forward_full's transformer pass: the frame blocks' hidden states (B, F, Pb, d_model), what the
        head reads (and what the flow head's training loss conditions on)."""
        B, F = prev_latents.shape[:2]
        blocks = torch.cat((self.reference_block(ref_latent)[:, None],
                            self.frame_blocks(prev_latents, audio_tokens, control_tokens)),
                           dim=1)  # (B, 1+F, Pb, d_model)
        hidden = self.transformer.forward_full(blocks.flatten(1, 2), num_blocks=F + 1)  # (B, (1+F)*Pb, d_model)
        return hidden.view(B, F + 1, self.block_tokens, -1)[:, 1:]  # (B, F, Pb, d_model)
