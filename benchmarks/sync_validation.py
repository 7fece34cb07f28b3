"""How far to trust metrics.sync on real video: every corpus clip, shifted and mismatched audio, full frame and
128 px. Prints one JSON object.

    python benchmarks/sync_validation.py [--corpus DIR] [--cache DIR]

For each clip and view (the face region at full resolution, and the clip warped to the farm's 128 px
aligned crop; see metrics/sync_corpus.py) and each shift k in SHIFTS, the clip's own audio is delayed by k
frames (k < 0: advanced; silence fills the gap) and the measured offset is compared with k:
- offset_mae_frames: mean |offset - k| over clip x shift cases;
- within_1_frame: share of clip x shift cases with |offset - k| <= 1;
- in_sync_offset_mean / in_sync_offset_std: the offsets at k = 0 over clips (the bias and spread of "in sync");
- auc_in_sync_vs_mismatched: probability that a clip's confidence with its own audio exceeds its confidence
  with another speaker's speech (MISMATCHES other clips' audio per clip, looped or cut to length);
- within_1_frame_relative: the same for offset(k) - offset(0) against k over k != 0: shift recovery apart
  from the clip's own in-sync reading (some corpus clips read a few frames off in sync by every method
  tried; see docs/sync.md);
- clips_unmeasured: clips where measure_sync returned None (counted as misses in within_1_frame);
- sync_s_per_video_minute (the sync computation on cached landmarks and crops) and
  extract_s_per_video_minute (decoding, landmark tracking and mouth crops, both views; from the cache's
  first run) per minute of video.
The corpus's speakers are all different people, so every mismatched pair is a different speaker. By
default each clip is measured with the regressor refitted on the other clips only (leave-one-speaker-out),
so no figure comes from a speaker the model was fitted on; --shipped measures the shipped weights instead.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from metrics import sync_model  # noqa: E402
from metrics.sync import measure_sync  # noqa: E402
from metrics.sync_model import SyncModel  # noqa: E402
from metrics.sync_corpus import SAMPLE_RATE, ClipInputs, load_clip  # noqa: E402

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "media" / "corpus"
CACHE = Path(__file__).resolve().parents[1] / "out" / "sync_cache"
SHIFTS = (-10, -6, -3, 0, 3, 6, 10)  # frames the audio is delayed by
MISMATCHES = 3  # other clips' audio tried against each clip


def delayed(audio: np.ndarray, frames: int, fps: float) -> np.ndarray:
    """The audio delayed by `frames` video frames (negative: advanced), same length, silence padded."""
    shift = int(round(frames * SAMPLE_RATE / fps))
    if shift >= 0:
        return np.concatenate([np.zeros(shift, np.float32), audio[:len(audio) - shift]])
    return np.concatenate([audio[-shift:], np.zeros(-shift, np.float32)])


def fitted(audio: np.ndarray, length: int) -> np.ndarray:
    """`audio` looped or cut to `length` samples."""
    return np.resize(audio, length).astype(np.float32)


def auc(positives: list[float], negatives: list[float]) -> float:
    """P(positive > negative), ties counting half; None scores (unmeasured) rank lowest."""
    pos = np.array([-np.inf if p is None else p for p in positives])
    neg = np.array([-np.inf if n is None else n for n in negatives])
    greater = (pos[:, None] > neg[None, :]).mean()
    ties = (pos[:, None] == neg[None, :]).mean()
    return float(greater + 0.5 * ties)


def measure(clip: ClipInputs, view: str, audio: np.ndarray, model: SyncModel | None):
    landmarks, crops = (clip.landmarks, clip.crops) if view == "full" else (clip.landmarks_128, clip.crops_128)
    return measure_sync(landmarks, audio, SAMPLE_RATE, clip.fps, crops=crops, model=model)


def held_out_models(clips: list[ClipInputs]) -> list[SyncModel]:
    """One regressor per clip, fitted on every other clip (each clip is one speaker: leave-one-speaker-out)."""
    return [sync_model.fit(sync_model.corpus_examples(clips[:i] + clips[i + 1:])) for i in range(len(clips))]


def validate(clips: list[ClipInputs], view: str, models: list[SyncModel | None], shifts=SHIFTS,
             mismatches: int = MISMATCHES) -> dict:
    errors, relative, in_sync, own, other, per_clip = [], [], [], [], [], {}
    unmeasured = 0
    for i, clip in enumerate(clips):
        clip_errors = {}
        for k in shifts:
            result = measure(clip, view, delayed(clip.audio, k, clip.fps), models[i])
            if result is None:
                errors.append(np.inf)
                clip_errors[k] = None
                unmeasured += k == 0
                continue
            errors.append(abs(result.offset_frames - k))
            clip_errors[k] = result.offset_frames
            if k == 0:
                in_sync.append(result.offset_frames)
                own.append(result.confidence)
        for j in range(1, mismatches + 1):
            donor = clips[(i + j) % len(clips)]
            result = measure(clip, view, fitted(donor.audio, len(clip.audio)), models[i])
            other.append(None if result is None else result.confidence)
        per_clip[clip.name] = clip_errors
        if clip_errors.get(0) is not None:
            relative += [np.inf if clip_errors[k] is None else abs(clip_errors[k] - clip_errors[0] - k) for k in shifts if k]
    errors, relative = np.array(errors), np.array(relative)
    finite = errors[np.isfinite(errors)]
    return {"offset_mae_frames": float(finite.mean()) if finite.size else None,
            "within_1_frame": float((errors <= 1).mean()),
            "within_1_frame_relative": float((relative <= 1).mean()) if relative.size else None,
            "in_sync_offset_mean": float(np.mean(in_sync)) if in_sync else None,
            "in_sync_offset_std": float(np.std(in_sync)) if in_sync else None,
            "auc_in_sync_vs_mismatched": auc(own, other),
            "clips_unmeasured": unmeasured,
            "offsets_per_clip": per_clip}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--corpus", default=str(CORPUS), help="folder of talking-head MP4s (one speaker per clip)")
    p.add_argument("--cache", default=str(CACHE), help="where extracted landmarks and crops are kept")
    p.add_argument("--shipped", action="store_true",
                   help="measure with the shipped regressor (fitted on every clip) instead of held-out-speaker refits")
    p.add_argument("--per-clip", action="store_true", help="include each clip's measured offsets per shift")
    args = p.parse_args(argv)
    paths = sorted(Path(args.corpus).glob("*.mp4"))
    if len(paths) < 2:
        print(f"error: {args.corpus}: needs at least 2 MP4 clips (mismatched audio comes from other clips)", file=sys.stderr)
        return 2
    clips = [load_clip(path, args.cache) for path in paths]
    minutes = sum(len(c.landmarks) / c.fps for c in clips) / 60.0
    out: dict = {"clips": len(clips), "video_minutes": round(minutes, 3), "shifts": list(SHIFTS)}
    models = [None] * len(clips) if args.shipped else held_out_models(clips)
    out["model"] = "shipped (fitted on these clips)" if args.shipped else "leave-one-speaker-out refits"
    start = time.perf_counter()
    full = validate(clips, "full", models)
    sync_s = time.perf_counter() - start
    small = validate(clips, "128", models)
    per_clip = {"full": full.pop("offsets_per_clip"), "128": small.pop("offsets_per_clip")}
    out |= full
    out |= {f"{key}_128px": value for key, value in small.items()}
    cases = len(SHIFTS) + MISMATCHES  # measure_sync calls per clip and view
    out["sync_s_per_video_minute"] = sync_s / cases / minutes
    extract = [c.extract_s for c in clips]
    out["extract_s_per_video_minute"] = float(np.sum(extract) / minutes) if np.all(np.isfinite(extract)) else None
    if args.per_clip:
        out["offsets_per_clip"] = per_clip
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
