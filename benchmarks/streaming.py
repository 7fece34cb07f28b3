"""Streaming cost of the SFA generator: constant per-frame latency and memory, cache speed-up, throughput.

    python benchmarks/streaming.py [--preset tiny] [--checkpoint DIR] [--far 2000] [--frames 50] [--cache-frames 100]

Prints one JSON object:
- latency_ratio_far_vs_near: mean per-frame latency around frame `--far` over around frame 50 (goal <= 1.10);
- cache_speedup: transformer time for 100 frames when every frame recomputes its prefix from scratch (the
  no-cache path under the SFA mask) over the cached decode steps, same outputs checked (goal >= 10);
- kv_bytes_at_100 / kv_bytes_at_2000: KV-cache bytes (goal: equal);
- frames_per_s: end-to-end frames/s (audio features, transformer, VAE decode) for batch 1, 4 and 8;
- heads: the same frames/s with the flow head (GeneratorConfig.head = "flow", random weights: the cost does
  not depend on them) measured back to back with the regression head's at each batch size, their ratio
  (goal >= 0.8), and the share of a frame step's time spent in the flow head (noise draws and its
  `flow_steps` MLP passes, timed alone on the same shapes; goal <= 0.25);
- on CUDA, also frames/s of the preset with DeepSpeed inference vs plain torch.
Not a test: compare ratios from one run on one machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model import Generator, RenderRequest, get_preset, load_checkpoint, prepare_for_inference  # noqa: E402
from model.flow_head import TokenNoise  # noqa: E402

BATCHES = (1, 4, 8)


def make_request(g: Generator, frames: int, seed: int = 0) -> RenderRequest:
    gen = torch.Generator().manual_seed(seed)
    S = g.config.image_size
    return RenderRequest(torch.rand(3, S, S, generator=gen), torch.randn(int(frames * 16000 / 25), generator=gen) * 0.1)


def per_frame_latencies(g: Generator, frames: int) -> list[float]:
    times, last = [], time.perf_counter()
    for _ in g.stream([make_request(g, frames)]):
        now = time.perf_counter()
        times.append(now - last)
        last = now
    return times


def frames_per_s(g: Generator, batch: int, frames: int) -> float:
    reqs = [make_request(g, frames, seed=i) for i in range(batch)]
    start = time.perf_counter()
    for _ in g.stream(reqs):
        pass
    return batch * frames / (time.perf_counter() - start)


@torch.no_grad()
def head_seconds_per_step(g: Generator, batch: int, steps: int) -> float:
    """Seconds the flow head takes for one frame step of `batch` videos: noise draws and its MLP passes."""
    hidden = torch.randn(batch, 1, g.config.frame_tokens, g.config.d_model, device=g.device, dtype=g.dtype)
    noise = TokenNoise(list(range(batch)))
    g.sample_deltas(hidden, noise)  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        g.sample_deltas(hidden, noise)
    return (time.perf_counter() - start) / steps


def compare_heads(regression: Generator, flow: Generator, frames: int) -> tuple[dict, dict]:
    """(regression frames/s per batch, the heads' comparison): each batch size timed for both heads back to
    back, so the machine's load drifts little between the two."""
    plain, sampled, share = {}, {}, {}
    for b in BATCHES:
        plain[str(b)] = frames_per_s(regression, b, frames)
        sampled[str(b)] = frames_per_s(flow, b, frames)
        step = b / sampled[str(b)]  # seconds per frame step of the flow generator
        share[str(b)] = round(head_seconds_per_step(flow, b, 20) / step, 3)
    heads = {
        "flow_steps": flow.config.flow_steps, "flow_width": flow.config.flow_width,
        "flow_layers": flow.config.flow_layers,
        "regression_frames_per_s": {k: round(v, 2) for k, v in plain.items()},
        "flow_frames_per_s": {k: round(v, 2) for k, v in sampled.items()},
        "flow_vs_regression": {k: round(sampled[k] / plain[k], 3) for k in plain},
        "flow_head_share_of_frame": share,
    }
    return {k: round(v, 2) for k, v in plain.items()}, heads


@torch.no_grad()
def cache_speedup(g: Generator, frames: int) -> tuple[float, float]:
    """(speed-up, max |difference|) of the cached decode step vs recomputing every frame from scratch.

    From scratch means the no-cache path over the whole prefix under the SFA mask: the only recomputation
    with identical outputs, because in a multi-layer model the window's keys depend on context older than
    the window (re-running just sinks + window would give different frames).
    """
    cfg, Pb = g.config, g.block_tokens
    blocks = torch.randn(1, frames + 1, Pb, cfg.d_model, device=g.device, dtype=g.dtype)  # block 0: the sink
    cache = g.new_cache(1)
    start = time.perf_counter()
    cached = [g.transformer.forward_cached(blocks[:, b], cache, b) for b in range(frames + 1)]
    t_cached = time.perf_counter() - start
    start, diff = time.perf_counter(), 0.0
    for b in range(frames + 1):
        hidden = g.transformer.forward_full(blocks[:, : b + 1].flatten(1, 2), num_blocks=b + 1)
        diff = max(diff, (hidden[:, -Pb:] - cached[b]).abs().max().item())
    t_full = time.perf_counter() - start
    return t_full / t_cached, diff


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--checkpoint", help="load weights from a checkpoint instead of random ones")
    parser.add_argument("--far", type=int, default=2000)
    parser.add_argument("--frames", type=int, default=50, help="frames per video in the frames/s figures")
    parser.add_argument("--cache-frames", type=int, default=100,
                        help="frames of the cache speed-up check (its recompute grows with the square)")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    base = load_checkpoint(args.checkpoint) if args.checkpoint else Generator(get_preset(args.preset))
    g, report = prepare_for_inference(base, device)
    # the same architecture with the flow head (the audio-to-mouth path belongs to the regression head)
    flow_config = replace(base.config, head="flow", audio_mouth=False)
    flow, _ = prepare_for_inference(Generator(flow_config), device)

    lat = per_frame_latencies(g, args.far + 10)
    near = sum(lat[40:60]) / 20
    far = sum(lat[args.far - 10 : args.far + 10]) / 20
    speedup, diff = cache_speedup(g, args.cache_frames)
    cache = g.new_cache(1)
    kv = {}
    with torch.no_grad():
        tokens = torch.zeros(1, g.block_tokens, g.config.d_model, device=g.device, dtype=g.dtype)
        for b in range(2001):
            if b in (100, 2000):
                kv[b] = cache.nbytes
            cache.step(b)
    result = {
        "preset": args.preset, "device": device, "inference": report.as_dict(),
        "latency_ms_near_frame_50": round(near * 1e3, 3), "latency_ms_near_frame_far": round(far * 1e3, 3),
        "far_frame": args.far, "latency_ratio_far_vs_near": round(far / near, 3),
        "cache_frames": args.cache_frames, "cache_speedup": round(speedup, 2), "cache_vs_recompute_max_abs_diff": diff,
        "kv_bytes_at_100": kv[100], "kv_bytes_at_2000": kv[2000],
    }
    result["frames_per_s"], result["heads"] = compare_heads(g, flow, args.frames)
    if device == "cuda":
        plain, _ = prepare_for_inference(Generator(get_preset(args.preset)), device, use_deepspeed=False)
        result["deepspeed_vs_torch_frames_per_s"] = {"deepspeed": round(frames_per_s(g, 8, 50), 2),
                                                     "torch": round(frames_per_s(plain, 8, 50), 2)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
