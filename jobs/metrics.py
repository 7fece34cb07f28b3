"""`eartalk metrics VIDEO [--audio FILE] [--portrait IMAGE] [--reference VIDEO] [--controls FILE] --json`

Measures one video with the same code the render pipeline runs (metrics.compute_video_metrics) and
prints one JSON object (null = not measurable / not applicable). Without --audio the video's own audio
track is used. --controls is a JSON object (or .npz) of control name -> per-frame values, null/NaN
meaning "not commanded at that frame" (yaw/pitch/roll degrees, blink eye openness 0..1).
Exit status: 0 measured, 2 bad input (the message names the file and the cause).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="eartalk metrics", description=__doc__.split("\n\n")[0])
    p.add_argument("video")
    p.add_argument("--audio", default=None, help="audio to check sync against (default: the video's own track)")
    p.add_argument("--portrait", default=None, help="portrait image for identity distances")
    p.add_argument("--reference", default=None, help="reference video for PSNR / SSIM / LMD")
    p.add_argument("--controls", default=None, help="commanded control track (.json or .npz)")
    p.add_argument("--json", action="store_true", help="print JSON (the only output format; kept for scripts)")
    return p.parse_args(argv)


def load_controls(path: str) -> dict[str, np.ndarray]:
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"{path}: controls file not found")
    try:
        if file.suffix == ".npz":
            with np.load(file) as data:
                raw = {k: data[k] for k in data.files}
        else:
            raw = json.loads(file.read_text())
            if isinstance(raw, dict) and isinstance(raw.get("controls"), dict):
                raw = raw["controls"]
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: unreadable controls ({e})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: controls must be an object of control name -> per-frame values")
    from model import CONTROL_NAMES

    unknown = sorted(set(raw) - set(CONTROL_NAMES))
    if unknown:
        raise ValueError(f"{path}: unknown control(s) {unknown}; known: {list(CONTROL_NAMES)}")
    try:
        return {k: np.array([np.nan if v is None else v for v in np.asarray(vals, dtype=object).reshape(-1)], np.float64)
                for k, vals in raw.items()}
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: control values must be numbers or null ({e})") from None


def _jsonable(value):
    if isinstance(value, (np.floating, float)):
        return None if not math.isfinite(float(value)) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from metrics import compute_video_metrics
    from metrics.video import MetricsInputError

    try:
        controls = load_controls(args.controls) if args.controls else None
        for label, path in (("video", args.video), ("audio", args.audio), ("portrait", args.portrait), ("reference", args.reference)):
            if path is not None and not Path(path).is_file():
                raise ValueError(f"{path}: {label} file not found")
        result = compute_video_metrics(args.video, args.audio, args.portrait, args.reference, controls)
    except (MetricsInputError, ValueError) as e:
        print(f"eartalk metrics: {e}", file=sys.stderr)
        return 2
    print(json.dumps({k: _jsonable(v) for k, v in result.items()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
