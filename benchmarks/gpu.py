"""One-shot GPU benchmark: the generator's frames/s on one CUDA device, by preset, batch and engine, and a
render job on the GPU.

    python benchmarks/gpu.py [--presets tiny,base] [--batches 1,8,32] [--frames 40] [--render-clips 8]

On a machine without CUDA it refuses: a message on stderr naming why, nothing on stdout, exit code 3
(EXIT_NO_CUDA). Otherwise it prints one JSON object:
- presets.<name>.frames_per_s.<engine>.<batch>: frames/s of `Generator.stream` (audio features, transformer,
  head, VAE decode; random weights: the cost does not depend on them), timed after `--warmup` frame steps,
  for engine torch_fp32, torch_bf16 (plain PyTorch), deepspeed_fp16, deepspeed_bf16 (`deepspeed.init_inference`
  as model/inference.py calls it, with that dtype);
- presets.<name>.peak_memory_bytes.<engine>.<batch>: torch.cuda.max_memory_allocated during that run;
- presets.<name>.cuda_graph: the per-frame step (frame tokens, every transformer layer against the KV cache,
  head, VAE decode) captured with torch.cuda.graphs, bf16: one graph per place of the cache's ring (a step's
  write place and key positions repeat every `window_frames` steps once the window is full), checked against
  `Generator.rollout` (max_abs_diff_vs_eager) and timed beside the same step run eagerly; or `unsupported`
  with the reason when capture or the check fails;
- presets.<name>.flops_per_frame (benchmarks/streaming.py) and flop_utilisation: frames/s x FLOPs per frame
  over the device's measured bf16 matmul rate;
- render_job: `--render-clips` rows of `--render-seconds` each through pipelines.render (Ray Data, one
  actor, --gpus-per-actor 1, metrics off): rows ok, frames, wall seconds, frames/s and the engine used.
Sized to finish in a few minutes on one H100-class GPU (docs/deployment.md has the one-shot command).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))  # the sibling benchmarks: streaming (FLOPs, matmul rate), pipeline (manifest)

EXIT_NO_CUDA = 3  # distinct from argparse's 2: "this machine cannot run it", not "called wrongly"
ENGINES = ("torch_fp32", "torch_bf16", "deepspeed_fp16", "deepspeed_bf16")
GRAPH_TOLERANCE = 2e-2  # max |latent difference| of the graph path vs the eager rollout, bf16


def cuda_problem() -> str | None:
    """Why this machine cannot run the benchmark (None: it can)."""
    try:
        import torch
    except ImportError as e:
        return f"torch is not importable ({e})"
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a build without CUDA"
    if not torch.cuda.is_available() or torch.cuda.device_count() == 0:
        return f"no CUDA device is visible (torch {torch.__version__}, CUDA {torch.version.cuda}, CUDA_VISIBLE_DEVICES and the driver decide)"
    return None


def positive_ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected integers >= 1, got {text!r}")
    return values


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from model.config import PRESETS

    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--presets", default="tiny,base", help="comma-separated presets (default tiny,base)")
    p.add_argument("--batches", type=positive_ints, default=[1, 8, 32], help="batch sizes (default 1,8,32)")
    p.add_argument("--frames", type=int, default=40, help="frame steps per timed stream (default 40)")
    p.add_argument("--warmup", type=int, default=8, help="frame steps before the clock starts (default 8)")
    p.add_argument("--render-clips", type=int, default=8, help="rows of the render job (0: skip it)")
    p.add_argument("--render-seconds", type=float, default=4.0, help="seconds of speech per row")
    args = p.parse_args(argv)
    args.presets = [name.strip() for name in args.presets.split(",") if name.strip()]
    unknown = [name for name in args.presets if name not in PRESETS]
    if unknown or not args.presets:
        p.error(f"--presets: unknown {unknown}; choose from {sorted(PRESETS)}")
    if args.frames <= args.warmup:
        p.error(f"--frames ({args.frames}) must exceed --warmup ({args.warmup})")
    return args


def place(generator, engine: str, device: str):
    """A copy of `generator` served by `engine` (ENGINES) on `device`, as model/inference.py prepares one."""
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[engine.rsplit("_", 1)[1]]
    g = copy.deepcopy(generator).eval()
    if engine.startswith("deepspeed"):
        import deepspeed

        g = deepspeed.init_inference(g, dtype=dtype, replace_with_kernel_inject=False).module
    g = g.to(device=device, dtype=dtype)
    g.audio.logmel.float()  # the mel front end stays fp32 in every engine (prepare_for_inference does the same)
    return g


def requests_for(g, batch: int, frames: int, seed: int = 0) -> list:
    """`batch` requests of `frames` frames at 25 fps: random portraits and noise speech (cost is content-blind)."""
    import torch

    from model import AUDIO_SAMPLE_RATE, RenderRequest

    gen = torch.Generator().manual_seed(seed)
    S = g.config.image_size
    return [RenderRequest(torch.rand(3, S, S, generator=gen), torch.randn(int(frames * AUDIO_SAMPLE_RATE / 25), generator=gen) * 0.1)
            for _ in range(batch)]


def sync(device) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def stream_frames_per_s(g, batch: int, frames: int, warmup: int) -> float:
    """Frames/s of `g.stream` for `batch` videos, from frame step `warmup` to the last (device synchronised)."""
    steps = 0
    start = None
    for _ in g.stream(requests_for(g, batch, frames)):
        steps += 1
        if steps == warmup:
            sync(g.device)
            start = time.perf_counter()
    sync(g.device)
    return batch * (steps - warmup) / (time.perf_counter() - start)


class FrameStep:
    """The per-frame step of a lockstep batch, split so it can be captured: the host-side cache booking
    (`KVCache.step`, which makes the step's metadata) apart from the device work that uses it."""

    def __init__(self, g, batch: int, frames: int):
        import torch

        self.g, self.cfg = g, g.config
        reqs = requests_for(g, batch, frames)
        with torch.no_grad():
            portraits = torch.stack([r.portrait for r in reqs]).to(g.device, g.dtype)  # (B, 3, S, S)
            self.ref_latent = g.encode_frames(portraits)  # (B, Cl, L, L)
            self.reference = g.vae.reference(portraits)
            self.audio, self.controls = g.condition_tokens(reqs, frames)  # (B, F, A, D), (B, F, C, D)
        self.cache = g.new_cache(batch)

    def prefill(self) -> None:
        """Block 0: the portrait's latent, into the sink."""
        self.g.transformer.forward_cached(self.g.reference_block(self.ref_latent), self.cache, 0)

    def device_step(self, meta, prev, audio_t, controls_t):
        """Frame tokens -> every layer against the cache (with `meta`) -> head -> latent and decoded frame."""
        g = self.g
        x = g.frame_blocks(prev[:, None], audio_t, controls_t)[:, 0]  # (B, Pb, D)
        for layer, layer_cache in zip(g.transformer.layers, self.cache.layers):
            x = layer(x, cache=layer_cache, meta=meta)
        hidden = g.transformer.ln_f(x)  # (B, Pb, D)
        latent = g.predict_latents(hidden[:, None], self.ref_latent, audio_t)[:, 0]  # (B, Cl, L, L)
        return latent, g.vae.decode(latent, self.reference)

    def phase(self, block: int) -> int:
        """Which of the ring's places block `block` (past the sinks) is written to."""
        return (block - self.cfg.sink_frames) % self.cfg.window_frames


def cuda_graph_report(g, batch: int, frames: int, warmup: int) -> dict:
    """Capture the per-frame step (one graph per ring place), check it against the eager rollout, time both."""
    import torch

    cfg = g.config
    S, W = cfg.sink_frames, cfg.window_frames
    steady = S + W - 1  # first block whose window is full: from here on, step metadata repeats every W steps
    if frames <= steady + W:
        return {"unsupported": f"--frames {frames} too short: the window fills at block {steady} and {W} graphs follow"}
    step = FrameStep(g, batch, frames)
    with torch.no_grad():
        step.prefill()
        prev = step.ref_latent
        for t in range(steady - 1):  # blocks 1 .. steady - 1, eagerly
            prev, _ = step.device_step(step.cache.step(t + 1), prev, step.audio[:, t : t + 1], step.controls[:, t : t + 1])
        prev_buf = prev.clone()
        audio_buf = step.audio[:, :1].clone()
        controls_buf = step.controls[:, :1].clone()
        graphs, metas, outputs, pool = {}, {}, {}, None
        for block in range(steady, steady + W):  # book and capture each place once, in ring order
            meta = step.cache.step(block)
            metas[step.phase(block)] = meta
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # warm-up outside capture (cuBLAS / cuDNN workspaces)
                step.device_step(meta, prev_buf, audio_buf, controls_buf)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                latent, frame = step.device_step(meta, prev_buf, audio_buf, controls_buf)
            pool = graph.pool()
            graphs[step.phase(block)], outputs[step.phase(block)] = graph, (latent, frame)

        def graph_rollout(timed_from: int | None = None) -> tuple[list, float]:
            """Latents of every frame: eager until the window is full, then the graphs."""
            for row in range(batch):
                step.cache.reset(row)
            step.prefill()
            latents, prev, start = [], step.ref_latent, None
            for t in range(frames):
                block = t + 1
                a, c = step.audio[:, t : t + 1], step.controls[:, t : t + 1]
                if block < steady:
                    prev, _ = step.device_step(step.cache.step(block), prev, a, c)
                else:
                    if timed_from is not None and t == timed_from:
                        sync(g.device)
                        start = time.perf_counter()
                    prev_buf.copy_(prev), audio_buf.copy_(a), controls_buf.copy_(c)
                    graphs[step.phase(block)].replay()
                    prev = outputs[step.phase(block)][0].clone()
                latents.append(prev)
            sync(g.device)
            return latents, (time.perf_counter() - start) if start is not None else 0.0

        graphed, _ = graph_rollout()
        eager = list(g.rollout(step.ref_latent, step.audio, step.controls))
        diff = max((a.float() - b.float()).abs().max().item() for a, b in zip(graphed, eager))
        if not diff <= GRAPH_TOLERANCE:
            return {"unsupported": f"graph outputs differ from the eager rollout by {diff:.3g} (> {GRAPH_TOLERANCE})",
                    "max_abs_diff_vs_eager": diff}
        timed_from = max(steady, warmup)
        _, graph_s = graph_rollout(timed_from)
        # the same steps eagerly, booking the cache each step as the stream does
        for row in range(batch):
            step.cache.reset(row)
        step.prefill()
        prev, start = step.ref_latent, None
        for t in range(frames):
            if t == timed_from:
                sync(g.device)
                start = time.perf_counter()
            prev, _ = step.device_step(step.cache.step(t + 1), prev, step.audio[:, t : t + 1], step.controls[:, t : t + 1])
        sync(g.device)
        eager_s = time.perf_counter() - start
    timed = batch * (frames - timed_from)
    return {"graphs": W, "max_abs_diff_vs_eager": diff, "frames_per_s": round(timed / graph_s, 1),
            "eager_step_frames_per_s": round(timed / eager_s, 1), "graph_vs_eager": round(eager_s / graph_s, 3)}


def preset_report(name: str, args, device: str) -> dict:
    import torch

    from model import Generator
    from model.config import PRESETS
    from streaming import flops_per_frame, matmul_flops_per_s

    torch.manual_seed(0)
    base = Generator(PRESETS[name]).eval()  # on the CPU; each engine gets its own copy on the device
    fps, memory, notes = {}, {}, {}
    for engine in ENGINES:
        fps[engine], memory[engine] = {}, {}
        try:
            g = place(base, engine, device)
        except Exception as e:  # an engine this machine cannot serve: said, the others go on
            notes[engine] = f"{type(e).__name__}: {e}"
            continue
        for batch in args.batches:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            try:
                fps[engine][str(batch)] = round(stream_frames_per_s(g, batch, args.frames, args.warmup), 1)
            except torch.cuda.OutOfMemoryError as e:
                fps[engine][str(batch)] = None
                notes[f"{engine}/{batch}"] = f"out of memory: {str(e).splitlines()[0]}"
            memory[engine][str(batch)] = torch.cuda.max_memory_allocated(device)
        del g
        torch.cuda.empty_cache()
    graph = {}
    g = place(base, "torch_bf16", device)
    for batch in args.batches:
        try:
            graph[str(batch)] = cuda_graph_report(g, batch, args.frames, args.warmup)
        except Exception as e:  # capture refused (an op that syncs with the host, an allocation, ...)
            graph[str(batch)] = {"unsupported": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
        torch.cuda.empty_cache()
    del g
    flops = flops_per_frame(PRESETS[name])
    bf16_rate = matmul_flops_per_s(device, torch.bfloat16)
    best = {e: max((v for v in fps[e].values() if v), default=None) for e in ENGINES}
    return {"parameters": sum(p.numel() for p in base.parameters()), "frames_per_s": fps,
            "peak_memory_bytes": memory, "cuda_graph": graph, "flops_per_frame": flops,
            "flop_utilisation_best_batch": {e: round(v * flops["total_regression"] / bf16_rate, 4) if v else None
                                            for e, v in best.items()},
            "notes": notes}


def render_job_report(args, device: str) -> dict:
    import ray

    from model import DEFAULT_CHECKPOINT
    from pipeline import make_manifest
    from pipelines.render import RenderConfig, run_render

    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        manifest = make_manifest(d, args.render_clips, args.render_seconds)
        ray.init(include_dashboard=False, log_to_driver=False)
        try:
            def job(out: str):
                return run_render(RenderConfig(str(manifest), str(d / out), checkpoint=str(DEFAULT_CHECKPOINT),
                                               gpus_per_actor=1.0, metrics=False, tracking_uri=f"sqlite:///{d}/ml.db"))
            job("warmup")  # the first job pays for Ray's workers and CUDA's start
            outcome = job("out")
        finally:
            ray.shutdown()
        engines = sorted({str(e) for e in outcome.results.get("engine", [])}) if "engine" in outcome.results else None
        return {"rows": args.render_clips, "seconds_per_row": args.render_seconds, "counts": outcome.counts,
                "frames": outcome.frames, "wall_s": round(outcome.wall_s, 2),
                "frames_per_s": round(outcome.frames / outcome.wall_s, 1), "engines": engines,
                "stage_s": {k: round(v, 2) for k, v in outcome.stage_s.items()}}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    problem = cuda_problem()
    if problem:
        print(f"benchmarks/gpu.py measures a CUDA GPU and this machine has none usable: {problem}. "
              "Run it on a machine with an NVIDIA GPU (docs/deployment.md).", file=sys.stderr)
        return EXIT_NO_CUDA
    import torch

    started = time.perf_counter()
    device = "cuda"
    result = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "cuda": torch.version.cuda,
              "batches": args.batches, "frames": args.frames, "warmup": args.warmup}
    try:
        import deepspeed

        result["deepspeed"] = deepspeed.__version__
    except ImportError as e:
        result["deepspeed"] = f"not importable: {e}"
    result["presets"] = {name: preset_report(name, args, device) for name in args.presets}
    if args.render_clips:
        try:
            result["render_job"] = render_job_report(args, device)
        except Exception as e:  # the figures above still print
            result["render_job"] = {"error": f"{type(e).__name__}: {e}"}
    result["wall_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
