"""Audio decode with PyAV (WAV, FLAC, MP3, M4A/AAC, OGG, or the audio track of a video), resampled to mono
at model.AUDIO_SAMPLE_RATE unless a caller asks for another rate."""

from __future__ import annotations

import math
from pathlib import Path

import av
import numpy as np

from model import AUDIO_SAMPLE_RATE


class MediaError(ValueError):
    """An input file that cannot be used; the message names the file and the cause."""


def load_audio(path: str | Path, sample_rate: int = AUDIO_SAMPLE_RATE, max_seconds: float | None = None) -> np.ndarray:
    """Decode the first audio stream of `path` to float32 mono at `sample_rate`: shape (N,).

    With `max_seconds`, decoding stops with MediaError naming the length once the audio passes it: a small
    file at a low bitrate can hold hours of speech, gigabytes once decoded.
    """
    max_samples = math.inf if max_seconds is None else max_seconds * sample_rate
    path = Path(path)
    if not path.is_file():
        raise MediaError(f"{path}: audio file not found")
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise MediaError(f"{path}: no audio stream")
            stream = container.streams.audio[0]
            resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
            chunks, decoded = [], 0
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
                    decoded += chunks[-1].size
                if decoded > max_samples:
                    raise MediaError(f"{path}: audio is over {max_seconds:g} s long (stopped decoding at "
                                     f"{decoded / sample_rate:.2f} s)")
            for out in resampler.resample(None):  # flush
                chunks.append(out.to_ndarray().reshape(-1))
    except MediaError:
        raise
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as e:
        raise MediaError(f"{path}: unreadable audio ({e})") from None
    samples = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
    if samples.size == 0:
        raise MediaError(f"{path}: audio has zero length")
    if not np.isfinite(samples).all():
        raise MediaError(f"{path}: audio contains NaN or infinite samples")
    return samples
