"""Metrics time vs render time for the `tiny` checkpoint on CPU (goal: metrics_vs_render <= 0.25).

Renders one clip of real speech from a real portrait with the shipped checkpoint (plain PyTorch on CPU,
batch 1), encodes it, then runs compute_video_metrics with the portrait (identity) and the video's own
audio (sync). Both times are per second of video, so their ratio is `metrics_vs_render`. Also measures
the real 512 px talking video for reference. Prints one JSON object.

    python benchmarks/metrics.py [--seconds 4]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from faces import align_face  # noqa: E402
from media import encode_mp4, load_audio, load_image  # noqa: E402
from metrics import compute_video_metrics  # noqa: E402
from model import (AUDIO_SAMPLE_RATE, DEFAULT_CHECKPOINT, CheckpointError, Generator, RenderRequest, get_preset,  # noqa: E402
                   load_checkpoint)
from model.frames import images_to_tensor, tensor_to_images  # noqa: E402

MEDIA = Path(__file__).resolve().parents[2] / "shared" / "media"
FPS = 25.0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=4.0, help="seconds of speech rendered")
    p.add_argument("--media", default=str(MEDIA))
    args = p.parse_args(argv)
    media = Path(args.media)
    torch.manual_seed(0)
    try:
        generator, weights = load_checkpoint(DEFAULT_CHECKPOINT).eval(), "shipped tiny checkpoint"
    except CheckpointError:  # same architecture and speed; the face may not be detectable in random output
        generator, weights = Generator(get_preset("tiny")).eval(), "random init (shipped tiny checkpoint missing)"
    size = generator.config.image_size
    portrait_path = media / "portraits" / "obama.jpg"
    portrait = align_face(load_image(portrait_path), size).image
    audio = load_audio(media / "speech" / "english.wav")[: int(args.seconds * AUDIO_SAMPLE_RATE)]
    request = RenderRequest(images_to_tensor(portrait), torch.from_numpy(audio), FPS)
    num_frames = generator.num_frames(len(audio), FPS)
    with torch.inference_mode():
        start = time.perf_counter()
        frames = [f[0] for _, f in zip(range(num_frames), generator.stream([request]))]
        render_s = time.perf_counter() - start
    images = list(tensor_to_images(torch.stack(frames)))
    video_s = len(images) / FPS
    with tempfile.TemporaryDirectory() as scratch:
        video = Path(scratch) / "tiny.mp4"
        encode_mp4(video, images, FPS, audio, AUDIO_SAMPLE_RATE)
        compute_video_metrics(video, portrait_path=portrait_path)  # warm-up: dlib model load
        start = time.perf_counter()
        tiny = compute_video_metrics(video, portrait_path=portrait_path)
        metrics_s = time.perf_counter() - start
    start = time.perf_counter()
    real = compute_video_metrics(media / "video" / "talking_512px_8s.mp4")
    real_s = time.perf_counter() - start
    out = {
        "preset": "tiny", "weights": weights, "device": "cpu", "torch_threads": torch.get_num_threads(), "image_size": size,
        "video_s": round(video_s, 3), "frames": len(images),
        "render_s_per_video_s": round(render_s / video_s, 4), "metrics_s_per_video_s": round(metrics_s / video_s, 4),
        "metrics_vs_render": round(metrics_s / render_s, 3), "goal_metrics_vs_render": 0.25,
        "tiny_face_detected_ratio": tiny["face_detected_ratio"],
        "real_512px_metrics_s_per_video_s": round(real_s / 8.0, 4),
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
