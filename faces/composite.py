"""The generated face crop put back into the whole portrait, at the portrait's own framing.

Per video, once: the portrait is fitted to the output size (longest side at most `max_side`, even
sides for H.264), the transform `output pixel -> crop pixel` is the alignment's similarity composed
with that fit, and a soft mask is drawn in crop coordinates from the portrait's 68 landmarks: the
convex hull of the jaw line and the eyebrows, the brows raised to take in the forehead and the chin
lowered to leave room for an open mouth's jaw, eroded so the boundary lies on skin rather than on the
face's outline, then Gaussian-feathered. A colour transfer
(mean and spread per Lab channel inside the mask) maps the first generated crop onto the portrait's
colours and is kept for every later frame, so the correction cannot flicker.

Per frame: the colour-corrected crop is warped into the output frame through the inverse alignment
(only over the mask's bounding box, which is clipped to the frame: a face near an edge simply has part
of its mask outside) and alpha-blended into the fitted portrait. Pixels where the mask is zero are the
fitted portrait's own, bit for bit. A Laplacian-pyramid blend is available for comparison
(`blend="pyramid"`); docs/compositing.md has the measurements that made alpha the default.

`seam_figure` measures the result: gradient energy along the mask's boundary over the same figure a few
pixels inside and outside it (about 1 for an invisible seam, far higher for a hard paste).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import cv2
import numpy as np

from .align import MIN_WARP_SCALE, AlignedFace

MAX_SIDE = 1024  # px: default longest side of the output video
BLENDS = ("alpha", "pyramid")
JAW = slice(0, 17)  # dlib 68: jaw line, image-left ear to image-right ear
BROWS = slice(17, 27)
FOREHEAD_LIFT = 0.35  # brows raised by this share of the brow-to-chin height: the hull takes in the forehead
LOWER_JAW = slice(4, 13)  # the jaw points below the mouth corners
JAW_DROP = 0.02  # of the crop side: the lower jaw is lowered by this much, room for the chin of an open mouth
ERODE = 0.04  # of the crop side: the hull shrinks by this much, so the boundary lies on skin inside the outline
FEATHER = 0.035  # of the crop side: Gaussian sigma of the mask's edge
MIN_ALPHA = 1.0 / 255.0  # mask values below this are zero: the pixel stays the portrait's exactly
STD_RATIO = (0.67, 1.5)  # the colour transfer's spread ratio is clipped to this: a bad first frame cannot blow colours up
PYRAMID_LEVELS = 4
SEAM_OFFSET = 4  # px (output): how far inside and outside the mask's boundary `seam_figure` takes its reference outlines


def output_size(width: int, height: int, max_side: int = MAX_SIDE) -> tuple[int, int]:
    """(W, H) of the video for a `width` x `height` portrait: at most `max_side` on the longest side, aspect
    kept, even sides (yuv420p halves the chroma planes). Never enlarges."""
    if not isinstance(max_side, int) or isinstance(max_side, bool) or max_side < 16:
        raise ValueError(f"max_side must be an integer of at least 16 px, got {max_side!r}")
    if width < 2 or height < 2:
        raise ValueError(f"portrait must be at least 2x2, got {width}x{height}")
    scale = min(1.0, max_side / max(width, height))
    if scale == 1.0:
        return width & ~1, height & ~1  # drop the odd last column/row: the pixels stay the portrait's own
    W = max(2, min(max_side, int(round(width * scale / 2)) * 2))
    H = max(2, min(max_side, int(round(height * scale / 2)) * 2))
    return W, H


def fit_portrait(image: np.ndarray, max_side: int = MAX_SIDE) -> tuple[np.ndarray, np.ndarray]:
    """The portrait at its output size and the (3, 3) affine `output pixel -> portrait pixel`."""
    h, w = image.shape[:2]
    W, H = output_size(w, h, max_side)
    if (W, H) == (w & ~1, h & ~1) and max(w, h) <= max_side:
        return np.ascontiguousarray(image[:H, :W]), np.eye(3)
    frame = cv2.resize(image, (W, H), interpolation=cv2.INTER_AREA)
    sx, sy = w / W, h / H
    # pixel centres: x_source = (x_out + 0.5) * sx - 0.5 (cv2.resize's own mapping)
    return frame, np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5], [0, 0, 1]])


def face_mask(landmarks: np.ndarray, size: int) -> np.ndarray:
    """(size, size) float32 in [0, 1]: the feathered face region of a crop with these 68 landmarks."""
    points = np.asarray(landmarks, np.float64)
    jaw, brows = points[JAW].copy(), points[BROWS].copy()
    jaw[LOWER_JAW, 1] += JAW_DROP * size
    lift = FOREHEAD_LIFT * (jaw[8, 1] - brows[:, 1].mean())
    brows[:, 1] -= lift
    hull = cv2.convexHull(np.concatenate([jaw, brows]).astype(np.float32))
    # drawn at 4x with sub-pixel shift, so the hull's edge is not snapped to whole pixels
    hard = np.zeros((size, size), np.uint8)
    cv2.fillConvexPoly(hard, np.round(hull[:, 0] * 16).astype(np.int32), 255, lineType=cv2.LINE_AA, shift=4)
    radius = max(1, int(round(ERODE * size)))
    hard = cv2.erode(hard, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1)))
    soft = cv2.GaussianBlur(hard.astype(np.float32) / 255.0, (0, 0), FEATHER * size)
    soft[soft < MIN_ALPHA] = 0.0
    return soft


@dataclass
class ColourTransfer:
    """Per-channel Lab mean/spread mapping of generated crops onto the portrait's colours."""

    gain: np.ndarray  # (3,) float32
    offset: np.ndarray  # (3,) float32

    @classmethod
    def fit(cls, generated: np.ndarray, reference: np.ndarray, weight: np.ndarray) -> ColourTransfer:
        """Fitted where `weight` (H, W) is high, between a generated crop and the portrait's crop there."""
        w = weight.astype(np.float64)[..., None]
        total = max(w.sum(), 1e-6)
        stats = []
        for image in (generated, reference):
            lab = to_lab(image).astype(np.float64)
            mean = (lab * w).sum((0, 1)) / total
            std = np.sqrt(((lab - mean) ** 2 * w).sum((0, 1)) / total)
            stats.append((mean, std))
        (mg, sg), (mr, sr) = stats
        gain = np.clip(sr / np.maximum(sg, 1e-3), *STD_RATIO)
        return cls(gain.astype(np.float32), (mr - gain * mg).astype(np.float32))

    def __call__(self, crop: np.ndarray) -> np.ndarray:
        lab = to_lab(crop) * self.gain + self.offset
        return from_lab(lab)


def to_lab(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image.astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab)


def from_lab(lab: np.ndarray) -> np.ndarray:
    rgb = cv2.cvtColor(lab.astype(np.float32), cv2.COLOR_Lab2RGB)
    return (rgb * 255.0).clip(0, 255).round().astype(np.uint8)


class Compositor:
    """Blends generated (S, S, 3) crops into one fitted portrait; build once per video, call per frame."""

    def __init__(self, frame: np.ndarray, to_crop: np.ndarray, landmarks: np.ndarray, crop_size: int,
                 blend: str = "alpha", colour: bool = True):
        """`frame` (H, W, 3) uint8: the portrait at the output size; `to_crop` (2, 3): output pixel -> crop
        pixel; `landmarks` (68, 2): the portrait's landmarks in the crop."""
        if blend not in BLENDS:
            raise ValueError(f"blend must be one of {BLENDS}, got {blend!r}")
        self.frame, self.crop_size, self.blend, self.colour = frame, crop_size, blend, colour
        self.to_crop = np.asarray(to_crop, np.float64)[:2]
        self.mask_crop = face_mask(landmarks, crop_size)
        self.transfer: ColourTransfer | None = None
        # output px per crop px: above 1 the crop is enlarged into the frame (softer than the portrait around it)
        self.face_scale = 1.0 / float(np.sqrt(abs(np.linalg.det(self.to_crop[:, :2]))))
        H, W = frame.shape[:2]
        to_output = cv2.invertAffineTransform(self.to_crop)
        ys, xs = np.nonzero(self.mask_crop)
        if len(xs) == 0:
            self.box = (0, 0, 0, 0)
        else:
            corners = np.array([[xs.min(), ys.min()], [xs.max() + 1, ys.min()], [xs.min(), ys.max() + 1],
                                [xs.max() + 1, ys.max() + 1]], np.float64)
            out = corners @ to_output[:, :2].T + to_output[:, 2]
            x0, y0 = np.floor(out.min(0)).astype(int) - 1
            x1, y1 = np.ceil(out.max(0)).astype(int) + 2
            self.box = (max(0, x0), max(0, y0), min(W, x1), min(H, y1))  # clipped: a face at the edge pads nothing
        x0, y0, x1, y1 = self.box
        self.empty = x1 <= x0 or y1 <= y0
        # the box's pixel (x, y) is the output's (x + x0, y + y0)
        self.box_to_crop = self.to_crop @ np.array([[1, 0, x0], [0, 1, y0], [0, 0, 1]], np.float64)
        self.alpha = np.zeros(frame.shape[:2], np.float32)  # the mask in output coordinates (for the measures)
        if not self.empty:
            box_alpha = self.warp(self.mask_crop[..., None].repeat(3, 2), interpolation=cv2.INTER_LINEAR)[..., 0]
            box_alpha[box_alpha < MIN_ALPHA] = 0.0
            self.alpha[y0:y1, x0:x1] = box_alpha
            self.box_alpha = box_alpha[..., None]
            self.box_frame = frame[y0:y1, x0:x1].astype(np.float32)

    @classmethod
    def for_portrait(cls, image: np.ndarray, aligned: AlignedFace, crop_size: int, max_side: int = MAX_SIDE,
                     **kwargs) -> Compositor:
        """From the full portrait and its alignment (`faces.align_face(image, crop_size)`)."""
        frame, to_source = fit_portrait(image, max_side)
        to_crop = np.asarray(aligned.transform, np.float64) @ to_source
        return cls(frame, to_crop, aligned.landmarks, crop_size, **kwargs)

    @classmethod
    def from_plan(cls, plan: dict, crop_size: int, **kwargs) -> Compositor:
        """From the columns `plan_composite` made (e.g. after they travelled through Ray Data)."""
        frame = np.frombuffer(plan["frame_rgb"], np.uint8).reshape(int(plan["frame_height"]), int(plan["frame_width"]), 3)
        geometry = json.loads(plan["composite_json"])
        return cls(frame.copy(), np.array(geometry["to_crop"]), np.array(geometry["landmarks"]), crop_size, **kwargs)

    def warp(self, crop: np.ndarray, interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
        """(S, S, C) crop -> the box's (h, w, C) float32, area-averaged first where the frame shrinks it a lot."""
        x0, y0, x1, y1 = self.box
        M = self.box_to_crop
        image = crop.astype(np.float32)
        if self.face_scale < MIN_WARP_SCALE:  # bilinear reads 2x2 pixels: a strong shrink would alias
            factor = self.face_scale / MIN_WARP_SCALE
            side = max(1, round(self.crop_size * factor))
            image = cv2.resize(image, (side, side), interpolation=cv2.INTER_AREA)
            f = side / self.crop_size
            # crop pixel -> small pixel: x_small = (x + 0.5) * f - 0.5
            M = np.array([[f, 0, 0.5 * f - 0.5], [0, f, 0.5 * f - 0.5]]) @ np.vstack([M, [0, 0, 1]])
        out = cv2.warpAffine(image, M, (x1 - x0, y1 - y0), flags=interpolation | cv2.WARP_INVERSE_MAP,
                             borderMode=cv2.BORDER_REPLICATE)
        return out.reshape(y1 - y0, x1 - x0, -1)

    def fit_colour(self, generated: np.ndarray) -> ColourTransfer:
        """The colour transfer from this generated crop (the video's first) to the portrait inside the mask."""
        reference = cv2.warpAffine(self.frame, self.to_crop, (self.crop_size, self.crop_size),
                                   flags=cv2.INTER_AREA if self.face_scale < 1 else cv2.INTER_LINEAR,
                                   borderMode=cv2.BORDER_REPLICATE)
        self.transfer = ColourTransfer.fit(generated, reference, self.mask_crop)
        return self.transfer

    def __call__(self, crop: np.ndarray) -> np.ndarray:
        """One generated (S, S, 3) uint8 crop -> the (H, W, 3) uint8 output frame."""
        if crop.shape != (self.crop_size, self.crop_size, 3):
            raise ValueError(f"crop must be ({self.crop_size}, {self.crop_size}, 3), got {crop.shape}")
        out = self.frame.copy()
        if self.empty:
            return out
        if self.colour:
            if self.transfer is None:
                self.fit_colour(crop)
            crop = self.transfer(crop)
        face = self.warp(crop)
        if self.blend == "alpha":
            mixed = self.box_frame + self.box_alpha * (face - self.box_frame)
        else:
            mixed = pyramid_blend(self.box_frame, face, self.box_alpha[..., 0])
            mixed = np.where(self.box_alpha > 0, mixed, self.box_frame)  # outside the mask the portrait stays exact
        x0, y0, x1, y1 = self.box
        out[y0:y1, x0:x1] = mixed.clip(0, 255).round().astype(np.uint8)
        return out

    def landmarks_in_frame(self, landmarks: np.ndarray) -> np.ndarray:
        """Crop-coordinate points -> output-frame points."""
        to_output = cv2.invertAffineTransform(self.to_crop)
        return np.asarray(landmarks, np.float64) @ to_output[:, :2].T + to_output[:, 2]


def plan_composite(image: np.ndarray, aligned: AlignedFace, max_side: int = MAX_SIDE) -> dict:
    """What a renderer needs to composite a video of this portrait, as plain columns: the fitted portrait's
    bytes and size, and the geometry (output -> crop transform, crop landmarks) and `face_upscaled` as JSON."""
    frame, to_source = fit_portrait(image, max_side)
    to_crop = (np.asarray(aligned.transform, np.float64) @ to_source)[:2]
    geometry = {"to_crop": to_crop.tolist(), "landmarks": np.asarray(aligned.landmarks, np.float64).tolist(),
                "face_upscaled": face_upscaled(aligned)}
    return {"frame_rgb": frame.tobytes(), "frame_width": int(frame.shape[1]), "frame_height": int(frame.shape[0]),
            "composite_json": json.dumps(geometry)}


def face_upscaled(aligned: AlignedFace) -> bool:
    """True when the portrait's face has fewer pixels than the crop (the alignment enlarged it)."""
    return float(np.sqrt(abs(np.linalg.det(np.asarray(aligned.transform, np.float64)[:, :2])))) > 1.0


def pyramid_blend(base: np.ndarray, face: np.ndarray, alpha: np.ndarray, levels: int = PYRAMID_LEVELS) -> np.ndarray:
    """Laplacian-pyramid blend of two (h, w, 3) float32 images under a (h, w) mask in [0, 1]."""
    levels = max(1, min(levels, int(np.log2(max(2, min(base.shape[:2])))) - 2))
    gb, gf, ga = [base], [face], [alpha]
    for _ in range(levels):
        gb.append(cv2.pyrDown(gb[-1]))
        gf.append(cv2.pyrDown(gf[-1]))
        ga.append(cv2.pyrDown(ga[-1]))
    out = gb[-1] + ga[-1][..., None] * (gf[-1] - gb[-1])
    for i in range(levels - 1, -1, -1):
        size = (gb[i].shape[1], gb[i].shape[0])
        lb = gb[i] - cv2.pyrUp(gb[i + 1], dstsize=size)
        lf = gf[i] - cv2.pyrUp(gf[i + 1], dstsize=size)
        out = cv2.pyrUp(out, dstsize=size) + lb + ga[i][..., None] * (lf - lb)
    return out


# ---------------------------------------------------------------- measures


def _disk(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def _contour(region: np.ndarray) -> np.ndarray:
    """The 2 px wide outline of a boolean region (its morphological gradient): about as wide as the Sobel
    response to a step, so a step's energy is not diluted by flat pixels beside it."""
    return cv2.morphologyEx(region.astype(np.uint8), cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0


def seam_regions(alpha: np.ndarray, offset: int = SEAM_OFFSET) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boolean (H, W) outlines: the mask's half-way contour, and the same contour moved `offset` px inside
    and `offset` px outside it (the mask eroded and dilated)."""
    region = (alpha >= 0.5).astype(np.uint8)
    boundary = _contour(region)
    inside = _contour(cv2.erode(region, _disk(offset)))
    outside = _contour(cv2.dilate(region, _disk(offset)))
    return boundary, inside & ~boundary, outside & ~boundary


def gradient_energy(image: np.ndarray) -> np.ndarray:
    """(H, W) squared luminance gradient (Sobel) of an (H, W, 3) uint8 RGB image."""
    y = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)
    gx = cv2.Sobel(y, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(y, cv2.CV_32F, 0, 1, ksize=3)
    return gx * gx + gy * gy


def seam_figure(image: np.ndarray, alpha: np.ndarray, offset: int = SEAM_OFFSET) -> float:
    """Mean gradient energy along the mask's boundary (its half-way contour) over the mean of the same
    figure along the contours `offset` px inside and outside it: about 1 where the boundary does not show
    (the image is no busier there than beside it), far above 1 at a hard paste's step."""
    boundary, inside, outside = seam_regions(alpha, offset)
    if not boundary.any() or not inside.any() or not outside.any():
        raise ValueError("the mask has no boundary inside the frame to measure")
    energy = gradient_energy(image)
    around = 0.5 * (energy[inside].mean() + energy[outside].mean())
    return float(energy[boundary].mean() / max(around, 1e-6))


def psnr_outside(image: np.ndarray, reference: np.ndarray, alpha: np.ndarray, margin: int = 16,
                 luma: bool = True) -> float:
    """PSNR (dB) of `image` against `reference` where the mask is zero, `margin` px away from it (codec
    blocks straddling the boundary carry some of the face's motion). On luma by default, the codec
    convention: yuv420p's halved chroma alone costs a detailed portrait about 3 dB in RGB."""
    outside = cv2.dilate((alpha > 0).astype(np.uint8), _disk(margin)) == 0
    if luma:
        image, reference = (cv2.cvtColor(x, cv2.COLOR_RGB2GRAY)[..., None] for x in (image, reference))
    diff = image[outside].astype(np.float64) - reference[outside].astype(np.float64)
    mse = float((diff ** 2).mean())
    return float("inf") if mse == 0 else float(10 * np.log10(255.0 ** 2 / mse))
