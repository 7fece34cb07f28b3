"""Control tracks: a CSV / JSON / Parquet table of FCIC controls, aligned to the video's frames.

Columns: `frame` (0-based video frame) or `time` (seconds), plus any of model.CONTROL_NAMES
(yaw, pitch, roll, blink, gaze_x, gaze_y, expression, lip). An empty cell (CSV), null (JSON / Parquet)
or a missing column means "absent": the model moves freely there. Explicit NaN / inf values, unknown
columns and values outside a control's range are errors (they are almost always a broken export).

Alignment: a `frame` track sets exactly the listed frames; a `time` track is interpolated linearly onto
frame times (t / fps) between consecutive given samples, and is absent outside them.
JSON is a list of records, e.g. [{"frame": 0, "yaw": 10}, {"frame": 1, "yaw": null, "blink": 0.2}].

Errors name the column (a known control's name), the line (CSV) or entry (JSON / Parquet) and the cause,
never a cell's text or an unknown column's name: a manifest may point a row at a file that is not a
control track, and the error lands in the results table, the logs and MLflow.
"""

from __future__ import annotations

import difflib
import io
import json
import math

import numpy as np
import pandas as pd


class ControlTrackError(ValueError):
    pass


def _where(name: str, index: int) -> str:
    """A cell's place: its line in a CSV file (the header is line 1), its entry in JSON / Parquet."""
    return f"line {index + 2}" if name.lower().endswith(".csv") else f"entry {index}"


def _parse_cell(value, column: str, where: str) -> float:
    if value is None:
        return math.nan  # absent
    if isinstance(value, str):
        value = value.strip()
        if value == "":
            return math.nan  # absent
        try:
            value = float(value)
        except ValueError:
            raise ControlTrackError(f"column {column!r}, {where}: the cell is not a number") from None
    try:
        value = float(value)
    except (TypeError, ValueError):  # a JSON object or list in a cell
        raise ControlTrackError(f"column {column!r}, {where}: the cell is not a number") from None
    if not math.isfinite(value):
        raise ControlTrackError(f"column {column!r}, {where}: {value} (NaN/inf are not allowed; leave the cell empty for 'absent')")
    return value


def read_table(data: bytes, name: str) -> pd.DataFrame:
    lower = name.lower()
    try:
        if lower.endswith(".csv"):
            return pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False)
        if lower.endswith(".json"):
            records = json.loads(data, parse_constant=lambda c: c)  # keep NaN/Infinity as strings: rejected below
            if isinstance(records, dict) and "frames" in records:
                records = records["frames"]
            if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
                raise ControlTrackError("JSON control track must be a list of records")
            return pd.DataFrame.from_records(records).astype(object).where(lambda d: d.notna(), None)
        if lower.endswith(".parquet"):
            df = pd.read_parquet(io.BytesIO(data))
            # Parquet nulls are absent; float NaN stored as a value is an error
            return df.astype(object).where(pd.DataFrame(~df.isna().to_numpy() | _nan_values(df), columns=df.columns), None)
    except ControlTrackError:
        raise
    except (json.JSONDecodeError, pd.errors.ParserError) as e:  # their messages give a place, not the text
        raise ControlTrackError(f"cannot parse control track ({type(e).__name__}: {e})") from None
    except Exception as e:  # other parsers' messages may quote the file: the type alone
        raise ControlTrackError(f"cannot parse control track ({type(e).__name__})") from None
    raise ControlTrackError("unknown control track format (use .csv, .json or .parquet)")


def _nan_values(df: pd.DataFrame) -> np.ndarray:
    """True where a Parquet float column holds a real NaN (not a null)."""
    import pyarrow as pa

    table = pa.Table.from_pandas(df, preserve_index=False)
    out = np.zeros(df.shape, dtype=bool)
    for j, col in enumerate(table.columns):
        if pa.types.is_floating(col.type):
            arr = col.to_numpy(zero_copy_only=False)
            nulls = col.is_null().to_numpy(zero_copy_only=False)
            out[:, j] = np.isnan(arr.astype(float)) & ~nulls
    return out


def parse_control_track(data: bytes, name: str, fps: float, num_frames: int) -> dict[str, np.ndarray]:
    """Bytes of a control track -> {control: (num_frames,) float32 with NaN where absent}."""
    from model import CONTROL_NAMES, CONTROL_SPECS  # imports torch: here, so the driver importing the stages needs none

    df = read_table(data, name)
    keys = [c for c in ("frame", "time") if c in df.columns]
    if len(keys) != 1:
        raise ControlTrackError("control track needs exactly one of the columns 'frame' or 'time'")
    key = keys[0]
    known = {key, *CONTROL_NAMES}
    unknown = [i for i, c in enumerate(df.columns) if c not in known]
    if unknown:  # by position: a name that is no control's may be any text of a file that is no control track
        hints = sorted({m for i in unknown for m in difflib.get_close_matches(str(df.columns[i]).lower(), CONTROL_NAMES, 1)})
        hint = f" (did you mean {', '.join(hints)}?)" if hints else ""
        raise ControlTrackError(f"unknown control column(s) at position(s) {[i + 1 for i in unknown]}{hint}; "
                                f"known controls: {', '.join(CONTROL_NAMES)}")
    where = np.array([_parse_cell(v, key, _where(name, i)) for i, v in enumerate(df[key].tolist())], dtype=np.float64)
    if np.isnan(where).any():
        raise ControlTrackError(f"column {key!r} has empty entries")
    tracks: dict[str, np.ndarray] = {}
    for name_ in [c for c in df.columns if c != key]:
        spec = CONTROL_SPECS[name_]
        values = np.array([_parse_cell(v, name_, _where(name, i)) for i, v in enumerate(df[name_].tolist())], dtype=np.float64)
        bad = ~np.isnan(values) & ((values < spec.min) | (values > spec.max))
        if bad.any():
            i = int(np.argmax(bad))
            raise ControlTrackError(f"column {name_!r}, {_where(name, i)}: {values[i]} outside [{spec.min}, {spec.max}] {spec.unit}")
        if spec.kind == "categorical" and not np.all(np.isnan(values) | (values == np.round(values))):
            raise ControlTrackError(f"column {name_!r}: categories must be integers 0..{len(spec.categories) - 1}")
        track = np.full(num_frames, np.nan, dtype=np.float32)
        given = ~np.isnan(values)
        if key == "frame":
            frames = where[given].astype(int)
            inside = (frames >= 0) & (frames < num_frames)
            track[frames[inside]] = values[given][inside]
        elif given.sum() >= 1:
            t_given, v_given = where[given], values[given]
            order = np.argsort(t_given)
            t_given, v_given = t_given[order], v_given[order]
            t_frames = np.arange(num_frames) / fps
            inside = (t_frames >= t_given[0]) & (t_frames <= t_given[-1])
            if spec.kind == "categorical":  # hold the last category, never blend two
                idx = np.searchsorted(t_given, t_frames[inside], side="right") - 1
                track[inside] = v_given[np.clip(idx, 0, len(v_given) - 1)]
            else:
                track[inside] = np.interp(t_frames[inside], t_given, v_given)
        tracks[name_] = track
    return tracks


def tracks_to_json(tracks: dict[str, np.ndarray]) -> str:
    """Parsed tracks as the JSON text a row carries between stages (null where a control is absent).

    Each float32 value turns into the double that holds it exactly, so `tracks_from_json` gives back the
    same values: the track is parsed once, in the asset stage, and rendering and metrics read this text.
    """
    return json.dumps({k: [None if np.isnan(v) else float(v) for v in t] for k, t in tracks.items()})


def tracks_from_json(text: str) -> dict[str, np.ndarray]:
    """{control: (num_frames,) float32 with NaN where absent} from `tracks_to_json` text ('' for no track)."""
    return {k: np.array([np.nan if v is None else v for v in t], np.float32) for k, t in json.loads(text or "{}").items()}
