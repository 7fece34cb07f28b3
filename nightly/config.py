"""A nightly run's settings, and where in storage the night's files go.

Storage layout under OUTPUT (local path or s3://)::

    OUTPUT/nightly/ledger.parquet                     every render attempt of every pair (nightly.ledger)
    OUTPUT/nightly/<date>/attempt-NN/...              one attempt's manifest, videos, results (nightly.attempts)
    OUTPUT/nightly/<date>/results.parquet             the night's rows over all attempts (latest per id)
    OUTPUT/nightly/<date>/report.html                 the run report, videos linked relatively
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import storage
from nightly import tracking
from nightly.plan import DEFAULT_MAX_ATTEMPTS


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
        try:
            dt.date.fromisoformat(self.night)
        except ValueError:
            raise ValueError(f"night must be YYYY-MM-DD, got {self.night!r}") from None
        if not 0.0 <= self.max_failed_fraction <= 1.0:
            raise ValueError(f"max_failed_fraction must lie in [0, 1], got {self.max_failed_fraction}")
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if self.report_rows < 0:
            raise ValueError(f"report_rows must be >= 0, got {self.report_rows}")

    @property
    def nightly_uri(self) -> str:
        return storage.join(self.output_uri, "nightly")

    @property
    def night_uri(self) -> str:
        return storage.join(self.nightly_uri, self.night)

    @property
    def ledger_uri(self) -> str:
        return storage.join(self.nightly_uri, "ledger.parquet")

    @property
    def results_uri(self) -> str:
        return storage.join(self.night_uri, "results.parquet")

    @property
    def report_uri(self) -> str:
        return storage.join(self.night_uri, "report.html")

    def attempt_uri(self, attempt: int) -> str:
        return storage.join(self.night_uri, f"attempt-{attempt:02d}")
