"""A training run: the two stages in turn, each driven by a DeepSpeed engine (stage.py).

Stage 1 trains the frame VAE on frames against their clips' portraits (`losses.vae_loss`: the
decoder warps the portrait); stage 2 freezes it and trains the rest of the generator, the audio
encoder and the SFA transformer with FCIC controls, on clips (`losses.transformer_loss`), dropping
controls at random so that absent controls leave the model free (FCIC's "control dropout"). The loss
weights are a `config.LossConfig`, saved beside every checkpoint. Batches come from `sampler.py`;
stage 2 reads the frozen VAE's latents from `latents.py`.

DeepSpeed: `deepspeed.initialize` wraps each stage's loss module with the client's AdamW and
schedule; the ZeRO stage, precision, clipping and micro-batch come from a JSON file in
configs/train/ (fp32 + ZeRO 0 on CPU, where a single-process gloo group stands in for a launcher;
bf16/fp16 + ZeRO 1/2 on GPUs, one process per GPU through the `deepspeed` launcher or Ray Train,
each rank drawing its own batches). Rank 0 alone writes checkpoints and MLflow records.

Resume: a run restarted with the same output URI continues from checkpoints/LATEST: weights,
optimizer, schedule, RNG state and loss weights, at the global step it stopped (checkpointing.py).
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from training.checkpointing import copy_checkpoint, latest_checkpoint, load_training_checkpoint, save_final
from training.config import LossConfig, TrainConfig
from training.latents import ClipLatents
from training.losses import TransformerLoss, VAELoss
from training.sampler import BatchSampler
from training.shards import ClipDataset
from training.stage import Run, Stage, init_distributed, run_stage
from training.tracking import Tracker

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    output: str
    final_checkpoint: str
    steps_done: int
    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # metric -> [(step, value)]
    run_id: str | None = None


def frame_vae_of(generator: nn.Module) -> nn.Module:
    for name in ("vae", "frame_vae"):
        if isinstance(getattr(generator, name, None), nn.Module):
            return getattr(generator, name)
    raise AttributeError("the generator has no `vae` / `frame_vae` sub-module to train in stage 1")


def build_generator(config: TrainConfig, dataset: ClipDataset):
    """(generator, resume state or None, loss weights): the run's last checkpoint when it has one, else a
    new generator of the preset (started from `init_from`'s weights when given)."""
    from model import Generator

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
        losses.check_fits(generator.config, f"the model of {latest}")
        return generator, resume_state, losses
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
    losses.check_fits(generator.config, f"preset {config.preset}")
    return generator, None, losses


def trains_only(generator: nn.Module, params: list[nn.Parameter]) -> list[nn.Parameter]:
    """Freeze every parameter of `generator` but `params`, which it returns."""
    for p in generator.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    generator.train()
    return params


def vae_stage(run: Run, vae: nn.Module, done: int, resume_state) -> Stage:
    """Stage 1: the frame VAE (or only its decoder) on single frames, from global step `done`."""
    config = run.config
    params = vae.decoder_parameters() if config.vae_decoder_only else list(vae.parameters())
    return Stage(name="vae", module=VAELoss(vae, run.losses), params=trains_only(run.generator, params),
                 next_batch=run.sampler.vae_batch, peak_lr=config.vae_lr, micro_batch=config.vae_batch_frames,
                 frames_per_step=config.vae_batch_frames, last_step=config.vae_steps, first_step=done,
                 resume_state=resume_state)


def transformer_stage(run: Run, vae: nn.Module, dataset: ClipDataset, done: int, resume_state,
                      deadline: float | None) -> Stage:
    """Stage 2: everything but the frame VAE on clip windows, in the frozen VAE's latent space, from
    global step `done`."""
    config = run.config
    frozen = {id(p) for p in vae.parameters()}  # stage 2 learns in the frozen VAE's latent space
    params = trains_only(run.generator, [p for p in run.generator.parameters() if id(p) not in frozen])
    run.sampler.latents = ClipLatents(dataset, vae)
    expert = None
    if run.losses.sync_weight > 0:
        from training.sync_expert import SyncExpert

        expert = SyncExpert(config.sync_expert)
        log.info("expert sync loss at weight %g, network %s", run.losses.sync_weight, expert.source)
    module = TransformerLoss(run.generator, dataset.fps, run.losses, sync_expert=expert, sample_rate=dataset.sample_rate)
    return Stage(name="transformer", module=module, params=params,
                 next_batch=run.sampler.clip_batch, peak_lr=config.lr, micro_batch=config.batch_clips,
                 frames_per_step=config.batch_clips * config.clip_frames, last_step=config.steps,
                 first_step=done - config.vae_steps, step_offset=config.vae_steps, deadline=deadline,
                 resume_state=resume_state)


def train(config: TrainConfig) -> TrainResult:
    """Run (or resume) both stages; returns where the final checkpoint went and the loss history."""
    from model import CONTROL_NAMES

    init_distributed()
    import torch.distributed as dist

    rank = dist.get_rank() if dist.is_initialized() else 0
    dataset = ClipDataset(config.dataset)
    torch.manual_seed(config.seed + rank)
    generator, resume_state, losses = build_generator(config, dataset)
    run = Run(config=config, losses=losses, generator=generator,
              sampler=BatchSampler(dataset, config, list(CONTROL_NAMES), rank), tracker=Tracker(config, rank, losses))
    done = resume_state.step if resume_state else 0
    deadline = None if config.max_minutes is None else time.monotonic() + 60 * config.max_minutes
    try:
        vae = frame_vae_of(generator)
        runs_vae_stage = done < config.vae_steps
        if runs_vae_stage:
            done = run_stage(vae_stage(run, vae, done, resume_state), run)
        if done >= config.vae_steps and config.steps > 0:
            # a checkpoint from the end of stage 1 carries the random streams stage 2 continues
            state = None if runs_vae_stage else resume_state
            done = config.vae_steps + run_stage(transformer_stage(run, vae, dataset, done, state, deadline), run)
        generator.eval()
        final = save_final(config.output, generator, losses=losses) if rank == 0 else ""
        if config.sample_video and run.tracker.active:
            log_sample_video(generator, dataset, run.tracker)
        run.tracker.close()
    except BaseException:
        run.tracker.close("FAILED")
        raise
    return TrainResult(output=config.output, final_checkpoint=final, steps_done=done, history=run.history,
                       run_id=run.tracker.run_id)


def log_sample_video(generator: nn.Module, dataset: ClipDataset, tracker: Tracker) -> None:
    """Render the first clip's portrait speaking its audio and log the MP4 (a quick look at progress)."""
    from media import encode_mp4
    from training.rollout import render_frames

    clip = dataset[0]
    frames = render_frames(generator, clip.portrait, clip.audio, dataset.fps)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sample.mp4"
        encode_mp4(str(path), list(frames), fps=dataset.fps, audio=clip.audio, sample_rate=dataset.sample_rate)
        tracker.artifact(path)
