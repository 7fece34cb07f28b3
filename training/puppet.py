"""A deterministic puppet renderer: animates one aligned portrait from speech and FCIC control tracks.

It is the teacher of the synthetic data set (training/synthetic.py): no talking-face video can be
downloaded here, so the default checkpoint learns from a real portrait whose 68 dlib landmarks are
moved by hand-written rules and whose pixels follow them through a thin-plate-spline warp:

- mouth: the jaw drops and the lips part with the speech's per-frame band energy (300-3000 Hz,
  attack/release smoothed), `mouth_lead_s` ahead of the sound as in real speech, where the mouth
  shapes a sound before it is heard; the spectral centroid spreads (bright sounds) or rounds (dark sounds) the
  lips; the opening is painted dark with a hint of upper teeth, the way a real open mouth reads to a
  landmarker. `lip` (0..1) scales the whole motion.
- eyes: `blink` is eye openness (1 = the portrait's own, 0 = closed); upper lids move onto the lower
  lids and the lid skin stretches over the eye. `gaze_x`/`gaze_y` (-1..1) slide the iris inside the eye.
- head: `yaw`/`pitch`/`roll` (degrees, relative to the portrait's own pose, in the units
  faces.head_pose measures on the output) rotate the landmarks lifted onto a generic 3-D face (an
  ellipsoid with a nose), projected orthographically; the image border stays put, so the background
  bends smoothly around the head.

Departures from a real face: no new pixels are synthesised (a turned head shows the same cheek
stretched, not the hidden ear), the teeth are a flat band, and expression (the categorical control)
is not animated. This is enough for the generator to learn audio-driven lip motion, blinks, gaze and
pose that a landmarker can measure, which is what the acceptance metrics check.

Shapes: F frames, S image size, N audio samples; images are (S, S, 3) uint8 RGB.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from faces.gaze import GAZE_SHIFT
from model import speech_drive
from model.config import AUDIO_SAMPLE_RATE
from model.speech_drive import band_energy_db, frame_spectra, opening_drive

PUPPET_CONTROLS = ("yaw", "pitch", "roll", "blink", "gaze_x", "gaze_y", "lip")

# dlib 68-point indices
JAW = np.arange(0, 17)
NOSE = np.arange(27, 36)
LEFT_EYE = np.arange(36, 42)  # image-left eye: 36 outer corner, 37/38 upper lid, 39 inner, 40/41 lower lid
RIGHT_EYE = np.arange(42, 48)  # 42 inner, 43/44 upper lid, 45 outer, 46/47 lower lid
OUTER_LIPS = np.arange(48, 60)
INNER_LIPS = np.arange(60, 68)
UPPER_LID_TO_LOWER = {37: 41, 38: 40, 43: 47, 44: 46}


@dataclass(frozen=True)
class PuppetConfig:
    max_jaw_drop: float = 0.06  # chin travel at full opening, as a fraction of the face width
    lip_part: float = 0.05  # extra lower-lip travel over the chin, fraction of face width
    upper_lip_lift: float = 0.02  # upper inner lip rises by this fraction of face width at full opening
    spread: float = 0.05  # mouth-corner travel for spread/rounded lips, fraction of face width
    gaze_shift: float = GAZE_SHIFT  # iris travel at |gaze| = 1, fraction of the eye width (x) / height (y)
    nose_depth: float = 0.45  # nose-tip protrusion in front of the face ellipsoid, fraction of face width
    pivot_depth: float = 0.1  # head rotation centre behind the landmarks' mean depth, fraction of face width
    mouth_darkness: float = 0.85  # alpha of the painted inner-mouth colour
    energy_floor_db: float = speech_drive.FLOOR_DB  # band energy below the clip's peak minus this is silence
    # real mouths move 100-300 ms ahead of the voice; the attack smoothing delays the opening by about a
    # frame, so the drive leads by 160 ms (the generator's audio_lead_ms, which its lip drive reads at)
    mouth_lead_s: float = 0.16
    attack: float = speech_drive.ATTACK  # per-frame smoothing of the opening when it rises (1 = instant)
    release: float = speech_drive.RELEASE  # per-frame smoothing of the opening when it falls
    tps_regularisation: float = 1e-3  # thin-plate-spline smoothing (pixels^2)
    # commanded angles are in the units faces.head_pose measures on the output; the generic 3-D face
    # turns by command / gain (gains measured on the training portraits; pitch's sign differs)
    yaw_gain: float = 1.8
    pitch_gain: float = -0.6
    roll_gain: float = 1.0


@dataclass
class ControlTracks:
    """Per-frame values of the FCIC controls the puppet animates; each array is (F,) float32.

    yaw/pitch/roll in degrees relative to the portrait's pose, blink = eye openness 0..1,
    gaze_x/gaze_y in -1..1, lip = lip-motion intensity 0..1.
    """

    yaw: np.ndarray
    pitch: np.ndarray
    roll: np.ndarray
    blink: np.ndarray
    gaze_x: np.ndarray
    gaze_y: np.ndarray
    lip: np.ndarray

    @classmethod
    def neutral(cls, num_frames: int) -> "ControlTracks":
        zeros = np.zeros(num_frames, np.float32)
        ones = np.ones(num_frames, np.float32)
        return cls(zeros, zeros.copy(), zeros.copy(), ones, zeros.copy(), zeros.copy(), ones.copy())

    def __post_init__(self) -> None:
        lengths = {name: len(np.asarray(getattr(self, name))) for name in PUPPET_CONTROLS}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"control tracks differ in length: {lengths}")
        for name in PUPPET_CONTROLS:
            setattr(self, name, np.asarray(getattr(self, name), np.float32))

    def __len__(self) -> int:
        return len(self.yaw)

    def as_dict(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in PUPPET_CONTROLS}


@dataclass
class MouthTrack:
    """Speech-driven mouth shape per frame: opening 0..1 and spread -1 (rounded) .. 1 (spread)."""

    opening: np.ndarray  # (F,)
    spread: np.ndarray  # (F,)


def num_video_frames(num_samples: int, fps: float, sample_rate: int = AUDIO_SAMPLE_RATE) -> int:
    """Frames covering the audio, rounded up: the same count as model.num_frames_for."""
    return max(1, math.ceil(num_samples * fps / sample_rate - 1e-9))


def speech_mouth_track(audio: np.ndarray, fps: float, num_frames: int | None = None,
                       sample_rate: int = AUDIO_SAMPLE_RATE, config: PuppetConfig = PuppetConfig()) -> MouthTrack:
    """Per-frame mouth opening and spread from speech: the speech's lip drive (model/speech_drive.py, the
    one the generator reads when `lip_from_speech`) and the spectral centroid.

    Each video frame looks at a 40 ms Hann window centred `config.mouth_lead_s` after the frame's
    time, so frame f shows the sound heard at t = f / fps + mouth_lead_s.
    """
    audio = np.asarray(audio, np.float32).reshape(-1)
    if num_frames is None:
        num_frames = num_video_frames(len(audio), fps, sample_rate)
    spectrum, freqs = frame_spectra(audio, fps, num_frames, config.mouth_lead_s, sample_rate)
    opening = opening_drive(band_energy_db(spectrum, freqs), config.energy_floor_db, config.attack, config.release)
    voiced = freqs <= 5000
    centroid = (spectrum[:, voiced] * freqs[voiced]).sum(1) / (spectrum[:, voiced].sum(1) + 1e-10)
    spread = np.clip((centroid - 1500.0) / 1000.0, -1.0, 1.0) * (opening > 0.05)
    return MouthTrack(opening=opening, spread=spread.astype(np.float32))


# ---------------------------------------------------------------- geometry


def _face_frame(landmarks: np.ndarray) -> tuple[np.ndarray, float]:
    """Centre (x, y) between the eyes and nose, and the face half-width in pixels."""
    centre = landmarks[[27, 28, 29, 30, 36, 45]].mean(axis=0)
    half_width = 0.5 * float(np.linalg.norm(landmarks[16] - landmarks[0]))
    return centre, max(half_width, 1.0)


def _guide_points(landmarks: np.ndarray) -> np.ndarray:
    """Forehead and skull points above the brows (10, 2) so the top of the head moves with the face."""
    centre, half_width = _face_frame(landmarks)
    brows = landmarks[17:27]
    up = centre - landmarks[8]
    up = up / (np.linalg.norm(up) + 1e-6)
    return brows + up * half_width * 0.55


def lift_to_3d(points: np.ndarray, landmarks: np.ndarray, config: PuppetConfig, nose_rows: slice | None = None) -> np.ndarray:
    """(K, 2) image points -> (K, 3) on a generic face: an ellipsoid, with the nose pushed forward."""
    centre, half_width = _face_frame(landmarks)
    rel = (points - centre) / half_width
    depth = np.sqrt(np.clip(1.0 - (rel[:, 0] / 1.1) ** 2 - (rel[:, 1] / 1.6) ** 2, 0.0, None))
    out = np.concatenate([points, (depth * half_width)[:, None]], axis=1)
    if nose_rows is not None:
        # 27..35: bridge to tip, then the nostrils; protrusion grows down the bridge
        protrusion = np.array([0.1, 0.25, 0.4, 0.55, 0.3, 0.35, 0.4, 0.35, 0.3]) / 0.55 * config.nose_depth
        out[nose_rows, 2] += protrusion * half_width
    return out


def rotation_matrix(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """Degrees -> 3x3, image axes (x right, y down, z towards the camera); yaw > 0 turns the face to
    the image's right, pitch > 0 tilts it up, roll > 0 rotates it clockwise on screen."""
    y, p, r = np.deg2rad([yaw, pitch, roll])
    ry = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    rx = np.array([[1, 0, 0], [0, np.cos(p), np.sin(p)], [0, -np.sin(p), np.cos(p)]])
    rz = np.array([[np.cos(r), -np.sin(r), 0], [np.sin(r), np.cos(r), 0], [0, 0, 1]])
    return rz @ rx @ ry


def _tps_kernel(r2: np.ndarray) -> np.ndarray:
    return np.where(r2 > 0, 0.5 * r2 * np.log(r2 + 1e-12), 0.0)


def tps_sampling_maps(target: np.ndarray, source: np.ndarray, size: int, regularisation: float) -> tuple[np.ndarray, np.ndarray]:
    """Backward maps for cv2.remap: a thin-plate spline taking each output pixel to its source pixel,
    fitted so that target[k] -> source[k]. target/source (K, 2) pixels."""
    k = len(target)
    d2 = ((target[:, None, :] - target[None, :, :]) ** 2).sum(-1)  # (K, K)
    system = np.zeros((k + 3, k + 3))
    system[:k, :k] = _tps_kernel(d2) + regularisation * np.eye(k)
    system[:k, k] = 1.0
    system[:k, k + 1:] = target
    system[k, :k] = 1.0
    system[k + 1:, :k] = target.T
    rhs = np.zeros((k + 3, 2))
    rhs[:k] = source - target  # fit the displacement: zero field when nothing moves
    coeffs = np.linalg.solve(system, rhs)  # (K+3, 2)
    # the displacement is smooth: evaluate it on a coarse grid (G = S / 4) and upsample bilinearly
    coarse = max(8, size // 4)
    ticks = (np.arange(coarse) + 0.5) * size / coarse - 0.5  # cell centres, as cv2.resize samples them
    ys, xs = np.meshgrid(ticks, ticks, indexing="ij")
    grid = np.stack([xs.ravel(), ys.ravel()], axis=1)  # (G*G, 2)
    g2 = ((grid[:, None, :] - target[None, :, :]) ** 2).sum(-1)  # (G*G, K)
    displacement = _tps_kernel(g2) @ coeffs[:k] + coeffs[k] + grid @ coeffs[k + 1:]  # (G*G, 2)
    displacement = cv2.resize(displacement.reshape(coarse, coarse, 2).astype(np.float32), (size, size),
                              interpolation=cv2.INTER_LINEAR)  # (S, S, 2)
    full_ys, full_xs = np.mgrid[0:size, 0:size].astype(np.float32)
    return full_xs + displacement[..., 0], full_ys + displacement[..., 1]


def _border_anchors(size: int, per_side: int = 5) -> np.ndarray:
    ticks = np.linspace(0, size - 1, per_side)
    top = np.stack([ticks, np.zeros_like(ticks)], 1)
    bottom = np.stack([ticks, np.full_like(ticks, size - 1)], 1)
    left = np.stack([np.zeros_like(ticks[1:-1]), ticks[1:-1]], 1)
    right = np.stack([np.full_like(ticks[1:-1], size - 1), ticks[1:-1]], 1)
    return np.concatenate([top, bottom, left, right])


# ---------------------------------------------------------------- renderer


@dataclass
class PuppetFrame:
    image: np.ndarray  # (S, S, 3) uint8
    landmarks: np.ndarray  # (68, 2) where the puppet put the landmarks


@dataclass
class Puppet:
    """One portrait ready to animate. `portrait` (S, S, 3) uint8 is an aligned canonical crop and
    `landmarks` (68, 2) its dlib landmarks in crop pixels."""

    portrait: np.ndarray
    landmarks: np.ndarray
    config: PuppetConfig = field(default_factory=PuppetConfig)

    def __post_init__(self) -> None:
        if self.portrait.ndim != 3 or self.portrait.shape[2] != 3 or self.portrait.shape[0] != self.portrait.shape[1]:
            raise ValueError(f"portrait must be a square (S, S, 3) image, got {self.portrait.shape}")
        if self.landmarks.shape != (68, 2):
            raise ValueError(f"landmarks must be (68, 2), got {self.landmarks.shape}")
        self.size = self.portrait.shape[0]
        self.landmarks = self.landmarks.astype(np.float64)
        self._guides = _guide_points(self.landmarks)
        self._anchors = _border_anchors(self.size)
        self._points3d = lift_to_3d(self.landmarks, self.landmarks, self.config, nose_rows=slice(27, 36))
        self._guides3d = lift_to_3d(self._guides, self.landmarks, self.config)
        self._centre, self._half_width = _face_frame(self.landmarks)
        eye = self.portrait[..., :].astype(np.float32)
        self._lid_colour = self._sample_colour(eye, self.landmarks[[19, 24]] * 0.35 + self.landmarks[[37, 44]] * 0.65)
        self._mouth_colour = np.array([60.0, 22.0, 25.0], np.float32)
        self._teeth_colour = np.array([215.0, 205.0, 195.0], np.float32)

    def _sample_colour(self, image: np.ndarray, points: np.ndarray) -> np.ndarray:
        pts = np.clip(np.round(points).astype(int), 0, self.size - 1)
        return image[pts[:, 1], pts[:, 0]].mean(axis=0)

    def pose_landmarks(self, opening: float, spread: float, blink: float, yaw: float, pitch: float, roll: float) -> tuple[np.ndarray, np.ndarray]:
        """Target positions of the 68 landmarks and the skull guide points for one frame."""
        w = self._half_width * 2.0
        pts = self._points3d.copy()
        down = self.landmarks[8] - self._centre
        down = np.append(down / (np.linalg.norm(down) + 1e-6), 0.0)  # unit vector from face centre to chin
        right = np.array([down[1], -down[0], 0.0])  # towards the face's image-left side... sign fixed below
        if np.dot(right[:2], self.landmarks[16] - self.landmarks[0]) < 0:
            right = -right
        jaw = self.config.max_jaw_drop * w * opening
        chin_weights = {4: 0.25, 5: 0.45, 6: 0.7, 7: 0.9, 8: 1.0, 9: 0.9, 10: 0.7, 11: 0.45, 12: 0.25}
        for i, weight in chin_weights.items():
            pts[i] += down * jaw * weight
        lower_lip = jaw + self.config.lip_part * w * opening
        for i in (55, 56, 57, 58, 59, 65, 66, 67):
            pts[i] += down * lower_lip * (0.85 if i in (55, 59) else 1.0)
        for i in (48, 54, 60, 64):
            pts[i] += down * lower_lip * 0.35
        lift = self.config.upper_lip_lift * w * opening
        for i in (61, 62, 63, 50, 51, 52):
            pts[i] -= down * lift
        corner = self.config.spread * w * spread
        for i, side in ((48, -1), (60, -1), (54, 1), (64, 1)):
            pts[i] += right * corner * side
        closing = 1.0 - float(np.clip(blink, 0.0, 1.0))
        for upper, lower in UPPER_LID_TO_LOWER.items():
            pts[upper] += (self._points3d[lower] - self._points3d[upper]) * closing * 0.85
        config = self.config
        rotation = rotation_matrix(yaw / config.yaw_gain, pitch / config.pitch_gain, roll / config.roll_gain)
        # rotating about the landmarks' own centre keeps the head in place, as the aligned crop expects
        pivot = np.array([self._centre[0], self._centre[1], self._points3d[:, 2].mean() - self.config.pivot_depth * w])
        rotated = (pts - pivot) @ rotation.T + pivot
        guides = (self._guides3d - pivot) @ rotation.T + pivot
        return rotated[:, :2], guides[:, :2]

    def render(self, opening: float, spread: float, controls: dict[str, float]) -> PuppetFrame:
        lip = float(controls.get("lip", 1.0))
        blink = float(np.clip(controls.get("blink", 1.0), 0.0, 1.0))
        pose = (controls.get("yaw", 0.0), controls.get("pitch", 0.0), controls.get("roll", 0.0))
        # the warp keeps the eyes open (moving lids in a global spline ripples the whole face);
        # the lids are painted shut afterwards between the open and the blinking lid curves
        open_eyes, guides = self.pose_landmarks(opening * lip, spread * lip, 1.0, *pose)
        target, _ = self.pose_landmarks(opening * lip, spread * lip, blink, *pose)
        dst = np.concatenate([open_eyes, guides, self._anchors])
        src = np.concatenate([self.landmarks, self._guides, self._anchors])
        map_x, map_y = tps_sampling_maps(dst, src, self.size, self.config.tps_regularisation)
        image = cv2.remap(self.portrait, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        image = self._move_irises(image, open_eyes, controls.get("gaze_x", 0.0), controls.get("gaze_y", 0.0))
        image = self._close_lids(image, open_eyes, target, 1.0 - blink)
        image = self._paint_mouth(image, target, opening * lip)
        return PuppetFrame(image=image, landmarks=target.astype(np.float32))

    def _close_lids(self, image: np.ndarray, open_eyes: np.ndarray, target: np.ndarray, closing: float) -> np.ndarray:
        if closing < 0.03:
            return image
        out = image.astype(np.float32)
        for eye in (LEFT_EYE, RIGHT_EYE):
            corner_a, upper_1, upper_2, corner_b = eye[0], eye[1], eye[2], eye[3]
            open_curve = open_eyes[[corner_a, upper_1, upper_2, corner_b]]
            lid_curve = target[[corner_a, upper_1, upper_2, corner_b]]
            # lid skin: sampled just above the open eye, between the lid and the brow
            brow = open_eyes[[17, 19, 21]] if eye[0] == 36 else open_eyes[[22, 24, 26]]
            skin = self._sample_colour(out, 0.7 * open_curve[1:3] + 0.3 * brow[1:3])
            polygon = np.concatenate([open_curve - [0, 1.0], lid_curve[::-1]])
            mask = np.zeros(image.shape[:2], np.uint8)
            cv2.fillPoly(mask, [np.round(polygon * 4).astype(np.int32)], 255, lineType=cv2.LINE_AA, shift=2)
            alpha = (cv2.GaussianBlur(mask, (3, 3), 0).astype(np.float32) / 255.0 * min(1.0, 1.5 * closing))[..., None]
            out = out * (1 - alpha) + skin * alpha
            lash = np.zeros(image.shape[:2], np.uint8)
            cv2.polylines(lash, [np.round(lid_curve * 4).astype(np.int32)], False, 255, 1, cv2.LINE_AA, shift=2)
            beta = (lash.astype(np.float32) / 255.0 * 0.8 * closing)[..., None]
            out = out * (1 - beta) + 30.0 * beta
        return np.clip(out, 0, 255).astype(np.uint8)

    def _move_irises(self, image: np.ndarray, landmarks: np.ndarray, gaze_x: float, gaze_y: float) -> np.ndarray:
        if abs(gaze_x) < 1e-3 and abs(gaze_y) < 1e-3:
            return image
        out = image.copy()
        for eye in (LEFT_EYE, RIGHT_EYE):
            polygon = landmarks[eye]
            width = float(np.linalg.norm(polygon[3] - polygon[0]))
            height = max(float(np.ptp(polygon[:, 1])), 1.0)
            dx, dy = gaze_x * self.config.gaze_shift * width, gaze_y * self.config.gaze_shift * height * 2
            mask = np.zeros(image.shape[:2], np.uint8)
            cv2.fillPoly(mask, [np.round(polygon * 4).astype(np.int32)], 255, lineType=cv2.LINE_AA, shift=2)
            if mask.max() == 0:
                continue
            # the eye's content, with the sclera's colour outside the lids so shifting never drags skin in
            inside = mask > 127
            sclera = np.percentile(image[inside].reshape(-1, 3), 80, axis=0) if inside.sum() > 3 else image[inside].mean(0)
            eye_only = np.where(mask[..., None] > 127, image, sclera.astype(np.uint8))
            shifted = cv2.warpAffine(eye_only, np.float32([[1, 0, dx], [0, 1, dy]]), image.shape[1::-1],
                                     flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
            alpha = (mask.astype(np.float32) / 255.0)[..., None]
            out = (out * (1 - alpha) + shifted * alpha).astype(np.uint8)
        return out

    def _paint_mouth(self, image: np.ndarray, landmarks: np.ndarray, opening: float) -> np.ndarray:
        if opening < 0.02:
            return image
        mask = np.zeros(image.shape[:2], np.uint8)
        cv2.fillPoly(mask, [np.round(landmarks[INNER_LIPS] * 4).astype(np.int32)], 255, lineType=cv2.LINE_AA, shift=2)
        alpha = cv2.GaussianBlur(mask, (3, 3), 0).astype(np.float32) / 255.0 * self.config.mouth_darkness
        colour = np.broadcast_to(self._mouth_colour, image.shape).copy()
        # upper teeth: a light band just under the upper inner lip
        upper = landmarks[[61, 62, 63]]
        lower = landmarks[[67, 66, 65]]
        gap = float(np.mean(lower[:, 1] - upper[:, 1]))
        if gap > 2.0:
            teeth = np.zeros(image.shape[:2], np.uint8)
            band = np.concatenate([landmarks[[60]], upper, landmarks[[64]], (upper + [0, min(0.3 * gap, 3.0)])[::-1]])
            cv2.fillPoly(teeth, [np.round(band * 4).astype(np.int32)], 255, lineType=cv2.LINE_AA, shift=2)
            t = (teeth.astype(np.float32) / 255.0)[..., None]
            colour = colour * (1 - t) + self._teeth_colour * t
        alpha = alpha[..., None]
        return np.clip(image * (1 - alpha) + colour * alpha, 0, 255).astype(np.uint8)

    def animate(self, audio: np.ndarray, fps: float, controls: ControlTracks, sample_rate: int = AUDIO_SAMPLE_RATE) -> list[PuppetFrame]:
        """Render len(controls) frames; the mouth follows `audio` (float32 mono at sample_rate)."""
        mouth = speech_mouth_track(audio, fps, len(controls), sample_rate, self.config)
        tracks = controls.as_dict()
        return [self.render(float(mouth.opening[f]), float(mouth.spread[f]),
                            {name: float(values[f]) for name, values in tracks.items()})
                for f in range(len(controls))]


def render_puppet_video(portrait: np.ndarray, landmarks: np.ndarray, audio: np.ndarray, fps: float,
                        controls: ControlTracks | None = None, config: PuppetConfig = PuppetConfig()) -> np.ndarray:
    """(F, S, S, 3) uint8 frames of `portrait` speaking `audio` (16 kHz); F from the audio length
    unless `controls` gives it."""
    if controls is None:
        controls = ControlTracks.neutral(num_video_frames(len(audio), fps))
    frames = Puppet(portrait, landmarks, config).animate(audio, fps, controls)
    return np.stack([f.image for f in frames])
