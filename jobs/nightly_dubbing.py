"""`eartalk nightly`: tonight's new or changed (portrait, dubbed audio) pairs of a catalog, rendered, recorded
in the ledger, compared with the previous night in MLflow, reported.

    eartalk nightly --catalog s3://eartalk-catalog/dubbing --output s3://eartalk-renders \\
        --tracking-uri http://mlflow:5000 [--date 2026-11-24] [--checkpoint URI] [--actors N] [--gpus-per-actor G]

On a Ray cluster (what infra/k8s/raycronjob-nightly.yaml runs every night):

    ray job submit --address http://eartalk-head-svc:8265 -- python -m jobs.nightly_dubbing \\
        --catalog s3://eartalk-catalog/dubbing --output s3://eartalk-renders --tracking-uri http://mlflow:5000

Exit status: 0 ok (or nothing new), 1 regression against the previous night or failures above
--max-failed-fraction, 2 bad arguments or inputs (a missing catalog or checkpoint, a malformed catalog line,
an unreadable ledger, ...), refused before anything is written where they can be checked up front.
Re-running the same --date resumes and never renders a pair twice (see nightly/runner.py). A --baseline
that names no run, or a baseline whose results cannot be read, exits 2 after the night is recorded.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import sys

from metrics.compare import CompareError
from metrics.schema import SchemaError
from nightly.catalog import CatalogError
from nightly.config import NightlyConfig
from nightly.ledger import LedgerError
from nightly.plan import DEFAULT_MAX_ATTEMPTS
from nightly.runner import run_nightly, summary_text
from storage import exists


def _date(value: str) -> str:
    try:
        return dt.date.fromisoformat(value).isoformat()
    except ValueError:
        raise argparse.ArgumentTypeError(f"--date must be YYYY-MM-DD, got {value!r}") from None


def _fraction(value: str) -> float:
    number = float(value)
    if not 0.0 <= number <= 1.0:
        raise argparse.ArgumentTypeError(f"must lie in [0, 1], got {value}")
    return number


def _count(minimum: int):
    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {value!r}") from None
        if number < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {number}")
        return number
    return parse


def _non_negative(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {value!r}") from None
    if not number >= 0.0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return number


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="eartalk nightly", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--catalog", required=True, help="catalog folder: local path or s3:// prefix")
    parser.add_argument("--output", required=True, help="output root; the night goes to OUTPUT/nightly/DATE/")
    parser.add_argument("--date", type=_date, default=dt.datetime.now(dt.timezone.utc).date().isoformat(),
                        help="the night, YYYY-MM-DD (default: today, UTC)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI or ./mlruns)")
    parser.add_argument("--experiment", default="eartalk-nightly", help="MLflow experiment of the night runs")
    parser.add_argument("--checkpoint", help="model checkpoint URI (default: the render job's shipped one)")
    parser.add_argument("--actors", type=_count(1), help="render actors (default: the render job's)")
    parser.add_argument("--gpus-per-actor", type=_non_negative,
                        help="GPUs per render actor (default: the render job's)")
    parser.add_argument("--max-failed-fraction", type=_fraction, default=0.05,
                        help="exit 1 when more than this fraction of tonight's rows failed (default 0.05)")
    parser.add_argument("--max-attempts", type=_count(1), default=DEFAULT_MAX_ATTEMPTS,
                        help="failed renders of the same inputs before they are given up (default %(default)s)")
    parser.add_argument("--baseline", help="MLflow run id to compare with (default: the previous night's run)")
    parser.add_argument("--report-rows", type=_count(0), default=6, help="worst rows shown in the HTML report")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    log = logging.getLogger("eartalk.nightly")

    # Preflight: fail fast on inputs before anything starts Ray or renders.
    if not exists(args.catalog):
        print(f"eartalk nightly: catalog {args.catalog} does not exist", file=sys.stderr)
        return 2
    from model import CheckpointError  # imports torch: after the cheap checks
    from pipelines.render import ConfigError, resolve_checkpoint

    try:
        checkpoint = resolve_checkpoint(args.checkpoint)  # ConfigError when the shipped default is missing
    except ConfigError as error:
        print(f"eartalk nightly: {error}", file=sys.stderr)
        return 2
    if not exists(checkpoint):
        print(f"eartalk nightly: checkpoint {checkpoint} does not exist", file=sys.stderr)
        return 2
    config = NightlyConfig(
        catalog_uri=args.catalog, output_uri=args.output, night=args.date, tracking_uri=args.tracking_uri,
        experiment=args.experiment, checkpoint=args.checkpoint, actors=args.actors,
        gpus_per_actor=args.gpus_per_actor, max_failed_fraction=args.max_failed_fraction,
        max_attempts=args.max_attempts, baseline_run=args.baseline, report_rows=args.report_rows)
    log.info("nightly %s: catalog %s -> %s (tracking %s, checkpoint %s)", config.night, config.catalog_uri,
             config.night_uri, config.tracking_uri or "default", config.checkpoint or "default")
    try:
        outcome = run_nightly(config)
    except (CatalogError, LedgerError, ConfigError, CheckpointError, CompareError, SchemaError) as error:
        # a bad catalog, ledger, checkpoint or baseline
        print(f"eartalk nightly: {error}", file=sys.stderr)
        return 2
    print(summary_text(outcome))
    return outcome.exit_code


if __name__ == "__main__":
    sys.exit(main())
