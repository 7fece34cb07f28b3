"""The dubbing catalog: portraits and their dubbed audio tracks per language, read from object storage.

A catalog is a folder (local path or s3:// prefix) in one of two layouts.

1. Folder convention (default): one folder per item (a face that gets dubbed)::

       CATALOG/<item>/portrait.(jpg|jpeg|png|webp)       the face
       CATALOG/<item>/audio/<language>.(wav|flac|mp3|m4a|ogg|aac)   one dubbed track per language
       CATALOG/<item>/controls/<language>.(json|csv|parquet)  optional FCIC control track
                                                              (format: pipelines/controls.py)

   Every (item, language) with an audio track is one pair, id `<item>/<language>`.

2. An explicit `CATALOG/catalog.jsonl` (takes precedence when present), one pair per line::

       {"item": "obama", "language": "de", "portrait": "obama/portrait.jpg",
        "audio": "obama/audio/de.wav", "controls": null, "fps": 25, "seed": 0, "speaker": "..."}

   Relative paths are resolved against the catalog folder; absolute URIs are kept. Extra keys are free-form
   tags carried into the manifest (and the results Parquet) as strings.

Each pair gets a content hash (SHA-256 over the bytes of its portrait, audio and controls, plus fps and
seed), which is what the ledger keys on: an unchanged pair is never rendered twice, and a pair whose
portrait, track or controls changed is rendered again.

Problems of one item or pair (a file listed but missing, two portraits, a control track without audio, a
folder name unsafe for file names) do not stop the night: such a pair carries its `problem`, naming the
item, and the nightly records it as failed without rendering it. Problems of the catalog as a whole (no
such folder, a malformed catalog.jsonl line, a pair listed twice) raise CatalogError.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import storage

PORTRAIT_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".m4a", ".ogg", ".aac")
CONTROL_EXTENSIONS = (".json", ".csv", ".parquet")  # what pipelines/controls.py reads
CATALOG_FILE = "catalog.jsonl"
HASH_CHUNK_BYTES = 8 << 20  # 8 MiB reads keep memory flat for long audio tracks
HASH_THREADS = 8  # object storage reads are I/O bound
DEFAULT_FPS = 25.0  # frames per second
DEFAULT_SEED = 0

_KNOWN_KEYS = {"item", "language", "portrait", "audio", "controls", "fps", "seed", "id"}
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class CatalogError(ValueError):
    """The catalog is missing, malformed, or names a file that does not exist."""


@dataclass(frozen=True)
class CatalogPair:
    """One (portrait, dubbed audio track) pair of the catalog. URIs are absolute (local path or s3://)."""

    item: str
    language: str
    portrait: str
    audio: str
    controls: str | None = None
    fps: float = DEFAULT_FPS  # frames per second of the rendered video
    seed: int = DEFAULT_SEED
    tags: dict[str, str] = field(default_factory=dict)
    problem: str | None = None  # why this pair cannot render (naming its item); None: it can

    @property
    def pair_id(self) -> str:
        return f"{self.item}/{self.language}"


def _name_problem(kind: str, value: str, where: str) -> str | None:
    if not isinstance(value, str) or not _SAFE_NAME.match(value):
        return f"{where}: {kind} {value!r} must match {_SAFE_NAME.pattern} (it names files and runs)"
    return None


def _check_name(kind: str, value: str, where: str) -> str:
    if problem := _name_problem(kind, value, where):
        raise CatalogError(problem)
    return value


def _resolve(catalog_uri: str, value: str) -> str:
    if "://" in value or value.startswith("/"):
        return value
    return storage.join(catalog_uri, value)


def _language_of(path: str) -> str:
    return posixpath.splitext(posixpath.basename(path))[0]


def _read_folder_catalog(catalog_uri: str) -> list[CatalogPair]:
    fs, root = storage.filesystem(catalog_uri)
    pairs: list[CatalogPair] = []
    for entry in sorted(fs.ls(root, detail=True), key=lambda e: e["name"]):
        if entry["type"] != "directory":
            continue
        item_path = entry["name"].rstrip("/")
        item = posixpath.basename(item_path)
        where = storage.full_uri(fs, item_path)
        files = {posixpath.relpath(p, item_path): p for p in fs.find(item_path)}
        portraits = [p for rel, p in files.items() if "/" not in rel and rel.lower().startswith("portrait.")
                     and rel.lower().endswith(PORTRAIT_EXTENSIONS)]
        audio = {_language_of(rel): p for rel, p in files.items()
                 if rel.startswith("audio/") and rel.count("/") == 1 and rel.lower().endswith(AUDIO_EXTENSIONS)}
        controls = {_language_of(rel): p for rel, p in files.items()
                    if rel.startswith("controls/") and rel.count("/") == 1 and rel.lower().endswith(CONTROL_EXTENSIONS)}
        if not audio:
            continue  # an item without dubbed tracks yet has nothing to render tonight
        # a problem of the item fails its pairs only (see the module docstring)
        problem = _name_problem("item", item, where) or (
            None if len(portraits) == 1 else
            f"{where}: expected exactly one portrait.{{jpg,jpeg,png,webp}}, found {len(portraits)}")
        portrait = storage.full_uri(fs, portraits[0]) if len(portraits) == 1 else ""
        for language in sorted(audio):
            pairs.append(CatalogPair(
                item=item, language=language, portrait=portrait,
                audio=storage.full_uri(fs, audio[language]),
                controls=storage.full_uri(fs, controls[language]) if language in controls else None,
                problem=problem or _name_problem("language", language, f"{where}/audio"),
            ))
        for language in sorted(set(controls) - set(audio)):
            pairs.append(CatalogPair(
                item=item, language=language, portrait=portrait, audio="",
                controls=storage.full_uri(fs, controls[language]),
                problem=f"{where}: control track {language!r} has no audio track of the same language",
            ))
    return pairs


def _read_jsonl_catalog(catalog_uri: str, listing_uri: str) -> list[CatalogPair]:
    pairs: list[CatalogPair] = []
    text = storage.read_bytes(listing_uri).decode("utf-8")
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{listing_uri} line {number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise CatalogError(f"{where}: not valid JSON ({error.msg})") from None
        if not isinstance(row, dict):
            raise CatalogError(f"{where}: expected a JSON object, got {type(row).__name__}")
        missing = [k for k in ("item", "language", "portrait", "audio") if not row.get(k)]
        if missing:
            raise CatalogError(f"{where}: missing {', '.join(missing)}")
        try:
            fps = float(DEFAULT_FPS if row.get("fps") is None else row["fps"])
            seed = int(DEFAULT_SEED if row.get("seed") is None else row["seed"])
        except (TypeError, ValueError):
            raise CatalogError(f"{where}: fps must be a number and seed an integer") from None
        if fps <= 0:
            raise CatalogError(f"{where}: fps must be positive, got {fps}")
        pairs.append(CatalogPair(
            item=_check_name("item", row["item"], where),
            language=_check_name("language", row["language"], where),
            portrait=_resolve(catalog_uri, row["portrait"]),
            audio=_resolve(catalog_uri, row["audio"]),
            controls=_resolve(catalog_uri, row["controls"]) if row.get("controls") else None,
            fps=fps, seed=seed,
            tags={k: str(v) for k, v in row.items() if k not in _KNOWN_KEYS and v is not None},
        ))
    return pairs


def read_catalog(catalog_uri: str) -> list[CatalogPair]:
    """All pairs of the catalog at `catalog_uri` (folder convention, or catalog.jsonl when present).

    Raises CatalogError naming the folder/line and the cause: a missing catalog, a malformed catalog.jsonl
    line (names unsafe for file names included), duplicate pair ids. Two portraits in one item, a control
    track without audio and unsafe folder names are the `problem` of the pairs concerned.
    """
    fs, root = storage.filesystem(catalog_uri)
    if not fs.isdir(root):
        raise CatalogError(f"catalog {catalog_uri}: no such folder")
    listing = storage.join(catalog_uri, CATALOG_FILE)
    pairs = _read_jsonl_catalog(catalog_uri, listing) if fs.exists(storage.join(root, CATALOG_FILE)) \
        else _read_folder_catalog(catalog_uri)
    seen: set[str] = set()
    for pair in pairs:
        if pair.pair_id in seen:
            raise CatalogError(f"catalog {catalog_uri}: pair {pair.pair_id} listed twice")
        seen.add(pair.pair_id)
    return pairs


def file_sha256(uri: str) -> str:
    """SHA-256 of a file's bytes, read in chunks (local or object storage)."""
    fs, path = storage.filesystem(uri)
    digest = hashlib.sha256()
    try:
        with fs.open(path, "rb") as f:
            while chunk := f.read(HASH_CHUNK_BYTES):
                digest.update(chunk)
    except FileNotFoundError:
        raise CatalogError(f"{uri}: file listed in the catalog does not exist") from None
    return digest.hexdigest()


@dataclass(frozen=True)
class HashedPair:
    """A catalog pair with the content hashes that decide whether it needs rendering."""

    pair: CatalogPair
    portrait_sha256: str
    audio_sha256: str
    controls_sha256: str | None
    input_hash: str  # over all inputs and the render settings (fps, seed): equal hash, equal video
    problem: str | None = None  # why the pair cannot render (CatalogPair.problem, or a missing file)


def _sha256_or_none(uri: str) -> str | None:
    try:
        return file_sha256(uri)
    except CatalogError:  # the file does not exist: a problem of its pairs only
        return None


def hash_pairs(pairs: list[CatalogPair], threads: int = HASH_THREADS) -> list[HashedPair]:
    """Content-hash every file of every pair once (a portrait shared by many tracks is read once).

    A pair with a problem (its own, or a listed file that does not exist) keeps it, hashed over its pair id
    and the problem: the ledger counts its failures like a failed render's, and fixing it gives a new hash."""
    uris = sorted({u for p in pairs if not p.problem for u in (p.portrait, p.audio, p.controls) if u})
    with ThreadPoolExecutor(max_workers=threads) as pool:
        digests = dict(zip(uris, pool.map(_sha256_or_none, uris)))
    hashed = []
    for p in pairs:
        problem = p.problem or next((f"{p.pair_id}: {u}: file listed in the catalog does not exist"
                                     for u in (p.portrait, p.audio, p.controls) if u and digests[u] is None), None)
        if problem:
            key = json.dumps({"pair": p.pair_id, "problem": problem}, sort_keys=True)
            hashed.append(HashedPair(p, "", "", None, hashlib.sha256(key.encode()).hexdigest(), problem))
            continue
        controls = digests[p.controls] if p.controls else None
        key = json.dumps({"portrait": digests[p.portrait], "audio": digests[p.audio], "controls": controls,
                          "fps": p.fps, "seed": p.seed}, sort_keys=True)
        hashed.append(HashedPair(p, digests[p.portrait], digests[p.audio], controls,
                                 hashlib.sha256(key.encode()).hexdigest()))
    return hashed
