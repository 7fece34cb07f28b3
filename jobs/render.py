"""`eartalk render`: render a manifest to MP4s + a results Parquet, tracked in MLflow.

Locally (starts a local Ray):
    eartalk render examples/manifest.jsonl --output out/demo --allow-root /usr/share/codec2/raw

On a cluster (loopback here; use your head's dashboard address):
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python -m jobs.render s3://bucket/manifests/today.jsonl --output s3://bucket/renders/today \
        --actors 4 --gpus-per-actor 1 --tracking-uri http://mlflow:5000

Input policy: rows may read local paths and s3:// under the manifest's own folder; widen it with
--allow-root URI and --allow-scheme SCHEME (both repeatable). --dry-run checks the checkpoint, the manifest
and the policy and prints what would render / skip / fail, without starting Ray.

S3 endpoint and credentials come from AWS_ENDPOINT_URL / AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or
--s3-endpoint) and are never logged. Exit codes: 0 all rows ok (or failures within
--max-failed-fraction), 1 failures beyond it or an output store unreachable when the results are written (a
local copy is kept; the message says where), 2 usage or configuration errors, 130 / 143 stopped by SIGINT /
SIGTERM (the finished rows are recorded; rerun with the same --run-id to finish). With --gpus-per-actor
and no GPU in the cluster yet, a KubeRay cluster is left to autoscale its GPU workers up from 0 (see
gpu_shortfall); a machine without GPUs or an autoscaler is refused with 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

log = logging.getLogger("eartalk.render")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="eartalk render", description="Render a manifest of (portrait, audio, controls) rows.")
    p.add_argument("manifest", help="manifest URI (.jsonl, .csv or .parquet; local path, file:// or s3://)")
    p.add_argument("--output", required=True, help="output URI: videos/, state/ and results/ are written under it")
    p.add_argument("--run-id", help="run id; reuse one to resume (rows already published are skipped)")
    p.add_argument("--checkpoint", help="checkpoint folder URI (model.safetensors + config.json); default: the shipped tiny one")
    p.add_argument("--actors", type=int, help="generator actors (default: one per core for CPU actors, less a core "
                                              "for the metrics, and no more than the rows need; one GPU actor)")
    p.add_argument("--gpus-per-actor", type=float, default=0.0, help="GPUs per actor (0 = CPU actors)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default sqlite:///mlflow.db)")
    p.add_argument("--max-failed-fraction", type=float, default=0.0,
                   help="exit 0 while failed rows / all rows stays at or below this (default 0)")
    p.add_argument("--s3-endpoint", help="S3 endpoint URL (default $AWS_ENDPOINT_URL)")
    p.add_argument("--no-metrics", action="store_true", help="skip the per-video quality metrics stage")
    p.add_argument("--experiment", default="eartalk-render", help="MLflow experiment name")
    p.add_argument("--framing", choices=("portrait", "crop"), default="portrait",
                   help="portrait: the face composited into the whole portrait (default); crop: the model's aligned "
                        "face crop alone. A manifest's `framing` column overrides it per row")
    p.add_argument("--max-side", type=int, default=1024,
                   help="longest side in px of a portrait-framed video (default 1024; smaller portraits keep their size)")
    p.add_argument("--max-seconds", type=float, metavar="S",
                   help="fail any row whose speech is longer than S seconds, naming its length, before rendering it "
                        "(default: no cap); the other rows go on")
    p.add_argument("--allow-root", action="append", default=[], metavar="URI",
                   help="a folder or URI prefix rows may read besides the manifest's own folder (repeatable)")
    p.add_argument("--allow-scheme", action="append", default=[], metavar="SCHEME",
                   help="a URI scheme rows may use besides local paths and s3:// (repeatable, e.g. https)")
    p.add_argument("--dry-run", action="store_true",
                   help="validate the checkpoint, the manifest and the input policy; print what would render, "
                        "skip or fail (JSON lines) without starting Ray; exit 1 when failures would exceed "
                        "--max-failed-fraction")
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    from pipelines.render import ConfigError, RenderConfig, run_render  # no torch here: the driver needs none

    # preflight: configuration problems exit 2 before any work starts
    try:
        config = RenderConfig(
            manifest_uri=args.manifest, output_uri=args.output, run_id=args.run_id, checkpoint=args.checkpoint,
            actors=args.actors, gpus_per_actor=args.gpus_per_actor, tracking_uri=args.tracking_uri,
            max_failed_fraction=args.max_failed_fraction, s3_endpoint=args.s3_endpoint,
            metrics=not args.no_metrics, experiment=args.experiment,
            allowed_roots=tuple(args.allow_root), allowed_schemes=tuple(args.allow_scheme),
            framing=args.framing, max_side=args.max_side, max_seconds=args.max_seconds,
        )
        if args.dry_run:
            return dry_run(config)
        if args.gpus_per_actor > 0:
            import ray

            if not ray.is_initialized():
                ray.init()
            problem = gpu_shortfall(args.gpus_per_actor)
            if problem:
                raise ConfigError(problem)
        print(f"eartalk render: manifest={config.manifest_uri} output={config.output_uri} "
              f"run_id={config.run_id or '(new)'} checkpoint={config.checkpoint or '(shipped default)'} "
              f"actors={config.actors or 'auto'} gpus_per_actor={config.gpus_per_actor}", flush=True)
        outcome = run_render(config)
    except ConfigError as e:  # a checkpoint refused by its check included (pipelines.render.checkpoint_facts)
        print(f"eartalk render: error: {e}", file=sys.stderr)
        return 2
    print(outcome.summary_table(), flush=True)
    if outcome.store_error:
        print(f"eartalk render: error: {outcome.store_error}", file=sys.stderr)
    if outcome.interrupted:
        print(f"eartalk render: stopped by {outcome.interrupted}; rows not finished are failed 'interrupted'; "
              f"rerun with --run-id {outcome.run_id} to finish the job", file=sys.stderr)
    elif outcome.exit_code:
        print(f"eartalk render: failed rows exceed --max-failed-fraction {config.max_failed_fraction}", file=sys.stderr)
    return outcome.exit_code


def dry_run(config) -> int:
    """What `run_render(config)` would do with each row, one JSON line per row, then a summary line."""
    import json

    from pipelines.render import plan_render

    plan = plan_render(config)
    for entry in plan.rows:
        print(json.dumps(entry), flush=True)
    print(json.dumps({"run_id": plan.run_id, "model_version": plan.model_version, "counts": plan.counts}), flush=True)
    return plan.exit_code


def gpu_shortfall(gpus_per_actor: float) -> str | None:
    """Why no actor with `gpus_per_actor` GPUs can ever start on the connected cluster, or None.

    GPUs the cluster has now are enough. Under KubeRay the GPU worker group starts at 0 replicas and its
    autoscaler adds nodes while the actors wait, so there a shortfall is only a warning; a machine that
    neither has the GPUs nor runs under KubeRay is refused.
    """
    import ray

    has = ray.cluster_resources().get("GPU", 0)
    if has >= gpus_per_actor:
        return None
    if os.environ.get("RAY_USAGE_STATS_KUBERAY_IN_USE") == "1":  # set by KubeRay in every Ray container
        log.warning("the cluster has %g GPUs now; waiting for KubeRay's autoscaler to add GPU workers (a cluster "
                    "without autoscaling never will: stop the job and pass --gpus-per-actor 0)", has)
        return None
    return (f"--gpus-per-actor {gpus_per_actor:g} but the Ray cluster has {has:g} GPUs and no autoscaler to add "
            f"any (use --gpus-per-actor 0 for CPU actors)")


if __name__ == "__main__":
    sys.exit(main())
