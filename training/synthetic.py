"""The synthetic talking-head data set: real portraits and real speech, animated by the puppet.

`build_synthetic_dataset(SyntheticConfig(...), output)` writes a training-shard folder (shards.py)
deterministically: the same config and ingredients give byte-identical arrays. Each clip takes

- a portrait variant: one of the training portraits (photographs, skimage's astronaut, frames of the
  real talking video), possibly mirrored, with colour (gain, hue, saturation, gamma, grey), texture
  (noise, blur, sharpening), background replacement and a small similarity jitter, so that the model
  learns the motion and not these few faces;
- a window of real speech (five languages, codec2's Harvard sentences, flite's voices when installed)
  at a random gain;
- control tracks: smooth head yaw/pitch/roll, blinks, gaze fixations and a lip intensity, which the
  puppet follows and which become the clip's FCIC labels.

HELD OUT, for the acceptance measurement, never in any clip: the portrait `biden.jpg` and the speech
clip `english.wav` (SyntheticConfig.held_out_*).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
from faces import eye_openness

from model.config import AUDIO_SAMPLE_RATE
from training import ingredients
from training.ingredients import AlignedPortrait, SpeechClip
from training.puppet import PUPPET_CONTROLS, ControlTracks, Puppet, PuppetConfig
from training.shards import Clip, write_manifest, write_shard

log = logging.getLogger(__name__)

# dlib 68-point index of each point's mirror image
MIRROR_68 = np.array(
    list(range(16, -1, -1)) + list(range(26, 16, -1)) + [27, 28, 29, 30] + [35, 34, 33, 32, 31]
    + [45, 44, 43, 42, 47, 46] + [39, 38, 37, 36, 41, 40]
    + [54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55] + [64, 63, 62, 61, 60, 67, 66, 65]
)


@dataclass(frozen=True)
class SyntheticConfig:
    image_size: int = 128  # pixels, the model's canonical crop
    fps: float = 25.0  # frames per second
    clip_frames: int = 50  # frames per clip (2 s at 25 fps)
    num_clips: int = 192  # clips in the data set
    clips_per_shard: int = 64
    seed: int = 0
    media_root: str = "../shared/media"  # portraits/, speech/ and video/ (relative to the working directory)
    training_portraits: tuple[str, ...] = ("obama.jpg", "obama2.jpg")  # under media_root/portraits
    include_astronaut: bool = True  # skimage.data.astronaut()
    video_frame_times: tuple[float, ...] = (0.2, 2.9, 3.8, 5.0)  # s: open eyes, closed mouth
    training_speech: tuple[str, ...] = ("german.wav", "french.wav", "japanese.wav", "chinese.wav")
    include_codec2: bool = True  # /usr/share/codec2/raw/*16k*.wav
    include_flite: bool = True  # Debian flite voices when installed
    held_out_portraits: tuple[str, ...] = ("biden.jpg",)
    held_out_speech: tuple[str, ...] = ("english.wav",)
    max_yaw: float = 35.0  # degrees, as faces.head_pose measures them
    max_pitch: float = 8.0  # degrees
    max_roll: float = 8.0  # degrees
    blinks_per_second: float = 0.35
    puppet: PuppetConfig = field(default_factory=PuppetConfig)

    def __post_init__(self) -> None:
        assert self.image_size >= 64 and self.clip_frames >= 2 and self.num_clips >= 1
        overlap = set(self.training_portraits) & set(self.held_out_portraits)
        if overlap:
            raise ValueError(f"held-out portraits also listed for training: {sorted(overlap)}")
        overlap = set(self.training_speech) & set(self.held_out_speech)
        if overlap:
            raise ValueError(f"held-out speech also listed for training: {sorted(overlap)}")

    @property
    def clip_samples(self) -> int:
        return int(round(self.clip_frames / self.fps * AUDIO_SAMPLE_RATE))


# ---------------------------------------------------------------- ingredients


def gather_portraits(config: SyntheticConfig) -> list[AlignedPortrait]:
    root = Path(config.media_root)
    images: list[tuple[str, np.ndarray]] = []
    for name in config.training_portraits:
        images.append((name, ingredients.load_rgb(root / "portraits" / name)))
    if config.include_astronaut:
        from skimage import data

        images.append(("astronaut", np.asarray(data.astronaut())))
    if config.video_frame_times:
        video = root / "video" / "talking_512px_8s.mp4"
        for t, frame in zip(config.video_frame_times, ingredients.video_frames(video, config.video_frame_times)):
            images.append((f"talking_512px_8s.mp4@{t:.1f}s", frame))
    return [ingredients.align_portrait(image, config.image_size, name) for name, image in images]


def gather_speech(config: SyntheticConfig) -> list[SpeechClip]:
    root = Path(config.media_root)
    clips = [SpeechClip(name, ingredients.load_speech(root / "speech" / name)) for name in config.training_speech]
    if config.include_codec2:
        for path in sorted(ingredients.CODEC2_RAW.glob("*16k*.wav")):
            clips.append(SpeechClip(f"codec2:{path.name}", ingredients.load_speech(path)))
    if config.include_flite:
        clips.extend(ingredients.flite_speech())
    held = set(config.held_out_speech)
    return [c for c in clips if c.name not in held]


# ---------------------------------------------------------------- augmentation


def mirror(portrait: AlignedPortrait) -> AlignedPortrait:
    size = portrait.image.shape[1]
    landmarks = portrait.landmarks[MIRROR_68].copy()
    landmarks[:, 0] = size - 1 - landmarks[:, 0]
    return AlignedPortrait(portrait.name + ":mirror", np.ascontiguousarray(portrait.image[:, ::-1]), landmarks)


def _face_mask(landmarks: np.ndarray, size: int) -> np.ndarray:
    """Soft (S, S) float mask of the head: the face hull grown upwards for the forehead and hair."""
    centre = landmarks.mean(axis=0)
    chin_to_brow = landmarks[[19, 24]].mean(0) - landmarks[8]
    top = landmarks[17:27] + chin_to_brow * 0.55
    hull = cv2.convexHull(np.concatenate([landmarks[:17], top]).astype(np.float32))
    hull = (hull - centre) * 1.12 + centre
    mask = np.zeros((size, size), np.uint8)
    cv2.fillConvexPoly(mask, np.round(hull * 4).astype(np.int32), 255, lineType=cv2.LINE_AA, shift=2)
    return cv2.GaussianBlur(mask, (0, 0), size / 40).astype(np.float32) / 255.0


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    kind = rng.integers(3)
    if kind == 0:  # flat colour
        return np.broadcast_to(rng.uniform(20, 235, 3), (size, size, 3)).astype(np.float32)
    if kind == 1:  # linear gradient between two colours
        a, b = rng.uniform(20, 235, 3), rng.uniform(20, 235, 3)
        angle = rng.uniform(0, 2 * np.pi)
        ys, xs = np.mgrid[0:size, 0:size] / (size - 1)
        t = np.clip((np.cos(angle) * (xs - 0.5) + np.sin(angle) * (ys - 0.5)) + 0.5, 0, 1)[..., None]
        return (a * (1 - t) + b * t).astype(np.float32)
    # smooth coloured noise: blurred random field, like an out-of-focus room
    noise = rng.uniform(0, 255, (size // 8, size // 8, 3)).astype(np.float32)
    return cv2.resize(cv2.GaussianBlur(noise, (0, 0), 1.0), (size, size), interpolation=cv2.INTER_CUBIC)


def augment(portrait: AlignedPortrait, rng: np.random.Generator) -> tuple[AlignedPortrait, dict]:
    """A randomly re-coloured, re-textured, re-backgrounded, slightly moved copy of the portrait."""
    size = portrait.image.shape[0]
    params: dict = {}
    image = portrait.image.astype(np.float32)
    landmarks = portrait.landmarks.copy()
    # geometry: a small similarity jitter, applied to the landmarks too
    angle, scale = rng.uniform(-5, 5), rng.uniform(0.9, 1.1)
    shift = rng.uniform(-0.04, 0.04, 2) * size
    matrix = cv2.getRotationMatrix2D(((size - 1) / 2, (size - 1) / 2), angle, scale)
    matrix[:, 2] += shift
    image = cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    landmarks = landmarks @ matrix[:, :2].T + matrix[:, 2]
    params.update(rotate_deg=round(angle, 3), scale=round(scale, 4))
    # background
    if rng.random() < 0.6:
        mask = _face_mask(landmarks, size)[..., None]
        image = image * mask + _background(rng, size) * (1 - mask)
        params["background"] = True
    # colour: per-channel gain, hue rotation, saturation, gamma, sometimes grey
    hsv = cv2.cvtColor(np.clip(image, 0, 255).astype(np.uint8), cv2.COLOR_RGB2HSV).astype(np.float32)
    hue, sat = rng.uniform(-8, 8), rng.uniform(0.6, 1.3)  # OpenCV hue units are 2 degrees
    hsv[..., 0] = (hsv[..., 0] + hue) % 180
    hsv[..., 1] = np.clip(hsv[..., 1] * sat, 0, 255)
    image = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB).astype(np.float32)
    gains = rng.uniform(0.85, 1.15, 3) * rng.uniform(0.75, 1.25)
    gamma = rng.uniform(0.8, 1.25)
    image = 255.0 * np.clip(image * gains / 255.0, 0, 1) ** gamma
    if rng.random() < 0.1:
        image = np.repeat(image.mean(axis=2, keepdims=True), 3, axis=2)
    params.update(hue=round(hue, 3), saturation=round(sat, 3), gamma=round(gamma, 3))
    # texture: blur or sharpen, then sensor noise
    blur = rng.uniform(0, 1.0)
    if blur > 0.3:
        image = cv2.GaussianBlur(image, (0, 0), blur)
    elif rng.random() < 0.5:
        soft = cv2.GaussianBlur(image, (0, 0), 1.0)
        image = image + rng.uniform(0.2, 0.8) * (image - soft)
    image = image + rng.normal(0, rng.uniform(0, 5), image.shape)
    out = np.clip(np.round(image), 0, 255).astype(np.uint8)
    return AlignedPortrait(portrait.name, out, landmarks), params


# ---------------------------------------------------------------- control tracks


def _smooth_track(rng: np.random.Generator, num_frames: int, fps: float, amplitude: float, knots_per_second: float) -> np.ndarray:
    """A smooth random curve in [-amplitude, amplitude]: random knots, cubic-ish interpolation."""
    duration = num_frames / fps
    knots = max(2, int(np.ceil(duration * knots_per_second)) + 1)
    values = rng.uniform(-amplitude, amplitude, knots)
    t = np.linspace(0, knots - 1, num_frames)
    base = np.floor(t).astype(int).clip(0, knots - 2)
    frac = t - base
    frac = frac * frac * (3 - 2 * frac)  # smoothstep between knots: no velocity jumps at knots
    return (values[base] * (1 - frac) + values[base + 1] * frac).astype(np.float32)


def sample_controls(rng: np.random.Generator, num_frames: int, fps: float, config: SyntheticConfig) -> ControlTracks:
    """Head pose, blinks, gaze and lip intensity for one clip."""
    style = rng.random()
    if style < 0.15:  # still head: lets the model learn the mouth on a steady face
        yaw = np.zeros(num_frames, np.float32)
    elif style < 0.35:  # a sweep from one side to the other, like the acceptance check's command
        start = rng.uniform(-1, 1) * config.max_yaw
        yaw = np.linspace(start, -start, num_frames).astype(np.float32)
    else:
        yaw = _smooth_track(rng, num_frames, fps, config.max_yaw * rng.uniform(0.3, 1.0), rng.uniform(0.5, 1.5))
    pitch = _smooth_track(rng, num_frames, fps, config.max_pitch * rng.uniform(0.0, 1.0), rng.uniform(0.5, 1.2))
    roll = _smooth_track(rng, num_frames, fps, config.max_roll * rng.uniform(0.0, 1.0), rng.uniform(0.3, 1.0))
    blink = np.ones(num_frames, np.float32)
    profile = np.array([0.6, 0.15, 0.0, 0.1, 0.45, 0.8])  # openness over ~240 ms, closing faster than opening
    expected = config.blinks_per_second * num_frames / fps
    for _ in range(rng.poisson(expected) + (rng.random() < 0.5)):
        start = int(rng.integers(-2, max(1, num_frames - 2)))
        for k, value in enumerate(profile):
            if 0 <= start + k < num_frames:
                blink[start + k] = min(blink[start + k], value)
    gaze = []
    for _ in range(2):  # fixations held for 0.4-1.5 s with quick saccades between them
        track = np.zeros(num_frames, np.float32)
        f = 0
        while f < num_frames:
            hold = int(rng.uniform(0.4, 1.5) * fps)
            track[f:f + hold] = rng.uniform(-0.8, 0.8) if rng.random() < 0.6 else 0.0
            f += hold
        gaze.append(cv2.GaussianBlur(track[None, :], (0, 0), sigmaX=1.0).ravel())
    lip = np.full(num_frames, rng.uniform(0.55, 1.0), np.float32)
    return ControlTracks(yaw=yaw, pitch=pitch, roll=roll, blink=blink, gaze_x=gaze[0], gaze_y=gaze[1] * 0.5, lip=lip)


# ---------------------------------------------------------------- builder


def make_clip(index: int, portraits: list[AlignedPortrait], speech: list[SpeechClip], config: SyntheticConfig) -> Clip:
    rng = np.random.default_rng([config.seed, index])
    # pick a person first, then one of their pictures: the talking video's many frames are one person
    people = sorted({p.name.split("@")[0] for p in portraits})
    person = people[int(rng.integers(len(people)))]
    pictures = [p for p in portraits if p.name.split("@")[0] == person]
    base = pictures[int(rng.integers(len(pictures)))]
    if rng.random() < 0.5:
        base = mirror(base)
    portrait, params = augment(base, rng)
    source = speech[int(rng.integers(len(speech)))]
    samples = config.clip_samples
    offset = int(rng.integers(0, max(1, len(source.audio) - samples)))
    audio = source.audio[offset:offset + samples]
    audio = np.pad(audio, (0, samples - len(audio)))
    audio = (audio * rng.uniform(0.5, 1.5)).clip(-1, 1).astype(np.float32)
    controls = sample_controls(rng, config.clip_frames, config.fps, config)
    puppet = Puppet(portrait.image, portrait.landmarks, config.puppet)
    rendered = puppet.animate(audio, config.fps, controls)
    frames = np.stack([f.image for f in rendered])  # (F, S, S, 3)
    # blink is labelled in faces.eye_openness units (the control's unit), measured on the landmarks the
    # puppet placed, so 1 means an open eye whatever the portrait's own eyes look like
    controls.blink = np.array([eye_openness(f.landmarks) for f in rendered], np.float32)
    # the clip's reference (identity) frame is the augmented portrait itself: the puppet at rest
    labels = np.stack([controls.as_dict()[name] for name in PUPPET_CONTROLS], axis=1)  # (F, K)
    info = {"index": index, "portrait": portrait.name, "speech": source.name, "speech_offset": offset,
            "augment": params}
    return Clip(portrait=portrait.image, frames=frames, audio=audio, controls=labels.astype(np.float32), info=info)


def build_synthetic_dataset(config: SyntheticConfig, output: str | Path) -> Path:
    """Write the data set to `output` (a local folder) and return it."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    portraits = gather_portraits(config)
    speech = gather_speech(config)
    if not portraits or not speech:
        raise ValueError(f"synthetic data set needs portraits and speech, got {len(portraits)} and {len(speech)}")
    log.info("synthetic data set: %d portraits, %d speech clips -> %d clips", len(portraits), len(speech), config.num_clips)
    shards = []
    for first in range(0, config.num_clips, config.clips_per_shard):
        indices = range(first, min(config.num_clips, first + config.clips_per_shard))
        name = f"shard-{len(shards):05d}"
        write_shard(output / name, [make_clip(i, portraits, speech, config) for i in indices])
        shards.append(name)
        log.info("wrote %s (%d clips, %.0f s)", name, len(indices), time.monotonic() - started)
    source = {"kind": "synthetic", "config": json.loads(json.dumps(asdict(config))),
              "portraits": [p.name for p in portraits], "speech": [s.name for s in speech]}
    write_manifest(output, image_size=config.image_size, fps=config.fps, clip_frames=config.clip_frames,
                   sample_rate=AUDIO_SAMPLE_RATE, controls=list(PUPPET_CONTROLS), shards=shards, source=source)
    return output
