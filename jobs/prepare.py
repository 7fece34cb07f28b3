"""`eartalk prepare`: a real talking-head video corpus (HDTF / VoxCeleb-style folders of MP4s) into
training shards, as a Ray Data job (training/prepare.py).

    eartalk prepare ../shared/media/corpus out/corpus-shards --image-size 128 --clip-frames 50

On a Ray cluster (one task per video, fanned out over the workers; the output folder must be on
storage every worker writes to):

    ray job submit --working-dir . -- python -m jobs.prepare s3://bucket/hdtf/ /data/hdtf-shards \\
        --image-size 128 --clip-frames 50

The output folder is what `eartalk train --dataset` reads. Exit status: 0 shards written, 2 bad input
(no such folder or prefix, no video in it, no usable clip).
"""

from __future__ import annotations

import argparse
import logging
import sys

log = logging.getLogger("eartalk.prepare")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="eartalk prepare", description=__doc__.split("\n\n")[0])
    p.add_argument("input", help="folder or s3:// prefix of MP4s")
    p.add_argument("output", help="local folder for the shards")
    p.add_argument("--image-size", type=int, default=128, help="pixels, side of the aligned face crop")
    p.add_argument("--fps", type=float, default=25.0, help="training frame rate (frames are picked to it)")
    p.add_argument("--clip-frames", type=int, default=50, help="frames per clip")
    p.add_argument("--videos-per-shard", type=int, default=4)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    from storage import StorageOptions
    from training.prepare import list_videos, prepare_corpus

    # read once here: workers of an existing cluster do not inherit this shell's S3 settings
    options = StorageOptions.from_env()
    try:
        videos = list_videos(args.input, options)
    except FileNotFoundError as e:
        print(f"eartalk prepare: {e}", file=sys.stderr)
        return 2
    log.info("preparing %d videos from %s into %s (%d px, %g fps, %d frames per clip)", len(videos), args.input,
             args.output, args.image_size, args.fps, args.clip_frames)
    try:
        summary = prepare_corpus(args.input, args.output, args.image_size, args.fps, args.clip_frames,
                                 args.videos_per_shard, options)
    except ValueError as e:
        print(f"eartalk prepare: {e}", file=sys.stderr)
        return 2
    print(f"{summary['clips']} clips in {len(summary['shards'])} shards; {len(summary['errors'])} errors")
    for line in summary["errors"]:
        print("  " + line, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
