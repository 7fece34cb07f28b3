"""The nightly ledger: every render attempt of a catalog pair, with its content hash and model version.

One Parquet file in storage (default `OUTPUT/nightly/ledger.parquet`), rewritten atomically after each
render (see storage.publish_bytes): a crash leaves the previous ledger intact, never half a file.
A pair counts as rendered when a row with its input hash has status 'ok'; that is the whole
"never render twice" rule. One writer at a time is assumed (the CronJob's concurrencyPolicy is Forbid).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

import storage

LEDGER_SCHEMA = pa.schema([
    ("pair_id", pa.string()),          # <item>/<language>
    ("item", pa.string()),
    ("language", pa.string()),
    ("input_hash", pa.string()),       # catalog.HashedPair.input_hash
    ("portrait_sha256", pa.string()),
    ("audio_sha256", pa.string()),
    ("controls_sha256", pa.string()),
    ("night", pa.string()),            # YYYY-MM-DD of the nightly that rendered it
    ("attempt", pa.int32()),           # 1, 2, ... within that night
    ("id", pa.string()),               # manifest row id (videos/<id>.mp4)
    ("output_uri", pa.string()),
    ("status", pa.string()),           # 'ok' | 'failed' (a render's 'skipped', already published, is 'ok')
    ("error", pa.string()),
    ("model_version", pa.string()),
    ("run_id", pa.string()),           # the render's --run-id
    ("mlflow_run_id", pa.string()),    # the render's MLflow run
    ("recorded_at", pa.string()),      # ISO 8601 UTC
])


class LedgerError(RuntimeError):
    """The ledger file exists but cannot be read as a ledger."""


@dataclass
class Ledger:
    uri: str
    table: pd.DataFrame

    @classmethod
    def load(cls, uri: str) -> "Ledger":
        """The ledger at `uri`, or an empty one when none was written yet."""
        if not storage.exists(uri):
            return cls(uri, LEDGER_SCHEMA.empty_table().to_pandas())
        try:
            table = pq.read_table(io.BytesIO(storage.read_bytes(uri))).to_pandas()
        except (pa.ArrowInvalid, OSError) as error:
            raise LedgerError(f"ledger {uri}: not a readable Parquet file ({error})") from None
        missing = [n for n in LEDGER_SCHEMA.names if n not in table.columns]
        if missing:
            raise LedgerError(f"ledger {uri}: missing columns {missing}")
        # a render's 'skipped' row was published by an earlier try: a ledger that holds one counts it as ok
        table["status"] = table["status"].replace("skipped", "ok")
        return cls(uri, table)

    def rendered_hashes(self) -> set[str]:
        return set(self.table.loc[self.table["status"] == "ok", "input_hash"])

    def failed_attempts(self) -> dict[str, int]:
        """input hash -> number of failed attempts (a hash rendered ok since is not listed)."""
        failed = self.table[(self.table["status"] == "failed") & ~self.table["input_hash"].isin(self.rendered_hashes())]
        return failed.groupby("input_hash").size().to_dict()

    def rendered_pair_ids(self) -> set[str]:
        return set(self.table.loc[self.table["status"] == "ok", "pair_id"])

    def night(self, night: str) -> pd.DataFrame:
        return self.table[self.table["night"] == night]

    def next_attempt(self, night: str) -> int:
        rows = self.night(night)
        return int(rows["attempt"].max()) + 1 if len(rows) else 1

    def record(self, rows: pd.DataFrame) -> None:
        """Append rows (columns of LEDGER_SCHEMA) and write the whole ledger atomically."""
        missing = [n for n in LEDGER_SCHEMA.names if n not in rows.columns]
        if missing:
            raise LedgerError(f"ledger {self.uri}: rows to record lack columns {missing}")
        rows = rows[LEDGER_SCHEMA.names]
        combined = rows if self.table.empty else pd.concat([self.table[LEDGER_SCHEMA.names], rows], ignore_index=True)
        table = pa.Table.from_pandas(combined, schema=LEDGER_SCHEMA, preserve_index=False)
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        storage.publish_bytes(buffer.getvalue(), self.uri)
        self.table = table.to_pandas()
