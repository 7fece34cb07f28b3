"""Real ingredients of the synthetic data set: aligned portraits and 16 kHz speech clips.

Portraits are aligned with faces.align_face, the same canonical crop the render job feeds the
generator, so a model trained on them sees portraits the way it will at inference. Speech is
decoded and resampled with media.load_audio. Both are deterministic.

Sources (see ../shared/media/SOURCES.md): the portrait photographs, skimage.data.astronaut(),
frames of the real talking-head video, the speech clips in five languages, Debian codec2-examples'
Harvard sentences and, when Debian `flite` is installed, sentences spoken by its voices.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model.config import AUDIO_SAMPLE_RATE

CODEC2_RAW = Path("/usr/share/codec2/raw")
FLITE_VOICES = ("kal16", "slt", "rms", "awb")
# Harvard sentences (public domain) for flite, when it is installed
FLITE_SENTENCES = (
    "The birch canoe slid on the smooth planks. Glue the sheet to the dark blue background.",
    "It is easy to tell the depth of a well. These days a chicken leg is a rare dish.",
    "Rice is often served in round bowls. The juice of lemons makes fine punch.",
    "The box was thrown beside the parked truck. The hogs were fed chopped corn and garbage.",
    "Four hours of steady work faced us. A large size in stockings is hard to sell.",
    "The boy was there when the sun rose. A rod is used to catch pink salmon.",
    "The source of the huge river is the clear spring. Kick the ball straight and follow through.",
    "Help the woman get back to her feet. A pot of tea helps to pass the evening.",
)


class IngredientError(ValueError):
    """An ingredient file that cannot be used (no face, unreadable, empty)."""


@dataclass
class AlignedPortrait:
    name: str
    image: np.ndarray  # (S, S, 3) uint8, canonical crop
    landmarks: np.ndarray  # (68, 2) in crop pixels


@dataclass
class SpeechClip:
    name: str
    audio: np.ndarray  # (N,) float32 mono at AUDIO_SAMPLE_RATE


def align_portrait(image: np.ndarray, size: int, name: str) -> AlignedPortrait:
    """Canonical crop of the largest face in `image` with landmarks re-detected on the crop."""
    from faces import NoFaceError, align_face

    try:
        aligned = align_face(image, size)
    except NoFaceError as err:
        raise IngredientError(f"{name}: no face found ({err})") from err
    landmarks = np.asarray(aligned.landmarks, np.float64)
    if landmarks.shape != (68, 2):
        raise IngredientError(f"{name}: expected (68, 2) landmarks on the aligned crop, got {landmarks.shape}")
    return AlignedPortrait(name=name, image=np.ascontiguousarray(aligned.image), landmarks=landmarks)


def load_rgb(path: Path) -> np.ndarray:
    from media import load_image

    return load_image(str(path))


def load_speech(path: Path) -> np.ndarray:
    from media import load_audio

    audio = np.asarray(load_audio(str(path), sample_rate=AUDIO_SAMPLE_RATE), np.float32)
    if audio.size < AUDIO_SAMPLE_RATE // 2:
        raise IngredientError(f"{path}: less than 0.5 s of audio")
    return audio


def video_frames(path: Path, times_s: tuple[float, ...]) -> list[np.ndarray]:
    """Frames of a real video at the given times (s), as (H, W, 3) uint8."""
    from media import read_video

    clip = read_video(str(path))
    last = len(clip.frames) - 1
    return [np.asarray(clip.frames[min(last, int(round(t * clip.fps)))]) for t in times_s]


def flite_speech(voices: tuple[str, ...] = FLITE_VOICES, sentences: tuple[str, ...] = FLITE_SENTENCES) -> list[SpeechClip]:
    """Sentences spoken by Debian flite's voices, 16 kHz; empty when flite is not installed."""
    exe = shutil.which("flite")
    if exe is None:
        return []
    available = subprocess.run([exe, "-lv"], capture_output=True, text=True, check=False).stdout
    clips = []
    with tempfile.TemporaryDirectory() as tmp:
        for v, voice in enumerate(voices):
            if voice not in available.split():
                continue
            for s, sentence in enumerate(sentences):
                if (s + v) % 2:  # each voice reads half the sentences: more variety for the same time
                    continue
                wav = Path(tmp) / f"{voice}-{s}.wav"
                subprocess.run([exe, "-voice", voice, "-t", sentence, "-o", str(wav)], check=True, capture_output=True)
                clips.append(SpeechClip(name=f"flite:{voice}:{s}", audio=load_speech(wav)))
    return clips


def file_digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
