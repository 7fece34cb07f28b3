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

Talking on held-out speakers (issue: a generator whose mouth visibly moves), when a corpus folder is given:
the real corpus videos of HELD_OUT_SPEAKERS (never in training: scripts/train_on_gpu.py keeps them out)
give their speech; the unseen portraits (the held-out portrait, and each held-out speaker's first frame
speaking another held-out speaker's audio) are rendered speaking it.
5. `mouth_amplitude_check`: the standard deviation of the mouth opening (inner-lip gap over the
   inter-ocular distance) over the speech frames, mean over the generated videos, over the same figure
   of the held-out speakers' real videos, cropped like the renders: pass = ratio >= MOUTH_AMPLITUDE_RATIO.
6. `held_out_sync_check`: per generated video, metrics.sync.measure_sync (the one sync measure) against
   its own speech and against each other held-out clip's speech (looped to its length): a video passes
   when |offset| <= HELD_OUT_MAX_OFFSET frames and its own speech's confidence is above every
   mismatched one; pass = more than half the videos pass.
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
# whole corpus speakers kept out of training (English, frontal, 25 fps): their speech and faces are unseen
HELD_OUT_SPEAKERS = ("sadtalker_WDA_BobMenendez_000.mp4", "sadtalker_RD_Radio34_000.mp4", "mimictalk_Trump_10s.mp4",
                     "megactor_ENTF_2.mp4")
MOUTH_AMPLITUDE_RATIO = 0.7  # generated mouth-opening std over the real held-out speakers'
SPEECH_MARGIN_S = 0.12  # frames this close to a voiced one count as speech (closures inside words)
HELD_OUT_MAX_OFFSET = 1  # frames either way


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


# ---------------------------------------------------------------- 5-6. talking on held-out speakers


def mouth_openings(landmarks: np.ndarray) -> np.ndarray:
    """(F, 68, 2) landmarks (NaN rows: no face) -> (F,) faces.mouth_opening: the inner-lip gap over the
    inter-ocular distance (the face size, so any crop or frame size reads the same); NaN without a face."""
    from faces import mouth_opening

    return np.array([mouth_opening(m) if np.isfinite(m).all() else np.nan for m in landmarks])


def speech_frames(audio: np.ndarray, sample_rate: int, fps: float, num_frames: int) -> np.ndarray:
    """(F,) bool: voiced frames (metrics.sync's voicing) and those within SPEECH_MARGIN_S of one."""
    import scipy.ndimage

    from metrics.sync import frame_band_energy

    _, voiced = frame_band_energy(audio, sample_rate, fps, num_frames)
    margin = int(round(SPEECH_MARGIN_S * fps))
    return scipy.ndimage.binary_dilation(voiced, iterations=margin) if margin else voiced


def mouth_amplitude(landmarks: np.ndarray, audio: np.ndarray, sample_rate: int, fps: float) -> float | None:
    """Std of the mouth opening over the speech frames with a face; None under 10 such frames."""
    opening = mouth_openings(landmarks)
    use = speech_frames(audio, sample_rate, fps, len(opening)) & np.isfinite(opening)
    return float(np.std(opening[use])) if use.sum() >= 10 else None


def sync_of(landmarks: np.ndarray, frames: np.ndarray, audio: np.ndarray, sample_rate: int, fps: float,
            config=None) -> dict | None:
    from metrics.sync import SyncConfig, measure_sync

    result = measure_sync(landmarks, audio, sample_rate, fps, config=config or SyncConfig(), frames=frames)
    return None if result is None else {"offset_frames": result.offset_frames, "confidence": result.confidence}


def fitted(audio: np.ndarray, samples: int) -> np.ndarray:
    """`audio` looped or cut to `samples`."""
    return np.tile(audio, int(np.ceil(samples / len(audio))))[:samples]


def held_out_video_figures(frames: np.ndarray, audio: np.ndarray, mismatched: list[np.ndarray],
                           sample_rate: int = AUDIO_SAMPLE_RATE, fps: float = FPS, sync_config=None,
                           landmarks: np.ndarray | None = None) -> dict:
    """One video's mouth amplitude and sync: against its own speech and against each `mismatched` one.
    `sync_config` (metrics.sync.SyncConfig) defaults to the measure's own; `landmarks` to the frames' track."""
    from metrics.video import track_landmarks

    landmarks = track_landmarks(frames) if landmarks is None else landmarks
    own = sync_of(landmarks, frames, audio, sample_rate, fps, sync_config)
    others = [sync_of(landmarks, frames, fitted(m, len(audio)), sample_rate, fps, sync_config) for m in mismatched]
    levels = [o["confidence"] for o in others if o is not None]
    level = max(levels) if levels else None
    passed = (own is not None and level is not None and abs(own["offset_frames"]) <= HELD_OUT_MAX_OFFSET
              and own["confidence"] > level)
    return {"amplitude": mouth_amplitude(landmarks, audio, sample_rate, fps),
            "face_found": float(np.isfinite(landmarks).all(axis=(1, 2)).mean()), "sync": own,
            "mismatched_confidence": level, "pass": bool(passed)}


def held_out_clips(corpus: Path, speakers: tuple[str, ...] = HELD_OUT_SPEAKERS) -> list[dict]:
    """The held-out speakers' real videos: {name, frames, fps, audio (16 kHz)}, in `speakers` order."""
    from media import read_video

    clips = []
    for name in speakers:
        path = Path(corpus) / name
        if not path.is_file():
            raise FileNotFoundError(f"{path}: held-out corpus video not found")
        video = read_video(str(path))
        clips.append({"name": name, "frames": np.asarray(video.frames), "fps": float(video.fps),
                      "audio": np.asarray(video.audio, np.float32)})
    return clips


def real_held_out_figures(clips: list[dict], size: int) -> list[dict]:
    """The real videos' own mouth amplitude and sync, measured like the generated ones: every frame in the
    canonical `size` crop of its first frame (as training/prepare.py crops the corpus), so that the face
    is as large as in the rendered videos and the landmarks' jitter the same in both."""
    from faces import align_face
    from faces.align import warp_to_crop

    results = []
    for clip in clips:
        transform = np.asarray(align_face(clip["frames"][0], size).transform, np.float64)
        frames = np.stack([warp_to_crop(f, transform, size) for f in clip["frames"]])
        others = [c["audio"] for c in clips if c is not clip]
        figures = held_out_video_figures(frames, clip["audio"], others, AUDIO_SAMPLE_RATE, clip["fps"])
        results.append({"clip": clip["name"], **figures})
    return results


def held_out_portraits(portrait: np.ndarray, clips: list[dict], size: int) -> list[tuple[str, np.ndarray, int]]:
    """(name, aligned portrait, index of the clip whose speech it speaks): the held-out portrait speaks
    every clip, and each held-out speaker's first frame speaks the next speaker's clip (never its own)."""
    from faces import align_face

    pairs = [("portrait", portrait, i) for i in range(len(clips))]
    for i, clip in enumerate(clips):
        face = np.ascontiguousarray(align_face(clip["frames"][0], size).image)
        pairs.append((f"{Path(clip['name']).stem}_face", face, (i + 1) % len(clips)))
    return pairs


def talking_checks(generator, portrait: np.ndarray, corpus: Path, output: Path,
                   speakers: tuple[str, ...] = HELD_OUT_SPEAKERS) -> dict:
    """Checks 5 and 6 on the held-out speakers of `corpus`; videos in OUTPUT/held_out/."""
    clips = held_out_clips(corpus, speakers)
    real = real_held_out_figures(clips, generator.config.image_size)
    folder = output / "held_out"
    folder.mkdir(parents=True, exist_ok=True)
    generated = []
    for name, face, c in held_out_portraits(portrait, clips, generator.config.image_size):
        audio = clips[c]["audio"]
        frames = render_frames(generator, face, audio, FPS)
        write_video(folder / f"{name}__{Path(clips[c]['name']).stem}.mp4", frames, audio)
        others = [clip["audio"] for j, clip in enumerate(clips) if j != c]
        generated.append({"portrait": name, "speech": clips[c]["name"],
                          **held_out_video_figures(frames, audio, others)})
    return {"mouth_amplitude": mouth_amplitude_figures(generated, real),
            "held_out_sync": held_out_sync_figures(generated, real)}


def mouth_amplitude_figures(generated: list[dict], real: list[dict]) -> dict:
    model = [g["amplitude"] for g in generated if g["amplitude"] is not None]
    truth = [r["amplitude"] for r in real if r["amplitude"] is not None]
    ratio = float(np.mean(model) / np.mean(truth)) if model and truth else 0.0
    return {"model": float(np.mean(model)) if model else None, "real": float(np.mean(truth)) if truth else None,
            "ratio": ratio, "videos": len(model), "real_clips": len(truth),
            "per_video": [{"portrait": g["portrait"], "speech": g["speech"], "amplitude": g["amplitude"]}
                          for g in generated],
            "per_real_clip": {r["clip"]: r["amplitude"] for r in real}, "pass": bool(ratio >= MOUTH_AMPLITUDE_RATIO)}


def held_out_sync_figures(generated: list[dict], real: list[dict]) -> dict:
    passed = sum(g["pass"] for g in generated)
    return {"passed": int(passed), "of": len(generated),
            "per_video": [{k: g[k] for k in ("portrait", "speech", "sync", "mismatched_confidence", "face_found", "pass")}
                          for g in generated],
            "real_videos": [{k: r[k] for k in ("clip", "sync", "mismatched_confidence", "pass")} for r in real],
            "pass": bool(2 * passed > len(generated))}


# ---------------------------------------------------------------- all of them


def run_acceptance(checkpoint: str, portrait_path: Path, speech_path: Path, output: Path,
                   long_seconds: float = LONG_SECONDS, more_speech: list[Path] | None = None,
                   blink_seconds: float = BLINK_SECONDS, corpus: Path | None = None,
                   speakers: tuple[str, ...] = HELD_OUT_SPEAKERS) -> dict:
    """Every check on one checkpoint; the report (also written to OUTPUT/acceptance.json) holds each
    check's figures and verdict, and `all_pass`. Without `corpus` the held-out speakers' checks (5, 6)
    are not run and not part of the pass."""
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
    checks = ["sync", "identity", "yaw", "blinks"]
    if corpus is not None:
        report.update(talking_checks(generator, portrait, Path(corpus), output, tuple(speakers)))
        checks += ["mouth_amplitude", "held_out_sync"]
    report["all_pass"] = all(report[k]["pass"] for k in checks)
    report["seconds"] = round(time.monotonic() - started, 1)
    (output / "acceptance.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
