"""A cross-check of the corpus clips' own audio-video offsets that shares nothing with metrics/sync.py.

metrics/sync.py reads the corpus's in-sync clips at offsets from -5 to +4 frames (docs/sync.md); its two
curves share dlib's landmarks. This script reads each clip with other landmarks and other features:
MediaPipe's face mesh (inner-lip gap, landmarks 13-14, over the outer eye-corner distance 33-263) against
the speech's 100-4000 Hz log energy, in two ways (FEATURES): "level", the gap against the energy, both
band-passed to the syllable rate; "onset", the gap's opening speed against the energy's rises. The lag at
which a pair correlates best is the clip's offset, up to a constant lead that no in-sync reference fixes;
so clips are compared by their offset from the median of the clips a pair tracks, measure against measure.

MediaPipe needs numpy<2, which the project's environment does not pin, so this runs in its own venv:

    python3.11 -m venv /tmp/mpenv
    /tmp/mpenv/bin/pip install "mediapipe==0.10.21" "numpy<2" "opencv-python-headless<4.12" av
    /tmp/mpenv/bin/python scripts/sync_crosscheck.py --corpus ../shared/media/corpus > crosscheck.json

Prints one JSON object: per clip and feature, the lag (frames; > 0: the audio lags the video, as
metrics/sync.py) of the correlation peak, its height, the same with the audio delayed by SHIFT frames
(the peak must move by SHIFT: the check that the curve tracks this clip at all) and the lag from the
tracked clips' median.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import av
import numpy as np

SAMPLE_RATE = 16000
HOP_S = 0.01  # audio analysis hop
WINDOW_S = 0.025
BAND_HZ = (100.0, 4000.0)
MAX_LAG = 15  # frames either way, as metrics/sync.py searches
SHIFT = 5  # frames of audio delay for the tracking check
MAX_SIDE = 720  # frames are shrunk to this before the face mesh (its detector works on a small image anyway)
UPPER_LIP, LOWER_LIP, EYE_LEFT, EYE_RIGHT = 13, 14, 33, 263
# onset: the lip gap's opening speed against the speech's energy rises; level: the lip gap against the
# band's log energy, both band-passed to the syllable rate (1-6 Hz)
FEATURES = ("onset", "level")


def read_clip(path: Path) -> tuple[list[np.ndarray], float, np.ndarray]:
    """RGB frames, fps and mono float32 audio at SAMPLE_RATE."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate)
        frames = []
        for frame in container.decode(stream):
            scale = min(1.0, MAX_SIDE / max(frame.width, frame.height))
            if scale < 1.0:
                frame = frame.reformat(width=int(frame.width * scale) & ~1, height=int(frame.height * scale) & ~1)
            frames.append(frame.to_ndarray(format="rgb24"))
    with av.open(str(path)) as container:
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        chunks = [f.to_ndarray().reshape(-1) for frame in container.decode(audio=0) for f in resampler.resample(frame)]
    return frames, fps, np.concatenate(chunks).astype(np.float32)


def lip_gaps(frames: list[np.ndarray]) -> np.ndarray:
    """(F,) inner-lip gap over eye-corner distance; NaN where no face."""
    import mediapipe as mp

    gaps = np.full(len(frames), np.nan)
    with mp.solutions.face_mesh.FaceMesh(max_num_faces=1, refine_landmarks=False) as mesh:
        for i, image in enumerate(frames):
            found = mesh.process(image).multi_face_landmarks
            if not found:
                continue
            h, w = image.shape[:2]
            p = np.array([(q.x * w, q.y * h) for q in found[0].landmark])
            gaps[i] = np.linalg.norm(p[UPPER_LIP] - p[LOWER_LIP]) / np.linalg.norm(p[EYE_LEFT] - p[EYE_RIGHT])
    return gaps


def band_energy(audio: np.ndarray, fps: float, num_frames: int, delay_frames: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(num_frames,) the band's log energy in each video frame and (num_frames,) its rise within the
    frame (audio delayed by `delay_frames`, silence padded)."""
    audio = np.concatenate([np.zeros(int(round(delay_frames / fps * SAMPLE_RATE)), np.float32), audio])
    hop, window = int(HOP_S * SAMPLE_RATE), int(WINDOW_S * SAMPLE_RATE)
    starts = np.arange(0, max(1, len(audio) - window), hop)
    frames = np.stack([audio[s:s + window] for s in starts]) * np.hanning(window)
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    freqs = np.fft.rfftfreq(window, 1.0 / SAMPLE_RATE)
    band = (freqs >= BAND_HZ[0]) & (freqs <= BAND_HZ[1])
    energy = 10 * np.log10(power[:, band].sum(axis=1) + 1e-8)
    energy = np.maximum(energy, np.percentile(energy, 95) - 50)  # floor: hiss does not make onsets
    rise = np.maximum(np.diff(energy, prepend=energy[0]), 0.0)
    times = (starts + window / 2) / SAMPLE_RATE
    frame_of = np.floor(times * fps).astype(int)
    keep = frame_of < num_frames
    level, rises, count = np.zeros(num_frames), np.zeros(num_frames), np.zeros(num_frames)
    np.add.at(level, frame_of[keep], energy[keep])
    np.add.at(rises, frame_of[keep], rise[keep])
    np.add.at(count, frame_of[keep], 1.0)
    level = np.where(count > 0, level / np.maximum(count, 1), energy.min())
    return level, rises


def filled(gaps: np.ndarray) -> np.ndarray:
    """Gaps interpolated across frames without a face, lightly smoothed (3 frames)."""
    idx = np.arange(len(gaps))
    ok = ~np.isnan(gaps)
    return np.convolve(np.interp(idx, idx[ok], gaps[ok]), np.ones(3) / 3, mode="same")


def opening_speed(gaps: np.ndarray) -> np.ndarray:
    """(F,) positive part of the lip gap's change per frame."""
    smooth = filled(gaps)
    return np.maximum(np.diff(smooth, prepend=smooth[0]), 0.0)


def band_passed(x: np.ndarray, fps: float, low_hz: float = 1.0, high_hz: float = 6.0) -> np.ndarray:
    """x with what lies outside [low_hz, high_hz] removed (FFT mask): the syllable-rate part."""
    spectrum = np.fft.rfft(x - x.mean())
    freqs = np.fft.rfftfreq(len(x), 1.0 / fps)
    spectrum[(freqs < low_hz) | (freqs > high_hz)] = 0
    return np.fft.irfft(spectrum, n=len(x))


def lag_curve(video: np.ndarray, audio: np.ndarray) -> np.ndarray:
    """(2 * MAX_LAG + 1,) Pearson correlation of video[t] with audio[t + lag], lag = -MAX_LAG..MAX_LAG."""
    out = []
    for lag in range(-MAX_LAG, MAX_LAG + 1):
        a = audio[max(lag, 0): len(audio) + min(lag, 0)]
        v = video[max(-lag, 0): len(video) - max(lag, 0)]
        n = min(len(a), len(v))
        out.append(np.corrcoef(v[:n], a[:n])[0, 1])
    return np.array(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--corpus", default=str(Path(__file__).resolve().parents[2] / "shared" / "media" / "corpus"))
    args = p.parse_args(argv)
    clips = {}
    for path in sorted(Path(args.corpus).glob("*.mp4")):
        frames, fps, audio = read_clip(path)
        gaps = lip_gaps(frames)
        video = {"onset": opening_speed(gaps), "level": band_passed(filled(gaps), fps)}
        clip = {"fps": round(fps, 3), "face_found": round(float(np.mean(~np.isnan(gaps))), 3)}
        sounds = {}  # (reading, feature) -> the audio track at that delay
        for name, delay in (("in_sync", 0), ("delayed", SHIFT)):
            level, rise = band_energy(audio, fps, len(frames), delay)
            sounds[name, "onset"], sounds[name, "level"] = rise, band_passed(level, fps)
        for feature in FEATURES:
            reading = {}
            for name in ("in_sync", "delayed"):
                curve = lag_curve(video[feature], sounds[name, feature])
                peak = int(np.nanargmax(curve))
                reading[name] = {"lag_frames": peak - MAX_LAG, "peak": round(float(curve[peak]), 3)}
            reading["tracks_shift"] = reading["delayed"]["lag_frames"] - reading["in_sync"]["lag_frames"] == SHIFT
            clip[feature] = reading
        clips[path.name] = clip
        print(path.name, clip, file=sys.stderr, flush=True)
    out = {"clips": clips}
    for feature in FEATURES:
        tracked = [c[feature]["in_sync"]["lag_frames"] for c in clips.values() if c[feature]["tracks_shift"]]
        median = float(np.median(tracked)) if tracked else None
        for c in clips.values():
            c[feature]["from_median"] = (c[feature]["in_sync"]["lag_frames"] - median
                                         if c[feature]["tracks_shift"] and median is not None else None)
        out[feature] = {"tracking": len(tracked), "of": len(clips), "median_lag_frames": median}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
