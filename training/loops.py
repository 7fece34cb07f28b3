"""The two training stages, each driven by a DeepSpeed engine.

Stage 1 trains the frame VAE on frames against their clips' portraits (`losses.vae_loss`: the
decoder warps the portrait); stage 2 freezes it and trains the rest of the generator, the audio
encoder and the SFA transformer with FCIC controls, on clips (`losses.transformer_loss`), dropping
controls at random so that absent controls leave the model free (FCIC's "control dropout"). The loss
weights are a `config.LossConfig`, saved beside every checkpoint.

DeepSpeed: `deepspeed.initialize` wraps each stage's loss module with the client's AdamW and
schedule; the ZeRO stage, precision, clipping and micro-batch come from a JSON file in
configs/train/ (fp32 + ZeRO 0 on CPU, where a single-process gloo group stands in for a launcher;
bf16/fp16 + ZeRO 1/2 on GPUs, one process per GPU through the `deepspeed` launcher or Ray Train,
each rank drawing its own batches). Rank 0 alone writes checkpoints and MLflow records.

Resume: a run restarted with the same output URI continues from checkpoints/LATEST: weights,
optimizer, schedule, RNG state and loss weights, at the global step it stopped (checkpointing.py).
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from training.checkpointing import (TrainerState, copy_checkpoint, latest_checkpoint, load_training_checkpoint,
                                    save_final, save_training_checkpoint)
from training.config import LossConfig, TrainConfig
from training.losses import TransformerLoss, VAELoss
from training.shards import ClipDataset

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    output: str
    final_checkpoint: str
    steps_done: int
    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # metric -> [(step, value)]
    run_id: str | None = None


# ---------------------------------------------------------------- distributed / DeepSpeed


def init_distributed() -> None:
    """A process group for DeepSpeed: the launcher's when there is one, else a single-process group."""
    import deepspeed
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return
    if "RANK" not in os.environ:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")


def load_deepspeed_config(path: str | Path, micro_batch: int) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"DeepSpeed config {path} does not exist (see configs/train/)")
    config = json.loads(path.read_text())
    config["train_micro_batch_size_per_gpu"] = micro_batch
    config.pop("train_batch_size", None)  # DeepSpeed derives it: micro-batch x accumulation x world size
    if not torch.cuda.is_available() and (config.get("bf16", {}).get("enabled") or config.get("fp16", {}).get("enabled")):
        raise ValueError(f"{path}: bf16/fp16 need a GPU; use configs/train/cpu_fp32.json on CPU")
    return config


def lr_lambda(warmup: int, total: int, min_ratio: float) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def frame_vae_of(generator: nn.Module) -> nn.Module:
    for name in ("vae", "frame_vae"):
        if isinstance(getattr(generator, name, None), nn.Module):
            return getattr(generator, name)
    raise AttributeError("the generator has no `vae` / `frame_vae` sub-module to train in stage 1")


# ---------------------------------------------------------------- batches


class ClipLatents:
    """The frozen VAE's latents of each clip (portrait, frames), encoded on first use and kept.

    Stage 2 draws every clip many times and the VAE no longer changes, so encoding each frame once
    instead of at every step nearly halves a CPU step (30 -> 56 frames/s on 2 cores).
    """

    def __init__(self, dataset: ClipDataset, vae: nn.Module):
        self.dataset = dataset
        self.vae = vae
        self._memo: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Clip `index` -> portrait latent (Cl, L, L), frame latents (F, Cl, L, L), on the CPU."""
        if index not in self._memo:
            clip = self.dataset[index]
            param = next(self.vae.parameters())
            images = BatchSampler._images(np.concatenate((clip.portrait[None], clip.frames)))  # (1 + F, 3, S, S)
            with torch.no_grad():
                latents = self.vae.encode(images.to(param.device, param.dtype)).float().cpu()
            self._memo[index] = latents[0], latents[1:]
        return self._memo[index]


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

    @staticmethod
    def _images(array: np.ndarray) -> torch.Tensor:
        """(..., S, S, 3) uint8 -> (..., 3, S, S) float in [0, 1]."""
        return torch.from_numpy(np.ascontiguousarray(array)).movedim(-1, -3).float().div_(255.0).contiguous()

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
        return {"frames": self._images(np.stack(frames)), "portraits": self._images(np.stack(portraits)),
                "blink": torch.tensor(blinks, dtype=torch.float32)}

    def clip_batch(self) -> dict:
        cfg, ds = self.config, self.dataset
        samples_per_frame = ds.sample_rate / ds.fps
        portraits, frames, audio, starts, controls = [], [], [], [], []
        # the whole data-set clip's audio goes with each window (its start frame beside it): the audio
        # encoder then sees the sound around the window and the level of the utterance, as in inference
        span = int(round(ds.clip_frames * samples_per_frame))
        for _ in range(cfg.batch_clips):
            index = int(self.rng.integers(len(ds)))
            clip = ds[index]
            start = int(self.rng.integers(0, ds.clip_frames - cfg.clip_frames + 1))
            if self.latents is None:
                portraits.append(clip.portrait)
                frames.append(clip.frames[start:start + cfg.clip_frames])
            else:
                ref, clip_latents = self.latents(index)
                portraits.append(ref)
                frames.append(clip_latents[start:start + cfg.clip_frames])
            audio.append(np.pad(clip.audio[:span], (0, max(0, span - len(clip.audio)))))
            starts.append(start)
            labels = clip.controls[start:start + cfg.clip_frames].copy()  # (F, K)
            for name in self.control_names:
                k = ds.controls.index(name)
                if self.rng.random() < cfg.control_dropout:
                    labels[:, k] = np.nan
                elif self.rng.random() < cfg.span_dropout:
                    a = int(self.rng.integers(0, cfg.clip_frames))
                    b = int(self.rng.integers(a + 1, cfg.clip_frames + 1))
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
            batch["portrait"] = self._images(np.stack(portraits))  # (B, 3, S, S)
            batch["frames"] = self._images(np.stack(frames))  # (B, F, 3, S, S)
        else:
            batch["ref_latent"] = torch.stack(portraits)  # (B, Cl, L, L)
            batch["target_latents"] = torch.stack(frames)  # (B, F, Cl, L, L)
        return batch


def _to(batch, device: torch.device, dtype: torch.dtype):
    if isinstance(batch, torch.Tensor):
        return batch.to(device=device, dtype=dtype if batch.is_floating_point() else batch.dtype)
    if isinstance(batch, dict):
        return {k: _to(v, device, dtype) for k, v in batch.items()}
    return batch


# ---------------------------------------------------------------- the run


class _Tracker:
    """MLflow from rank 0 only; a no-op without a tracking URI."""

    def __init__(self, config: TrainConfig, rank: int, losses: LossConfig):
        self.active = config.tracking_uri is not None and rank == 0
        self.run_id = None
        if self.active:
            import mlflow

            mlflow.set_tracking_uri(config.tracking_uri)
            mlflow.set_experiment(config.experiment)
            run = mlflow.start_run()
            self.run_id = run.info.run_id
            mlflow.set_tags({"eartalk.job": "train", "eartalk.output_uri": config.output,
                             "eartalk.model_version": config.preset})
            mlflow.log_params({k: v for k, v in asdict(config).items() if k != "tracking_uri"})
            mlflow.log_params({f"loss.{k}": v for k, v in losses.to_dict().items()})

    def metrics(self, values: dict[str, float], step: int) -> None:
        if self.active:
            import mlflow

            mlflow.log_metrics(values, step=step)

    def artifact(self, path: Path) -> None:
        if self.active:
            import mlflow

            mlflow.log_artifact(str(path))

    def close(self, status: str = "FINISHED") -> None:
        if self.active:
            import mlflow

            mlflow.end_run(status=status)


def _capture_rng() -> dict:
    return {"torch": torch.get_rng_state()}


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


def run_stage(stage: str, module: nn.Module, params: list[nn.Parameter], next_batch: Callable[[], object],
              first_step: int, last_step: int, peak_lr: float, config: TrainConfig, generator: nn.Module,
              sampler: BatchSampler, tracker: _Tracker, history: dict, resume_state: TrainerState | None,
              step_offset: int, frames_per_step: int, deadline: float | None, losses: LossConfig) -> int:
    """Optimise `module` from local step `first_step` to `last_step`; returns the local step reached."""
    import deepspeed
    import torch.distributed as dist

    total = last_step
    optimizer = torch.optim.AdamW(params, lr=peak_lr, weight_decay=config.weight_decay, betas=(0.9, 0.99))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(config.warmup_steps, total, config.min_lr_ratio))
    micro = config.vae_batch_frames if stage == "vae" else config.batch_clips
    engine, _, _, _ = deepspeed.initialize(model=module, optimizer=optimizer, lr_scheduler=scheduler,
                                           config=load_deepspeed_config(config.deepspeed_config, micro))
    rank = engine.global_rank
    if resume_state is not None:
        if resume_state.stage == stage:
            world = dist.get_world_size() if dist.is_initialized() else 1
            if engine.zero_optimization_stage() > 0 and world > 1:
                # ZeRO splits the optimizer's moments across ranks and only rank 0 writes checkpoints:
                # restoring its part on every rank would be wrong, so the moments start again
                log.warning("resuming under ZeRO %d on %d ranks: the optimizer's moments restart",
                            engine.zero_optimization_stage(), world)
            else:
                optimizer.load_state_dict(resume_state.optimizer)
            scheduler.load_state_dict(resume_state.scheduler)
        restore_rng(resume_state, sampler, rank, config.seed)
    dtype = next(engine.module.parameters()).dtype
    step = first_step
    window_start, window_frames, window_steps = time.monotonic(), 0, 0
    running: dict[str, float] = {}
    while step < last_step:
        batch = _to(next_batch(), engine.device, dtype)
        out = engine(**batch)
        engine.backward(out["total"])
        engine.step()
        step += 1
        window_frames += frames_per_step
        window_steps += 1
        for key, value in out.items():
            running[key] = running.get(key, 0.0) + float(value.detach())
        global_step = step + step_offset
        if step % config.log_every == 0 or step == last_step:
            elapsed = time.monotonic() - window_start
            # a mean over the steps this window ran (after a resume the first window is short)
            values = {f"{stage}/{k}": v / window_steps for k, v in running.items()}
            values[f"{stage}/lr"] = scheduler.get_last_lr()[0]
            values[f"{stage}/frames_per_s"] = window_frames / max(elapsed, 1e-9)
            for key, value in values.items():
                history.setdefault(key, []).append((global_step, value))
            tracker.metrics(values, global_step)
            log.info("%s step %d/%d (global %d): %s", stage, step, last_step, global_step,
                     ", ".join(f"{k.split('/')[-1]}={v:.4g}" for k, v in values.items()))
            running, window_start, window_frames, window_steps = {}, time.monotonic(), 0, 0
        timed_out = deadline is not None and time.monotonic() > deadline
        if deadline is not None and dist.is_initialized() and dist.get_world_size() > 1:
            # every rank stops at the same step, or the ones still stepping wait forever in a collective
            flag = torch.tensor([float(timed_out)], device=engine.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            timed_out = bool(flag.item())
        if rank == 0 and (global_step % config.checkpoint_every == 0 or step == last_step or timed_out):
            state = TrainerState(stage=stage, step=global_step, optimizer=optimizer.state_dict(),
                                 scheduler=scheduler.state_dict(),
                                 rng={**_capture_rng(), "sampler": sampler.state()}, loss=losses.to_dict())
            uri = save_training_checkpoint(config.output, generator, state)
            log.info("checkpoint %s", uri)
        if timed_out:
            log.warning("%s: max_minutes reached at step %d of %d; stopping", stage, step, last_step)
            break
    return step


def train(config: TrainConfig) -> TrainResult:
    """Run (or resume) both stages; returns where the final checkpoint went and the loss history."""
    from model import CONTROL_NAMES, Generator

    init_distributed()
    import torch.distributed as dist

    rank = dist.get_rank() if dist.is_initialized() else 0
    dataset = ClipDataset(config.dataset)
    torch.manual_seed(config.seed + rank)
    resume_state = None
    latest = latest_checkpoint(config.output) if config.resume else None
    if latest is not None:
        generator, resume_state = load_training_checkpoint(latest)
        log.info("resuming from %s (stage %s, global step %d)", latest, resume_state.stage, resume_state.step)
        # the loss weights may change on resume; the architecture may not
        changed = {k: v for k, v in config.model_overrides.items() if getattr(generator.config, k) != v}
        if changed:
            raise ValueError(f"cannot change {sorted(changed)} when resuming {latest}")
        saved = None if resume_state.loss is None else LossConfig.from_dict(resume_state.loss)
        losses = config.resumed_losses(saved)
        if saved is not None and losses != saved:
            log.info("resumed with changed loss weights %s",
                     {k: v for k, v in losses.to_dict().items() if saved.to_dict()[k] != v})
    else:
        losses = config.fresh_losses()
        generator_config = config.model_config()
        if generator_config.image_size != dataset.image_size:
            raise ValueError(f"preset {config.preset!r} renders {generator_config.image_size}px frames but the "
                             f"data set {config.dataset} holds {dataset.image_size}px frames")
        generator = Generator(generator_config)
        if config.init_from:
            from model.checkpoint import init_from_checkpoint

            with tempfile.TemporaryDirectory() as tmp:
                grown = init_from_checkpoint(generator, copy_checkpoint(config.init_from, Path(tmp) / "init"))
            log.info("initialised from %s%s", config.init_from, f" (grown: {grown})" if grown else "")
    losses.check_fits(generator.config, f"the model of {latest}" if latest else f"preset {config.preset}")
    sampler = BatchSampler(dataset, config, list(CONTROL_NAMES), rank)
    tracker = _Tracker(config, rank, losses)
    history: dict[str, list[tuple[int, float]]] = {}
    done = resume_state.step if resume_state else 0
    deadline = None if config.max_minutes is None else time.monotonic() + 60 * config.max_minutes
    try:
        vae = frame_vae_of(generator)
        runs_vae_stage = done < config.vae_steps
        if runs_vae_stage:
            for p in generator.parameters():
                p.requires_grad_(False)
            params = vae.decoder_parameters() if config.vae_decoder_only else list(vae.parameters())
            for p in params:
                p.requires_grad_(True)
            generator.train()
            reached = run_stage("vae", VAELoss(vae, losses), params, sampler.vae_batch, done,
                                config.vae_steps, config.vae_lr, config, generator, sampler, tracker, history,
                                resume_state, 0, config.vae_batch_frames, None, losses=losses)
            done = reached
        if done >= config.vae_steps and config.steps > 0:
            for p in generator.parameters():
                p.requires_grad_(True)
            for p in vae.parameters():
                p.requires_grad_(False)  # stage 2 learns in the frozen VAE's latent space
            generator.train()
            sampler.latents = ClipLatents(dataset, vae)
            params = [p for p in generator.parameters() if p.requires_grad]
            # a checkpoint from the end of stage 1 carries the random streams stage 2 continues
            state = None if runs_vae_stage else resume_state
            reached = run_stage("transformer", TransformerLoss(generator, dataset.fps, losses), params,
                                sampler.clip_batch, done - config.vae_steps, config.steps, config.lr, config,
                                generator, sampler, tracker, history, state, config.vae_steps,
                                config.batch_clips * config.clip_frames, deadline, losses=losses)
            done = config.vae_steps + reached
        generator.eval()
        final = save_final(config.output, generator, losses=losses) if rank == 0 else ""
        if config.sample_video and tracker.active:
            _log_sample_video(generator, dataset, tracker)
        tracker.close()
    except BaseException:
        tracker.close("FAILED")
        raise
    return TrainResult(output=config.output, final_checkpoint=final, steps_done=done, history=history,
                       run_id=tracker.run_id)


def _log_sample_video(generator: nn.Module, dataset: ClipDataset, tracker: _Tracker) -> None:
    """Render the first clip's portrait speaking its audio and log the MP4 (a quick look at progress)."""
    import tempfile

    from media import encode_mp4
    from model import RenderRequest

    clip = dataset[0]
    portrait = torch.from_numpy(clip.portrait).permute(2, 0, 1).float() / 255.0
    request = RenderRequest(portrait=portrait, audio=torch.from_numpy(clip.audio), fps=dataset.fps, seed=0)
    count = generator.num_frames(len(clip.audio), dataset.fps)
    frames = []
    with torch.no_grad():
        for step_frames in generator.stream([request]):
            frames.append((step_frames[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
            if len(frames) >= count:
                break
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sample.mp4"
        encode_mp4(str(path), frames, fps=dataset.fps, audio=clip.audio, sample_rate=dataset.sample_rate)
        tracker.artifact(path)
