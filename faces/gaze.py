"""Gaze from the iris's position inside each eye's landmark contour (no learned weights).

The iris is the dark blob inside the eye: the darkness-weighted centroid of the pixels inside the eye
polygon (landmarks 36-41 and 42-47), counting only those darker than the polygon's IRIS_PERCENTILE-th
percentile, on a patch upsampled UPSAMPLE times so that a shift of a fraction of a pixel still moves it.
Its offset from the polygon's centre, over the eye's width (x) and height (y), is converted to the
gaze controls' units, which the puppet renderer defines: gaze_x = 1 shifts the iris by GAZE_SHIFT of the
eye width, gaze_y = 1 by 2 x GAZE_SHIFT of the eye height.

The absolute value depends on the face (lashes, lid shadows, a nose shadow in the inner corner), so
labels are taken relative to a reference frame of the same face (training/prepare.py: a clip's first
frame), as the puppet's gaze is relative to its portrait's own.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

GAZE_SHIFT = 0.22  # iris travel at |gaze| = 1, fraction of the eye width (x) / half the eye height (y)
IRIS_PERCENTILE = 35.0  # pixels darker than this percentile of the eye count as iris
UPSAMPLE = 4
EYES = (slice(36, 42), slice(42, 48))  # image-left eye, image-right eye in dlib's 68 points


def iris_offset(gray: np.ndarray, eye: np.ndarray) -> tuple[float, float] | None:
    """Iris centroid minus the eye polygon's centre, over (eye width, eye height); None if not measurable.

    gray (H, W) uint8/float; eye (6, 2) landmark x, y in pixels.
    """
    h, w = gray.shape
    x0, y0 = np.maximum(np.floor(eye.min(0)).astype(int) - 1, 0)
    x1, y1 = np.minimum(np.ceil(eye.max(0)).astype(int) + 2, (w, h))
    if x1 - x0 < 3 or y1 - y0 < 2:
        return None
    patch = cv2.resize(gray[y0:y1, x0:x1].astype(np.float32), None, fx=UPSAMPLE, fy=UPSAMPLE,
                       interpolation=cv2.INTER_CUBIC)
    # upsampled pixel i covers original coordinate (i + 0.5) / UPSAMPLE - 0.5
    polygon = np.round(((eye - (x0, y0)) + 0.5) * UPSAMPLE - 0.5).astype(np.int32)
    mask = np.zeros(patch.shape, np.uint8)
    cv2.fillPoly(mask, [polygon], 1)
    inside = mask.astype(bool)
    if inside.sum() < 4 * UPSAMPLE:
        return None
    cut = np.percentile(patch[inside], IRIS_PERCENTILE)
    weights = np.where(inside, np.clip(cut - patch, 0.0, None), 0.0)
    if weights.sum() <= 0:
        return None
    ys, xs = np.indices(patch.shape)
    cx = (weights * xs).sum() / weights.sum() / UPSAMPLE + x0 + (0.5 / UPSAMPLE - 0.5)
    cy = (weights * ys).sum() / weights.sum() / UPSAMPLE + y0 + (0.5 / UPSAMPLE - 0.5)
    centre = eye.mean(0)
    width = float(np.linalg.norm(eye[3] - eye[0]))
    height = float(np.ptp(eye[:, 1]))
    if width < 1e-6 or height < 1e-6:
        return None
    return (cx - centre[0]) / width, (cy - centre[1]) / height


def gaze(image: np.ndarray, landmarks: np.ndarray) -> tuple[float, float]:
    """(gaze_x, gaze_y) of a face in the controls' units, averaged over both eyes; NaN if not measurable
    (closed eyes, a face too small). image (H, W, 3) RGB uint8; landmarks (68, 2)."""
    gray = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)
    offsets = [o for o in (iris_offset(gray, landmarks[e].astype(np.float64)) for e in EYES) if o is not None]
    if not offsets:
        return math.nan, math.nan
    dx, dy = np.mean(offsets, axis=0)
    return float(dx / GAZE_SHIFT), float(dy / (2 * GAZE_SHIFT))
