"""Tonight's work: which catalog pairs are new, changed, to retry, unchanged or given up, and the manifest.

The manifest follows the render job's format (JSONL: id, portrait, audio, controls, fps, seed + free-form
tags) so `eartalk render` reads it like any other; the extra columns (pair_id, input_hash, item,
language, nightly_date) travel into the results Parquet as tags and let the nightly join results back.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import storage
from nightly.catalog import HashedPair
from nightly.ledger import Ledger

DEFAULT_MAX_ATTEMPTS = 3  # failed renders of the same inputs before the nightly stops retrying them


@dataclass
class NightPlan:
    night: str  # YYYY-MM-DD
    new: list[HashedPair] = field(default_factory=list)        # pair never rendered
    changed: list[HashedPair] = field(default_factory=list)    # pair rendered before with other inputs
    retry: list[HashedPair] = field(default_factory=list)      # these inputs failed before, attempts left
    unchanged: list[HashedPair] = field(default_factory=list)  # these inputs already rendered ok
    given_up: list[HashedPair] = field(default_factory=list)   # failed max_attempts times

    @property
    def to_render(self) -> list[HashedPair]:
        return [h for h in self.new + self.changed + self.retry if not h.problem]

    @property
    def broken(self) -> list[HashedPair]:
        """Pairs of new, changed or retry that cannot render (catalog problems): recorded as failed."""
        return [h for h in self.new + self.changed + self.retry if h.problem]

    def counts(self) -> dict[str, int]:
        return {"new": len(self.new), "changed": len(self.changed), "retry": len(self.retry),
                "unchanged": len(self.unchanged), "given_up": len(self.given_up)}


def plan_night(pairs: list[HashedPair], ledger: Ledger, night: str,
               max_attempts: int = DEFAULT_MAX_ATTEMPTS) -> NightPlan:
    """Sort every hashed catalog pair into exactly one bucket of the plan."""
    rendered = ledger.rendered_hashes()
    failures = ledger.failed_attempts()
    rendered_pairs = ledger.rendered_pair_ids()
    plan = NightPlan(night)
    for hashed in pairs:
        if hashed.input_hash in rendered:
            plan.unchanged.append(hashed)
        elif failures.get(hashed.input_hash, 0) >= max_attempts:
            plan.given_up.append(hashed)
        elif hashed.input_hash in failures:
            plan.retry.append(hashed)
        elif hashed.pair.pair_id in rendered_pairs:
            plan.changed.append(hashed)
        else:
            plan.new.append(hashed)
    return plan


def row_id(hashed: HashedPair) -> str:
    """File-safe, unique per inputs: a changed pair gets a new video name, never overwriting the old one."""
    return f"{hashed.pair.item}-{hashed.pair.language}-{hashed.input_hash[:12]}"


def manifest_rows(plan: NightPlan) -> list[dict]:
    rows = []
    for hashed in plan.to_render:
        p = hashed.pair
        row = {"id": row_id(hashed), "portrait": p.portrait, "audio": p.audio, "fps": p.fps, "seed": p.seed,
               **p.tags, "item": p.item, "language": p.language, "pair_id": p.pair_id,
               "input_hash": hashed.input_hash, "nightly_date": plan.night}
        if p.controls:
            row["controls"] = p.controls
        rows.append(row)
    return rows


def write_manifest(rows: list[dict], uri: str) -> None:
    """JSONL, one row per line, written atomically."""
    text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
    storage.publish_bytes(text.encode("utf-8"), uri)
