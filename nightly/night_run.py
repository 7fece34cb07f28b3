"""The night's MLflow runs: one night run per night and catalog, one nested run per language, both
reopened (not duplicated) when the night is run again. Names and queries live in nightly.tracking.

Runs are written through an MlflowClient by run id, never as the process's active run: the render job
in the same process opens its own active run, and each step of the night logs to the run it is given.
"""

from __future__ import annotations

from mlflow.tracking import MlflowClient

from metrics.aggregate import aggregate_metrics
from nightly import tracking
from nightly.attempts import Attempt
from nightly.config import NightlyConfig
from nightly.plan import NightPlan
from nightly.summary import NightSummary


def open_run(client: MlflowClient, experiment_id: str, filter_string: str, run_name: str,
             tags: dict[str, str]) -> str:
    """The run matching `filter_string`, set running again, or a new one; `tags` set on it either way."""
    existing = tracking.find_run(client, experiment_id, filter_string)
    if existing:
        client.update_run(existing, status="RUNNING")
        for key, value in tags.items():
            client.set_tag(existing, key, value)
        return existing
    return client.create_run(experiment_id, run_name=run_name, tags=tags).info.run_id


def _quality(rows) -> dict[str, float]:
    return {k: float(v) for k, v in aggregate_metrics(rows).items()}


def log_night(client: MlflowClient, experiment_id: str, config: NightlyConfig, plan: NightPlan,
              catalog_pairs: int, attempt: Attempt, summary: NightSummary) -> str:
    """Open (or reopen) the night run, log tonight's tags, counts and aggregates, and one nested run per
    language; returns the night run's id, left running for the comparison and the report."""
    tonight = summary.rows
    base_tags = {tracking.TAG_JOB: "nightly", tracking.TAG_DATE: config.night,
                 tracking.TAG_CATALOG: config.catalog_uri, tracking.TAG_OUTPUT: config.night_uri}
    if summary.model_version:
        base_tags[tracking.TAG_MODEL] = summary.model_version
    night_filter = tracking.nightly_filter(tracking.SCOPE_NIGHT, config.catalog_uri, config.night)
    night_tags = base_tags | {tracking.TAG_SCOPE: tracking.SCOPE_NIGHT, tracking.TAG_RUN_ID: f"nightly-{config.night}"}
    night_run = open_run(client, experiment_id, night_filter, f"nightly-{config.night}", night_tags)

    previous = client.get_run(night_run).data.tags.get(tracking.TAG_RENDER_RUNS, "")
    render_runs = [r for r in previous.split(",") if r] + attempt.render_runs
    tags = {tracking.TAG_LANGUAGES: ",".join(sorted(tonight["language"].dropna().unique())) if len(tonight) else "",
            tracking.TAG_RENDER_RUNS: ",".join(dict.fromkeys(render_runs)),
            "eartalk.nightly.checkpoint": config.checkpoint or "default",
            "eartalk.nightly.max_failed_fraction": str(config.max_failed_fraction)}
    if summary.results_uri:
        tags[tracking.TAG_RESULTS] = summary.results_uri
    if attempt.manifest_uri:
        tags[tracking.TAG_MANIFEST] = attempt.manifest_uri
    for key, value in tags.items():
        client.set_tag(night_run, key, value)

    # Plan counts describe the invocation that rendered: a no-op re-run leaves the night's values alone.
    rendered = bool(plan.to_render or plan.broken)
    metrics = {f"nightly/pairs_{k}": v for k, v in plan.counts().items()} if rendered else {}
    metrics |= {"nightly/pairs_catalog": catalog_pairs, "nightly/rendered_ok": summary.rendered_ok,
                "nightly/rendered_failed": summary.rendered_failed, "nightly/failed_fraction": summary.failed_fraction}
    if len(tonight):
        metrics |= _quality(tonight)
    tracking.log_night_metrics(client, night_run, config.night, metrics)

    for language, rows in tonight.groupby("language") if len(tonight) else []:
        language_filter = tracking.nightly_filter(tracking.SCOPE_LANGUAGE, config.catalog_uri, config.night, language)
        child = open_run(client, experiment_id, language_filter, f"nightly-{config.night}-{language}", base_tags | {
            tracking.TAG_SCOPE: tracking.SCOPE_LANGUAGE, tracking.TAG_LANGUAGE: language,
            tracking.TAG_RUN_ID: f"nightly-{config.night}-{language}", "mlflow.parentRunId": night_run})
        rows_ok = int((rows["status"] == "ok").sum())
        tracking.log_night_metrics(client, child, config.night, _quality(rows) | {
            "nightly/rendered_ok": rows_ok, "nightly/rendered_failed": len(rows) - rows_ok})
        client.set_terminated(child)
    return night_run
