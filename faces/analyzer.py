"""dlib face detector, 68-point landmarker and 128-d face embedding, loaded once per process."""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

import dlib
import numpy as np

DETECT_MAX_SIDE = 640  # px: detection runs on a downscaled copy; landmarks use full resolution


class NoFaceError(ValueError):
    """No face found in an image that needs one."""


def models_dir() -> Path:
    # importing face_recognition_models needs pkg_resources (gone from current setuptools): find its folder instead
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("face_recognition_models is not installed (pip install face-recognition-models)")
    return Path(next(iter(spec.submodule_search_locations))) / "models"


class FaceAnalyzer:
    def __init__(self):
        d = models_dir()
        self.detector = dlib.get_frontal_face_detector()
        self.predictor = dlib.shape_predictor(str(d / "shape_predictor_68_face_landmarks.dat"))
        self.encoder = dlib.face_recognition_model_v1(str(d / "dlib_face_recognition_resnet_model_v1.dat"))

    def detect(self, image: np.ndarray) -> dlib.rectangle | None:
        """Largest face's box in full-resolution coordinates, or None."""
        h, w = image.shape[:2]
        scale = min(1.0, DETECT_MAX_SIDE / max(h, w))
        small = image if scale == 1.0 else _resize(image, scale)
        upsample = 1 if max(small.shape[:2]) < 400 else 0  # small faces need one pyramid level up
        boxes = self.detector(np.ascontiguousarray(small), upsample)
        if not boxes:
            return None
        box = max(boxes, key=lambda b: b.width() * b.height())
        return dlib.rectangle(int(box.left() / scale), int(box.top() / scale), int(box.right() / scale), int(box.bottom() / scale))

    def landmarks(self, image: np.ndarray, box: dlib.rectangle | None = None) -> np.ndarray | None:
        """(68, 2) float32 (x, y) of the largest face, or None when there is no face."""
        box = box or self.detect(image)
        if box is None:
            return None
        shape = self.predictor(np.ascontiguousarray(image), box)
        return np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float32)

    def embedding(self, image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        """(128,) face descriptor; distance < 0.6 means the same person (dlib's threshold)."""
        xs, ys = landmarks[:, 0], landmarks[:, 1]
        box = dlib.rectangle(int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()))
        shape = dlib.full_object_detection(box, [dlib.point(int(round(x)), int(round(y))) for x, y in landmarks])
        return np.array(self.encoder.compute_face_descriptor(np.ascontiguousarray(image), shape), dtype=np.float32)


def _resize(image: np.ndarray, scale: float) -> np.ndarray:
    import cv2

    return cv2.resize(image, (max(1, int(image.shape[1] * scale)), max(1, int(image.shape[0] * scale))), interpolation=cv2.INTER_AREA)


@lru_cache(maxsize=1)
def default_analyzer() -> FaceAnalyzer:
    """One analyzer per process (the models take ~100 MB and a second to load)."""
    return FaceAnalyzer()
