"""Learned metrics, run only from weights the user provides locally; never estimated, never downloaded.

- `csim_arcface`: cosine similarity of ArcFace embeddings of sampled frames to the portrait's. Weights:
  `EARTALK_ARCFACE_WEIGHTS`, an ArcFace ONNX file in the insightface layout (input 1x3x112x112 RGB,
  (x - 127.5) / 127.5; output one embedding), run with OpenCV's DNN module. Faces are aligned with the
  standard ArcFace 5-point template from dlib's eye centres, nose tip and mouth corners.
- `lse_c`, `lse_d` (SyncNet, metrics/syncnet.py): `EARTALK_SYNCNET_WEIGHTS`, the published
  `syncnet_v2.model` state dict (PyTorch), on 25 fps video with 16 kHz audio.
- FID/FVD are distribution-level (per run, not per video): not part of the per-video row.

Without weights a column is null and `learned_metrics_reason` records why.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

WEIGHT_VARIABLES = {"syncnet": "EARTALK_SYNCNET_WEIGHTS", "arcface": "EARTALK_ARCFACE_WEIGHTS"}
ARCFACE_SIZE = 112
ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                             [41.5493, 92.3655], [70.7299, 92.2041]], np.float32)  # eyes, nose tip, mouth corners
ARCFACE_SAMPLES = 8  # frames embedded per video


def five_points(landmarks: np.ndarray) -> np.ndarray:
    """dlib 68 -> the ArcFace 5 points (image-left eye, image-right eye, nose tip, mouth corners)."""
    return np.stack([landmarks[36:42].mean(0), landmarks[42:48].mean(0), landmarks[30], landmarks[48], landmarks[54]]).astype(np.float32)


def arcface_crop(image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    matrix, _ = cv2.estimateAffinePartial2D(five_points(landmarks), ARCFACE_TEMPLATE, method=cv2.LMEDS)
    return cv2.warpAffine(image, matrix, (ARCFACE_SIZE, ARCFACE_SIZE), borderValue=0)


@lru_cache(maxsize=2)
def _arcface_net(path: str):
    return cv2.dnn.readNetFromONNX(path)


def arcface_embedding(path: str, image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    net = _arcface_net(path)
    blob = cv2.dnn.blobFromImage(arcface_crop(image, landmarks), 1.0 / 127.5, (ARCFACE_SIZE, ARCFACE_SIZE),
                                 (127.5, 127.5, 127.5), swapRB=False)  # images here are RGB already
    net.setInput(blob)
    embedding = net.forward().reshape(-1).astype(np.float64)
    return embedding / (np.linalg.norm(embedding) + 1e-12)


def csim_arcface(path: str, frames: np.ndarray, landmarks: np.ndarray, portrait: np.ndarray, portrait_landmarks: np.ndarray) -> float | None:
    with_face = np.flatnonzero(np.isfinite(landmarks).all(axis=(1, 2)))
    if with_face.size == 0:
        return None
    reference = arcface_embedding(path, portrait, portrait_landmarks)
    picks = with_face[np.unique(np.linspace(0, with_face.size - 1, min(ARCFACE_SAMPLES, with_face.size)).round().astype(int))]
    return float(np.mean([arcface_embedding(path, frames[i], landmarks[i]) @ reference for i in picks]))


def _configured(name: str) -> tuple[str | None, str | None]:
    """(weights path, None) when usable, else (None, reason)."""
    variable = WEIGHT_VARIABLES[name]
    path = os.environ.get(variable)
    if not path:
        return None, f"{name}: no weights configured ({variable} unset)"
    if not Path(path).is_file():
        return None, f"{name}: {variable}={path} is not a file"
    return path, None


def learned_metrics(frames: np.ndarray, landmarks: np.ndarray, portrait: np.ndarray | None,
                    portrait_landmarks: np.ndarray | None, audio: np.ndarray | None = None,
                    sample_rate: int = 16000, fps: float = 25.0) -> dict:
    out: dict = {"lse_c": None, "lse_d": None, "csim_arcface": None}
    reasons = []
    path, reason = _configured("syncnet")
    if reason:
        reasons.append(reason)
    elif audio is None:
        reasons.append("syncnet: no audio")
    else:
        from .syncnet import lse

        try:
            scores = lse(path, frames, landmarks, audio, sample_rate, fps)
        except ValueError as e:
            reasons.append(f"syncnet: {e}")
        else:
            if scores is None:
                reasons.append("syncnet: no face or under 6 frames")
            else:
                out["lse_c"], out["lse_d"] = scores
    path, reason = _configured("arcface")
    if reason:
        reasons.append(reason)
    elif portrait is None or portrait_landmarks is None:
        reasons.append("arcface: no portrait given")
    else:
        try:
            out["csim_arcface"] = csim_arcface(path, frames, landmarks, portrait, portrait_landmarks)
        except cv2.error as e:
            reasons.append(f"arcface: cannot run {path} ({str(e).strip().splitlines()[-1]})")
        else:
            if out["csim_arcface"] is None:
                reasons.append("arcface: no face in the video")
    out["learned_metrics_reason"] = "; ".join(reasons)
    return out
