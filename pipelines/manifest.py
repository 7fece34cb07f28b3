"""Manifest reading and row validation (driver side, before anything is rendered).

A manifest is JSONL, CSV or Parquet (by extension), local or in object storage, one row per video:

    id               unique, safe for a file name: letters, digits, '.', '_', '-' (no '/', no '..')
    portrait         URI of a JPEG / PNG / WebP portrait
    audio            URI of WAV / FLAC / MP3 / M4A / AAC / OGG speech
    controls         optional URI of a control track (CSV / JSON / Parquet), see pipelines/controls.py
    fps              optional frames per second (default 25)
    seed             optional integer in [0, 2**63)
    reference_video  optional URI of a ground-truth video, for reference metrics
    framing          optional `portrait` (the face composited into the whole portrait) or `crop` (the model's
                     aligned face crop alone); empty: the job's --framing (default portrait). docs/compositing.md
    anything else    free-form tags (language, speaker, ...), carried into the results as strings; a results
                     column's name (status, error, frames, run_id, a metric, ...) is refused for the whole manifest

Relative URIs are resolved against the manifest's own folder. Row problems found here (missing id,
unsafe or duplicate id, bad fps or seed, a URI the input policy refuses: pipelines/inputs.py) fail that row
only; files are opened later, per row, by the asset stage.
"""

from __future__ import annotations

import io
import json
import math
import re
from dataclasses import dataclass, fields

import pandas as pd

import storage

from .inputs import MAX_MANIFEST_BYTES, InputError, InputPolicy, read_bounded

REQUIRED = ("id", "portrait", "audio")
OPTIONAL = ("controls", "fps", "seed", "reference_video", "framing")
FRAMINGS = ("portrait", "crop")  # a video of the whole portrait with the face composited in, or of the crop alone
URI_COLUMNS = ("portrait", "audio", "controls", "reference_video")
SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
DEFAULT_FPS = 25.0
FPS_RANGE = (1.0, 60.0)
SEED_RANGE = (0, 2**63)  # [low, high): a seed travels as an Arrow int64 through Ray Data


class ManifestError(ValueError):
    """The manifest as a whole cannot be read (a usage error: exit code 2)."""


@dataclass
class ManifestRow:
    row: int  # 0-based position in the manifest
    id: str
    portrait: str
    audio: str
    controls: str | None
    fps: float
    seed: int
    reference_video: str | None
    tags: dict[str, str]
    framing: str | None = None  # None: the job's default


@dataclass
class RowFailure:
    row: int
    id: str
    error: str


def read_manifest(uri: str, options: storage.StorageOptions | None = None) -> pd.DataFrame:
    try:
        data = read_bounded(uri, options, MAX_MANIFEST_BYTES)
    except FileNotFoundError:
        raise ManifestError(f"manifest not found: {uri}") from None
    except InputError as e:
        raise ManifestError(f"manifest {uri}: {e}") from None
    name = uri.lower()
    try:
        if name.endswith((".jsonl", ".ndjson", ".json")):
            # values as written: pandas' own reader turns a numeric id column with a gap into floats (1 -> "1.0")
            if name.endswith(".json"):
                records = json.loads(data)
            else:
                records = [json.loads(line) for line in data.splitlines() if line.strip()]
            df = pd.DataFrame(records, dtype=object)
        elif name.endswith(".csv"):
            df = pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False)
        elif name.endswith(".parquet"):
            df = pd.read_parquet(io.BytesIO(data))
        else:
            raise ManifestError(f"{uri}: unknown manifest format (use .jsonl, .csv or .parquet)")
    except ManifestError:
        raise
    except Exception as e:  # pandas raises many types for malformed files
        raise ManifestError(f"{uri}: cannot parse manifest ({type(e).__name__}: {e})") from None
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise ManifestError(f"{uri}: manifest lacks required column(s) {missing}")
    if df.empty:
        raise ManifestError(f"{uri}: manifest has no rows")
    return df


def reserved_columns() -> set[str]:
    """Names a manifest's free-form tag columns may not take: the results table's columns, and the fields of
    a ManifestRow (`row` orders the results). Tags travel through Ray Data inside one JSON column, `tags`,
    and only result columns and tags are kept of a row's record, so the pipeline's other columns never clash."""
    from metrics.schema import KNOWN_COLUMNS

    row_fields = {f.name for f in fields(ManifestRow)}
    return (set(KNOWN_COLUMNS) | row_fields) - set(REQUIRED + OPTIONAL)


def _text(value) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value).strip()
    return text or None


def validate_rows(df: pd.DataFrame, manifest_uri: str,
                  policy: InputPolicy | None = None) -> tuple[list[ManifestRow], list[RowFailure]]:
    """Split rows into valid ones and failures, each failure naming the row and the cause.

    `policy` (default: the manifest's own folder, local paths and s3://) decides which URIs a row may
    name; a valid row carries them normalized (local paths resolved), as the policy checked them.
    """
    policy = policy or InputPolicy.for_manifest(manifest_uri)
    rows, failures, seen = [], [], {}
    tag_columns = [c for c in df.columns if c not in REQUIRED + OPTIONAL]
    reserved = sorted(set(tag_columns) & reserved_columns())
    if reserved:  # they would clash with the result columns of the same name, after everything was rendered
        raise ManifestError(f"{manifest_uri}: manifest column(s) {reserved} are reserved for results; rename them")
    for i, record in enumerate(df.to_dict("records")):
        rid = _text(record.get("id")) or ""

        def fail(msg: str) -> None:
            failures.append(RowFailure(i, rid, f"row {i} (id {rid!r}): {msg}"))

        if not rid:
            fail("missing id")
            continue
        if not SAFE_ID.match(rid):
            fail("unsafe id: use letters, digits, '.', '_', '-' only (no path separators or '..'), at most 128 characters")
            continue
        if ".." in rid:
            fail("unsafe id: '..' is not allowed")
            continue
        if rid in seen:
            fail(f"duplicate id (first used by row {seen[rid]})")
            continue
        seen[rid] = i
        uris = {c: _text(record.get(c)) for c in URI_COLUMNS}
        if not uris["portrait"] or not uris["audio"]:
            fail("missing " + " and ".join(c for c in ("portrait", "audio") if not uris[c]))
            continue
        try:
            fps = float(_text(record.get("fps")) or DEFAULT_FPS)
            seed = int(float(_text(record.get("seed")) or 0))
        except (ValueError, OverflowError):  # int(float("1e400")) overflows; the cell itself is not echoed
            fail("fps/seed must be finite numbers")
            continue
        if not SEED_RANGE[0] <= seed < SEED_RANGE[1]:
            fail(f"seed {seed} outside [0, 2**63)")
            continue
        if not (FPS_RANGE[0] <= fps <= FPS_RANGE[1]):
            fail(f"fps {fps} outside {FPS_RANGE}")
            continue
        framing = _text(record.get("framing"))
        if framing is not None and framing not in FRAMINGS:
            fail(f"framing must be one of {FRAMINGS} or empty")
            continue
        resolved = {c: storage.resolve(u, manifest_uri) if u else None for c, u in uris.items()}
        refused = []
        for column, uri in resolved.items():
            if uri:
                try:
                    resolved[column] = policy.check(uri)
                except InputError as e:
                    refused.append(f"{column}: {e}")
        if refused:
            fail("; ".join(refused))
            continue
        tags = {c: s for c in tag_columns if (s := _text(record.get(c))) is not None}
        rows.append(ManifestRow(i, rid, resolved["portrait"], resolved["audio"], resolved["controls"], fps, seed,
                                resolved["reference_video"], tags, framing))
    return rows, failures
