"""Export the trend of every nightly metric over the last N nights to trends.csv and trends.png.

    .venv/bin/python scripts/export_trends.py --tracking-uri http://mlflow:5000 --nights 30 --out out/trends \\
        [--by language|model_version] [--catalog s3://eartalk-catalog/dubbing]

Reads the nightly runs with the query documented in nightly/tracking.py (docs/nightly.md).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # runnable from a checkout without installing the package
    sys.path.insert(0, str(REPO))

from nightly.dashboards import GROUP_TAGS, export_trends  # noqa: E402
from nightly.tracking import EXPERIMENT  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI)")
    parser.add_argument("--nights", type=int, default=30, help="how many of the latest nights (default 30)")
    parser.add_argument("--out", type=Path, required=True, help="folder for trends.csv and trends.png")
    parser.add_argument("--by", choices=sorted(GROUP_TAGS), default="language", help="one line per ...")
    parser.add_argument("--catalog", help="only the nights of this catalog URI")
    parser.add_argument("--experiment", default=EXPERIMENT)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.nights < 1:
        print("--nights must be at least 1", file=sys.stderr)
        return 2
    csv_path, png_path = export_trends(args.tracking_uri, args.out, args.nights, args.by, args.catalog,
                                       args.experiment)
    print(f"wrote {csv_path} and {png_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
