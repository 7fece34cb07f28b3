"""TEMPORARY stand-ins for faces/ and media/ while those packages are being written (removed once they land)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

MODELS = Path(__file__).resolve().parents[1] / ".venv/lib/python3.11/site-packages/face_recognition_models/models"
_detector = None
_predictor = None


class NoFaceError(ValueError):
    pass


@dataclass
class AlignedFace:
    image: np.ndarray
    landmarks: np.ndarray
    transform: np.ndarray


def landmarks(image):
    import dlib
    global _detector, _predictor
    if _detector is None:
        _detector = dlib.get_frontal_face_detector()
        _predictor = dlib.shape_predictor(str(MODELS / "shape_predictor_68_face_landmarks.dat"))
    up = 1 if max(image.shape[:2]) >= 256 else 2
    boxes = _detector(image, 1) if up == 1 else _detector(cv2.resize(image, None, fx=2, fy=2), 1)
    if not boxes:
        return None
    shape = _predictor(image if up == 1 else cv2.resize(image, None, fx=2, fy=2), max(boxes, key=lambda b: b.area()))
    return np.array([[p.x, p.y] for p in shape.parts()], float) / up


def align_face(image, size):
    pts = landmarks(image)
    if pts is None:
        raise NoFaceError("no face")
    le, re = pts[36:42].mean(0), pts[42:48].mean(0)
    angle = np.degrees(np.arctan2(re[1] - le[1], re[0] - le[0]))
    scale = 0.36 * size / np.linalg.norm(re - le)
    centre = (le + re) / 2
    matrix = cv2.getRotationMatrix2D(tuple(centre), angle, scale)
    matrix[:, 2] += np.array([size / 2, 0.40 * size]) - centre
    crop = cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REFLECT)
    lm = landmarks(crop)
    if lm is None:
        lm = pts @ matrix[:, :2].T + matrix[:, 2]
    return AlignedFace(crop, lm, matrix)


def load_audio(path, sample_rate=16000):
    import av
    with av.open(str(path)) as container:
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        chunks = []
        for frame in container.decode(audio=0):
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray().reshape(-1))
        for out in resampler.resample(None):
            chunks.append(out.to_ndarray().reshape(-1))
    return np.concatenate(chunks).astype(np.float32)


def load_image(path):
    from PIL import Image
    return np.array(Image.open(path).convert("RGB"))


@dataclass
class VideoClip:
    frames: np.ndarray
    fps: float


def read_video(path):
    import av
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate)
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    return VideoClip(frames, fps)
