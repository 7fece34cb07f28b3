"""compute_video_metrics on videos made from real portraits: identity, commanded yaw, errors, reference."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from faces import align_face
from media import encode_mp4, load_image
from metrics import compute_video_metrics
from metrics.schema import METRIC_COLUMNS
from metrics.video import MetricsInputError, count_blinks, landmark_jitter, track_landmarks

FPS = 25.0
SIZE = 256


def turn_head(image: np.ndarray, yaw_deg: float, centre_x: float, radius: float) -> np.ndarray:
    """The image with the head, modelled as a vertical cylinder of `radius` px around `centre_x`, turned by
    `yaw_deg` (> 0: the nose moves toward image right); outside the cylinder pixels stay put."""
    h, w = image.shape[:2]
    xs = np.arange(w, dtype=np.float64)
    u = np.clip((xs - centre_x) / radius, -1.0, 1.0)
    phi = np.arcsin(u) - math.radians(yaw_deg)  # source angle seen at each destination column
    src_x = np.where(np.abs(xs - centre_x) < radius, centre_x + radius * np.sin(np.clip(phi, -math.pi / 2, math.pi / 2)), xs)
    map_x = np.repeat(src_x[None, :], h, axis=0).astype(np.float32)
    map_y = np.repeat(np.arange(h, dtype=np.float32)[:, None], w, axis=1)
    return cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


@pytest.fixture(scope="module")
def obama_video(shared_media, tmp_path_factory):
    face = align_face(load_image(shared_media / "portraits" / "obama.jpg"), SIZE).image
    path = tmp_path_factory.mktemp("videos") / "obama.mp4"
    encode_mp4(path, [face] * 25, FPS, None, 16000)
    return path


def test_same_person_scores_under_0_6_and_another_person_over_it(obama_video, shared_media):
    same = compute_video_metrics(obama_video, portrait_path=shared_media / "portraits" / "obama2.jpg")
    other = compute_video_metrics(obama_video, portrait_path=shared_media / "portraits" / "biden.jpg")
    assert same["identity_distance_mean"] < 0.6 and same["identity_distance_max"] < 0.6
    assert other["identity_distance_mean"] > 0.6
    assert same["identity_drift"] < 0.1  # a still face does not drift
    assert set(same) == set(METRIC_COLUMNS)
    assert same["sync_offset_frames"] is None  # no audio track: sync not measurable, not invented


def test_commanded_yaw_track_is_recovered(shared_media, tmp_path):
    aligned = align_face(load_image(shared_media / "portraits" / "obama.jpg"), SIZE)
    centre_x = float(aligned.landmarks[27:31, 0].mean())
    radius = 1.1 * float(np.ptp(aligned.landmarks[0:17, 0])) / 2
    yaw = 20.0 * np.sin(np.linspace(0, 2 * np.pi, 50))  # degrees, two seconds
    frames = [turn_head(aligned.image, y, centre_x, radius) for y in yaw]
    path = tmp_path / "yaw.mp4"
    encode_mp4(path, frames, FPS, None, 16000)
    result = compute_video_metrics(path, controls={"yaw": yaw, "blink": np.full(50, np.nan)})
    assert result["yaw_corr"] >= 0.9, result
    assert result["yaw_range_deg"] > 10
    assert result["blink_corr"] is None and result["blink_mae"] is None  # not commanded: not scored


def test_blank_video_has_no_face_metrics_and_a_faceless_portrait_is_an_error(tmp_path, shared_media):
    blank = tmp_path / "blank.mp4"
    encode_mp4(blank, [np.full((SIZE, SIZE, 3), 128, np.uint8)] * 10, FPS, None, 16000)
    result = compute_video_metrics(blank)
    assert result["face_detected_ratio"] == 0.0
    assert result["yaw_range_deg"] is None and result["blinks_per_min"] is None
    assert result["background_flicker"] == pytest.approx(0.0, abs=0.5)
    faceless = tmp_path / "grey.png"
    cv2.imwrite(str(faceless), np.full((64, 64, 3), 128, np.uint8))
    with pytest.raises(MetricsInputError, match="grey.png: no face found"):
        compute_video_metrics(blank, portrait_path=faceless)
    with pytest.raises(MetricsInputError, match="missing.mp4"):
        compute_video_metrics(tmp_path / "missing.mp4")


def test_reference_metrics_of_a_video_against_itself_and_a_blurred_copy(obama_video, tmp_path):
    same = compute_video_metrics(obama_video, reference_path=obama_video)
    assert same["ref_psnr"] >= 60 and same["ref_ssim"] > 0.99 and same["ref_lmd"] < 0.5
    from media import read_video

    blurred = tmp_path / "blurred.mp4"
    encode_mp4(blurred, [cv2.GaussianBlur(f, (9, 9), 3) for f in read_video(obama_video).frames], FPS, None, 16000)
    worse = compute_video_metrics(blurred, reference_path=obama_video)
    assert worse["ref_psnr"] < same["ref_psnr"] and worse["ref_ssim"] < same["ref_ssim"]
    assert worse["sharpness"] < same["sharpness"]
    assert "no weights configured" in same["learned_metrics_reason"] and same["lse_c"] is None


def test_blinks_are_dips_from_open_to_closed():
    openness = np.array([1, 1, 0.2, 0.1, 1, 1, 0.3, 0.9, 0.3, 1, np.nan, 0.1, 1.0])
    assert count_blinks(openness, 0.45, 0.7) == 4  # 0.3 after 0.9 counts; NaN frames are skipped
    assert count_blinks(np.array([0.2, 0.2, 1.0]), 0.45, 0.7) == 0  # starting closed is not a blink


@pytest.fixture(scope="module")
def talking_landmarks(shared_media) -> np.ndarray:
    """(100, 68, 2) landmarks tracked on the real talking video (a face in every frame)."""
    from media import read_video

    landmarks = track_landmarks(read_video(shared_media / "video" / "talking_512px_8s.mp4", max_frames=100).frames)
    assert np.isfinite(landmarks).all()
    return landmarks


def test_landmark_jitter_never_differences_across_frames_without_a_face(talking_landmarks):
    """Regression: jitter took second differences of the face frames only, so with the face lost the frames
    either side of a gap were differenced as neighbours and a steady pan read as jitter."""
    step = np.array([2.0, 1.0], np.float32)  # px per frame: the head drifting steadily
    panned = talking_landmarks + step * np.arange(100, dtype=np.float32)[:, None, None]  # (F, 68, 2)
    full = landmark_jitter(panned)
    assert full == pytest.approx(landmark_jitter(talking_landmarks), rel=1e-3)  # a steady pan is not jitter
    lost = panned.copy()
    lost[3::4] = np.nan  # the face lost in every fourth frame
    assert landmark_jitter(lost) == pytest.approx(full, rel=0.05)  # the remaining runs measure the same face
    lost[2::3] = np.nan  # never three face frames in a row: no second difference to take
    assert landmark_jitter(lost) is None
    assert landmark_jitter(np.full((10, 68, 2), np.nan, np.float32)) is None


def small_onnx_embedder(path) -> None:
    """A fixed random conv net with the ArcFace ONNX interface (1x3x112x112 -> one embedding): it proves the
    loader, alignment and cosine plumbing, not ArcFace's accuracy (no ArcFace weights exist offline here)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = np.random.default_rng(0).standard_normal((16, 3, 8, 8)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "w"], ["features"], strides=[8, 8]),
         helper.make_node("Flatten", ["features"], ["embedding"])],
        "embedder", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 112, 112])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, [1, 16 * 14 * 14])],
        [numpy_helper.from_array(weights, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))


def test_arcface_csim_runs_from_configured_onnx_weights(obama_video, shared_media, tmp_path, monkeypatch):
    weights = tmp_path / "arcface.onnx"
    small_onnx_embedder(weights)
    monkeypatch.setenv("EARTALK_ARCFACE_WEIGHTS", str(weights))
    same = compute_video_metrics(obama_video, portrait_path=shared_media / "portraits" / "obama.jpg")
    other = compute_video_metrics(obama_video, portrait_path=shared_media / "portraits" / "biden.jpg")
    assert same["csim_arcface"] > 0.9 and other["csim_arcface"] < same["csim_arcface"]
    assert "arcface" not in same["learned_metrics_reason"] and same["lse_c"] is None
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"not a network")
    monkeypatch.setenv("EARTALK_ARCFACE_WEIGHTS", str(corrupt))
    broken = compute_video_metrics(obama_video, portrait_path=shared_media / "portraits" / "obama.jpg")
    assert broken["csim_arcface"] is None and "arcface: cannot run" in broken["learned_metrics_reason"]


def test_syncnet_lse_runs_from_a_configured_state_dict(shared_media, tmp_path, monkeypatch):
    """Random weights in the published layout prove loading, MFCC, crops and the LSE protocol run; the
    published syncnet_v2.model cannot be downloaded here, so its values are not checked."""
    import torch

    from media import read_video
    from metrics.syncnet import SyncNet, mfcc

    torch.manual_seed(0)
    weights = tmp_path / "syncnet_v2.model"
    torch.save(SyncNet().state_dict(), weights)
    clip = read_video(shared_media / "video" / "talking_512px_8s.mp4", max_frames=20)
    short = tmp_path / "short.mp4"
    encode_mp4(short, clip.frames, clip.fps, clip.audio[: 20 * 640], 16000)
    monkeypatch.setenv("EARTALK_SYNCNET_WEIGHTS", str(weights))
    result = compute_video_metrics(short)
    assert result["lse_d"] > 0 and result["lse_c"] >= 0, result["learned_metrics_reason"]
    assert "syncnet" not in result["learned_metrics_reason"]
    assert mfcc(clip.audio[:16000]).shape == (13, 99)  # 100 Hz (python_speech_features framing: 1 + ceil((N - 400) / 160))
    weights.write_bytes(b"junk")
    from metrics.syncnet import load_syncnet

    load_syncnet.cache_clear()
    broken = compute_video_metrics(short)
    assert broken["lse_c"] is None and "cannot load SyncNet weights" in broken["learned_metrics_reason"]
