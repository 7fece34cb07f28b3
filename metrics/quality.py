"""Image quality without a reference: BRISQUE (OpenCV quality module, LIVE model from Debian opencv-data),
sharpness (variance of the Laplacian over the face box) and background flicker (border-strip change)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

BRISQUE_DIRS = (Path("/usr/share/opencv4/quality"), Path("/usr/share/opencv/quality"))
BORDER = 0.08  # fraction of each side treated as background for flicker


@lru_cache(maxsize=1)
def brisque_model() -> tuple[str, str] | None:
    for folder in BRISQUE_DIRS:
        model, range_ = folder / "brisque_model_live.yml", folder / "brisque_range_live.yml"
        if model.is_file() and range_.is_file():
            return str(model), str(range_)
    return None


def brisque(image: np.ndarray) -> float | None:
    """BRISQUE score of an RGB uint8 image (lower is better), None without the model files."""
    files = brisque_model()
    if files is None:
        return None
    score = cv2.quality.QualityBRISQUE_compute(cv2.cvtColor(image, cv2.COLOR_RGB2BGR), *files)
    return float(score[0])


def sharpness(image: np.ndarray, landmarks: np.ndarray | None = None) -> float:
    """Variance of the Laplacian of the grey image, over the landmarks' box when given."""
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    if landmarks is not None and np.isfinite(landmarks).all():
        x0, y0 = np.floor(landmarks.min(0)).astype(int).clip(0)
        x1, y1 = np.ceil(landmarks.max(0)).astype(int)
        if x1 - x0 >= 8 and y1 - y0 >= 8:
            grey = grey[y0:y1, x0:x1]
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


def background_flicker(frames: np.ndarray) -> float | None:
    """Mean absolute frame-to-frame change of the border strips' grey levels (F, H, W, 3) -> grey levels."""
    if len(frames) < 2:
        return None
    h, w = frames.shape[1:3]
    bh, bw = max(1, int(h * BORDER)), max(1, int(w * BORDER))
    grey = frames.astype(np.float32).mean(axis=3)
    strips = np.concatenate([grey[:, :bh].reshape(len(frames), -1), grey[:, -bh:].reshape(len(frames), -1),
                             grey[:, :, :bw].reshape(len(frames), -1), grey[:, :, -bw:].reshape(len(frames), -1)], axis=1)
    return float(np.abs(np.diff(strips, axis=0)).mean())


def image_quality(frames: np.ndarray, landmarks: np.ndarray, samples: int) -> dict:
    picks = np.unique(np.linspace(0, len(frames) - 1, min(samples, len(frames))).round().astype(int))
    scores = [s for s in (brisque(frames[i]) for i in picks) if s is not None and np.isfinite(s)]
    sharp = [sharpness(frames[i], landmarks[i]) for i in picks]
    return {"brisque": float(np.mean(scores)) if scores else None, "sharpness": float(np.mean(sharp))}
