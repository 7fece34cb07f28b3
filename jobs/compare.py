"""`eartalk compare RUN --baseline RUN_OR_TAG [--thresholds FILE] [--tracking-uri URI]`

Compares RUN's per-video metrics with the baseline's (both found through their `eartalk.results_uri`
MLflow tags), prints the comparison as JSON ({"regressed", "metrics": [{metric, baseline, current, delta,
threshold, direction, regressed}], "timings": [{metric, baseline, current, delta}] (seconds, never
judged), "worst_rows", "report"}), and logs compare.json, report.md and
distributions.png to RUN's artifacts under compare/<baseline run id>/. RUN_OR_TAG is a run id, or the
value of an `eartalk.tag` / `eartalk.baseline` tag, or a run name (the newest such run).
Exit status: 1 when a metric regressed beyond its threshold, 0 otherwise, 2 on bad input.
"""

from __future__ import annotations

import argparse
import json
import sys


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="eartalk compare", description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="MLflow run id (or tag value / run name) to check")
    p.add_argument("--baseline", required=True, help="baseline run id, eartalk.tag value or run name")
    p.add_argument("--thresholds", default=None, help="JSON object: metric -> allowed worsening (metric units)")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: MLFLOW_TRACKING_URI / ./mlruns)")
    p.add_argument("--no-log", action="store_true", help="do not log the report to MLflow")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from metrics.compare import CompareError, compare_runs, load_thresholds, log_report
    from metrics.schema import SchemaError

    try:
        comparison = compare_runs(args.run, args.baseline, args.tracking_uri, load_thresholds(args.thresholds))
    except (CompareError, SchemaError) as e:
        print(f"eartalk compare: {e}", file=sys.stderr)
        return 2
    out = comparison.to_json()
    out["report"] = None if args.no_log else log_report(comparison, args.tracking_uri)
    print(json.dumps(out, indent=2))
    return 1 if comparison.regressed else 0


if __name__ == "__main__":
    sys.exit(main())
