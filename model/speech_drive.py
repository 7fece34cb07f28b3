"""The speech's lip drive: how far the voice says the mouth is open at each video frame (0 shut .. 1 wide).

The audio encoder LayerNorms every log-mel frame over its bands (audio_encoder.py), so its tokens say
which sound is heard but not how loud it is, and loudness is what paces a mouth: syllable nuclei open it,
pauses and closures shut it. The drive carries that pace: the 300-3000 Hz band energy of a 40 ms window,
in dB under the utterance's loud frames (its 95th percentile), shaped and smoothed like a jaw that opens
fast and closes slower. The synthetic puppet opens its mouth by exactly this drive times its `lip`
control (training/puppet.py), so a model trained on it renders the drive when the `lip` control carries
it (`GeneratorConfig.lip_from_speech`).

Each frame looks at the sound heard `lead_s` after it: a mouth shapes a sound before it is heard.
"""

from __future__ import annotations

import numpy as np

from .config import AUDIO_SAMPLE_RATE

WINDOW_S = 0.04  # analysis window per frame
BAND_HZ = (300.0, 3000.0)  # where the voice's energy tracks the mouth's opening
FLOOR_DB = -45.0  # band energy this far under the loud frames counts as silence
# the loud frames' level is at least this (a -60 dBFS tone in the band reads about -16): digital silence
# or hiss stays shut instead of reading as its own loud frames
QUIETEST_PEAK_DB = -20.0
ATTACK = 0.7  # per-frame smoothing while the opening rises (1 = instant)
RELEASE = 0.45  # per-frame smoothing while it falls
CHUNK_FRAMES = 4096  # frames whose spectra are held at once


def frame_spectra(audio: np.ndarray, fps: float, num_frames: int, lead_s: float,
                  sample_rate: int = AUDIO_SAMPLE_RATE, first_frame: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(F, K) power spectra of the Hann windows heard `lead_s` after frames first_frame.. first_frame + F - 1,
    and their (K,) frequencies."""
    audio = np.asarray(audio, np.float32).reshape(-1)
    window = int(WINDOW_S * sample_rate)
    lead = int(round(lead_s * sample_rate))
    padded = np.pad(audio, (window // 2, window + max(lead, 0)))
    starts = ((np.arange(first_frame, first_frame + num_frames) / fps + lead_s) * sample_rate).astype(np.int64).clip(0, len(padded) - window)
    frames = np.stack([padded[s:s + window] for s in starts]) * np.hanning(window)  # (F, window)
    return np.abs(np.fft.rfft(frames, axis=1)) ** 2, np.fft.rfftfreq(window, 1.0 / sample_rate)


def band_energy_db(power: np.ndarray, freqs: np.ndarray) -> np.ndarray:
    """(F, K) power spectra -> (F,) energy in BAND_HZ, dB."""
    band = (freqs >= BAND_HZ[0]) & (freqs <= BAND_HZ[1])
    return 10 * np.log10(power[:, band].sum(axis=1) + 1e-10)


def opening_drive(energy_db: np.ndarray, floor_db: float = FLOOR_DB,
                  attack: float = ATTACK, release: float = RELEASE) -> np.ndarray:
    """(F,) band energy in dB -> (F,) float32 opening in [0, 1]."""
    peak = max(float(np.percentile(energy_db, 95)), QUIETEST_PEAK_DB)
    target = np.clip((energy_db - (peak + floor_db)) / -floor_db, 0.0, 1.0) ** 1.5  # consonants barely open it
    opening = np.zeros(len(target), np.float32)
    level = 0.0
    for f, goal in enumerate(target):
        level += (attack if goal > level else release) * (goal - level)
        opening[f] = level
    return opening


def speech_lip_drive(audio: np.ndarray, fps: float, num_frames: int, lead_s: float,
                     sample_rate: int = AUDIO_SAMPLE_RATE) -> np.ndarray:
    """(F,) float32 drive in [0, 1] for `num_frames` frames at `fps` of mono `audio`.

    Spectra are taken CHUNK_FRAMES at a time: a whole episode's at once would hold about 10 kB per frame.
    """
    if num_frames < 1:
        return np.zeros(0, np.float32)
    energy = np.empty(num_frames)
    for first in range(0, num_frames, CHUNK_FRAMES):
        count = min(CHUNK_FRAMES, num_frames - first)
        power, freqs = frame_spectra(audio, fps, count, lead_s, sample_rate, first_frame=first)
        energy[first:first + count] = band_energy_db(power, freqs)
    return opening_drive(energy)
