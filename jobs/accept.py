"""`eartalk accept`: acceptance of a trained checkpoint on held-out real inputs (training/acceptance.py).

    eartalk accept --checkpoint model/checkpoints/tiny --output out/acceptance

renders, with the checkpoint, a portrait that was never in training (default biden.jpg) speaking
held-out real speech (default english.wav), and judges lip sync, identity and drift over a long video,
a commanded yaw sweep and commanded blinks. On the held-out speakers of the real corpus (MEDIA/corpus,
training.acceptance.HELD_OUT_SPEAKERS, or --held-out-speakers) it also judges how far the mouth moves
(mouth-motion amplitude against the real speakers') and sync on their speech with unseen portraits;
`--no-held-out` skips those two. With `--more-speech CLIP ...` the sync bar is also measured on more
clips (`sync_survey`, outside the pass).

It runs in one process on one machine, without Ray (CPU is enough); run it from the repository root
beside ../shared/media, or name the media folder with --media.

Prints one JSON object (also written to OUTPUT/acceptance.json) with every figure and verdict.
Exit status: 0 every check passes, 1 one fails, 2 bad input (the message names the file).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

log = logging.getLogger("eartalk.accept")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from training.acceptance import BLINK_SECONDS, HELD_OUT_SPEAKERS, LONG_SECONDS

    p = argparse.ArgumentParser(prog="eartalk accept", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default="model/checkpoints/tiny")
    p.add_argument("--media", type=Path, default=Path("../shared/media"),
                   help="the real media folder: the default portrait and speech are under it")
    p.add_argument("--portrait", type=Path, default=None, help="held-out portrait (default MEDIA/portraits/biden.jpg)")
    p.add_argument("--speech", type=Path, default=None, help="held-out speech (default MEDIA/speech/english.wav)")
    p.add_argument("--output", type=Path, default=Path("out/acceptance"))
    p.add_argument("--long-seconds", type=float, default=LONG_SECONDS, help="length of the identity / drift video")
    p.add_argument("--blink-seconds", type=float, default=BLINK_SECONDS, help="length of the blink video")
    p.add_argument("--more-speech", type=Path, nargs="*", default=[],
                   help="more speech clips for a sync survey (reported under sync_survey, not part of the pass)")
    p.add_argument("--corpus", type=Path, default=None,
                   help="real corpus folder holding the held-out speakers' videos (default MEDIA/corpus)")
    p.add_argument("--held-out-speakers", nargs="+", default=list(HELD_OUT_SPEAKERS),
                   help="file names of the corpus videos whose speakers no training run saw (at least 2: each "
                        "one's speech is the others' mismatched audio)")
    p.add_argument("--no-held-out", action="store_true", help="skip the held-out speakers' amplitude and sync checks")
    args = p.parse_args(argv)
    args.corpus = None if args.no_held_out else (args.corpus or args.media / "corpus")
    args.portrait = args.portrait or args.media / "portraits" / "biden.jpg"
    args.speech = args.speech or args.media / "speech" / "english.wav"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    missing = [str(path) for path in [args.portrait, args.speech, *args.more_speech] if not path.is_file()]
    if args.corpus is not None:
        missing += [str(args.corpus / name) for name in args.held_out_speakers if not (args.corpus / name).is_file()]
        if len(args.held_out_speakers) < 2:
            print("eartalk accept: --held-out-speakers needs at least 2 videos (each one's speech is the "
                  "others' mismatched audio)", file=sys.stderr)
            return 2
    if missing:
        print(f"eartalk accept: no such file: {', '.join(missing)}", file=sys.stderr)
        return 2
    from training.acceptance import run_acceptance

    log.info("accepting %s: portrait %s, speech %s, output %s", args.checkpoint, args.portrait, args.speech, args.output)
    report = run_acceptance(args.checkpoint, args.portrait, args.speech, args.output, args.long_seconds,
                            args.more_speech, args.blink_seconds, args.corpus, tuple(args.held_out_speakers))
    print(json.dumps(report, indent=2))
    return 0 if report["all_pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
