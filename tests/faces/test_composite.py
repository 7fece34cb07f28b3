"""faces.composite on real portraits with real speech rendered by the shipped checkpoint: output sizes,
untouched pixels outside the face (also after H.264), the mouth moving, the seam under a yaw sweep and
a hard paste failing the same seam check."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from faces import align_face
from faces.composite import (Compositor, face_mask, face_upscaled, fit_portrait, output_size, plan_composite,
                             psnr_outside, seam_figure)
from media import Mp4Writer, load_audio, load_image, read_video
from pipelines.controls import parse_control_track

FPS = 25.0
SEAM_GOAL = 1.2
MIN_PSNR = 40.0  # dB (luma), outside the blend region after encoding


@pytest.fixture(scope="module")
def generator():
    from model import DEFAULT_CHECKPOINT, load_checkpoint

    return load_checkpoint(DEFAULT_CHECKPOINT).eval()


@pytest.fixture(scope="module")
def obama(shared_media) -> np.ndarray:
    return load_image(shared_media / "portraits" / "obama.jpg")


@pytest.fixture(scope="module")
def speech(shared_media) -> np.ndarray:
    return load_audio(shared_media / "speech" / "english.wav")


def render(generator, image: np.ndarray, audio: np.ndarray, controls: dict | None = None):
    """(aligned face, (F, S, S, 3) uint8 frames) of `image` speaking `audio` with the shipped checkpoint."""
    import torch

    from model import RenderRequest

    size = generator.config.image_size
    aligned = align_face(image, size)
    portrait = torch.from_numpy(aligned.image.copy()).permute(2, 0, 1).float() / 255.0
    tensors = {k: torch.from_numpy(np.asarray(v, np.float32)) for k, v in (controls or {}).items()} or None
    request = RenderRequest(portrait, torch.from_numpy(audio.astype(np.float32)), FPS, tensors, 0)
    count = generator.num_frames(audio.size, FPS)
    frames = []
    for batch in generator.stream([request]):  # (1, 3, S, S) per step
        frames.append((batch[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
        if len(frames) == count:
            break
    return aligned, np.stack(frames)


def encode_and_read(path, frames: list[np.ndarray], audio: np.ndarray) -> np.ndarray:
    writer = Mp4Writer(path, FPS)
    for frame in frames:
        writer.add(frame)
    writer.close(audio)
    return read_video(path).frames


def far_from_face(alpha: np.ndarray, margin: int = 32) -> np.ndarray:
    return cv2.dilate((alpha > 0).astype(np.uint8), np.ones((2 * margin + 1, 2 * margin + 1), np.uint8)) == 0


# ---------------------------------------------------------------- sizes


def test_output_size_keeps_the_aspect_ratio_with_even_sides_and_never_enlarges():
    assert output_size(910, 1137) == (820, 1024)  # obama.jpg, portrait
    assert output_size(2000, 1137, 1024) == (1024, 582)  # landscape
    assert output_size(155, 193) == (154, 192)  # small: only the odd last column/row goes
    assert output_size(4000, 3000, 640) == (640, 480)
    for w, h in [(910, 1137), (2001, 999), (333, 777), (4095, 17)]:
        W, H = output_size(w, h, 512)
        assert W % 2 == 0 and H % 2 == 0 and max(W, H) <= 512
        assert abs(W / H - w / h) < 2.5 / min(W, H) * (w / h)  # aspect within rounding to even sides
    with pytest.raises(ValueError, match="max_side"):
        output_size(910, 1137, 0)
    with pytest.raises(ValueError, match="max_side"):
        output_size(910, 1137, 1024.0)


def test_a_portrait_under_max_side_keeps_its_own_pixels(obama):
    small = obama[:301, :201]
    frame, to_source = fit_portrait(small, 1024)
    assert frame.shape == (300, 200, 3)
    np.testing.assert_array_equal(frame, small[:300, :200])
    np.testing.assert_array_equal(to_source, np.eye(3))
    frame, to_source = fit_portrait(obama, 512)
    assert frame.shape == (512, 410, 3)
    np.testing.assert_array_equal(frame, cv2.resize(obama, (410, 512), interpolation=cv2.INTER_AREA))
    # the fit's transform maps the output's centre pixel to the portrait's centre
    centre = to_source @ np.array([(410 - 1) / 2, (512 - 1) / 2, 1.0])
    np.testing.assert_allclose(centre[:2], [(910 - 1) / 2, (1137 - 1) / 2], atol=1e-6)


def test_the_mask_covers_the_face_and_nothing_far_from_it(obama):
    aligned = align_face(obama, 128)
    mask = face_mask(aligned.landmarks, 128)
    assert mask.dtype == np.float32 and mask.min() == 0.0 and mask.max() > 0.99
    nose, mouth = aligned.landmarks[30], aligned.landmarks[48:68].mean(0)
    for x, y in (nose, mouth):
        assert mask[int(round(y)), int(round(x))] > 0.99
    assert (mask[:8] == 0).all() and (mask[:, :8] == 0).all() and (mask[:, -8:] == 0).all()  # hair, background


# ---------------------------------------------------------------- real renders


@pytest.fixture(scope="module")
def yaw_sweep(generator, obama, speech, tmp_path_factory):
    """4 s of real speech from obama.jpg under examples/controls_yaw_sweep.csv (yaw +15 to -14 degrees)."""
    audio = speech[: 4 * 16000]
    count = generator.num_frames(audio.size, FPS)
    track = (Path(__file__).resolve().parents[2] / "examples" / "controls_yaw_sweep.csv").read_bytes()
    controls = parse_control_track(track, "controls_yaw_sweep.csv", FPS, count)
    aligned, crops = render(generator, obama, audio, controls)
    compositor = Compositor.for_portrait(obama, aligned, generator.config.image_size)
    frames = [compositor(c) for c in crops]
    folder = tmp_path_factory.mktemp("composite")
    decoded = encode_and_read(folder / "obama.mp4", frames, audio)
    still = encode_and_read(folder / "still.mp4", [compositor.frame] * 10, audio[:16000])  # the portrait alone
    return {"aligned": aligned, "crops": crops, "compositor": compositor, "frames": frames, "decoded": decoded,
            "still": still}


def test_full_frame_video_has_the_portrait_size_and_its_pixels_far_from_the_face(yaw_sweep, obama):
    c, frames, decoded = yaw_sweep["compositor"], yaw_sweep["frames"], yaw_sweep["decoded"]
    assert frames[0].shape == (1024, 820, 3) and decoded.shape[1:] == (1024, 820, 3)
    assert c.face_scale > 2.5  # a 1024 px portrait: the 128 px crop is enlarged about 2.9x
    assert not face_upscaled(yaw_sweep["aligned"])  # ... but the portrait's face has more pixels than the crop
    reference = cv2.resize(obama, (820, 1024), interpolation=cv2.INTER_AREA)
    outside = c.alpha == 0
    assert outside.mean() > 0.8
    for frame in frames:  # before encoding: bit for bit
        np.testing.assert_array_equal(frame[outside], reference[outside])
    psnrs = [psnr_outside(frame, reference, c.alpha) for frame in decoded[::4]]
    assert min(psnrs) >= MIN_PSNR, min(psnrs)
    # in RGB the codec's own loss on the portrait alone (yuv420p, CRF 18) is the limit: compositing adds nothing
    still = psnr_outside(yaw_sweep["still"][5], reference, c.alpha, luma=False)
    assert min(psnr_outside(f, reference, c.alpha, luma=False) for f in decoded[::4]) > still - 0.1


def test_mouth_pixels_change_with_speech_and_far_pixels_do_not(yaw_sweep):
    c, decoded = yaw_sweep["compositor"], yaw_sweep["decoded"].astype(np.float32)
    mouth = c.landmarks_in_frame(yaw_sweep["aligned"].landmarks[48:68])
    (x0, y0), (x1, y1) = np.floor(mouth.min(0)).astype(int), np.ceil(mouth.max(0)).astype(int)
    mouth_motion = decoded[:, y0:y1, x0:x1].std(0).mean()
    far = far_from_face(c.alpha)
    far_motion = decoded.std(0)[far].mean()
    assert mouth_motion > 8.0, mouth_motion  # grey levels of frame-to-frame spread on the lips and teeth
    assert far_motion < 1.0 and mouth_motion > 20 * far_motion, (mouth_motion, far_motion)


def test_the_seam_passes_under_a_yaw_sweep_and_a_hard_paste_fails_it(yaw_sweep):
    c, crops = yaw_sweep["compositor"], yaw_sweep["crops"]
    seams = [seam_figure(frame, c.alpha) for frame in yaw_sweep["decoded"]]
    assert max(seams) <= SEAM_GOAL, max(seams)
    # the same crops pasted with the mask's hard (alpha >= 0.5) region and no colour transfer
    hard = (c.alpha >= 0.5)[..., None]
    x0, y0, x1, y1 = c.box
    pasted = []
    for crop in crops[::4]:
        out = c.frame.copy()
        face = c.warp(crop).clip(0, 255).round().astype(np.uint8)
        out[y0:y1, x0:x1] = np.where(hard[y0:y1, x0:x1], face, out[y0:y1, x0:x1])
        pasted.append(seam_figure(out, hard[..., 0].astype(np.float32)))
    # (a frame whose face sits where the portrait's does can paste invisibly: the check is on most frames)
    assert np.median(pasted) > 1.5 * SEAM_GOAL, pasted
    # the whole crop square pasted (the naive paste-back) reads far higher still
    H, W = c.frame.shape[:2]
    square = cv2.warpAffine(np.ones((128, 128), np.float32), c.to_crop, (W, H), flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP)
    full = cv2.warpAffine(crops[40], c.to_crop, (W, H), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
    assert seam_figure(np.where(square[..., None] > 0, full, c.frame), square) > 4 * SEAM_GOAL


def test_colour_transfer_is_fitted_once_and_kept(yaw_sweep):
    c = yaw_sweep["compositor"]
    fitted = c.transfer
    assert fitted is not None and np.all((fitted.gain >= 0.67) & (fitted.gain <= 1.5))
    c(yaw_sweep["crops"][10])
    assert c.transfer is fitted  # later frames reuse the first frame's fit: no flicker from refitting


def test_a_landscape_canvas_with_the_face_off_centre(generator, obama, speech, tmp_path):
    canvas = np.full((1137, 2000, 3), 90, np.uint8)
    canvas[:, 1000:1910] = obama  # the face sits right of centre
    audio = speech[16000 : 3 * 16000]
    aligned, crops = render(generator, canvas, audio)
    c = Compositor.for_portrait(canvas, aligned, generator.config.image_size)
    frames = [c(crop) for crop in crops]
    decoded = encode_and_read(tmp_path / "landscape.mp4", frames, audio)
    assert decoded.shape[1:] == (582, 1024, 3)
    reference = cv2.resize(canvas, (1024, 582), interpolation=cv2.INTER_AREA)
    assert c.box[0] > 512  # the face's region is in the right half
    np.testing.assert_array_equal(frames[-1][c.alpha == 0], reference[c.alpha == 0])
    assert min(psnr_outside(f, reference, c.alpha) for f in decoded[::5]) >= MIN_PSNR
    assert max(seam_figure(f, c.alpha) for f in decoded[::5]) <= SEAM_GOAL


def test_a_small_image_is_upscaled_and_says_so(generator, obama, speech, tmp_path):
    small = cv2.resize(obama, (181, 226), interpolation=cv2.INTER_AREA)
    audio = speech[: 2 * 16000]
    aligned, crops = render(generator, small, audio)
    assert face_upscaled(aligned)  # the face is about 80 px wide: fewer pixels than the 128 px crop
    c = Compositor.for_portrait(small, aligned, generator.config.image_size)
    assert c.face_scale < 1.0
    frames = [c(crop) for crop in crops]
    decoded = encode_and_read(tmp_path / "small.mp4", frames, audio)
    assert decoded.shape[1:] == (226, 180, 3)  # its own size, the odd column dropped
    np.testing.assert_array_equal(frames[0][c.alpha == 0], small[:226, :180][c.alpha == 0])
    assert min(psnr_outside(f, small[:226, :180], c.alpha, margin=8) for f in decoded) >= MIN_PSNR


def test_a_face_at_the_image_edge_is_composited_without_crashing(obama):
    """The inverse warp reaches outside the image: the part of the crop beyond the edge is simply not drawn."""
    edge = np.ascontiguousarray(obama[40:, 420:])  # the image-left cheek is cut by the image's edge
    aligned = align_face(edge, 128)
    c = Compositor.for_portrait(edge, aligned, 128)
    H, W = c.frame.shape[:2]
    corners = c.landmarks_in_frame(np.array([[0.0, 0.0], [0.0, 127.0]]))
    assert corners[:, 0].min() < 0  # the crop's left side lies outside the frame
    assert c.box[0] == 0 and 0 <= c.box[1] and c.box[2] <= W and c.box[3] <= H
    assert (c.alpha[:, 0] > 0).any()  # the mask itself runs over the edge
    shifted = np.roll(aligned.image, 3, axis=0)  # a "generated" crop that differs from the portrait's
    out = c(shifted)
    assert out.shape == c.frame.shape
    assert np.abs(out.astype(int) - c.frame).max() > 10
    np.testing.assert_array_equal(out[c.alpha == 0], c.frame[c.alpha == 0])


def test_compositor_refuses_a_crop_of_the_wrong_size_and_an_unknown_blend(obama):
    aligned = align_face(obama, 128)
    with pytest.raises(ValueError, match="blend"):
        Compositor.for_portrait(obama, aligned, 128, blend="poisson")
    c = Compositor.for_portrait(obama, aligned, 128, max_side=256)
    with pytest.raises(ValueError, match=r"crop must be \(128, 128, 3\)"):
        c(np.zeros((64, 64, 3), np.uint8))


def test_a_plan_in_plain_columns_rebuilds_the_same_compositor(obama, yaw_sweep):
    """The render pipeline ships the plan through Ray Data as bytes and JSON; the frames must not change."""
    import json

    plan = plan_composite(obama, yaw_sweep["aligned"], 1024)
    assert {type(v) for v in plan.values()} <= {bytes, int, str}
    assert (plan["frame_width"], plan["frame_height"]) == (820, 1024)
    assert json.loads(plan["composite_json"])["face_upscaled"] is False
    rebuilt = Compositor.from_plan(plan, 128)
    for t in (0, 37):
        np.testing.assert_array_equal(rebuilt(yaw_sweep["crops"][t]), yaw_sweep["frames"][t])
