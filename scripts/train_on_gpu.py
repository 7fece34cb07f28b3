"""Train a flow-head generator on one CUDA GPU from ../shared/media, and write everything to one folder.

    scripts/train_on_gpu.sh OUT [--minutes 8] [--preset tiny] [--flow-steps 4] ...

Steps, each writing under OUT:
1. data sets: the synthetic set (training/synthetic.py; its held-out portrait and speech stay out) in
   OUT/synthetic, and the real corpus (MEDIA/corpus, prepared by training/prepare.py's Ray Data job,
   dlib labels for pose, blink and gaze) in OUT/corpus, minus the HELD_OUT_SPEAKERS' videos, which are
   kept for evaluation; OUT/dataset lists both sets' shards (links), OUT/split.json says which video
   went where;
2. training: both stages (training/loops.py) with GeneratorConfig.head = "flow", stopped at `--minutes`
   of wall time from the start of stage 1 (stage 2 checkpoints and stops at the deadline); bf16 + ZeRO 2
   on a GPU, fp32 on a CPU (where this script runs only as its own test, with a few steps);
3. OUT/final (the checkpoint: model.safetensors + config.json + loss.json), OUT/curves.json and
   OUT/curves.png (every logged metric against the global step);
4. acceptance (training/acceptance.py) of OUT/final on the held-out portrait and speech (--accept-speech) in
   OUT/acceptance (acceptance.json and its videos).
Prints one JSON summary. Exit 2 on a bad argument or a missing input.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

# whole speakers kept out of training, for acceptance's held-out motion and sync figures
from training.acceptance import HELD_OUT_SPEAKERS  # noqa: E402
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm")

log = logging.getLogger("train_on_gpu")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("output", type=Path, help="the run's folder (created)")
    p.add_argument("--media", type=Path, default=REPO_ROOT.parent / "shared" / "media")
    p.add_argument("--minutes", type=float, default=8.0, help="wall-time budget of both training stages")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--flow-steps", type=int, default=4, help="GeneratorConfig.flow_steps: Euler steps per frame")
    p.add_argument("--flow-width", type=int, default=256)
    p.add_argument("--flow-layers", type=int, default=3)
    p.add_argument("--vae-steps", type=int, default=1500)
    p.add_argument("--steps", type=int, default=100_000, help="stage 2 steps; the --minutes deadline stops it first")
    p.add_argument("--batch-clips", type=int, default=32)
    p.add_argument("--vae-batch-frames", type=int, default=64)
    p.add_argument("--clip-frames", type=int, default=24)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--synthetic-clips", type=int, default=384)
    p.add_argument("--corpus-include", nargs="*", default=None,
                   help="train on only these corpus videos (file names; its test uses one short clip)")
    p.add_argument("--accept-speech", type=Path, default=None,
                   help="held-out speech for acceptance (default MEDIA/speech/english.wav)")
    p.add_argument("--accept-seconds", type=float, default=60.0, help="length of acceptance's identity/drift video")
    p.add_argument("--accept-blink-seconds", type=float, default=20.0)
    p.add_argument("--accept-speakers", nargs="+", default=list(HELD_OUT_SPEAKERS),
                   help="held-out corpus videos acceptance measures amplitude and sync on (of HELD_OUT_SPEAKERS)")
    p.add_argument("--checkpoint-every", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    args.accept_speech = args.accept_speech or args.media / "speech" / "english.wav"
    args.accept_speakers = tuple(args.accept_speakers)
    return args


def split_corpus(corpus: Path, include: list[str] | None) -> tuple[list[Path], list[Path]]:
    """(training videos, held-out videos) of the corpus folder, sorted; `include` narrows the training ones."""
    videos = sorted(p for p in corpus.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
    held = [p for p in videos if p.name in HELD_OUT_SPEAKERS]
    train = [p for p in videos if p.name not in HELD_OUT_SPEAKERS and (include is None or p.name in include)]
    if not train:
        raise ValueError(f"{corpus}: no training videos (held out: {[p.name for p in held]}, include: {include})")
    return train, held


def build_datasets(args: argparse.Namespace, image_size: int) -> Path:
    """OUT/dataset: the synthetic set's and the training corpus's shards under one manifest."""
    from training.prepare import prepare_corpus
    from training.shards import ClipDataset, write_manifest
    from training.synthetic import SyntheticConfig, build_synthetic_dataset

    out = args.output
    synthetic = out / "synthetic"
    if not (synthetic / "dataset.json").is_file():
        build_synthetic_dataset(SyntheticConfig(image_size=image_size, num_clips=args.synthetic_clips,
                                                seed=args.seed, media_root=str(args.media)), synthetic)
    train_videos, held = split_corpus(args.media / "corpus", args.corpus_include)
    (out / "split.json").write_text(json.dumps({"train": [p.name for p in train_videos],
                                                "held_out": [p.name for p in held]}, indent=2) + "\n")
    corpus = out / "corpus"
    if not (corpus / "dataset.json").is_file():
        # the Ray job reads a folder: one of links to the training speakers' videos only
        inputs = out / "corpus-train-videos"
        inputs.mkdir(parents=True, exist_ok=True)
        for video in train_videos:
            link = inputs / video.name
            if not link.exists():
                link.symlink_to(video.resolve())
        first = ClipDataset(synthetic)
        prepare_corpus(str(inputs), corpus, image_size=image_size, fps=first.fps, clip_frames=first.clip_frames)
    parts = {"synthetic": ClipDataset(synthetic), "corpus": ClipDataset(corpus)}
    kinds = {(d.image_size, d.fps, d.clip_frames, d.sample_rate, tuple(d.controls)) for d in parts.values()}
    if len(kinds) != 1:
        raise ValueError(f"the synthetic and corpus data sets differ in size, fps, clip length or controls: {kinds}")
    merged = out / "dataset"
    merged.mkdir(parents=True, exist_ok=True)
    shards = []
    for name, part in parts.items():
        for shard in part.manifest["shards"]:
            link = merged / f"{name}-{shard}"
            if not link.exists():
                link.symlink_to((part.root / shard).resolve(), target_is_directory=True)
            shards.append(link.name)
    first = parts["synthetic"]
    write_manifest(merged, image_size=first.image_size, fps=first.fps, clip_frames=first.clip_frames,
                   sample_rate=first.sample_rate, controls=first.controls, shards=shards,
                   source={"kind": "merged", "parts": {k: len(v) for k, v in parts.items()}})
    return merged


def write_curves(history: dict[str, list[tuple[int, float]]], out: Path) -> None:
    (out / "curves.json").write_text(json.dumps(history, indent=1) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted(k for k in history if not k.endswith(("/lr", "/frames_per_s")))
    fig, axes = plt.subplots(len(names), 1, figsize=(7, 2.2 * len(names)), squeeze=False)
    for ax, name in zip(axes[:, 0], names):
        steps, values = zip(*history[name])
        ax.plot(steps, values, marker=".")
        ax.set_title(name, fontsize=9)
        ax.set_yscale("log" if min(values) > 0 else "linear")
    axes[-1, 0].set_xlabel("global step")
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    import torch

    from model import get_preset
    from model.config import ConfigError
    from training.acceptance import run_acceptance
    from training.config import REPO_ROOT as ROOT, TrainConfig
    from training.loops import train

    for needed in (args.media / "corpus", args.media / "portraits" / "biden.jpg", args.accept_speech):
        if not needed.exists():
            print(f"train_on_gpu: {needed} does not exist", file=sys.stderr)
            return 2
    gpu = torch.cuda.is_available()
    ds_config = ROOT / "configs" / "train" / ("gpu_bf16_zero2.json" if gpu else "cpu_fp32.json")
    overrides = {"head": "flow", "flow_steps": args.flow_steps, "flow_width": args.flow_width,
                 "flow_layers": args.flow_layers}
    args.output.mkdir(parents=True, exist_ok=True)
    try:
        image_size = get_preset(args.preset, **overrides).image_size
        config = TrainConfig(dataset="unbuilt", output=str(args.output / "run"), preset=args.preset, seed=args.seed,
                             model_overrides=overrides, vae_steps=args.vae_steps, steps=args.steps,
                             batch_clips=args.batch_clips, vae_batch_frames=args.vae_batch_frames,
                             clip_frames=args.clip_frames, lr=args.lr, deepspeed_config=str(ds_config),
                             checkpoint_every=args.checkpoint_every, max_minutes=args.minutes, sample_video=False)
    except (ConfigError, KeyError) as e:
        print(f"train_on_gpu: {e}", file=sys.stderr)
        return 2
    started = time.monotonic()
    dataset = build_datasets(args, image_size)
    data_minutes = (time.monotonic() - started) / 60
    import dataclasses

    config = dataclasses.replace(config, dataset=str(dataset))
    started = time.monotonic()
    result = train(config)
    train_minutes = (time.monotonic() - started) / 60
    from training.checkpointing import copy_checkpoint

    final = copy_checkpoint(result.final_checkpoint, args.output / "final")
    write_curves(result.history, args.output)
    report = run_acceptance(str(final), args.media / "portraits" / "biden.jpg", args.accept_speech,
                            args.output / "acceptance", args.accept_seconds, None, args.accept_blink_seconds,
                            args.media / "corpus", args.accept_speakers)
    summary = {"device": torch.cuda.get_device_name() if gpu else "cpu", "final": str(final),
               "steps": result.steps_done, "data_minutes": round(data_minutes, 2),
               "train_minutes": round(train_minutes, 2),
               "last": {k: v[-1][1] for k, v in result.history.items() if v},
               "acceptance_all_pass": report.get("all_pass"),
               "mouth_amplitude_ratio": report["mouth_amplitude"]["ratio"],
               "held_out_sync": f"{report['held_out_sync']['passed']} of {report['held_out_sync']['of']}"}
    (args.output / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
