"""One nightly dubbing run: catalog -> plan -> render and record -> summarise -> MLflow -> compare -> report.

Each step is its own module: nightly.plan (tonight's work by content hash), nightly.attempts (render
and record in the ledger), nightly.summary (the night's results file), nightly.night_run (the MLflow
runs), nightly.baseline (the comparison with the previous night) and nightly.report (the HTML report);
storage layout in nightly.config.

Re-running a night resumes: the ledger marks what rendered ok, so the next attempt renders only what is
left (failed rows are retried up to max_attempts), and the MLflow night run of that date is reopened
rather than duplicated.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import mlflow

from metrics.compare import Comparison
from metrics.tracking import open_client
from nightly import tracking
from nightly.attempts import file_hashes, recover_unrecorded_attempts, render_and_record
from nightly.baseline import baseline_run, compare_with_baseline
from nightly.catalog import HashedPair, hash_pairs, read_catalog
from nightly.config import NightlyConfig
from nightly.dashboards import report_trends_png
from nightly.ledger import Ledger
from nightly.night_run import log_night
from nightly.plan import NightPlan, plan_night
from nightly.report import ReportInputs, metric_columns_of, publish_reports, report_metric
from nightly.summary import NightSummary, summarise

log = logging.getLogger("eartalk.nightly")

TREND_NIGHTS = 30  # nights shown in the report's trend plot

__all__ = ["NightlyConfig", "NightlyOutcome", "run_nightly", "summary_text"]


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


def plan_tonight(config: NightlyConfig, hashed: list[HashedPair], ledger: Ledger) -> NightPlan:
    """Tonight's plan against the ledger, once attempts that crashed before reaching it are folded in."""
    recovered = recover_unrecorded_attempts(config, ledger)
    if recovered:
        log.info("folded unrecorded attempts %s of %s into the ledger", recovered, config.night)
    plan = plan_night(hashed, ledger, config.night, config.max_attempts)
    log.info("night %s: %s", config.night, plan.counts())
    return plan


def run_nightly(config: NightlyConfig) -> NightlyOutcome:
    # One store for the night, the render and compare: without a URI, MLflow's own (MLFLOW_TRACKING_URI, ...),
    # resolved here and passed on, since the render would otherwise switch to its default store.
    config = dataclasses.replace(config, tracking_uri=config.tracking_uri or mlflow.get_tracking_uri())
    client = open_client(config.tracking_uri)

    # INPUT: the catalog. OUTPUT: tonight's plan (content hashes against the ledger).
    hashed = hash_pairs(read_catalog(config.catalog_uri))
    ledger = Ledger.load(config.ledger_uri)
    plan = plan_tonight(config, hashed, ledger)
    # INPUT: the plan. OUTPUT: one attempt's videos and results; every planned pair in the ledger.
    attempt = render_and_record(config, plan, file_hashes(hashed), ledger)
    # INPUT: the ledger and the attempts' results. OUTPUT: the night's results file and counts.
    summary = summarise(config, ledger)

    experiment_id = tracking.experiment_id(client, config.experiment)
    night_run = log_night(client, experiment_id, config, plan, len(hashed), attempt, summary)
    try:
        baseline = baseline_run(client, experiment_id, config)
        comparison = compare_with_baseline(client, config, night_run, baseline) \
            if baseline and summary.results_uri else None
        outcome = outcome_of(config, plan, summary, night_run, baseline, comparison)
        client.set_tag(night_run, tracking.TAG_STATUS, outcome.status)
        if len(summary.rows):
            outcome.report_uri = config.report_uri
            publish_reports(report_inputs(config, summary, outcome, comparison), config.report_uri, client, night_run)
    except BaseException:
        client.set_terminated(night_run, status="FAILED")
        raise
    client.set_terminated(night_run)
    return outcome


def outcome_of(config: NightlyConfig, plan: NightPlan, summary: NightSummary, night_run: str,
               baseline: str | None, comparison: Comparison | None) -> NightlyOutcome:
    return NightlyOutcome(
        night=config.night, counts=plan.counts(), rendered_ok=summary.rendered_ok,
        rendered_failed=summary.rendered_failed, failed_fraction=summary.failed_fraction,
        regressed=bool(comparison and comparison.regressed),
        regressed_metrics=comparison.regressed_metrics if comparison else [], mlflow_run_id=night_run,
        baseline_run_id=comparison.baseline_run_id if comparison else baseline, results_uri=summary.results_uri,
        report_uri=None, model_version=summary.model_version, max_failed_fraction=config.max_failed_fraction)


def report_inputs(config: NightlyConfig, summary: NightSummary, outcome: NightlyOutcome,
                  comparison: Comparison | None) -> ReportInputs:
    metric_columns = metric_columns_of(summary.rows)
    heading = {"night": config.night, "catalog": config.catalog_uri, "model version": outcome.model_version,
               **{f"pairs {k}": v for k, v in outcome.counts.items()}, "rendered ok": outcome.rendered_ok,
               "failed": outcome.rendered_failed, "failed fraction": round(outcome.failed_fraction, 4),
               "status": outcome.status, "baseline run": outcome.baseline_run_id or "(first night)",
               "MLflow run": outcome.mlflow_run_id}
    return ReportInputs(
        title=f"EARTalking nightly {config.night}", results=summary.rows, summary=heading,
        metric_columns=metric_columns, worst_metric=report_metric(metric_columns),
        comparison=comparison.table if comparison else None, timings=comparison.timings if comparison else None,
        trends_png=report_trends_png(config.tracking_uri, config.catalog_uri, config.experiment, TREND_NIGHTS),
        worst_rows=config.report_rows)


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
