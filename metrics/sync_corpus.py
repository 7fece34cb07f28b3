"""Sync inputs of real corpus clips (landmarks, mouth crops, audio), at full frame and at the farm's 128 px
render size, cached on disk by file content so the validation reruns in seconds.

Two views of each clip:
- "full": the face region of the original frames (a fixed square of 2.2 face widths around the clip's
  median face box), shrunk so the face is at most FULL_FACE_MAX_PX wide; landmark detection on a whole
  1080x1920 frame is slow and misses faces that the 640 px detection copy makes small.
- "128": the farm's output size: every frame warped by one fixed similarity (faces.align_face's canonical
  128 px template, fitted to the clip's median landmarks) to a 128x128 crop, as the model renders it;
  landmarks and mouth crops are then taken from those 128 px frames only.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

import av
import cv2
import numpy as np

from faces import default_analyzer
from faces.align import anchor_points, canonical_template, similarity, warp_to_crop

from .sync_features import mouth_crops

CACHE_VERSION = "sync-corpus-v1"
FULL_FACE_MAX_PX = 256  # px: face width the "full" view is shrunk to at most
REGION_FACE_WIDTHS = 2.2  # side of the "full" view's square region, in face-box widths
DETECT_EVERY = 5  # frames between HOG detections in landmark tracking
RENDER_PX = 128  # the tiny model's aligned crop size
SAMPLE_RATE = 16000


@dataclass
class ClipInputs:
    name: str
    fps: float
    audio: np.ndarray  # (N,) float32 mono at SAMPLE_RATE
    landmarks: np.ndarray  # (F, 68, 2) "full" view, NaN rows where no face
    crops: np.ndarray  # (F, h, w) uint8 mouth crops of the "full" view
    landmarks_128: np.ndarray  # (F, 68, 2) 128 px view
    crops_128: np.ndarray  # (F, h, w) uint8 mouth crops of the 128 px view
    extract_s: float = float("nan")  # s spent decoding, tracking landmarks and cropping (both views)


def file_key(path: Path) -> str:
    h = hashlib.sha1(CACHE_VERSION.encode())
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def _decode(path: Path):
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            yield frame.to_ndarray(format="rgb24")


def _median_face(path: Path, every: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Median face box (x0, y0, x1, y1) and median landmarks (68, 2) over every `every`-th frame."""
    analyzer = default_analyzer()
    boxes, points = [], []
    for i, frame in enumerate(_decode(path)):
        if i % every:
            continue
        scale = min(1.0, 640 / max(frame.shape[:2]))
        small = cv2.resize(frame, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 else frame
        found = analyzer.detector(np.ascontiguousarray(small), 1)
        if not found:
            continue
        b = max(found, key=lambda r: r.width() * r.height())
        import dlib

        box = dlib.rectangle(int(b.left() / scale), int(b.top() / scale), int(b.right() / scale), int(b.bottom() / scale))
        boxes.append([box.left(), box.top(), box.right(), box.bottom()])
        points.append(analyzer.landmarks(frame, box))
    if not boxes:
        raise ValueError(f"{path}: no face found on any sampled frame")
    return np.median(np.array(boxes, np.float64), 0), np.median(np.array(points, np.float64), 0)


def extract(path: Path) -> ClipInputs:
    from media import load_audio

    from .video import track_landmarks

    start = time.perf_counter()
    box, median_points = _median_face(path)
    width = box[2] - box[0]
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    side = REGION_FACE_WIDTHS * width
    scale = min(1.0, FULL_FACE_MAX_PX / width)
    M_full = np.array([[scale, 0, scale * (side / 2 - cx)], [0, scale, scale * (side / 2 - cy)]])
    full_px = int(round(side * scale))
    M_128 = similarity(anchor_points(median_points), canonical_template(RENDER_PX))
    full, small = [], []
    for frame in _decode(path):
        full.append(warp_to_crop(frame, M_full, full_px))
        small.append(warp_to_crop(frame, M_128, RENDER_PX))
    full, small = np.stack(full), np.stack(small)
    landmarks = track_landmarks(full, DETECT_EVERY)
    landmarks_128 = track_landmarks(small, DETECT_EVERY)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate)
    return ClipInputs(path.name, fps, load_audio(path, SAMPLE_RATE), landmarks, mouth_crops(full, landmarks),
                      landmarks_128, mouth_crops(small, landmarks_128), time.perf_counter() - start)


def load_clip(path: str | Path, cache_dir: str | Path) -> ClipInputs:
    """The clip's sync inputs, from `cache_dir/<content hash>.npz` when present, else extracted and saved."""
    path = Path(path)
    cache = Path(cache_dir) / f"{path.stem}-{file_key(path)}.npz"
    if cache.is_file():
        z = np.load(cache, allow_pickle=False)
        return ClipInputs(path.name, float(z["fps"]), z["audio"], z["landmarks"], z["crops"], z["landmarks_128"], z["crops_128"],
                           float(z["extract_s"]))
    clip = extract(path)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, fps=clip.fps, audio=clip.audio, landmarks=clip.landmarks, crops=clip.crops,
                        landmarks_128=clip.landmarks_128, crops_128=clip.crops_128,
                        extract_s=clip.extract_s)
    tmp.rename(cache)
    return clip
