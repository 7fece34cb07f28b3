"""Random training batches from a clip data set, and the random streams a resumed run continues.

Stage 1 draws single frames with their clips' portraits (`BatchSampler.vae_batch`); stage 2 draws
windows of clips with their audio and controls (`BatchSampler.clip_batch`), hiding controls for a
whole clip or a span of it so that absent controls leave the model free. Every draw comes from one
generator seeded by (seed, rank), so a run is reproducible and ranks draw different batches.
"""

from __future__ import annotations

import numpy as np
import torch

from model.frames import images_to_tensor
from training.checkpointing import TrainerState
from training.config import TrainConfig
from training.latents import ClipLatents
from training.shards import ClipDataset


class BatchSampler:
    """Random batches from a clip data set, reproducible from (seed, rank)."""

    def __init__(self, dataset: ClipDataset, config: TrainConfig, control_names: list[str], rank: int = 0):
        self.dataset = dataset
        self.latents: ClipLatents | None = None  # set in stage 2: clip batches then carry latents, not images
        self.config = config
        self.rng = np.random.default_rng([config.seed, rank])
        self.model_controls = list(control_names)
        self.control_names = [c for c in control_names if c in dataset.controls]
        if config.clip_frames > dataset.clip_frames:
            raise ValueError(f"clip_frames={config.clip_frames} exceeds the data set's {dataset.clip_frames} frames per clip")

    def state(self) -> dict:
        return self.rng.bit_generator.state

    def set_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state
    def vae_batch(self) -> dict:
        """Frames with their clips' portraits (the decoder's reference) and blink labels (NaN: unknown).

        Now and then the portrait itself. With `closed_eye_share`, that share of the frames is drawn
        from the closed-eye frames of clips that have any: blinks are a few percent of a video, too rare
        for the lid to be learned from uniform draws. Closed is under half the clip's median openness (the
        label is absolute eye openness, and some faces' open eyes read 0.4).
        """
        frames, portraits, blinks = [], [], []
        column = self.dataset.controls.index("blink") if "blink" in self.dataset.controls else None
        for _ in range(self.config.vae_batch_frames):
            clip = self.dataset[int(self.rng.integers(len(self.dataset)))]
            labels = clip.controls[:, column] if column is not None else np.full(clip.frames.shape[0], np.nan)
            closed = []  # looked up only when drawn from (every frame of every batch otherwise)
            if self.config.closed_eye_share > 0 and np.isfinite(labels).any():
                closed = np.flatnonzero(labels < 0.5 * np.nanmedian(labels))
            if len(closed) and self.rng.random() < self.config.closed_eye_share:
                f = int(self.rng.choice(closed))
            else:
                f = int(self.rng.integers(clip.frames.shape[0] + 1))
            frames.append(clip.portrait if f == clip.frames.shape[0] else clip.frames[f])
            blinks.append(np.nan if f == clip.frames.shape[0] else float(labels[f]))
            portraits.append(clip.portrait)
        return {"frames": images_to_tensor(np.stack(frames)), "portraits": images_to_tensor(np.stack(portraits)),
                "blink": torch.tensor(blinks, dtype=torch.float32)}

    def clip_batch(self) -> dict:
        config, ds = self.config, self.dataset
        samples_per_frame = ds.sample_rate / ds.fps
        portraits, images, frames, audio, starts, controls = [], [], [], [], [], []
        # the whole data-set clip's audio goes with each window (its start frame beside it): the audio
        # encoder then sees the sound around the window and the level of the utterance, as in inference
        span = int(round(ds.clip_frames * samples_per_frame))
        for _ in range(config.batch_clips):
            index = int(self.rng.integers(len(ds)))
            clip = ds[index]
            start = int(self.rng.integers(0, ds.clip_frames - config.clip_frames + 1))
            if self.latents is None:
                portraits.append(clip.portrait)
                frames.append(clip.frames[start:start + config.clip_frames])
            else:
                ref, clip_latents = self.latents(index)
                portraits.append(ref)
                images.append(clip.portrait)
                frames.append(clip_latents[start:start + config.clip_frames])
            audio.append(np.pad(clip.audio[:span], (0, max(0, span - len(clip.audio)))))
            starts.append(start)
            labels = clip.controls[start:start + config.clip_frames].copy()  # (F, K)
            for name in self.control_names:
                k = ds.controls.index(name)
                if self.rng.random() < config.control_dropout:
                    labels[:, k] = np.nan
                elif self.rng.random() < config.span_dropout:
                    a = int(self.rng.integers(0, config.clip_frames))
                    b = int(self.rng.integers(a + 1, config.clip_frames + 1))
                    labels[a:b, k] = np.nan
            controls.append(labels)
        stacked = np.stack(controls)  # (B, F, K) in the data set's order
        values = np.full((*stacked.shape[:2], len(self.model_controls)), np.nan, np.float32)  # (B, F, C)
        for c, name in enumerate(self.model_controls):
            if name in self.control_names:
                values[:, :, c] = stacked[:, :, ds.controls.index(name)]
        batch = {
            "audio": torch.from_numpy(np.stack(audio).astype(np.float32)),  # (B, N) the whole data-set clip
            "audio_start": torch.tensor(starts, dtype=torch.long),  # (B,) the window's first frame in it
            "controls": torch.from_numpy(values),  # (B, F, C) in the model's CONTROL_NAMES order, NaN = absent
        }
        if self.latents is None:
            batch["portrait"] = images_to_tensor(np.stack(portraits))  # (B, 3, S, S)
            batch["frames"] = images_to_tensor(np.stack(frames))  # (B, F, 3, S, S)
        else:
            batch["ref_latent"] = torch.stack(portraits)  # (B, Cl, L, L)
            batch["portrait"] = images_to_tensor(np.stack(images))  # (B, 3, S, S): the decoder's reference
            batch["target_latents"] = torch.stack(frames)  # (B, F, Cl, L, L)
        return batch


def capture_rng(sampler: BatchSampler) -> dict:
    """The random streams a checkpoint carries: torch's and the sampler's."""
    return {"torch": torch.get_rng_state(), "sampler": sampler.state()}


def restore_rng(state: TrainerState, sampler: BatchSampler, rank: int, seed: int) -> None:
    """Continue the random streams of the run a checkpoint came from.

    Only rank 0 writes checkpoints, so only its streams are saved: it continues exactly, and every other
    rank starts a stream of its own from (seed, rank, step), never a copy of rank 0's batches.
    """
    if rank == 0:
        sampler.set_state(state.rng["sampler"])
        torch.set_rng_state(state.rng["torch"])
        return
    streams = np.random.SeedSequence([seed, rank, state.step])
    sampler.rng = np.random.default_rng(streams)
    torch.manual_seed(int(streams.generate_state(1)[0]))
