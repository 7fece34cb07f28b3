"""Static against continuous batching in the render actor, on one manifest of mixed lengths, in one run.

    python benchmarks/batching.py [--rows 24] [--scale 1.0] [--slots 4] [--threads 2] [--checkpoint DIR]

The manifest's lengths follow a dubbing job's spread: log-normal around 6 s (sigma 1), clipped to 1..60 s,
fixed seed; `--scale 0.1` shrinks every row to a tenth (0.1..6 s) so the run fits a few minutes on 2 cores.
Every row is a real portrait (aligned once) speaking a cut of real speech; both modes encode every video
(H.264 + AAC) and publish it to a local output folder, with the same generator and torch threads.

- static: the former actor: `slots` rows at a time step in lockstep until the longest ends (every row's
  frames are computed, those past its end thrown away), each frame encoded as it comes, all the batch's
  videos published when its longest ends;
- continuous: pipelines.stages.RenderActor: `slots` slots, each refilled with the next row of its call the
  moment its video ends, encoding and upload on an encoder thread per video, rows yielded as each is
  published; called with the render job's rows per call (slots x RENDER_ROWS_PER_SLOT), one call after
  another, so each call's last rows drain as they do in the job.

Prints one JSON object: per mode frames/s (frames kept, over wall time) and frames per CPU second (this
process's, all threads: the figure to read on a machine other jobs share), wasted_frame_share (frames
computed but thrown away over frames computed; goal <= 0.05 for continuous), time to the first published
video; continuous_vs_static (frames/s ratio; goal >= 1.3) and the same per CPU second. Not a test: ratios
from one run.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MEDIA = Path(__file__).resolve().parents[2] / "shared" / "media"
PORTRAIT = MEDIA / "portraits" / "obama.jpg"
SPEECH = MEDIA / "speech" / "english.wav"
MEDIAN_S, SIGMA, MIN_S, MAX_S = 6.0, 1.0, 1.0, 60.0  # the manifest's length spread (s)
FPS = 25.0


def manifest_seconds(rows: int, scale: float, seed: int = 0) -> list[float]:
    rng = np.random.default_rng(seed)
    seconds = np.clip(MEDIAN_S * np.exp(SIGMA * rng.standard_normal(rows)), MIN_S, MAX_S)
    return [float(s) * scale for s in seconds]


def make_rows(seconds: list[float], image_size: int, output: str) -> list[dict]:
    from faces import align_face
    from media import load_audio, load_image
    from model import AUDIO_SAMPLE_RATE, num_frames_for

    face = align_face(load_image(PORTRAIT), image_size).image
    speech = load_audio(SPEECH)
    rows = []
    for i, s in enumerate(seconds):
        n = max(1, int(round(s * AUDIO_SAMPLE_RATE)))
        audio = np.resize(speech, n).astype(np.float32)  # the speech, looped where a row is longer
        rows.append({"row": i, "id": f"r{i:03d}", "fps": FPS, "seed": i, "status": "pending", "error": "",
                     "portrait_rgb": face.tobytes(), "audio_pcm": audio.tobytes(), "controls_json": "",
                     "num_frames": num_frames_for(n, FPS), "composite_json": "", "frame_rgb": b"",
                     "frame_width": 0, "frame_height": 0, "output_root": output})
    return rows


def run_static(actor, rows: list[dict], slots: int) -> dict:
    """The lockstep actor this benchmark measures against: batches of `slots` rows, one rollout until the
    longest ends, each frame encoded synchronously, the batch published at its end."""
    from media import Mp4Writer
    from model.flow_head import TokenNoise
    from model.frames import tensor_to_images
    from pipelines.stages import video_uri
    import storage

    g = actor.generator
    computed = kept = 0
    start, cpu0, first = time.perf_counter(), time.process_time(), None
    for b in range(0, len(rows), slots):
        chunk = rows[b : b + slots]
        requests = [actor.request(r) for r in chunk]
        total = max(r["num_frames"] for r in chunk)
        paths = [actor.workdir / f"static-{r['id']}.mp4" for r in chunk]
        writers = [Mp4Writer(p, FPS) for p in paths]
        with torch.no_grad():
            portraits = torch.stack([q.portrait for q in requests]).to(g.device, g.dtype)
            reference = g.vae.reference(portraits)
            audio, controls = g.condition_tokens(requests, total)
            noise = TokenNoise([q.seed for q in requests]) if g.config.head == "flow" else None
            for t, latent in enumerate(g.rollout(reference.latent, audio, controls, noise)):
                images = tensor_to_images(g.vae.decode(latent, reference))
                computed += len(chunk)
                for i, r in enumerate(chunk):
                    if t < r["num_frames"]:
                        writers[i].add(images[i])
                        kept += 1
        for w, p, r in zip(writers, paths, chunk):
            w.close(np.frombuffer(r["audio_pcm"], np.float32))
            storage.publish_file(p, video_uri(actor.output_uri, "static", r["id"]), actor.options)
            p.unlink()
            first = first or time.perf_counter() - start
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu0
    return {"frames_per_s": kept / wall, "frames_per_cpu_s": kept / cpu, "wall_s": wall, "cpu_s": cpu, "frames_kept": kept, "frames_computed": computed,
            "wasted_frame_share": (computed - kept) / computed, "first_published_s": first}


def run_continuous(actor, rows: list[dict], per_call: int) -> dict:
    """The actor called as the render job's map_batches calls it: `per_call` rows per call, one call after
    the other (a call's slots drain before the next call's rows start)."""
    import pandas as pd

    before = actor.frames_computed
    start, cpu0, first, kept = time.perf_counter(), time.process_time(), None, 0
    for b in range(0, len(rows), per_call):
        for out in actor(pd.DataFrame([dict(r) for r in rows[b : b + per_call]])):
            row = out.iloc[0]
            if row["status"] != "ok":
                raise RuntimeError(f"row {row['id']} failed: {row['error']}")
            kept += int(row["frames"])
            first = first or time.perf_counter() - start
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu0
    computed = actor.frames_computed - before
    return {"frames_per_s": kept / wall, "frames_per_cpu_s": kept / cpu, "wall_s": wall, "cpu_s": cpu, "frames_kept": kept, "frames_computed": computed,
            "wasted_frame_share": (computed - kept) / computed, "first_published_s": first}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=24)
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies every row's length (0.1: 0.1..6 s)")
    parser.add_argument("--slots", type=int, default=4, help="rows stepped together (both modes)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (both modes)")
    parser.add_argument("--checkpoint", default=None)
    args = parser.parse_args()
    if args.rows < 1 or args.slots < 1 or args.threads < 1 or not args.scale > 0:
        parser.error("--rows, --slots, --threads must be >= 1 and --scale > 0")

    import storage
    from model import DEFAULT_CHECKPOINT
    from pipelines.render import RENDER_ROWS_PER_SLOT
    from pipelines.stages import RenderActor

    torch.set_num_threads(args.threads)
    seconds = manifest_seconds(args.rows, args.scale)
    with tempfile.TemporaryDirectory(prefix="eartalk-batching-") as out:
        actor = RenderActor(str(args.checkpoint or DEFAULT_CHECKPOINT), out, "continuous", storage.StorageOptions(),
                            device="cpu", slots=args.slots)
        rows = make_rows(seconds, actor.size, out)
        per_call = args.slots * RENDER_ROWS_PER_SLOT
        run_continuous(actor, make_rows([0.2] * args.slots, actor.size, out), per_call)  # warm-up
        static = run_static(actor, rows, args.slots)
        continuous = run_continuous(actor, rows, per_call)
    print(json.dumps({
        "rows": args.rows, "slots": args.slots, "rows_per_call": per_call, "threads": args.threads, "scale": args.scale,
        "seconds": {"min": min(seconds), "median": float(np.median(seconds)), "max": max(seconds),
                    "total": sum(seconds)},
        "static": static, "continuous": continuous,
        "wasted_frame_share": continuous["wasted_frame_share"],
        "continuous_vs_static": continuous["frames_per_s"] / static["frames_per_s"],
        "continuous_vs_static_per_cpu_s": continuous["frames_per_cpu_s"] / static["frames_per_cpu_s"],
        "first_published_continuous_vs_static": continuous["first_published_s"] / static["first_published_s"],
        "goals": {"wasted_frame_share": "<= 0.05", "continuous_vs_static": ">= 1.3"},
    }, indent=1))


if __name__ == "__main__":
    main()
