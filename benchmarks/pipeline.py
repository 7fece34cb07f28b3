"""Pipeline overhead: the render job's frames/s against the bare generator's, same CPUs, one run.

    python benchmarks/pipeline.py [--clips 16] [--seconds 2] [--checkpoint DIR]

Prints one JSON object:
- pipeline_vs_bare: frames/s of the whole job (manifest read, asset loading, rendering, MP4 encode,
  publish, results) over frames/s of `Generator.stream` alone on the same inputs and batch size, with the
  generator on the same number of threads as the pipeline's render actor, measured before and after the
  pipeline and the faster one kept (the ratio errs low on a shared machine; goal >= 0.90);
- stage_share: share of the summed stage time spent reading/decoding inputs, rendering, encoding,
  uploading and measuring (metrics measured on a few clips of a second run, scaled per clip);
- composite_vs_render: time spent compositing faces back into the portraits (framing `portrait`, the
  default; the shared portraits come out at the 1024 px max side) over rendering time (goal <= 0.15).
  Compositing is part of `encoding` in stage_share, as the actor does it frame by frame while encoding.
Not a test: numbers depend on the machine; compare ratios from one run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SPEECH = "/usr/share/codec2/raw/speech_orig_16k.wav"
PORTRAITS = [REPO / "examples" / "astronaut.png"] + sorted((REPO.parent / "shared" / "media" / "portraits").glob("*.jpg"))


def make_manifest(d: Path, clips: int, seconds: float) -> Path:
    speech = d / "speech.wav"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", SPEECH, "-t", str(seconds), "-ac", "1", "-ar", "16000", str(speech)], check=True)
    portraits = [shutil.copy(p, d) for p in PORTRAITS]  # inside the manifest's folder: the input policy's default root
    rows = [{"id": f"clip{i:03d}", "portrait": str(portraits[i % len(portraits)]), "audio": str(speech)} for i in range(clips)]
    manifest = d / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest


def bare_frames_per_s(checkpoint: str, manifest: Path, batch: int, threads: int) -> float:
    import numpy as np
    import torch

    from faces import align_face
    from media import load_audio, load_image
    from model import RenderRequest, load_checkpoint, prepare_for_inference
    from model.frames import images_to_tensor, tensor_to_images

    torch.set_num_threads(threads)
    generator, _ = prepare_for_inference(load_checkpoint(checkpoint), "cpu")
    size = generator.config.image_size
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    requests = []
    for r in rows:
        face = align_face(load_image(r["portrait"]), size).image
        requests.append(RenderRequest(images_to_tensor(face), torch.from_numpy(load_audio(r["audio"]))))
    frames, start = 0, time.perf_counter()
    for i in range(0, len(requests), batch):
        chunk = requests[i : i + batch]
        for step in generator.stream(chunk):
            tensor_to_images(step)  # the actor's conversion, so the bare loop does the same work
            frames += len(chunk)
    return frames / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clips", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--checkpoint", default=None)
    args = parser.parse_args()

    import ray

    from model import DEFAULT_CHECKPOINT, Generator, get_preset, save_checkpoint
    from pipelines.render import ROWS_PER_RENDER_BATCH, RenderConfig, run_render

    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        checkpoint = args.checkpoint or (str(DEFAULT_CHECKPOINT) if (DEFAULT_CHECKPOINT / "model.safetensors").exists()
                                         else str(save_checkpoint(Generator(get_preset("tiny")), d / "random-tiny")))
        manifest = make_manifest(d, args.clips, args.seconds)
        # the machine is shared: measure the bare generator before and after the pipeline, keep the faster
        bare_before = bare_frames_per_s(checkpoint, manifest, ROWS_PER_RENDER_BATCH, threads=1)
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        run_render(RenderConfig(str(manifest), str(d / "warmup"), checkpoint=checkpoint, metrics=False, tracking_uri=f"sqlite:///{d}/ml.db"))
        outcome = run_render(RenderConfig(str(manifest), str(d / "out"), checkpoint=checkpoint, metrics=False, tracking_uri=f"sqlite:///{d}/ml.db"))
        pipeline_fps = outcome.frames / outcome.wall_s
        few = d / "few.jsonl"
        few.write_text("".join(manifest.read_text().splitlines(keepends=True)[:4]))
        measured = run_render(RenderConfig(str(few), str(d / "measured"), checkpoint=checkpoint, tracking_uri=f"sqlite:///{d}/ml.db"))
        ray.shutdown()
        bare_after = bare_frames_per_s(checkpoint, manifest, ROWS_PER_RENDER_BATCH, threads=1)
        bare_fps = max(bare_before, bare_after)
        s, per_clip_metrics = outcome.stage_s, measured.stage_s.get("metrics", 0.0) / max(1, measured.counts["ok"])
        stages = {"reading_decoding": s.get("load", 0.0), "rendering": s.get("render", 0.0),
                  "encoding": s.get("encode", 0.0), "uploading": s.get("upload", 0.0),
                  "measuring": per_clip_metrics * outcome.counts["ok"]}
        total = sum(stages.values()) or 1.0
        print(json.dumps({
            "clips": args.clips, "seconds_per_clip": args.seconds, "checkpoint": checkpoint,
            "pipeline_frames_per_s": round(pipeline_fps, 2), "bare_frames_per_s": round(bare_fps, 2),
            "bare_frames_per_s_before_after": [round(bare_before, 2), round(bare_after, 2)],
            "pipeline_vs_bare": round(pipeline_fps / bare_fps, 3),
            "stage_share": {k: round(v / total, 3) for k, v in stages.items()},
            "stage_s": {k: round(v, 2) for k, v in stages.items()},
            "composite_vs_render": round(s.get("composite", 0.0) / max(s.get("render", 0.0), 1e-9), 3),
            "wall_s": round(outcome.wall_s, 2),
        }))


if __name__ == "__main__":
    main()
