"""Per-frame mouth-region inputs of the sync measure: grey mouth crops in the face's own frame.

A crop is a similarity warp that puts the mouth centre in the middle and scales the inter-ocular distance
(IOD) to a fixed number of pixels, rotated so the eye line is level; its pixels then move with the lips,
not with the head. The IOD and the roll are smoothed over a few frames (landmark jitter would otherwise
shake the crop and read as mouth motion).
"""

from __future__ import annotations

import cv2
import numpy as np
import scipy.ndimage

MOUTH_CROP_HW = (32, 48)  # px (height, width) of one mouth crop
CROP_IOD_PX = 40.0  # px the inter-ocular distance maps to: 48 px wide covers 1.2 IOD, the mouth plus its corners
MOUTH_BELOW_CENTRE = 0.05  # IOD the crop centre sits below the lips' centre (the jaw moves more than the nose)
SMOOTH_FRAMES = 5  # median window of the crop's scale, roll and centre


def _fill_rows(x: np.ndarray) -> np.ndarray:
    """Rows with NaN replaced by linear interpolation over time (edges held)."""
    ok = np.isfinite(x).all(axis=tuple(range(1, x.ndim)))
    if ok.all() or not ok.any():
        return x
    idx = np.arange(len(x))
    flat = x.reshape(len(x), -1)
    out = np.stack([np.interp(idx, idx[ok], flat[ok, j]) for j in range(flat.shape[1])], axis=1)
    return out.reshape(x.shape)


def crop_transforms(landmarks: np.ndarray) -> np.ndarray:
    """(F, 2, 3) affine maps from image pixels to mouth-crop pixels; frames without a face borrow their
    neighbours' (landmarks (F, 68, 2), NaN rows where no face)."""
    pts = _fill_rows(np.asarray(landmarks, np.float64))
    left, right = pts[:, 36:42].mean(1), pts[:, 42:48].mean(1)
    eye = right - left
    iod = scipy.ndimage.median_filter(np.linalg.norm(eye, axis=1), SMOOTH_FRAMES, mode="nearest")
    roll = scipy.ndimage.median_filter(np.arctan2(eye[:, 1], eye[:, 0]), SMOOTH_FRAMES, mode="nearest")
    centre = pts[:, 48:68].mean(1)
    centre = np.stack([scipy.ndimage.median_filter(centre[:, j], SMOOTH_FRAMES, mode="nearest") for j in range(2)], 1)
    down = np.stack([-np.sin(roll), np.cos(roll)], 1)  # the face's "down" direction in the image
    centre = centre + MOUTH_BELOW_CENTRE * iod[:, None] * down
    scale = CROP_IOD_PX / np.maximum(iod, 1e-6)
    cos, sin = scale * np.cos(roll), scale * np.sin(roll)
    h, w = MOUTH_CROP_HW
    # rotate by -roll and scale about the centre, then move the centre to the crop's middle
    M = np.zeros((len(pts), 2, 3))
    M[:, 0, 0], M[:, 0, 1], M[:, 1, 0], M[:, 1, 1] = cos, sin, -sin, cos
    M[:, 0, 2] = (w - 1) / 2 - (cos * centre[:, 0] + sin * centre[:, 1])
    M[:, 1, 2] = (h - 1) / 2 - (-sin * centre[:, 0] + cos * centre[:, 1])
    return M


def mouth_crop(gray: np.ndarray, M: np.ndarray) -> np.ndarray:
    """(h, w) uint8 mouth crop of a grey frame under one `crop_transforms` map (area-averaged first when
    the face is much larger than the crop, so the shrink does not alias)."""
    scale = float(np.sqrt(abs(np.linalg.det(M[:, :2]))))
    if scale < 0.5:
        factor = 2 * scale
        small = cv2.resize(gray, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA)
        fx, fy = small.shape[1] / gray.shape[1], small.shape[0] / gray.shape[0]
        to_source = np.array([[1 / fx, 0, 0.5 / fx - 0.5], [0, 1 / fy, 0.5 / fy - 0.5], [0, 0, 1]])
        gray, M = small, M @ to_source
    h, w = MOUTH_CROP_HW
    return cv2.warpAffine(gray, M, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def mouth_crops(frames: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """(F, h, w) uint8 grey mouth crops of (F, H, W, 3) RGB frames (or (F, H, W) grey)."""
    transforms = crop_transforms(landmarks)
    out = np.empty((len(frames), *MOUTH_CROP_HW), np.uint8)
    for i, frame in enumerate(frames):
        gray = frame if frame.ndim == 2 else cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
        out[i] = mouth_crop(gray, transforms[i])
    return out
