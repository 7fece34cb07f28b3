"""faces/ on real portraits and the real talking video: landmarks, alignment, pose, eyes, mouth, identity."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from faces import (NoFaceError, align_face, default_analyzer, eye_openness, head_pose, inter_ocular,
                   mouth_opening)
from media import load_image, read_video


@pytest.fixture(scope="module")
def analyzer():
    return default_analyzer()


@pytest.mark.parametrize("name", ["obama.jpg", "obama2.jpg", "biden.jpg"])
def test_real_portraits_give_68_landmarks_and_a_canonical_crop(shared_media, analyzer, name):
    image = load_image(shared_media / "portraits" / name)
    points = analyzer.landmarks(image)
    assert points.shape == (68, 2)
    assert points[36:42, 0].mean() < points[42:48, 0].mean() < image.shape[1]  # image-left eye first
    aligned = align_face(image, 256)
    assert aligned.image.shape == (256, 256, 3) and aligned.image.dtype == np.uint8
    eyes_y = aligned.landmarks[36:48, 1].mean() / 256
    assert 0.35 < eyes_y < 0.5  # the template's eye line, with margin above for hair
    assert 0.2 * 256 < inter_ocular(aligned.landmarks) < 0.35 * 256


def test_astronaut_is_a_face_and_a_blank_image_is_not(astronaut_png, analyzer):
    assert analyzer.landmarks(load_image(astronaut_png)) is not None
    with pytest.raises(NoFaceError, match="no face found"):
        align_face(np.full((256, 256, 3), 200, np.uint8), 128)
    assert analyzer.landmarks(np.zeros((128, 128, 3), np.uint8)) is None


def test_embeddings_separate_people(shared_media, analyzer):
    def embed(name):
        image = load_image(shared_media / "portraits" / name)
        return analyzer.embedding(image, analyzer.landmarks(image))

    obama, obama2, biden = embed("obama.jpg"), embed("obama2.jpg"), embed("biden.jpg")
    assert obama.shape == (128,)
    assert np.linalg.norm(obama - obama2) < 0.6 < np.linalg.norm(obama - biden)


def test_yaw_on_real_talking_video_agrees_with_the_nose_position(shared_media, analyzer):
    clip = read_video(shared_media / "video" / "talking_512px_8s.mp4", max_frames=160)
    points = [analyzer.landmarks(f) for f in clip.frames[::2]]
    poses = np.array([head_pose(p, clip.frames[0].shape) for p in points])
    assert np.all(np.abs(poses) < 45)
    # an independent cue: where the nose tip sits between the cheek contour points (0.5 = frontal)
    nose = np.array([(p[30, 0] - p[1, 0]) / (p[15, 0] - p[1, 0]) for p in points])
    assert np.corrcoef(poses[:, 0], nose)[0, 1] > 0.9  # iterative PnP flipped +-30 degrees on frontal frames here
    turned = np.abs(nose - 0.5) > 0.05
    assert np.mean(np.sign(poses[turned, 0]) == np.sign(nose[turned] - 0.5)) > 0.95
    # around frame 35 the speaker turns her head toward image left: yaw < 0 by the documented convention
    assert poses[35 // 2, 0] < -10


def test_mirroring_a_face_flips_yaw_and_roll(shared_media, analyzer):
    image = load_image(shared_media / "portraits" / "obama.jpg")
    yaw, _, roll = head_pose(analyzer.landmarks(image), image.shape)
    mirrored = np.ascontiguousarray(image[:, ::-1])
    m_yaw, _, m_roll = head_pose(analyzer.landmarks(mirrored), image.shape)
    assert m_yaw == pytest.approx(-yaw, abs=3) and m_roll == pytest.approx(-roll, abs=2)


def test_eye_and_mouth_measures_follow_the_landmarks(shared_media, analyzer):
    image = load_image(shared_media / "portraits" / "obama.jpg")
    points = analyzer.landmarks(image).astype(np.float64)
    assert 0.5 < eye_openness(points) <= 1.0
    closed = points.copy()
    for upper, lower in ((37, 41), (38, 40), (43, 47), (44, 46)):
        closed[[upper, lower], 1] = points[[upper, lower], 1].mean()
    assert eye_openness(closed) == 0.0
    opened = points.copy()
    opened[65:68, 1] += 0.3 * inter_ocular(points)  # drop the inner lower lip
    assert mouth_opening(opened) > mouth_opening(points) + 0.25


def projected_face(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """Landmarks of the generic 3-D face turned by (yaw, pitch, roll) in the documented convention,
    projected orthographically (only the six pose points are filled)."""
    import math

    from faces.geometry import MODEL_POINTS, PNP_INDICES

    y, p, r = map(math.radians, (yaw, pitch, roll))
    # x right, y down, z away from the camera. yaw > 0: the nose (z = 0, in front of the eyes) moves right;
    # pitch > 0: the face tilts down, the forehead comes forward (its z falls) and the nose moves down;
    # roll > 0: clockwise in the image (y down)
    Ry = np.array([[math.cos(y), 0, -math.sin(y)], [0, 1, 0], [math.sin(y), 0, math.cos(y)]])
    Rx = np.array([[1, 0, 0], [0, math.cos(p), -math.sin(p)], [0, math.sin(p), math.cos(p)]])
    Rz = np.array([[math.cos(r), -math.sin(r), 0], [math.sin(r), math.cos(r), 0], [0, 0, 1]])
    points = (Rz @ Ry @ Rx @ MODEL_POINTS.T).T
    landmarks = np.zeros((68, 2))
    landmarks[PNP_INDICES] = points[:, :2] * 2 + 256
    return landmarks


@pytest.mark.parametrize("angles", [(20, 0, 0), (-15, 0, 0), (0, 20, 0), (0, -15, 0), (0, 0, 20), (10, 10, -10)])
def test_head_pose_signs_follow_the_documented_convention(angles):
    measured = head_pose(projected_face(*angles), (512, 512))
    assert np.allclose(measured, angles, atol=1.5), (measured, angles)
    if angles[1] > 0:  # face tilted down: the nose tip drops away from the eye line
        level = projected_face(0, 0, 0)
        tilted = projected_face(*angles)
        assert (tilted[30, 1] - tilted[[36, 45], 1].mean()) > (level[30, 1] - level[[36, 45], 1].mean())


@pytest.mark.parametrize("name", ["obama.jpg", "obama2.jpg", "biden.jpg"])
def test_the_models_face_regions_hold_the_eyes_and_the_mouth_of_aligned_real_faces(shared_media, analyzer, name):
    """model.face_regions (the cells and pixels the eye and mouth losses weight) copies faces/align.py's template."""
    from model.face_regions import EYES_REGION, MOUTH_REGION

    aligned = align_face(load_image(shared_media / "portraits" / name), 128)
    marks = aligned.landmarks / 128

    def inside(points, region):
        x0, y0, x1, y1 = region
        return (points[:, 0] > x0) & (points[:, 0] < x1) & (points[:, 1] > y0) & (points[:, 1] < y1)

    lips_and_chin = marks[[*range(48, 68), 6, 7, 8, 9, 10]]
    eyes = marks[36:48]
    assert np.all(inside(lips_and_chin, MOUTH_REGION)) and not np.any(inside(eyes, MOUTH_REGION))
    assert np.all(inside(eyes, EYES_REGION)) and not np.any(inside(lips_and_chin, EYES_REGION))
    # the synthetic data turns heads by up to 25 deg: the eyes keep a margin to the region's sides
    assert eyes[:, 0].min() - EYES_REGION[0] > 0.04 and EYES_REGION[2] - eyes[:, 0].max() > 0.04


def supersampled_crop(image: np.ndarray, transform: np.ndarray, size: int, k: int = 8) -> np.ndarray:
    """The crop `transform` maps out, antialiased the slow way: warped at k x the size, then area-averaged down."""
    M = transform.astype(np.float64) * k
    M[:, 2] += (k - 1) / 2  # output pixel i covers big pixels k*i .. k*i + k-1, centred at k*(i + 0.5) - 0.5
    big = cv2.warpAffine(image, M, (size * k, size * k), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return cv2.resize(big, (size, size), interpolation=cv2.INTER_AREA)


def detail(image: np.ndarray) -> float:
    """High-frequency energy: variance of the Laplacian of the grey image."""
    return float(cv2.Laplacian(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float64), cv2.CV_64F).var())


@pytest.mark.parametrize("name", ["obama.jpg", "biden.jpg", "astronaut x8"])
def test_a_large_portrait_aligns_to_a_small_crop_without_aliasing(shared_media, analyzer, name):
    """Regression: warpAffine shrank a large photo straight to the crop (INTER_AREA is not supported there and
    falls back to bilinear, which reads 2x2 pixels), so a 0.1-0.3x shrink skipped most pixels and aliased."""
    if name == "astronaut x8":
        from skimage import data

        image = cv2.resize(data.astronaut(), None, fx=8, fy=8, interpolation=cv2.INTER_CUBIC)  # 4096 px
    else:
        image = load_image(shared_media / "portraits" / name)
    aligned = align_face(image, 128, analyzer)
    assert np.sqrt(np.linalg.det(aligned.transform[:, :2])) < 0.35  # a shrink by 3x or more
    reference = supersampled_crop(image, aligned.transform, 128)
    assert np.abs(aligned.image.astype(np.float64) - reference).mean() < 1.2  # aliased: 1.4-2.8 grey levels
    assert 0.7 < detail(aligned.image) / detail(reference) < 1.4  # aliased: 1.6-2.4x the detail
    found = analyzer.landmarks(aligned.image)
    assert found is not None and np.linalg.norm(found - aligned.landmarks, axis=1).mean() < 3  # px at 128
