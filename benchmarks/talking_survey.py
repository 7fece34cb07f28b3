"""Does a checkpoint talk in time with speech it never heard? Every corpus clip's speech, spoken by an unseen
portrait, with the speech's lip drive on and off and by the training puppet, side by side in one run. Prints
one JSON object.

    python benchmarks/talking_survey.py [--checkpoint DIR] [--portrait JPG] [--corpus DIR] [--seconds 10]
                                        [--modes drive_on unmagnified drive_off puppet] [--sync-without-network]

For each corpus clip (its first SECONDS of speech) the portrait speaks it in each mode: drive_on, the
checkpoint with `lip_from_speech` (and its configured mouth magnification); unmagnified, the same with
`mouth_magnification` 1 (model/mouth_motion.py); drive_off, without the drive; puppet, the synthetic data set's teacher
(training/puppet.py), whose mouth is the lip drive itself, so its figures bound what a checkpoint trained
on it can reach through the drive. Each video is measured as the acceptance harness measures
the held-out speakers (training/acceptance.py, `held_out_video_figures`): sync against its own speech and
against MISMATCHED other clips' speech (looped or cut to length), and the mouth-opening spread during speech.
- passed: videos whose offset is within 1 frame and whose confidence beats every mismatched speech's;
- within_1_frame: videos whose offset is within 1 frame; mean_confidence: over own-speech readings;
- mouth_amplitude_ratio: mean mouth-opening spread of the videos over the real clips' (each real clip warped
  to the model's crop, as acceptance does), the acceptance bar being 0.7.
With --sync-without-network each mode is also read with the sync measure's network silenced (MODE_no_network,
the same videos and landmarks): a checkpoint trained with the expert sync loss (training/sync_expert.py)
learned against a network of the same kind, and this reading shares nothing with it.
The shipped checkpoint trained on synthetic clips only, so every corpus speech is unseen by it; a checkpoint
fine-tuned on the corpus is unseen only on the held-out speakers (acceptance.HELD_OUT_SPEAKERS), which
`--held-out-only` restricts the survey to.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROOT = Path(__file__).resolve().parents[1]
MEDIA = ROOT.parent / "shared" / "media"
MISMATCHED = 3  # other clips' speech per video: the next ones in name order


# each checkpoint mode's config changes; the puppet is no checkpoint
MODES = {"drive_on": {"lip_from_speech": True},
         "unmagnified": {"lip_from_speech": True, "mouth_magnification": 1.0},
         "drive_off": {"lip_from_speech": False},
         "puppet": None}


def survey(render, clips: list[dict], without_network: bool = False) -> tuple[list[dict], list[dict]]:
    """`render(audio) -> frames` speaking each clip's speech, measured against it and MISMATCHED others; the
    second list (empty unless `without_network`) reads the same videos with the sync measure's network
    silenced (SyncConfig.net_weight 0), for a checkpoint trained against that kind of network."""
    from metrics.sync import SyncConfig
    from metrics.video import track_landmarks
    from training.acceptance import held_out_video_figures

    keys = ("sync", "mismatched_confidence", "amplitude", "pass")
    rows, silent = [], []
    for i, clip in enumerate(clips):
        audio = clip["audio"]
        others = [clips[(i + j) % len(clips)]["audio"] for j in range(1, MISMATCHED + 1)]
        frames = render(audio)
        landmarks = track_landmarks(frames)
        figures = held_out_video_figures(frames, audio, others, landmarks=landmarks)
        rows.append({"speech": clip["name"], **{k: figures[k] for k in keys}})
        if without_network:
            figures = held_out_video_figures(frames, audio, others, sync_config=SyncConfig(net_weight=0.0),
                                             landmarks=landmarks)
            silent.append({"speech": clip["name"], **{k: figures[k] for k in keys}})
    return rows, silent


def summary(rows: list[dict], real_amplitude: float) -> dict:
    measured = [r for r in rows if r["sync"] is not None]
    amplitudes = [r["amplitude"] for r in rows if r["amplitude"] is not None]
    return {"passed": sum(r["pass"] for r in rows), "of": len(rows),
            "within_1_frame": sum(abs(r["sync"]["offset_frames"]) <= 1 for r in measured),
            "mean_confidence": round(float(np.mean([r["sync"]["confidence"] for r in measured])), 3) if measured else None,
            "mouth_amplitude_ratio": round(float(np.mean(amplitudes)) / real_amplitude, 3) if amplitudes else None}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=str(ROOT / "model" / "checkpoints" / "tiny"))
    p.add_argument("--portrait", default=str(MEDIA / "portraits" / "biden.jpg"), help="an unseen portrait")
    p.add_argument("--corpus", default=str(MEDIA / "corpus"))
    p.add_argument("--seconds", type=float, default=10.0, help="speech per clip (its first SECONDS)")
    p.add_argument("--held-out-only", action="store_true", help="only acceptance.HELD_OUT_SPEAKERS' clips")
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--per-video", action="store_true", help="include every video's figures")
    p.add_argument("--sync-without-network", action="store_true",
                   help="also read each mode with the sync measure's network silenced (MODE_no_network): the "
                        "independent reading for a checkpoint trained with the expert sync loss")
    args = p.parse_args(argv)

    import torch

    from faces import align_face
    from media import load_image
    from model import AUDIO_SAMPLE_RATE, load_checkpoint
    from training.acceptance import FPS, HELD_OUT_SPEAKERS, held_out_clips, real_held_out_figures
    from training.puppet import render_puppet_video
    from training.rollout import render_frames

    torch.manual_seed(0)
    names = HELD_OUT_SPEAKERS if args.held_out_only else tuple(p.name for p in sorted(Path(args.corpus).glob("*.mp4")))
    if len(names) <= MISMATCHED:
        print(f"error: {args.corpus}: needs more than {MISMATCHED} MP4 clips", file=sys.stderr)
        return 2
    clips = held_out_clips(Path(args.corpus), names)
    for clip in clips:  # the first SECONDS of each clip
        keep = int(round(args.seconds * clip["fps"]))
        clip["frames"] = clip["frames"][:keep]
        clip["audio"] = clip["audio"][: int(round(keep / clip["fps"] * AUDIO_SAMPLE_RATE))]
    generator = load_checkpoint(args.checkpoint).eval()
    size = generator.config.image_size
    aligned = align_face(load_image(args.portrait), size)
    portrait = np.ascontiguousarray(aligned.image)

    started = time.monotonic()
    real = [r["amplitude"] for r in real_held_out_figures(clips, size) if r["amplitude"] is not None]
    real_amplitude = float(np.mean(real))
    out: dict = {"checkpoint": args.checkpoint, "portrait": Path(args.portrait).name, "clips": len(clips),
                 "seconds_per_clip": args.seconds, "real_mouth_amplitude": round(real_amplitude, 4)}
    configured_config = generator.config
    per_video = {}
    for mode in args.modes:
        if mode == "puppet":
            render = functools.partial(render_puppet_video, portrait, np.asarray(aligned.landmarks, np.float64), fps=FPS)
        else:
            generator.config = dataclasses.replace(configured_config, **MODES[mode])
            render = functools.partial(render_frames, generator, portrait, fps=FPS)
        per_video[mode], silent = survey(render, clips, args.sync_without_network)
        out[mode] = summary(per_video[mode], real_amplitude)
        if silent:
            out[f"{mode}_no_network"] = summary(silent, real_amplitude)
    generator.config = configured_config
    out["checkpoint_lip_from_speech"] = configured_config.lip_from_speech
    out["checkpoint_mouth_magnification"] = configured_config.mouth_magnification
    out["seconds"] = round(time.monotonic() - started, 1)
    if args.per_video:
        out["per_video"] = per_video
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
