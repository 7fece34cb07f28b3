"""`compute_video_metrics`: every per-video metric of the results schema from one MP4 (and its inputs).

Landmarks are taken on every frame (sync needs the full frame rate); the HOG detector runs every
`detect_every` frames and the box is carried between detections by the landmarks' motion. Identity
embeddings, BRISQUE and sharpness use a handful of sampled frames (they are slow and change slowly).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from faces import default_analyzer, eye_openness, head_pose, inter_ocular

from . import learned, quality
from .sync import SyncConfig, measure_sync, measure_version


@dataclass
class MetricsConfig:
    detect_every: int = 5  # frames between HOG detections (landmarks run on every frame)
    max_side: int = 512  # px: larger videos are downscaled for landmarks (coordinates stay in this scale)
    identity_samples: int = 12  # frames embedded for identity (incl. first/last 10 %)
    quality_samples: int = 4  # frames scored with BRISQUE and sharpness
    blink_closed: float = 0.45  # eye openness below this starts a blink ...
    blink_open: float = 0.7  # ... which ends once it rises above this (hysteresis)


class MetricsInputError(ValueError):
    """An input of compute_video_metrics that cannot be used (names the file and the cause)."""


def track_landmarks(frames: np.ndarray, detect_every: int = 5) -> np.ndarray:
    """(F, 68, 2) float32 landmarks per frame, NaN where no face was found."""
    analyzer = default_analyzer()
    out = np.full((len(frames), 68, 2), np.nan, np.float32)
    box, box_centre = None, None
    import dlib

    for i, frame in enumerate(frames):
        if box is None or i % detect_every == 0:
            box = analyzer.detect(frame)
            box_centre = None
            if box is None:
                continue
        points = analyzer.landmarks(frame, box)
        if points is None:
            continue
        out[i] = points
        centre = points.mean(0)
        if box_centre is None:
            box_centre = centre
        else:  # carry the detector's box along with the face until the next detection
            dx, dy = (centre - box_centre).round().astype(int)
            box = dlib.rectangle(box.left() + dx, box.top() + dy, box.right() + dx, box.bottom() + dy)
            box_centre = box_centre + (dx, dy)
    return out


def _nan_stat(fn, values) -> float | None:
    values = np.asarray(values, np.float64)
    values = values[np.isfinite(values)]
    return float(fn(values)) if values.size else None


def count_blinks(openness: np.ndarray, closed: float, open_: float) -> int:
    """Dips of eye openness below `closed` that start from and return above `open_`."""
    blinks, state = 0, "unknown"
    for value in openness:
        if not np.isfinite(value):
            continue
        if value >= open_:
            state = "open"
        elif value < closed and state == "open":
            blinks += 1
            state = "closed"
    return blinks


def landmark_jitter(landmarks: np.ndarray) -> float | None:
    """Median |second difference| of (F, 68, 2) landmarks over the inter-ocular distance; None if unmeasurable.

    Only runs of three consecutive frames that all have a face count: differencing the frames either side
    of a lost face as if they were neighbours turns ordinary motion into jitter.
    """
    landmarks = np.asarray(landmarks, np.float64)
    face = np.isfinite(landmarks).all(axis=(1, 2))
    valid = np.flatnonzero(face[:-2] & face[1:-1] & face[2:])  # first frame of each face-face-face run
    if valid.size == 0:
        return None
    second = landmarks[valid + 2] - 2 * landmarks[valid + 1] + landmarks[valid]  # (N, 68, 2)
    iod = np.array([inter_ocular(landmarks[i]) for i in valid + 2])
    return float(np.median(np.abs(second).mean(axis=(1, 2)) / np.maximum(iod, 1e-6)))


def _sample_indices(num_frames: int, count: int) -> np.ndarray:
    return np.unique(np.linspace(0, num_frames - 1, min(count, num_frames)).round().astype(int))


def identity_metrics(frames: np.ndarray, landmarks: np.ndarray, portrait: np.ndarray, portrait_points: np.ndarray,
                     samples: int) -> dict:
    analyzer = default_analyzer()
    reference = analyzer.embedding(portrait, portrait_points)
    with_face = np.flatnonzero(np.isfinite(landmarks).all(axis=(1, 2)))
    if with_face.size == 0:
        return {}
    tenth = max(1, int(math.ceil(0.1 * with_face.size)))
    head, tail = with_face[:tenth], with_face[-tenth:]
    picks = np.unique(np.r_[head[_sample_indices(head.size, 3)], tail[_sample_indices(tail.size, 3)],
                            with_face[_sample_indices(with_face.size, max(1, samples - 6))]])
    embeddings = {int(i): analyzer.embedding(frames[i], landmarks[i]) for i in picks}
    distances = np.array([np.linalg.norm(e - reference) for e in embeddings.values()])
    first = np.mean([embeddings[int(i)] for i in picks if i in set(head.tolist())], axis=0)
    last = np.mean([embeddings[int(i)] for i in picks if i in set(tail.tolist())], axis=0)
    return {"identity_distance_mean": float(distances.mean()), "identity_distance_max": float(distances.max()),
            "identity_drift": float(np.linalg.norm(first - last))}


def adherence_metrics(measured: dict[str, np.ndarray], controls: dict[str, np.ndarray]) -> dict:
    """Correlation and MAE of measured yaw/pitch/roll/blink against the commanded track (finite frames)."""
    out: dict[str, float | None] = {}
    for name, mae_key in (("yaw", "yaw_mae_deg"), ("pitch", "pitch_mae_deg"), ("roll", "roll_mae_deg"), ("blink", "blink_mae")):
        if name not in controls or controls[name] is None:
            continue
        commanded = np.asarray(controls[name], np.float64).reshape(-1)
        got = measured[name]
        n = min(len(commanded), len(got))
        ok = np.isfinite(commanded[:n]) & np.isfinite(got[:n])
        if ok.sum() < 3:
            continue
        c, g = commanded[:n][ok], got[:n][ok]
        out[mae_key] = float(np.abs(c - g).mean())
        out[f"{name}_corr"] = float(np.corrcoef(c, g)[0, 1]) if c.std() > 1e-9 and g.std() > 1e-9 else None
    return out


def reference_metrics(frames: np.ndarray, landmarks: np.ndarray, reference_path: str | Path, detect_every: int) -> dict:
    from media import MediaError, probe_video, read_video
    from media.image import MAX_PIXELS
    from skimage.metrics import structural_similarity

    # a reference is the user's file: its frames past the video's own are never compared, so never decoded,
    # and a frame size that would not fit in memory times the video's length is refused before decoding
    size = probe_video(reference_path)
    if size["width"] * size["height"] > MAX_PIXELS:
        raise MediaError(f"{reference_path}: reference frames too large ({size['width']}x{size['height']})")
    ref = read_video(reference_path, max_frames=len(frames)).frames
    n = min(len(ref), len(frames))
    if ref.shape[1:3] != frames.shape[1:3]:
        ref = np.stack([cv2.resize(f, (frames.shape[2], frames.shape[1]), interpolation=cv2.INTER_AREA) for f in ref[:n]])
    a, b = frames[:n].astype(np.float64), ref[:n].astype(np.float64)
    mse = ((a - b) ** 2).mean(axis=(1, 2, 3))
    psnr = np.where(mse > 0, 10 * np.log10(255.0 ** 2 / np.maximum(mse, 1e-12)), 100.0)
    picks = _sample_indices(n, 16)
    ssim = [structural_similarity(cv2.cvtColor(frames[i], cv2.COLOR_RGB2GRAY), cv2.cvtColor(ref[i], cv2.COLOR_RGB2GRAY),
                                  data_range=255) for i in picks]
    ref_landmarks = track_landmarks(ref[:n], detect_every)
    both = np.isfinite(landmarks[:n]).all(axis=(1, 2)) & np.isfinite(ref_landmarks).all(axis=(1, 2))
    lmd = None
    if both.any():
        scale = np.array([256.0 / max(1.0, np.ptp(ref_landmarks[i][:, 0])) for i in np.flatnonzero(both)])
        dist = np.linalg.norm(landmarks[:n][both] - ref_landmarks[both], axis=2).mean(1)
        lmd = float((dist * scale).mean())
    return {"ref_psnr": float(psnr.mean()), "ref_ssim": float(np.mean(ssim)), "ref_lmd": lmd}


def compute_video_metrics(video_path: str | Path, audio_path: str | Path | None = None,
                          portrait_path: str | Path | None = None, reference_path: str | Path | None = None,
                          controls: dict[str, np.ndarray] | None = None,
                          config: MetricsConfig = MetricsConfig()) -> dict:
    """All metrics of `metrics.schema.METRIC_COLUMNS` for one video; unmeasurable ones are None.

    Without `audio_path` the video's own audio track is used. `controls` maps control names (yaw, pitch,
    roll in degrees, blink as eye openness) to per-frame arrays, NaN meaning "not commanded at that frame".
    """
    from media import MediaError, load_audio, load_image, read_video

    from .schema import METRIC_COLUMNS

    start = time.perf_counter()
    try:
        clip = read_video(video_path)
    except MediaError as e:
        raise MetricsInputError(str(e)) from None
    frames = clip.frames
    scale = min(1.0, config.max_side / max(frames.shape[1:3]))
    if scale < 1.0:
        frames = np.stack([cv2.resize(f, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) for f in frames])
    audio = clip.audio if audio_path is None else load_audio(audio_path, clip.sample_rate)

    result: dict = {name: None for name in METRIC_COLUMNS}
    landmarks = track_landmarks(frames, config.detect_every)
    face = np.isfinite(landmarks).all(axis=(1, 2))
    result["face_detected_ratio"] = float(face.mean())
    result["metrics_frames"] = int(len(frames))

    sync = measure_sync(landmarks, audio, clip.sample_rate, clip.fps, SyncConfig(), frames=frames) if audio is not None else None
    if sync is not None:
        result["sync_offset_frames"], result["sync_confidence"] = sync.offset_frames, sync.confidence
        result["sync_measure"] = measure_version()

    poses = np.full((len(frames), 3), np.nan)
    openness = np.full(len(frames), np.nan)
    for i in np.flatnonzero(face):
        poses[i] = head_pose(landmarks[i], frames.shape[1:3])
        openness[i] = eye_openness(landmarks[i])
    for j, name in enumerate(("yaw", "pitch", "roll")):
        result[f"{name}_range_deg"] = _nan_stat(lambda v: np.percentile(v, 95) - np.percentile(v, 5), poses[:, j])
    duration_min = len(frames) / clip.fps / 60.0
    if face.any():
        result["blinks_per_min"] = count_blinks(openness, config.blink_closed, config.blink_open) / duration_min
    result["landmark_jitter"] = landmark_jitter(landmarks)
    result["background_flicker"] = quality.background_flicker(frames)
    result |= quality.image_quality(frames, landmarks, config.quality_samples)

    portrait = portrait_points = None
    if portrait_path is not None:
        try:
            portrait = load_image(portrait_path)
        except MediaError as e:
            raise MetricsInputError(str(e)) from None
        portrait_points = default_analyzer().landmarks(portrait)
        if portrait_points is None:
            raise MetricsInputError(f"{portrait_path}: no face found in the portrait")
        result |= identity_metrics(frames, landmarks, portrait, portrait_points, config.identity_samples)
    if controls:
        result |= adherence_metrics({"yaw": poses[:, 0], "pitch": poses[:, 1], "roll": poses[:, 2], "blink": openness}, controls)
    if reference_path is not None:
        result |= reference_metrics(frames, landmarks, reference_path, config.detect_every)
    result |= learned.learned_metrics(frames, landmarks, portrait, portrait_points, audio, clip.sample_rate, clip.fps)
    result["metrics_s"] = time.perf_counter() - start
    return result
