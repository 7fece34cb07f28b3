"""Acceptance of a trained checkpoint on held-out real inputs (`eartalk accept`, jobs/accept.py).

The checkpoint renders a portrait that was never in training speaking held-out real speech, and four
checks judge the rendered videos. Each check is one function that renders what it needs, writes its
video to the output folder and returns its figures with a `pass` verdict; the measuring half of each
(`*_figures`) takes frames or videos, so it judges any video the same way.

1. `sync_check`: the audio-visual offset (frames) and confidence of the model's video, measured by
   metrics.compute_video_metrics (metrics/sync.py, the measure `eartalk metrics` and the render
   pipeline report). The puppet renderer's own video of the same inputs, whose mouth is a function of
   the speech, is measured the same way: pass = |offset| <= MAX_SYNC_OFFSET and confidence >= half the
   puppet's.
2. `identity_check`: a `long_seconds` video (the held-out speech looped), every IDENTITY_STRIDE-th
   frame's dlib embedding against the portrait's: pass = distance < IDENTITY_THRESHOLD on >=
   IDENTITY_SHARE of them, and the mean distance of the last 10 s within DRIFT_TOLERANCE of the first 10 s.
3. `yaw_check`: a commanded sinusoidal yaw sweep (+-YAW_AMPLITUDE degrees), measured head yaw per frame:
   pass = correlation >= YAW_CORRELATION.
4. `blink_check`: commanded blinks every BLINK_PERIOD s over `blink_seconds` (the held-out speech looped,
   so that the recall is over a dozen blinks rather than the three of one short clip); a blink is
   detected where the measured eye openness dips below BLINK_DIP x its median within +-BLINK_TOLERANCE
   frames: pass = recall >= BLINK_RECALL.

`sync_survey` measures the sync bar on more clips, outside the pass: one short clip's sync confidence
is noisy, a handful of clips says more.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from model.config import AUDIO_SAMPLE_RATE
from training.rollout import render_frames

FPS = 25.0
MAX_SYNC_OFFSET = 2  # frames either way the model's video may be off
SYNC_CONFIDENCE_SHARE = 0.5  # of the puppet's confidence on the same speech
LONG_SECONDS = 60.0  # length of the identity / drift video
IDENTITY_STRIDE = 5  # every 5th frame of the long video is embedded (300 samples for 60 s)
IDENTITY_THRESHOLD = 0.6  # dlib's same-person distance
IDENTITY_SHARE = 0.95  # of the sampled frames below the threshold
DRIFT_SECONDS = 10.0  # the first and the last this many seconds are compared for drift
DRIFT_TOLERANCE = 0.05  # allowed rise of the mean identity distance, last 10 s vs first 10 s
YAW_AMPLITUDE = 20.0  # degrees
YAW_PERIOD = 4.0  # s
YAW_CORRELATION = 0.8  # of the measured yaw with the commanded one
BLINK_PERIOD = 1.6  # s between commanded blinks
BLINK_FIRST = 0.8  # s, the first commanded blink's start
BLINK_SECONDS = 20.0  # length of the blink video: 12 commanded blinks
BLINK_PROFILE = (0.6, 0.15, 0.0, 0.1, 0.45, 0.8)  # eye openness per frame of one commanded blink
BLINK_CLOSED_FRAME = 2  # the profile's closed frame
BLINK_DIP = 0.8  # a detected blink: openness below this fraction of the clip's median
BLINK_TOLERANCE = 3  # frames
BLINK_RECALL = 0.8


def write_video(path: Path, frames: np.ndarray, audio: np.ndarray) -> Path:
    from media import encode_mp4

    encode_mp4(str(path), list(frames), fps=FPS, audio=audio, sample_rate=AUDIO_SAMPLE_RATE)
    return path


def looped(speech: np.ndarray, seconds: float) -> np.ndarray:
    """The clip repeated to `seconds` of audio."""
    repeats = int(np.ceil(seconds * AUDIO_SAMPLE_RATE / len(speech)))
    return np.tile(speech, repeats)[: int(seconds * AUDIO_SAMPLE_RATE)]


def landmarks_per_frame(analyzer, frames: np.ndarray) -> list[np.ndarray | None]:
    return [analyzer.landmarks(frame) for frame in frames]


# ---------------------------------------------------------------- 1. lip sync


def video_sync(video: Path, audio_path: Path) -> dict | None:
    """Offset (frames) and confidence of `video` against `audio_path` by metrics.compute_video_metrics;
    None when the measure finds the video unmeasurable."""
    from metrics import compute_video_metrics

    result = compute_video_metrics(str(video), audio_path=str(audio_path))
    offset, confidence = result.get("sync_offset_frames"), result.get("sync_confidence")
    if offset is None or confidence is None or not np.isfinite(confidence):
        return None
    return {"offset_frames": float(offset), "confidence": float(confidence),
            "face_found": result.get("face_detected_ratio")}


def sync_figures(model_video: Path, puppet_video: Path, speech_path: Path) -> dict:
    """The sync bar: the model's video against the puppet's, both measured on `speech_path`."""
    model, puppet = video_sync(model_video, speech_path), video_sync(puppet_video, speech_path)
    passed = (model is not None and puppet is not None and abs(model["offset_frames"]) <= MAX_SYNC_OFFSET
              and model["confidence"] >= SYNC_CONFIDENCE_SHARE * puppet["confidence"])
    return {"model": model, "puppet": puppet, "pass": bool(passed)}


def sync_check(generator, aligned, speech: np.ndarray, speech_path: Path, prefix: Path) -> dict:
    """The sync bar for one speech clip: the model's video and the puppet's of the same portrait and
    speech, written as PREFIX_model.mp4 and PREFIX_puppet.mp4."""
    from training.puppet import render_puppet_video

    portrait = np.ascontiguousarray(aligned.image)
    model_frames = render_frames(generator, portrait, speech, FPS)
    puppet_frames = render_puppet_video(portrait, np.asarray(aligned.landmarks, np.float64), speech, FPS)
    model_video = write_video(prefix.with_name(prefix.name + "_model.mp4"), model_frames, speech)
    puppet_video = write_video(prefix.with_name(prefix.name + "_puppet.mp4"), puppet_frames, speech)
    return sync_figures(model_video, puppet_video, speech_path)


def sync_survey(generator, aligned, clips: list[Path], output: Path) -> dict:
    """The sync bar on more clips (often training speech), outside the pass: how much one short clip's
    verdict says."""
    from media import load_audio

    results = []
    for path in clips:
        speech = np.asarray(load_audio(str(path), sample_rate=AUDIO_SAMPLE_RATE), np.float32)
        results.append(sync_check(generator, aligned, speech, path, output / f"sync_{path.stem}") | {"speech": str(path)})
    return {"clips": results, "passed": sum(c["pass"] for c in results), "of": len(results)}


# ---------------------------------------------------------------- 2. identity and drift


def identity_figures(analyzer, portrait: np.ndarray, frames: np.ndarray, fps: float = FPS) -> dict:
    """Every IDENTITY_STRIDE-th frame's dlib distance to `portrait`, and its drift from the first
    DRIFT_SECONDS to the last; a frame without a face counts as infinitely far."""
    reference = analyzer.embedding(portrait, analyzer.landmarks(portrait))
    picks = np.arange(0, len(frames), IDENTITY_STRIDE)
    distances = []
    for f in picks:
        marks = analyzer.landmarks(frames[f])
        distances.append(np.inf if marks is None else float(np.linalg.norm(analyzer.embedding(frames[f], marks) - reference)))
    distances = np.array(distances)
    times = picks / fps
    first = distances[(times < DRIFT_SECONDS) & np.isfinite(distances)]
    last = distances[(times >= times[-1] - DRIFT_SECONDS) & np.isfinite(distances)]
    drift = float(np.mean(last) - np.mean(first)) if first.size and last.size else float("inf")
    within = float(np.mean(distances < IDENTITY_THRESHOLD))
    return {
        "frames_sampled": int(len(picks)), "fraction_below_0.6": within,
        "median_distance": float(np.median(distances)), "face_found": float(np.mean(np.isfinite(distances))),
        "mean_first_10s": float(np.mean(first)) if first.size else None,
        "mean_last_10s": float(np.mean(last)) if last.size else None,
        "drift": drift, "pass": bool(within >= IDENTITY_SHARE and drift <= DRIFT_TOLERANCE),
    }


def identity_check(generator, analyzer, portrait: np.ndarray, speech: np.ndarray, seconds: float, output: Path) -> dict:
    """Identity over a long video (identity_long.mp4), and drift between its first and last 10 s."""
    audio = looped(speech, seconds)
    frames = render_frames(generator, portrait, audio, FPS)
    write_video(output / "identity_long.mp4", frames, audio)
    return identity_figures(analyzer, portrait, frames)


# ---------------------------------------------------------------- 3. yaw


def yaw_command(num_frames: int) -> np.ndarray:
    """(F,) degrees: the sinusoidal sweep the yaw check commands."""
    t = np.arange(num_frames) / FPS
    return (YAW_AMPLITUDE * np.sin(2 * np.pi * t / YAW_PERIOD)).astype(np.float32)


def yaw_figures(analyzer, frames: np.ndarray, command: np.ndarray) -> dict:
    """Correlation of the measured head yaw per frame with the commanded one."""
    from faces import head_pose

    measured = np.array([head_pose(m, frames[0].shape)[0] if m is not None else np.nan
                         for m in landmarks_per_frame(analyzer, frames)])
    ok = ~np.isnan(measured)
    correlation = 0.0
    if ok.sum() > 2 and np.std(measured[ok]) > 0:
        correlation = float(np.corrcoef(measured[ok], command[ok])[0, 1])
    return {"correlation": correlation, "measured_range_deg": float(np.ptp(measured[ok])) if ok.any() else 0.0,
            "commanded_range_deg": float(np.ptp(command)), "face_found": float(ok.mean()),
            "pass": bool(correlation >= YAW_CORRELATION)}


def yaw_check(generator, analyzer, portrait: np.ndarray, speech: np.ndarray, output: Path) -> dict:
    """A commanded yaw sweep over the held-out speech (yaw_sweep.mp4); the other controls are absent."""
    command = yaw_command(generator.num_frames(len(speech), FPS))
    frames = render_frames(generator, portrait, speech, FPS, {"yaw": command})
    write_video(output / "yaw_sweep.mp4", frames, speech)
    return yaw_figures(analyzer, frames, command)


# ---------------------------------------------------------------- 4. blinks


def blink_command(num_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """(F,) commanded eye openness with a blink every BLINK_PERIOD s, and the blinks' closed frames."""
    profile = np.array(BLINK_PROFILE, np.float32)
    command = np.ones(num_frames, np.float32)
    starts = np.arange(int(BLINK_FIRST * FPS), num_frames - len(profile), int(BLINK_PERIOD * FPS))
    for s in starts:
        command[s:s + len(profile)] = profile
    return command, starts + BLINK_CLOSED_FRAME


def blink_figures(analyzer, frames: np.ndarray, commanded: np.ndarray) -> dict:
    """Recall of the commanded blinks (closed frames `commanded`) in the measured eye openness, and the
    share of frames away from any commanded blink that read as closed."""
    from faces import eye_openness

    openness = np.array([eye_openness(m) if m is not None else np.nan for m in landmarks_per_frame(analyzer, frames)])
    median = np.nanmedian(openness)
    closed = openness < BLINK_DIP * median
    hits = [bool(np.any(closed[max(0, c - BLINK_TOLERANCE): c + BLINK_TOLERANCE + 1])) for c in commanded]
    open_frames = np.ones(len(frames), bool)
    for c in commanded:
        open_frames[max(0, c - 2 * BLINK_TOLERANCE): c + 2 * BLINK_TOLERANCE + 1] = False
    recall = float(np.mean(hits)) if hits else 0.0
    return {"commanded": int(len(commanded)), "detected": int(sum(hits)), "recall": recall,
            "false_closed_fraction": float(np.mean(closed[open_frames])) if open_frames.any() else 0.0,
            "median_openness": float(median), "pass": bool(hits and recall >= BLINK_RECALL)}


def blink_check(generator, analyzer, portrait: np.ndarray, speech: np.ndarray, seconds: float, output: Path) -> dict:
    """Commanded blinks over `seconds` of the looped held-out speech (blinks.mp4)."""
    audio = looped(speech, seconds)
    command, commanded = blink_command(generator.num_frames(len(audio), FPS))
    frames = render_frames(generator, portrait, audio, FPS, {"blink": command})
    write_video(output / "blinks.mp4", frames, audio)
    return blink_figures(analyzer, frames, commanded)


# ---------------------------------------------------------------- all four


def run_acceptance(checkpoint: str, portrait_path: Path, speech_path: Path, output: Path,
                   long_seconds: float = LONG_SECONDS, more_speech: list[Path] | None = None,
                   blink_seconds: float = BLINK_SECONDS) -> dict:
    """Every check on one checkpoint; the report (also written to OUTPUT/acceptance.json) holds each
    check's figures and verdict, and `all_pass`."""
    from faces import FaceAnalyzer, align_face
    from media import load_audio, load_image
    from model import load_checkpoint

    output.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    generator = load_checkpoint(checkpoint).eval()
    aligned = align_face(load_image(str(portrait_path)), generator.config.image_size)
    portrait = np.ascontiguousarray(aligned.image)
    speech = np.asarray(load_audio(str(speech_path), sample_rate=AUDIO_SAMPLE_RATE), np.float32)
    analyzer = FaceAnalyzer()
    report: dict = {"checkpoint": str(checkpoint), "portrait": str(portrait_path), "speech": str(speech_path)}
    report["sync"] = sync_check(generator, aligned, speech, speech_path, output / "sync")
    if more_speech:
        report["sync_survey"] = sync_survey(generator, aligned, more_speech, output)
    report["identity"] = identity_check(generator, analyzer, portrait, speech, long_seconds, output)
    report["yaw"] = yaw_check(generator, analyzer, portrait, speech, output)
    report["blinks"] = blink_check(generator, analyzer, portrait, speech, blink_seconds, output)
    report["all_pass"] = all(report[k]["pass"] for k in ("sync", "identity", "yaw", "blinks"))
    report["seconds"] = round(time.monotonic() - started, 1)
    (output / "acceptance.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
