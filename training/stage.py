"""One training stage's loop: a DeepSpeed engine steps a loss module over sampled batches, logging,
checkpointing and stopping at its deadline.

A `Stage` says what the stage optimises and over which steps; a `Run` holds what every stage of one
training run shares (its settings, loss weights, generator, sampler, tracker and history). The ZeRO
stage, precision, clipping and micro-batch come from a DeepSpeed JSON file (configs/train/).
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from training.checkpointing import TrainerState, save_training_checkpoint
from training.config import LossConfig, TrainConfig
from training.sampler import BatchSampler, capture_rng, restore_rng
from training.tracking import Tracker

log = logging.getLogger(__name__)


@dataclass
class Stage:
    """What one stage optimises, on which batches, over which of its steps."""

    name: str  # "vae" or "transformer": the metrics' prefix and the checkpoints' stage
    module: nn.Module  # the loss module the engine wraps: forward(**batch) -> {"total": ..., ...}
    params: list[nn.Parameter]  # the parameters it trains
    next_batch: Callable[[], dict]  # one micro-batch of keyword arguments for `module`
    peak_lr: float
    micro_batch: int  # samples per rank per step (DeepSpeed's train_micro_batch_size_per_gpu)
    frames_per_step: int  # frames one step trains on, for the frames_per_s metric
    last_step: int  # the stage's own step count; also the length of its learning-rate schedule
    first_step: int = 0  # the stage's step to start from (> 0 on resume)
    step_offset: int = 0  # global step = stage step + step_offset
    deadline: float | None = None  # time.monotonic() after which the stage checkpoints and stops
    resume_state: TrainerState | None = None  # the checkpoint this stage continues from


@dataclass
class Run:
    """What every stage of one training run shares."""

    config: TrainConfig
    losses: LossConfig
    generator: nn.Module  # saved whole at each checkpoint
    sampler: BatchSampler
    tracker: Tracker
    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # metric -> [(global step, value)]


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


def _to(batch, device: torch.device, dtype: torch.dtype):
    if isinstance(batch, torch.Tensor):
        return batch.to(device=device, dtype=dtype if batch.is_floating_point() else batch.dtype)
    if isinstance(batch, dict):
        return {k: _to(v, device, dtype) for k, v in batch.items()}
    return batch


def resume_engine(stage: Stage, engine, optimizer, scheduler, run: Run) -> None:
    """Continue a stage from its checkpoint: the optimizer's moments and schedule of the same stage, and
    the random streams."""
    import torch.distributed as dist

    state = stage.resume_state
    if state.stage == stage.name:
        world = dist.get_world_size() if dist.is_initialized() else 1
        if engine.zero_optimization_stage() > 0 and world > 1:
            # ZeRO splits the optimizer's moments across ranks and only rank 0 writes checkpoints:
            # restoring its part on every rank would be wrong, so the moments start again
            log.warning("resuming under ZeRO %d on %d ranks: the optimizer's moments restart",
                        engine.zero_optimization_stage(), world)
        else:
            optimizer.load_state_dict(state.optimizer)
        scheduler.load_state_dict(state.scheduler)
    restore_rng(state, run.sampler, engine.global_rank, run.config.seed)


def run_stage(stage: Stage, run: Run) -> int:
    """Optimise `stage.module` from stage step `first_step` to `last_step`; returns the stage step reached."""
    import deepspeed
    import torch.distributed as dist

    config = run.config
    optimizer = torch.optim.AdamW(stage.params, lr=stage.peak_lr, weight_decay=config.weight_decay, betas=(0.9, 0.99))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(config.warmup_steps, stage.last_step,
                                                                       config.min_lr_ratio))
    engine, _, _, _ = deepspeed.initialize(model=stage.module, optimizer=optimizer, lr_scheduler=scheduler,
                                           config=load_deepspeed_config(config.deepspeed_config, stage.micro_batch))
    if stage.resume_state is not None:
        resume_engine(stage, engine, optimizer, scheduler, run)
    dtype = next(engine.module.parameters()).dtype
    step = stage.first_step
    window_start, window_frames, window_steps = time.monotonic(), 0, 0
    running: dict[str, float] = {}
    while step < stage.last_step:
        batch = _to(stage.next_batch(), engine.device, dtype)
        out = engine(**batch)
        engine.backward(out["total"])
        engine.step()
        step += 1
        window_frames += stage.frames_per_step
        window_steps += 1
        for key, value in out.items():
            running[key] = running.get(key, 0.0) + float(value.detach())
        global_step = step + stage.step_offset
        if step % config.log_every == 0 or step == stage.last_step:
            elapsed = time.monotonic() - window_start
            # a mean over the steps this window ran (after a resume the first window is short)
            values = {f"{stage.name}/{k}": v / window_steps for k, v in running.items()}
            values[f"{stage.name}/lr"] = scheduler.get_last_lr()[0]
            values[f"{stage.name}/frames_per_s"] = window_frames / max(elapsed, 1e-9)
            for key, value in values.items():
                run.history.setdefault(key, []).append((global_step, value))
            run.tracker.metrics(values, global_step)
            log.info("%s step %d/%d (global %d): %s", stage.name, step, stage.last_step, global_step,
                     ", ".join(f"{k.split('/')[-1]}={v:.4g}" for k, v in values.items()))
            running, window_start, window_frames, window_steps = {}, time.monotonic(), 0, 0
        timed_out = stage.deadline is not None and time.monotonic() > stage.deadline
        if stage.deadline is not None and dist.is_initialized() and dist.get_world_size() > 1:
            # every rank stops at the same step, or the ones still stepping wait forever in a collective
            flag = torch.tensor([float(timed_out)], device=engine.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            timed_out = bool(flag.item())
        if engine.global_rank == 0 and (global_step % config.checkpoint_every == 0 or step == stage.last_step
                                        or timed_out):
            state = TrainerState(stage=stage.name, step=global_step, optimizer=optimizer.state_dict(),
                                 scheduler=scheduler.state_dict(), rng=capture_rng(run.sampler),
                                 loss=run.losses.to_dict())
            log.info("checkpoint %s", save_training_checkpoint(config.output, run.generator, state))
        if timed_out:
            log.warning("%s: max_minutes reached at step %d of %d; stopping", stage.name, step, stage.last_step)
            break
    return step
