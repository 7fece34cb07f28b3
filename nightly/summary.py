"""The night's results: tonight's rows over all its attempts, the latest attempt per id, with the ledger's
columns joined in, written as one results file (metrics.schema) that compare and metrics.aggregate read
like any render's results."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from metrics.schema import write_results
from nightly.attempts import attempt_results
from nightly.config import NightlyConfig
from nightly.ledger import Ledger

LEDGER_COLUMNS = ["id", "pair_id", "item", "language", "input_hash", "attempt", "status", "error"]


@dataclass
class NightSummary:
    rows: pd.DataFrame          # one row per id rendered or recorded tonight
    rendered_ok: int
    rendered_failed: int
    model_version: str | None   # comma-separated when attempts used several
    results_uri: str | None     # None: nothing was recorded tonight

    @property
    def failed_fraction(self) -> float:
        return self.rendered_failed / max(1, self.rendered_ok + self.rendered_failed)


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
    joined = [c for c in LEDGER_COLUMNS if c not in ("id", "attempt")]  # the ledger's say wins
    merged = latest[LEDGER_COLUMNS].merge(results.drop(columns=[c for c in joined if c in results]),
                                          on=["id", "attempt"], how="left")
    return merged.reset_index(drop=True)


def summarise(config: NightlyConfig, ledger: Ledger) -> NightSummary:
    """Count tonight's rows and publish them as the night's results file."""
    rows = night_results(config, ledger)
    ok = int((rows["status"] == "ok").sum())
    versions = sorted({v for v in rows.get("model_version", pd.Series(dtype=str)).dropna() if v})
    results_uri = config.results_uri if len(rows) else None
    if results_uri:
        write_results(rows, results_uri)
    return NightSummary(rows, ok, len(rows) - ok, ",".join(versions) or None, results_uri)
