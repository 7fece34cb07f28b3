"""Render and record: one attempt of a night renders its manifest with pipelines.render and every row of
it lands in the ledger, rendered or not.

Storage layout of an attempt (OUTPUT/nightly/<date>/attempt-NN/)::

    manifest.jsonl   the pairs rendered by that attempt
    videos/<run>/<id>.mp4  written by the render job (<run> = the attempt's render run id)
    results/...      the render job's results Parquet

An attempt's render run id is `nightly-<date>-aNN`, so a re-run after a crash resumes the same render
(rows already published come back 'skipped'). An attempt whose results exist but never reached the
ledger (a crash between the two) is folded into the ledger before planning, so it is not rendered again.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import dataclass, field

import pandas as pd

import storage
from metrics.schema import read_results
from nightly import tracking
from nightly.catalog import HashedPair
from nightly.config import NightlyConfig
from nightly.ledger import LEDGER_SCHEMA, Ledger
from nightly.plan import NightPlan, manifest_rows, row_id, write_manifest

log = logging.getLogger("eartalk.nightly")

NO_HASHES = {"portrait_sha256": "", "audio_sha256": "", "controls_sha256": ""}  # a recovered attempt's files


@dataclass
class Attempt:
    """What one invocation rendered: nothing when the plan had nothing to render or record."""

    manifest_uri: str | None = None  # None: no pair rendered (none to render, or all broken)
    render_runs: list[str] = field(default_factory=list)  # MLflow run ids of the render job


def file_hashes(hashed: list[HashedPair]) -> dict[str, dict[str, str]]:
    """input hash -> the ledger's per-file hash columns."""
    return {h.input_hash: {"portrait_sha256": h.portrait_sha256, "audio_sha256": h.audio_sha256,
                           "controls_sha256": h.controls_sha256 or ""} for h in hashed}


def attempt_results(config: NightlyConfig, attempt: int) -> pd.DataFrame:
    """The render job's results of one attempt; empty when it never wrote them."""
    uri = storage.join(config.attempt_uri(attempt), "results")
    return read_results(uri) if storage.exists(uri) else pd.DataFrame()


def render_attempt(config: NightlyConfig, manifest_uri: str, output_uri: str, run_id: str):
    """Run pipelines.render on one manifest; the nightly applies its own failure threshold afterwards."""
    from pipelines.render import RenderConfig, run_render  # imports the model (torch): only when rendering

    defaults = {"checkpoint": config.checkpoint, "actors": config.actors, "gpus_per_actor": config.gpus_per_actor}
    return run_render(RenderConfig(
        manifest_uri=manifest_uri, output_uri=output_uri, run_id=run_id, tracking_uri=config.tracking_uri,
        max_failed_fraction=1.0,  # never abort mid-night: every row must reach the ledger
        allowed_roots=(config.catalog_uri,),  # the manifest sits in the output; its rows read the catalog
        mlflow_tags={tracking.TAG_DATE: config.night, tracking.TAG_CATALOG: config.catalog_uri,
                     "eartalk.nightly.attempt": output_uri.rstrip("/").rsplit("-", 1)[-1]},
        **{k: v for k, v in defaults.items() if v is not None}))  # None: the render job's own default


def ledger_rows_for(manifest: list[dict], results: pd.DataFrame, night: str, attempt: int, run_id: str,
                    render_mlflow_run: str | None, hashes: dict[str, dict[str, str]]) -> pd.DataFrame:
    """One ledger row per manifest row; a row the render left no result for counts as failed. A row the
    render 'skipped' was published by an earlier try of the same attempt (same run id, resumed after a
    crash): its video exists, so it is recorded as 'ok', or the next night would render it again."""
    by_id = {r["id"]: r for r in results.to_dict("records")} if not results.empty else {}
    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    rows = []
    for entry in manifest:
        result = by_id.get(entry["id"], {})
        status = result.get("status") or "failed"
        status = "ok" if status == "skipped" else status
        rows.append({
            "pair_id": entry["pair_id"], "item": entry["item"], "language": entry["language"],
            "input_hash": entry["input_hash"], **hashes[entry["input_hash"]],
            "night": night, "attempt": attempt, "id": entry["id"],
            "output_uri": result.get("output_uri") or "", "status": status,
            "error": result.get("error") or ("" if result else "the render left no result row"),
            "model_version": result.get("model_version") or "", "run_id": run_id,
            "mlflow_run_id": render_mlflow_run or "", "recorded_at": now,
        })
    return pd.DataFrame(rows, columns=LEDGER_SCHEMA.names)


def broken_rows_for(plan: NightPlan, attempt: int, run_id: str, hashes: dict[str, dict[str, str]]) -> pd.DataFrame:
    """One failed ledger row per pair the catalog says cannot render, its problem as the error."""
    entries = [{"id": row_id(h), "pair_id": h.pair.pair_id, "item": h.pair.item, "language": h.pair.language,
                "input_hash": h.input_hash} for h in plan.broken]
    causes = pd.DataFrame([{"id": e["id"], "status": "failed", "error": h.problem}
                           for e, h in zip(entries, plan.broken)])
    return ledger_rows_for(entries, causes, plan.night, attempt, run_id, None, hashes)


def _read_manifest(uri: str) -> list[dict]:
    return [json.loads(line) for line in storage.read_bytes(uri).decode().splitlines() if line.strip()]


def recover_unrecorded_attempts(config: NightlyConfig, ledger: Ledger) -> list[int]:
    """Fold into the ledger attempts of tonight whose results exist but were never recorded."""
    recorded = set(ledger.night(config.night)["attempt"].astype(int))
    fs, night_path = storage.filesystem(config.night_uri)
    recovered = []
    if not fs.isdir(night_path):
        return recovered
    for path in sorted(fs.ls(night_path, detail=False)):
        name = path.rstrip("/").rsplit("/", 1)[-1]
        if not name.startswith("attempt-") or int(name.removeprefix("attempt-")) in recorded:
            continue
        attempt = int(name.removeprefix("attempt-"))
        manifest_uri = storage.join(config.attempt_uri(attempt), "manifest.jsonl")
        results = attempt_results(config, attempt)
        if results.empty or not storage.exists(manifest_uri):
            continue  # the render never finished: its rows are planned again
        manifest = _read_manifest(manifest_uri)
        hashes = {m["input_hash"]: NO_HASHES for m in manifest}
        run_id = str(results["run_id"].iloc[0]) if "run_id" in results else ""
        ledger.record(ledger_rows_for(manifest, results, config.night, attempt, run_id, None, hashes))
        recovered.append(attempt)
    return recovered


def render_and_record(config: NightlyConfig, plan: NightPlan, hashes: dict[str, dict[str, str]],
                      ledger: Ledger) -> Attempt:
    """Render what is new, changed or to retry as one attempt into the night's dated prefix; pairs the
    catalog says cannot render are recorded as failed in the same attempt, and the rest renders."""
    if not (plan.to_render or plan.broken):
        return Attempt()
    number = ledger.next_attempt(config.night)
    run_id = f"nightly-{config.night}-a{number:02d}"
    output_uri = config.attempt_uri(number)
    attempt = Attempt()
    recorded = []
    if plan.to_render:
        rows = manifest_rows(plan)
        attempt.manifest_uri = storage.join(output_uri, "manifest.jsonl")
        write_manifest(rows, attempt.manifest_uri)
        outcome = render_attempt(config, attempt.manifest_uri, output_uri, run_id)
        if outcome.mlflow_run_id:
            attempt.render_runs.append(outcome.mlflow_run_id)
        recorded.append(ledger_rows_for(rows, attempt_results(config, number), config.night, number, run_id,
                                        outcome.mlflow_run_id, hashes))
    if plan.broken:
        log.warning("night %s: %d pairs cannot render: %s", config.night, len(plan.broken),
                    "; ".join(h.problem for h in plan.broken))
        recorded.append(broken_rows_for(plan, number, run_id, hashes))
    ledger.record(pd.concat(recorded, ignore_index=True))
    return attempt
