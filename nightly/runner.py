"""One nightly dubbing run: catalog -> tonight's manifest -> render -> ledger -> MLflow -> compare -> report.

Storage layout under OUTPUT (local path or s3://)::

    OUTPUT/nightly/ledger.parquet                     every render attempt of every pair (nightly.ledger)
    OUTPUT/nightly/<date>/attempt-01/manifest.jsonl   the pairs rendered by that attempt
    OUTPUT/nightly/<date>/attempt-01/videos/<id>.mp4  written by the render job (pipelines.render)
    OUTPUT/nightly/<date>/attempt-01/results/...      results Parquet of the render job
    OUTPUT/nightly/<date>/results.parquet             the night's rows over all attempts (latest per id)
    OUTPUT/nightly/<date>/report.html                 the run report, videos linked relatively

Re-running a night resumes: the ledger marks what rendered ok, so the next attempt renders only what is
left (failed rows are retried up to max_attempts); an attempt whose results exist but never reached the
ledger (a crash between the two) is folded into the ledger before planning, so it is not rendered again.
The MLflow night run of that date is reopened rather than duplicated.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import json
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from mlflow.tracking import MlflowClient

from nightly import tracking
from nightly.catalog import hash_pairs, read_catalog
from nightly.ledger import LEDGER_SCHEMA, Ledger
from nightly.plan import DEFAULT_MAX_ATTEMPTS, NightPlan, manifest_rows, plan_night, row_id, write_manifest
from nightly.report import ReportInputs, metric_columns_of, render_html
import storage

log = logging.getLogger("eartalk.nightly")

MAX_EMBEDDED_VIDEO_BYTES = 16 << 20  # larger clips are copied beside the MLflow report instead
TREND_NIGHTS = 30  # nights shown in the report's trend plot


@dataclass
class NightlyConfig:
    catalog_uri: str
    output_uri: str
    night: str = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc).date().isoformat())  # YYYY-MM-DD
    tracking_uri: str | None = None
    experiment: str = tracking.EXPERIMENT
    checkpoint: str | None = None        # None: the render job's default (shipped) checkpoint
    actors: int | None = None            # render actors; None: the render job's default
    gpus_per_actor: float | None = None  # None: the render job's default
    max_failed_fraction: float = 0.05    # of tonight's rows; above it the nightly exits non-zero
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    baseline_run: str | None = None      # MLflow run to compare with; None: the previous night
    report_rows: int = 6                 # worst rows shown with their videos

    def __post_init__(self) -> None:
        dt.date.fromisoformat(self.night)  # ValueError on anything but YYYY-MM-DD
        assert 0.0 <= self.max_failed_fraction <= 1.0, self.max_failed_fraction
        assert self.max_attempts >= 1, self.max_attempts

    @property
    def nightly_uri(self) -> str:
        return storage.join(self.output_uri, "nightly")

    @property
    def night_uri(self) -> str:
        return storage.join(self.nightly_uri, self.night)

    @property
    def ledger_uri(self) -> str:
        return storage.join(self.nightly_uri, "ledger.parquet")

    def attempt_uri(self, attempt: int) -> str:
        return storage.join(self.night_uri, f"attempt-{attempt:02d}")


@dataclass
class NightlyOutcome:
    night: str
    counts: dict[str, int]            # plan buckets: new, changed, retry, unchanged, given_up
    rendered_ok: int
    rendered_failed: int
    failed_fraction: float
    regressed: bool
    regressed_metrics: list[str]
    mlflow_run_id: str | None
    baseline_run_id: str | None
    results_uri: str | None
    report_uri: str | None
    model_version: str | None
    max_failed_fraction: float

    @property
    def exit_code(self) -> int:
        return 1 if self.regressed or self.status == "failures" else 0

    @property
    def status(self) -> str:
        if self.rendered_ok + self.rendered_failed == 0:
            return "nothing-new"
        if self.failed_fraction > self.max_failed_fraction:
            return "failures"
        return "regression" if self.regressed else "ok"


# ------------------------------------------------------------------ render (pipelines.render contract)


def render_attempt(config: NightlyConfig, manifest_uri: str, output_uri: str, run_id: str):
    """Run pipelines.render on one manifest; the nightly applies its own failure threshold afterwards."""
    from pipelines.render import RenderConfig, run_render

    wanted = {
        "manifest_uri": manifest_uri, "output_uri": output_uri, "run_id": run_id,
        "checkpoint": config.checkpoint, "actors": config.actors, "gpus_per_actor": config.gpus_per_actor,
        "tracking_uri": config.tracking_uri,
        "max_failed_fraction": 1.0,  # never abort mid-night: every row must reach the ledger
        "mlflow_tags": {tracking.TAG_DATE: config.night, tracking.TAG_CATALOG: config.catalog_uri,
                        "eartalk.nightly.attempt": output_uri.rstrip("/").rsplit("-", 1)[-1]},
    }
    names = {f.name for f in dataclasses.fields(RenderConfig)}
    if "mlflow_tags" not in names:
        wanted.pop("mlflow_tags")
    aliases = {"manifest_uri": ("manifest_uri", "manifest"), "output_uri": ("output_uri", "output"),
               "checkpoint": ("checkpoint", "checkpoint_uri"), "actors": ("actors", "num_actors")}
    kwargs = {}
    for key, value in wanted.items():
        if value is None:
            continue
        name = next((n for n in aliases.get(key, (key,)) if n in names), None)
        if name is None:
            raise TypeError(f"pipelines.render.RenderConfig has no field for {key} (fields: {sorted(names)})")
        kwargs[name] = value
    return run_render(RenderConfig(**kwargs))


def read_results(results_uri: str) -> pd.DataFrame:
    """All results Parquet files under a folder (or one file), as one DataFrame."""
    fs, path = storage.filesystem(results_uri)
    files = [path] if fs.isfile(path) else sorted(fs.glob(f"{path.rstrip('/')}/**/*.parquet"))
    frames = []
    for file in files:
        with fs.open(file, "rb") as f:
            frames.append(pq.read_table(f).to_pandas())
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def attempt_results(config: NightlyConfig, attempt: int) -> pd.DataFrame:
    uri = storage.join(config.attempt_uri(attempt), "results")
    return read_results(uri) if storage.exists(uri) else pd.DataFrame()


def ledger_rows_for(manifest: list[dict], results: pd.DataFrame, config: NightlyConfig, attempt: int,
                    run_id: str, render_mlflow_run: str | None, hashes: dict[str, dict]) -> pd.DataFrame:
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
            "night": config.night, "attempt": attempt, "id": entry["id"],
            "output_uri": result.get("output_uri") or "", "status": status,
            "error": result.get("error") or ("" if result else "the render left no result row"),
            "model_version": result.get("model_version") or "", "run_id": run_id,
            "mlflow_run_id": render_mlflow_run or "", "recorded_at": now,
        })
    return pd.DataFrame(rows, columns=LEDGER_SCHEMA.names)


def broken_rows_for(plan: NightPlan, config: NightlyConfig, attempt: int, run_id: str,
                    hashes: dict[str, dict]) -> pd.DataFrame:
    """One failed ledger row per pair the catalog says cannot render, its problem as the error."""
    entries = [{"id": row_id(h), "pair_id": h.pair.pair_id, "item": h.pair.item, "language": h.pair.language,
                "input_hash": h.input_hash} for h in plan.broken]
    causes = pd.DataFrame([{"id": e["id"], "status": "failed", "error": h.problem}
                           for e, h in zip(entries, plan.broken)])
    return ledger_rows_for(entries, causes, config, attempt, run_id, None, hashes)


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
        hashes = {m["input_hash"]: {"portrait_sha256": "", "audio_sha256": "", "controls_sha256": ""}
                  for m in manifest}
        run_id = str(results["run_id"].iloc[0]) if "run_id" in results else ""
        ledger.record(ledger_rows_for(manifest, results, config, attempt, run_id, None, hashes))
        recovered.append(attempt)
    return recovered


# ------------------------------------------------------------------ the night's results


def night_results(config: NightlyConfig, ledger: Ledger) -> pd.DataFrame:
    """Tonight's rows over all attempts, the latest attempt per id, with ledger columns joined in."""
    entries = ledger.night(config.night)
    frames = []
    for attempt in sorted(set(entries["attempt"].astype(int))):
        results = attempt_results(config, attempt)
        if not results.empty:
            frames.append(results.assign(attempt=attempt))
    frames = [f.dropna(axis=1, how="all") for f in frames]  # all-NA columns would fix the dtype to object
    results = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["id", "status", "attempt"])
    latest = entries.sort_values("attempt").drop_duplicates("id", keep="last")
    keep = latest[["id", "pair_id", "item", "language", "input_hash", "attempt", "status", "error"]]
    merged = keep.merge(results.drop(columns=[c for c in ("pair_id", "item", "language", "input_hash", "status",
                                                          "error") if c in results]),
                        on=["id", "attempt"], how="left")
    return merged.reset_index(drop=True)


def write_results(frame: pd.DataFrame, uri: str) -> None:
    """The night's rows as a results file of metrics.schema (versioned; tags, attempt included, as strings),
    so `eartalk compare` and metrics.aggregate read it like any render's results."""
    from metrics.schema import BASE_COLUMNS, METRIC_COLUMNS, results_schema

    known = BASE_COLUMNS | METRIC_COLUMNS
    tags = [c for c in frame.columns if c not in known]
    schema = results_schema(tags)
    columns = {}
    for field in schema:
        if field.name not in frame:
            columns[field.name] = pa.nulls(len(frame), field.type)
        elif field.name in known:
            values = frame[field.name].astype(object).where(frame[field.name].notna(), None)
            columns[field.name] = pa.array(values.tolist(), type=field.type, from_pandas=True)
        else:
            values = frame[field.name].where(frame[field.name].notna(), None)
            columns[field.name] = pa.array([None if v is None else str(v) for v in values], type=pa.string())
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pydict(columns, schema=schema), buffer)
    storage.publish_bytes(buffer.getvalue(), uri)


# ------------------------------------------------------------------ comparison (metrics engineer's compare)


@dataclass
class Comparison:
    baseline_run_id: str
    regressed: bool
    table: pd.DataFrame  # metric, baseline, current, delta, regressed
    raw: str             # what the compare command printed (logged as an artifact)


def compare_with_baseline(run_id: str, baseline_run_id: str, tracking_uri: str | None) -> Comparison:
    """`eartalk compare RUN --baseline BASELINE` (exit 1 on regression), run as its own process: jobs/ is
    an entry layer nothing imports from, and the command line is the documented contract."""
    import os
    import subprocess
    import sys

    command = [sys.executable, "-m", "jobs.cli", "compare", run_id, "--baseline", baseline_run_id]
    env = dict(os.environ)
    if tracking_uri:  # through the environment: every MLflow client honours it, whatever the CLI's flags
        env["MLFLOW_TRACKING_URI"] = tracking_uri
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    crashed = "Traceback (most recent call last)" in done.stderr  # Python exits 1 on a crash, too
    if done.returncode not in (0, 1) or crashed:
        raise RuntimeError(f"eartalk compare {run_id} --baseline {baseline_run_id} failed "
                           f"(exit {done.returncode}): {done.stderr.strip()[-2000:]}")
    return Comparison(baseline_run_id, done.returncode == 1, comparison_table(done.stdout), done.stdout)


def comparison_table(printed: str) -> pd.DataFrame:
    """The compare command's JSON output as rows (metric, baseline, current, delta, regressed)."""
    columns = ["metric", "baseline", "current", "delta", "regressed"]
    try:
        data = json.loads(printed)
    except json.JSONDecodeError:
        return pd.DataFrame(columns=columns)
    rows = data.get("metrics", data.get("rows", data)) if isinstance(data, dict) else data
    if isinstance(rows, dict):
        rows = [{"metric": k, **(v if isinstance(v, dict) else {"current": v})} for k, v in rows.items()]
    frame = pd.DataFrame(rows if isinstance(rows, list) else [])
    for column in columns:
        if column not in frame:
            frame[column] = None
    return frame[columns + [c for c in frame.columns if c not in columns]]


# ------------------------------------------------------------------ MLflow logging and the report


def _video_path(uri: str) -> str:
    return storage.filesystem(uri)[1]


def _relative_video(report_uri: str):
    import posixpath

    report_dir = posixpath.dirname(_video_path(report_uri))

    def src(row: pd.Series) -> str | None:
        uri = row.get("output_uri")
        return posixpath.relpath(_video_path(uri), report_dir) if isinstance(uri, str) and uri else None
    return src


def _embedded_video(copies: dict[str, bytes]):
    import base64

    def src(row: pd.Series) -> str | None:
        uri = row.get("output_uri")
        if not (isinstance(uri, str) and uri and storage.exists(uri)):
            return None
        data = storage.read_bytes(uri)
        if len(data) > MAX_EMBEDDED_VIDEO_BYTES:
            copies[f"videos/{row['id']}.mp4"] = data  # logged beside report.html
            return f"videos/{row['id']}.mp4"
        return "data:video/mp4;base64," + base64.b64encode(data).decode()
    return src


def _known_metric_columns() -> list[str] | None:
    try:
        from metrics.schema import METRIC_COLUMNS
    except ImportError:
        return None
    return list(METRIC_COLUMNS)


def _aggregate(rows: pd.DataFrame) -> dict[str, float]:
    from metrics.aggregate import aggregate_metrics

    return {k: float(v) for k, v in aggregate_metrics(rows).items()}


def _start_run(client: MlflowClient, experiment_id: str, filter_string: str, run_name: str, nested: bool = False):
    existing = tracking.find_run(client, experiment_id, filter_string)
    if existing:
        return mlflow.start_run(run_id=existing, nested=nested)
    return mlflow.start_run(experiment_id=experiment_id, run_name=run_name, nested=nested)


def _trend_png(config: NightlyConfig) -> bytes | None:
    from nightly.dashboards import plot_trends, trend_table

    runs = tracking.search_nightly_runs(config.tracking_uri, tracking.SCOPE_LANGUAGE, TREND_NIGHTS,
                                        config.catalog_uri, config.experiment)
    table = trend_table(runs, "language", prefixes=("quality/",))
    table = table[(table["metric"].str.endswith("/mean") | (table["metric"] == "quality/failure_rate"))
                  & ~table["metric"].str.startswith("quality/metrics_")]  # not bookkeeping (time, frames)
    if table.empty:
        return None
    with tempfile.TemporaryDirectory() as scratch:
        path = plot_trends(table, "language", Path(scratch) / "trends.png", title="last nights, per language")
        return path.read_bytes()


# ------------------------------------------------------------------ the night


def run_nightly(config: NightlyConfig) -> NightlyOutcome:
    # One store for the night, the render and compare: without a URI, MLflow's own (MLFLOW_TRACKING_URI, ...),
    # resolved here and passed on, since the render would otherwise switch to its default store.
    config = dataclasses.replace(config, tracking_uri=config.tracking_uri or mlflow.get_tracking_uri())
    mlflow.set_tracking_uri(config.tracking_uri)
    client = MlflowClient()

    # INPUT: the catalog. OUTPUT: tonight's plan (content hashes against the ledger).
    hashed = hash_pairs(read_catalog(config.catalog_uri))
    hashes = {h.input_hash: {"portrait_sha256": h.portrait_sha256, "audio_sha256": h.audio_sha256,
                             "controls_sha256": h.controls_sha256 or ""} for h in hashed}
    ledger = Ledger.load(config.ledger_uri)
    recovered = recover_unrecorded_attempts(config, ledger)
    if recovered:
        log.info("folded unrecorded attempts %s of %s into the ledger", recovered, config.night)
    plan = plan_night(hashed, ledger, config.night, config.max_attempts)
    log.info("night %s: %s", config.night, plan.counts())

    # Render what is new, changed or to retry, as one attempt into the night's dated prefix; pairs the
    # catalog says cannot render are recorded as failed in the same attempt, and the rest renders.
    render_runs: list[str] = []
    manifest_uri = None
    if plan.to_render or plan.broken:
        attempt = ledger.next_attempt(config.night)
        run_id = f"nightly-{config.night}-a{attempt:02d}"
        recorded = [broken_rows_for(plan, config, attempt, run_id, hashes)] if plan.broken else []
        if plan.broken:
            log.warning("night %s: %d pairs cannot render: %s", config.night, len(plan.broken),
                        "; ".join(h.problem for h in plan.broken))
        if plan.to_render:
            rows = manifest_rows(plan)
            manifest_uri = storage.join(config.attempt_uri(attempt), "manifest.jsonl")
            write_manifest(rows, manifest_uri)
            outcome = render_attempt(config, manifest_uri, config.attempt_uri(attempt), run_id)
            render_run = getattr(outcome, "mlflow_run_id", None) or tracking.find_run(
                client, *_any_experiment_filter(client, run_id))
            if render_run:
                render_runs.append(render_run)
            recorded.insert(0, ledger_rows_for(rows, attempt_results(config, attempt), config, attempt, run_id,
                                               render_run, hashes))
        ledger.record(pd.concat(recorded, ignore_index=True))

    tonight = night_results(config, ledger)
    ok = int((tonight["status"] == "ok").sum())
    failed = int((tonight["status"] != "ok").sum())
    failed_fraction = failed / max(1, ok + failed)
    versions = sorted({v for v in tonight.get("model_version", pd.Series(dtype=str)).dropna() if v})
    model_version = ",".join(versions) or None
    results_uri = storage.join(config.night_uri, "results.parquet") if len(tonight) else None
    if results_uri:
        write_results(tonight, results_uri)

    # MLflow: one night run (reopened on a re-run) with one nested run per language. The render may have
    # set its own active experiment in this process; the night's runs live in the nightly experiment.
    experiment_id = tracking.experiment_id(client, config.experiment)
    mlflow.set_experiment(experiment_id=experiment_id)
    # Plan counts describe the invocation that rendered: a no-op re-run leaves the night's values alone.
    counts = {f"nightly/pairs_{k}": v for k, v in plan.counts().items()} if plan.to_render or plan.broken else {}
    counts |= {"nightly/pairs_catalog": len(hashed), "nightly/rendered_ok": ok, "nightly/rendered_failed": failed,
               "nightly/failed_fraction": failed_fraction}
    base_tags = {tracking.TAG_JOB: "nightly", tracking.TAG_DATE: config.night,
                 tracking.TAG_CATALOG: config.catalog_uri, tracking.TAG_OUTPUT: config.night_uri}
    if model_version:
        base_tags[tracking.TAG_MODEL] = model_version
    comparison = None
    report_uri = None
    night_filter = tracking.nightly_filter(tracking.SCOPE_NIGHT, config.catalog_uri, config.night)
    with _start_run(client, experiment_id, night_filter, f"nightly-{config.night}") as run:
        night_run = run.info.run_id
        previous = client.get_run(night_run).data.tags.get(tracking.TAG_RENDER_RUNS, "")
        all_render_runs = [r for r in previous.split(",") if r] + render_runs
        mlflow.set_tags(base_tags | {
            tracking.TAG_SCOPE: tracking.SCOPE_NIGHT, tracking.TAG_RUN_ID: f"nightly-{config.night}",
            tracking.TAG_LANGUAGES: ",".join(sorted(tonight["language"].dropna().unique())) if len(tonight) else "",
            tracking.TAG_RENDER_RUNS: ",".join(dict.fromkeys(all_render_runs)),
            "eartalk.nightly.checkpoint": config.checkpoint or "default",
            "eartalk.nightly.max_failed_fraction": str(config.max_failed_fraction),
        })
        if results_uri:
            mlflow.set_tag(tracking.TAG_RESULTS, results_uri)
        if manifest_uri:
            mlflow.set_tag(tracking.TAG_MANIFEST, manifest_uri)
        metrics = dict(counts)
        if len(tonight):
            metrics |= _aggregate(tonight)
        tracking.log_night_metrics(client, night_run, config.night, metrics)

        for language, rows in tonight.groupby("language") if len(tonight) else []:
            language_filter = tracking.nightly_filter(tracking.SCOPE_LANGUAGE, config.catalog_uri, config.night,
                                                      language)
            with _start_run(client, experiment_id, language_filter, f"nightly-{config.night}-{language}",
                            nested=True) as child:
                mlflow.set_tags(base_tags | {tracking.TAG_SCOPE: tracking.SCOPE_LANGUAGE,
                                             tracking.TAG_LANGUAGE: language,
                                             tracking.TAG_RUN_ID: f"nightly-{config.night}-{language}",
                                             "mlflow.parentRunId": night_run})
                rows_ok = int((rows["status"] == "ok").sum())
                tracking.log_night_metrics(client, child.info.run_id, config.night, _aggregate(rows) | {
                    "nightly/rendered_ok": rows_ok, "nightly/rendered_failed": len(rows) - rows_ok})

        baseline = config.baseline_run or (
            tracking.previous_night_run(client, experiment_id, config.catalog_uri, config.night))
        if baseline and results_uri:
            comparison = compare_with_baseline(night_run, baseline, config.tracking_uri)
            mlflow.set_tag(tracking.TAG_BASELINE, baseline)
            mlflow.log_text(comparison.raw, "comparison/compare.json")
            mlflow.log_text(comparison.table.to_csv(index=False), "comparison/comparison.csv")
            tracking.log_night_metrics(client, night_run, config.night, {
                "nightly/regressions": float(comparison.table["regressed"].fillna(False).astype(bool).sum())
                if len(comparison.table) else float(comparison.regressed)})

        regressed_metrics = [] if comparison is None or comparison.table.empty else \
            [str(m) for m in comparison.table.loc[comparison.table["regressed"].fillna(False).astype(bool), "metric"]]
        outcome = NightlyOutcome(
            night=config.night, counts=plan.counts(), rendered_ok=ok, rendered_failed=failed,
            failed_fraction=failed_fraction, regressed=bool(comparison and comparison.regressed),
            regressed_metrics=regressed_metrics, mlflow_run_id=night_run, baseline_run_id=baseline,
            results_uri=results_uri, report_uri=None, model_version=model_version,
            max_failed_fraction=config.max_failed_fraction)
        mlflow.set_tag(tracking.TAG_STATUS, outcome.status)

        if len(tonight):
            report_uri = write_reports(config, tonight, outcome, comparison)
            outcome.report_uri = report_uri
    return outcome


def _any_experiment_filter(client: MlflowClient, run_id: str) -> tuple[list[str], str]:
    """Where to look for the render's own MLflow run when its outcome does not name it (tag eartalk.run_id)."""
    ids = [e.experiment_id for e in client.search_experiments()]
    return ids, f"tags.`{tracking.TAG_RUN_ID}` = '{run_id}'"


def write_reports(config: NightlyConfig, tonight: pd.DataFrame, outcome: NightlyOutcome,
                  comparison: Comparison | None) -> str:
    """The report twice: in storage beside the videos (relative links), and in MLflow (videos embedded)."""
    known = _known_metric_columns()
    metric_columns = metric_columns_of(tonight, known)
    worst_metric, higher_is_better = _worst_metric(metric_columns)
    summary = {"night": config.night, "catalog": config.catalog_uri, "model version": outcome.model_version,
               **{f"pairs {k}": v for k, v in outcome.counts.items()}, "rendered ok": outcome.rendered_ok,
               "failed": outcome.rendered_failed, "failed fraction": round(outcome.failed_fraction, 4),
               "status": outcome.status, "baseline run": outcome.baseline_run_id or "(first night)",
               "MLflow run": outcome.mlflow_run_id}
    inputs = ReportInputs(title=f"EARTalking nightly {config.night}", results=tonight, summary=summary,
                          metric_columns=metric_columns, worst_metric=worst_metric,
                          higher_is_better=higher_is_better,
                          comparison=comparison.table if comparison is not None else None,
                          trends_png=_trend_png(config), worst_rows=config.report_rows)
    report_uri = storage.join(config.night_uri, "report.html")
    storage.publish_bytes(render_html(inputs, _relative_video(report_uri)).encode(), report_uri)
    copies: dict[str, bytes] = {}
    embedded = render_html(inputs, _embedded_video(copies))
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch) / "report"
        folder.mkdir()
        (folder / "report.html").write_text(embedded)
        for name, data in copies.items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(data)
        mlflow.log_artifacts(str(folder), "report")
    return report_uri


def _worst_metric(metric_columns: list[str]) -> tuple[str | None, bool]:
    """The metric ranking the report's worst rows, and its direction (metrics.schema when it says)."""
    try:
        from metrics import schema
    except ImportError:
        schema = None
    preferred = getattr(schema, "REPORT_METRIC", None) if schema else None
    lower = set(getattr(schema, "LOWER_IS_BETTER", ())) if schema else set()
    metric = preferred if preferred in metric_columns else (metric_columns[0] if metric_columns else None)
    return metric, metric not in lower


def summary_text(outcome: NightlyOutcome) -> str:
    lines = [f"nightly {outcome.night}: {outcome.status}",
             "  pairs: " + ", ".join(f"{k} {v}" for k, v in outcome.counts.items()),
             f"  rendered tonight: {outcome.rendered_ok} ok, {outcome.rendered_failed} failed "
             f"({outcome.failed_fraction:.1%}, threshold {outcome.max_failed_fraction:.1%})",
             f"  model version: {outcome.model_version or '-'}",
             f"  compared with: {outcome.baseline_run_id or '- (no earlier night)'}"
             + (f"; regressed: {', '.join(outcome.regressed_metrics) or 'yes'}" if outcome.regressed else ""),
             f"  MLflow run: {outcome.mlflow_run_id}", f"  results: {outcome.results_uri or '-'}",
             f"  report: {outcome.report_uri or '-'}"]
    return "\n".join(lines)
