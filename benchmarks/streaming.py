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
- on CUDA, also frames/s of the preset with DeepSpeed inference vs plain torch;
- flops_per_frame: for every preset (`tiny`, `base`), the FLOPs of one steady-state frame step of one video
  (the window full), counted by torch's FlopCounterMode on the meta device (shapes only, so `base` costs
  nothing to count) and split into transformer (every layer, attention over sink + window included),
  head (regression: one linear; flow: its `flow_steps` MLP passes) and decoder (the frame VAE's decode);
  the audio encoder and the portrait's reference features run once per video and are left out;
- matmul_flops_per_s: this device's measured dense matmul rate (fp32 and bf16, 2048^3 products, torch's
  threads), so frames/s can be read against a peak: frames_per_s_bound is that rate (and an H100's ~990
  dense bf16 TFLOP/s, H100_BF16_DENSE_FLOPS) over a frame's FLOPs, and flop_utilisation this run's frames/s
  at each batch times the preset's FLOPs per frame over the measured fp32 rate.
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
H100_BF16_DENSE_FLOPS = 989e12  # NVIDIA's H100 SXM datasheet: dense (no sparsity) bf16 tensor-core peak
MATMUL_SIZE = 2048  # side of the square matrices timed for the device's matmul rate


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


def step_flops(g: Generator, parts: tuple[str, ...] = ("transformer", "head", "decoder")) -> dict[str, int]:
    """FLOPs of one steady-state frame step of one video, by part: transformer, head, decoder.

    Counted by FlopCounterMode on the real ops (linear, conv, scaled-dot-product attention; elementwise
    work is not counted), with the transformer on a cache whose window is full (sink + window blocks of
    keys: the steady state of a long video). The cache is advanced to it without computing the earlier steps.
    """
    from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

    cfg, Pb, dev = g.config, g.block_tokens, g.device
    # PyTorch's CPU kernel for masked attention has no FLOP formula of its own: the same count as the others
    extra = {}
    if hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu"):
        extra[torch.ops.aten._scaled_dot_product_flash_attention_for_cpu] = (
            lambda q, k, v, *args, out_shape=None, **kwargs: sdpa_flop_count(q, k, v))

    def counted(fn) -> tuple[int, object]:
        with FlopCounterMode(display=False, custom_mapping=extra) as counter:
            out = fn()
        return counter.get_total_flops(), out

    flops = {}
    with torch.no_grad():
        if "transformer" in parts:
            block = cfg.sink_frames + cfg.window_frames  # the first block that attends to a full window
            cache = g.new_cache(1)
            for b in range(block):
                cache.step(b)
            tokens = torch.randn(1, Pb, cfg.d_model, device=dev, dtype=g.dtype)  # (B, Pb, D)
            flops["transformer"], _ = counted(lambda: g.transformer.forward_cached(tokens, cache, block))
        if "head" in parts:
            frame_hidden = torch.randn(1, 1, cfg.frame_tokens, cfg.d_model, device=dev, dtype=g.dtype)  # (B, 1, P, D)
            head = (lambda: g.sample_deltas(frame_hidden, None)) if cfg.head == "flow" else (lambda: g.head(frame_hidden))
            flops["head"], _ = counted(head)
        if "decoder" in parts:
            reference = g.vae.reference(torch.rand(1, 3, cfg.image_size, cfg.image_size, device=dev, dtype=g.dtype))
            latent = torch.randn(1, cfg.latent_channels, cfg.latent_size, cfg.latent_size, device=dev, dtype=g.dtype)
            flops["decoder"], _ = counted(lambda: g.vae.decode(latent, reference))
    return flops


def flops_per_frame(config) -> dict:
    """step_flops of `config` with the regression head and with the flow head (same architecture), on the CPU
    (random weights: the count depends on shapes alone)."""
    plain = step_flops(Generator(replace(config, head="regression")).eval())
    flow_head = step_flops(Generator(replace(config, head="flow", audio_mouth=False)).eval(), parts=("head",))["head"]
    shared = plain["transformer"] + plain["decoder"]
    return {"transformer": plain["transformer"], "head_regression": plain["head"], "head_flow": flow_head,
            "decoder": plain["decoder"], "total_regression": shared + plain["head"], "total_flow": shared + flow_head}


def matmul_flops_per_s(device: str, dtype: torch.dtype, size: int = MATMUL_SIZE, seconds: float = 1.0) -> float:
    """Measured dense matmul FLOP/s: (size x size) @ (size x size) products for about `seconds`."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    a @ b  # warm-up
    sync()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(4):  # a few products per check: on CUDA the clock is read after the queue drains
            a @ b
        sync()
        n += 4
    return 2 * size**3 * n / (time.perf_counter() - start)


def peak_report(device: str, config, frames_per_s_by_batch: dict[str, float]) -> dict:
    """FLOPs per frame of every preset, this device's matmul rate and the frames/s bounds they imply; the
    measured frames/s (of a generator with `config`) as a share of the fp32 matmul rate."""
    from model.config import PRESETS

    flops = {name: flops_per_frame(preset) for name, preset in PRESETS.items()}
    rates = {"fp32": matmul_flops_per_s(device, torch.float32), "bf16": matmul_flops_per_s(device, torch.bfloat16)}
    bound = {name: {"this_device_fp32": round(rates["fp32"] / f["total_regression"], 1),
                    "this_device_bf16": round(rates["bf16"] / f["total_regression"], 1),
                    "h100_bf16_dense": round(H100_BF16_DENSE_FLOPS / f["total_regression"], 1)}
             for name, f in flops.items()}
    per_frame = flops_per_frame(config)["total_flow" if config.head == "flow" else "total_regression"]
    utilisation = {b: round(fps * per_frame / rates["fp32"], 4) for b, fps in frames_per_s_by_batch.items()}
    return {"flops_per_frame": flops, "matmul_flops_per_s": {k: round(v, -6) for k, v in rates.items()},
            "matmul_size": MATMUL_SIZE, "torch_threads": torch.get_num_threads(),
            "h100_bf16_dense_flops_per_s": H100_BF16_DENSE_FLOPS,
            "frames_per_s_bound": bound, "flop_utilisation": utilisation}


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
    result.update(peak_report(device, base.config, result["frames_per_s"]))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
