"""Seam, outside-PSNR, identity and cost of the full-frame composite (faces.composite) on the real portraits.

For each portrait: the shipped checkpoint renders real speech under a commanded yaw sweep of +-20 degrees
with three commanded blinks; the crops are composited into the portrait at `--max-side` with the alpha
and the pyramid blend, and pasted hard (the mask's alpha >= 0.5 region, no colour transfer) and as the
whole crop square (naive paste-back) for contrast. The alpha composite is encoded with media.Mp4Writer and
read back for the PSNR outside the blend region (luma, and RGB beside the portrait encoded alone), the
seam figure on the decoded frames, and dlib's identity distance to the portrait on the full frame and on
the crop. Prints one JSON object per portrait; docs/compositing.md quotes them.

    python benchmarks/composite.py [--seconds 4] [--max-side 1024] [--portraits obama.jpg,biden.jpg]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from faces import align_face, default_analyzer  # noqa: E402
from faces.composite import Compositor, face_upscaled, psnr_outside, seam_figure  # noqa: E402
from media import Mp4Writer, load_audio, load_image, read_video  # noqa: E402
from model import DEFAULT_CHECKPOINT, RenderRequest, load_checkpoint  # noqa: E402

MEDIA = Path(__file__).resolve().parents[2] / "shared" / "media"
FPS = 25.0
YAW_DEGREES = 20.0  # amplitude of the commanded sweep
BLINK_FRAMES = (20, 55, 85)  # frames commanded shut (blink = 0), two frames each


def controls_for(frames: int) -> dict[str, torch.Tensor]:
    t = np.arange(frames) / FPS
    yaw = YAW_DEGREES * np.sin(2 * np.pi * t / max(t[-1], 1e-6))  # one full sweep: 0, +20, 0, -20, 0
    blink = np.full(frames, np.nan)
    for f in BLINK_FRAMES:
        blink[f : f + 2] = 0.0
    return {"yaw": torch.tensor(yaw, dtype=torch.float32), "blink": torch.tensor(blink, dtype=torch.float32)}


def render(generator, crop: np.ndarray, audio: np.ndarray) -> tuple[np.ndarray, float]:
    frames = generator.num_frames(audio.size, FPS)
    request = RenderRequest(torch.from_numpy(crop.copy()).permute(2, 0, 1).float() / 255.0, torch.from_numpy(audio),
                            FPS, controls_for(frames))
    out = []
    start = time.perf_counter()
    with torch.inference_mode():
        for batch in generator.stream([request]):
            out.append((batch[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
            if len(out) == frames:
                break
    return np.stack(out), time.perf_counter() - start


def encode(path: Path, frames, audio: np.ndarray) -> np.ndarray:
    writer = Mp4Writer(path, FPS)
    for f in frames:
        writer.add(f)
    writer.close(audio)
    return read_video(path).frames


def hard_paste(c: Compositor, crop: np.ndarray, region: np.ndarray) -> np.ndarray:
    x0, y0, x1, y1 = c.box
    out = c.frame.copy()
    face = c.warp(crop).clip(0, 255).round().astype(np.uint8)
    out[y0:y1, x0:x1] = np.where(region[y0:y1, x0:x1, None], face, out[y0:y1, x0:x1])
    return out


def identity_distance(analyzer, reference: np.ndarray, frames) -> float | None:
    """Mean dlib embedding distance of the frames' faces to the reference image's face."""
    ref_points = analyzer.landmarks(reference)
    ref = analyzer.embedding(reference, ref_points)
    distances = []
    for f in frames:
        points = analyzer.landmarks(f)
        if points is not None:
            distances.append(float(np.linalg.norm(analyzer.embedding(f, points) - ref)))
    return round(float(np.mean(distances)), 4) if distances else None


def measure(generator, analyzer, path: Path, audio: np.ndarray, max_side: int, scratch: Path) -> dict:
    size = generator.config.image_size
    image = load_image(path)
    aligned = align_face(image, size)
    crops, render_s = render(generator, aligned.image, audio)
    figures: dict = {"portrait": path.name, "source": f"{image.shape[1]}x{image.shape[0]}", "frames": len(crops)}
    alpha_frames = None
    for blend in ("alpha", "pyramid"):
        c = Compositor.for_portrait(image, aligned, size, max_side, blend=blend)
        c(crops[0])  # the colour fit, outside the timing
        start = time.perf_counter()
        frames = [c(crop) for crop in crops]
        figures[f"{blend}_ms_per_frame"] = round(1000 * (time.perf_counter() - start) / len(crops), 2)
        seams = [seam_figure(f, c.alpha) for f in frames]
        figures[f"{blend}_seam_mean"], figures[f"{blend}_seam_max"] = round(float(np.mean(seams)), 3), round(max(seams), 3)
        if blend == "alpha":
            alpha_frames, compositor = frames, c
    c = compositor
    H, W = c.frame.shape[:2]
    figures.update(output=f"{W}x{H}", face_scale=round(c.face_scale, 3), face_upscaled=face_upscaled(aligned),
                   colour_gain=[round(float(g), 3) for g in c.transfer.gain],
                   colour_offset=[round(float(o), 2) for o in c.transfer.offset],
                   render_ms_per_frame=round(1000 * render_s / len(crops), 1),
                   portrait_own_seam=round(seam_figure(c.frame, c.alpha), 3))
    figures["composite_share_of_render"] = round(figures["alpha_ms_per_frame"] / figures["render_ms_per_frame"], 3)
    region = c.alpha >= 0.5
    hard = [seam_figure(hard_paste(c, crop, region), region.astype(np.float32)) for crop in crops[::4]]
    square = cv2.warpAffine(np.ones((size, size), np.float32), c.to_crop, (W, H), flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP)
    naive = []
    for crop in crops[::4]:
        full = cv2.warpAffine(crop, c.to_crop, (W, H), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
        naive.append(seam_figure(np.where(square[..., None] > 0, full, c.frame), square))
    figures.update(hard_paste_seam_mean=round(float(np.mean(hard)), 3), hard_paste_seam_min=round(min(hard), 3),
                   square_paste_seam_mean=round(float(np.mean(naive)), 3))
    decoded = encode(scratch / f"{path.stem}.mp4", alpha_frames, audio)
    still = encode(scratch / f"{path.stem}-still.mp4", [c.frame] * 10, audio[: 16000])
    luma = [psnr_outside(f, c.frame, c.alpha) for f in decoded[::2]]
    rgb = [psnr_outside(f, c.frame, c.alpha, luma=False) for f in decoded[::2]]
    decoded_seams = [seam_figure(f, c.alpha) for f in decoded]
    figures.update(psnr_outside_luma_min=round(min(luma), 2), psnr_outside_rgb_min=round(min(rgb), 2),
                   psnr_outside_rgb_portrait_alone=round(psnr_outside(still[5], c.frame, c.alpha, luma=False), 2),
                   decoded_seam_mean=round(float(np.mean(decoded_seams)), 3), decoded_seam_max=round(max(decoded_seams), 3))
    figures["identity_full_frame"] = identity_distance(analyzer, image, decoded[::5])
    figures["identity_crop"] = identity_distance(analyzer, image, crops[::5])
    return figures


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=4.0, help="seconds of speech rendered per portrait")
    p.add_argument("--max-side", type=int, default=1024)
    p.add_argument("--portraits", default="obama.jpg,obama2.jpg,biden.jpg")
    p.add_argument("--media", default=str(MEDIA))
    args = p.parse_args(argv)
    media = Path(args.media)
    generator = load_checkpoint(DEFAULT_CHECKPOINT).eval()
    analyzer = default_analyzer()
    audio = load_audio(media / "speech" / "english.wav")[: int(args.seconds * 16000)].astype(np.float32)
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.portraits.split(","):
            figures = measure(generator, analyzer, media / "portraits" / name, audio, args.max_side, Path(scratch))
            print(json.dumps({"max_side": args.max_side, "torch_threads": torch.get_num_threads(), **figures}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
