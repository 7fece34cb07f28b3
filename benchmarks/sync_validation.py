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
default each clip is measured with the regressor refitted on the other clips only (leave-one-speaker-out)
and the sync network trained without its speaker (SPEAKER_FOLDS folds by speaker, a few minutes of CPU
each), so no figure comes from a speaker a learned part saw; --shipped measures the shipped weights instead.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from metrics.sync_corpus import load_clip  # noqa: E402
from metrics.sync_validation import MISMATCHES, SHIFTS, SPEAKER_FOLDS, held_out_models, held_out_nets, validate  # noqa: E402

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "media" / "corpus"
CACHE = Path(__file__).resolve().parents[1] / "out" / "sync_cache"


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
    if args.shipped:
        models = nets = [None] * len(clips)
        out["model"] = "shipped: regressor fitted on every clip, network on all but sync_net.HELD_OUT_SPEAKERS"
    else:
        models = held_out_models(clips)
        nets = held_out_nets(clips, log=lambda m: print(m, file=sys.stderr))
        out["model"] = f"regressor: leave-one-speaker-out refits; network: {SPEAKER_FOLDS} folds by speaker"
    start = time.perf_counter()
    full = validate(clips, "full", models, nets)
    sync_s = time.perf_counter() - start
    small = validate(clips, "128", models, nets)
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
