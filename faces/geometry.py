"""Measurements from dlib's 68 landmarks: head pose, eye openness, mouth opening.

Sign conventions (image coordinates, the viewer's left/right), shared with the FCIC controls:
- yaw > 0: the face turns toward image right (the nose moves right);
- pitch > 0: the face tilts down (the nose moves down);
- roll > 0: the face rotates clockwise in the image (its right eye, on image left, rises).
"""

from __future__ import annotations

import math

import numpy as np

# A generic 3-D face (x right, y down, z away from the camera; units ~mm) for the six PnP points below.
MODEL_POINTS = np.array([
    [0.0, 0.0, 0.0],  # 30 nose tip
    [0.0, 63.6, 12.5],  # 8 chin
    [-43.3, -32.7, 26.0],  # 36 image-left eye, outer corner
    [43.3, -32.7, 26.0],  # 45 image-right eye, outer corner
    [-28.9, 28.9, 24.1],  # 48 mouth, image-left corner
    [28.9, 28.9, 24.1],  # 54 mouth, image-right corner
], dtype=np.float64)
PNP_INDICES = [30, 8, 36, 45, 48, 54]

OPEN_EAR = 0.28  # typical eye aspect ratio of an open eye
CLOSED_EAR = 0.08  # ... of a closed one


def inter_ocular(landmarks: np.ndarray) -> float:
    """Distance between the eye centres, the face's scale."""
    return float(np.linalg.norm(landmarks[36:42].mean(0) - landmarks[42:48].mean(0)))


def head_pose(landmarks: np.ndarray, image_shape: tuple[int, ...]) -> tuple[float, float, float]:
    """(yaw, pitch, roll) in degrees from a scaled-orthographic fit of a generic 3-D face.

    A linear least-squares affine camera (2x3) maps the centred model points to the centred landmarks; its
    rows, orthonormalised, give the rotation. Unlike iterative PnP with a long focal length, this has no
    local minima: PnP flipped between +-30 degrees of yaw on frontal frames of real talking video.
    `image_shape` is kept for the signature (orthographic: the crop does not matter).
    """
    model = MODEL_POINTS - MODEL_POINTS.mean(0)
    points = landmarks[PNP_INDICES].astype(np.float64)
    if not np.isfinite(points).all():
        return math.nan, math.nan, math.nan
    points = points - points.mean(0)
    affine = np.linalg.lstsq(model, points, rcond=None)[0].T  # (2, 3): points ~ affine @ model
    r1 = affine[0] / (np.linalg.norm(affine[0]) + 1e-12)
    r2 = affine[1] - r1 * (r1 @ affine[1])
    r2 = r2 / (np.linalg.norm(r2) + 1e-12)
    R = np.stack([r1, r2, np.cross(r1, r2)])
    # R = Rz(roll) @ Ry(yaw) @ Rx(pitch), camera looking along +z with y down
    yaw = math.degrees(math.asin(max(-1.0, min(1.0, -R[2, 0]))))
    pitch = math.degrees(math.atan2(R[2, 1], R[2, 2]))
    roll = math.degrees(math.atan2(R[1, 0], R[0, 0]))
    return -yaw, pitch, roll  # signs: see the module docstring (tests/faces prove them on projected 3-D points)


def eye_aspect_ratio(landmarks: np.ndarray) -> float:
    """Mean eye aspect ratio of both eyes (Soukupova & Cech): lid gap over eye width."""
    def ear(eye: np.ndarray) -> float:
        return float((np.linalg.norm(eye[1] - eye[5]) + np.linalg.norm(eye[2] - eye[4])) / (2 * np.linalg.norm(eye[0] - eye[3]) + 1e-9))

    return (ear(landmarks[36:42]) + ear(landmarks[42:48])) / 2


def eye_openness(landmarks: np.ndarray) -> float:
    """Eye aspect ratio mapped to 0 (closed) .. 1 (open), the unit of the `blink` control."""
    return float(np.clip((eye_aspect_ratio(landmarks) - CLOSED_EAR) / (OPEN_EAR - CLOSED_EAR), 0.0, 1.0))


def mouth_opening(landmarks: np.ndarray) -> float:
    """Inner-lip gap (mean of three vertical distances) over the inter-ocular distance."""
    gap = np.linalg.norm(landmarks[[61, 62, 63]] - landmarks[[67, 66, 65]], axis=1).mean()
    return float(gap / (inter_ocular(landmarks) + 1e-9))
