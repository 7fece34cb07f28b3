"""benchmarks/gpu.py: its refusal on a machine without CUDA, its arguments, and the parts of its CUDA-graph
path that do not need a GPU (the step split from the cache booking, the ring's period it captures by)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from model import Generator, get_preset

REPO = Path(__file__).resolve().parents[2]


def test_refuses_without_cuda_naming_why():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # no device, even on a machine that has one
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu.py")], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout == ""  # no JSON: nothing was measured
    assert "measures a CUDA GPU" in proc.stderr and ("no CUDA device is visible" in proc.stderr
                                                    or "build without CUDA" in proc.stderr), proc.stderr


def test_arguments_are_checked(gpu_bench):
    args = gpu_bench.parse_args(["--presets", "tiny", "--batches", "2,4"])
    assert args.presets == ["tiny"] and args.batches == [2, 4]
    for bad in (["--presets", "huge"], ["--batches", "0,8"], ["--batches", "x"], ["--frames", "4", "--warmup", "8"]):
        with pytest.raises(SystemExit) as e:
            gpu_bench.parse_args(bad)
        assert e.value.code == 2


def small_generator():
    torch.manual_seed(0)
    return Generator(get_preset("tiny", n_layers=2, window_frames=3)).eval()


def test_the_split_frame_step_equals_the_rollout(gpu_bench):
    """The graph path runs the cache booking on the host and the rest as one device step: eagerly, on the
    CPU, that split must reproduce Generator.rollout frame for frame."""
    g = small_generator()
    step = gpu_bench.FrameStep(g, batch=2, frames=9)
    with torch.no_grad():
        step.prefill()
        prev, split = step.ref_latent, []
        for t in range(9):
            a, c = step.audio[:, t : t + 1], step.controls[:, t : t + 1]
            prev, frame = step.device_step(step.cache.step(t + 1), prev, a, c)
            split.append(prev)
        assert frame.shape == (2, 3, g.config.image_size, g.config.image_size)
        rollout = list(g.rollout(step.ref_latent, step.audio, step.controls))
    assert len(rollout) == len(split)
    for a, b in zip(split, rollout):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_step_metadata_repeats_every_window_once_it_is_full(gpu_bench):
    """One graph per ring place is only right if a steady-state step's metadata (write place, positions,
    mask) equals the one `window_frames` blocks later."""
    g = small_generator()
    cfg = g.config
    cache = g.new_cache(2)
    steady = cfg.sink_frames + cfg.window_frames - 1
    metas = [cache.step(b) for b in range(steady + 2 * cfg.window_frames)]
    for b in range(steady, steady + cfg.window_frames):
        first, later = metas[b], metas[b + cfg.window_frames]
        assert first.uniform_write == later.uniform_write is not None
        for name in ("query_positions", "key_positions", "key_valid"):
            assert torch.equal(getattr(first, name), getattr(later, name)), (b, name)
    # and the places differ within one period, so one graph would not do
    assert len({metas[b].uniform_write for b in range(steady, steady + cfg.window_frames)}) == cfg.window_frames


def test_stream_frames_per_s_counts_the_timed_steps(gpu_bench, monkeypatch):
    g = small_generator()
    clock = iter(float(i) for i in range(1000))  # one "second" per reading: frames/s is frames counted over steps
    monkeypatch.setattr(gpu_bench.time, "perf_counter", lambda: next(clock))
    # 6 frame steps, timing from the 2nd: 4 steps of 3 videos between two clock readings 1 s apart
    assert gpu_bench.stream_frames_per_s(g, batch=3, frames=6, warmup=2) == 3 * 4 / 1.0
