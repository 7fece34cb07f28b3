"""What a manifest may point at, and how much of it the render job reads: the input policy and bounded reads.

A manifest names files by URI, and the workers open whatever it names with the job's own permissions and
credentials, so on a shared cluster a manifest is untrusted input. Two guards:

Input policy (`InputPolicy`, checked on the driver by `pipelines.manifest.validate_rows`, before anything
is fetched). A row's `portrait`, `audio`, `controls` and `reference_video` must
  - use an allowed scheme: local paths (and `file://`) and `s3://` by default; any other (`https`, `gs`,
    ...) only when named with `--allow-scheme` (repeatable);
  - lie under an allowed root: the manifest's own folder (for `s3://`, its bucket prefix) and every
    `--allow-root` (repeatable, a local folder or a URI prefix such as `s3://media/portraits/`).
Local paths are resolved (symlinks and `..`) before the check and the row carries the resolved path on,
so a link inside the manifest's folder that points outside it is refused. Chained fsspec URIs (`a::b`)
are refused: the first URI's scheme would not be the one that is opened.

Bounded reads (`fetch_bounded`, `read_bounded`, used by the stages): before a byte is read, a local path
must be a regular file (a FIFO, a device such as /dev/zero or a folder is refused without opening it) and
every input must be within its size limit below; each fetch ends after FETCH_TIMEOUT_S.

Errors name the cause, never a file's content: a row's error goes into the results table, the logs and
MLflow, where a file the row should not read must not show up.
"""

from __future__ import annotations

import os
import posixpath
import re
import stat
import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import storage

MIB = 1 << 20
# ---- limits (bytes) of one input, checked before it is read
MAX_MANIFEST_BYTES = 256 * MIB  # a manifest: about a million rows of JSONL
MAX_IMAGE_BYTES = 64 * MIB  # a portrait (JPEG / PNG / WebP); decoded pixels are capped by the image decoder
MAX_AUDIO_BYTES = 512 * MIB  # a speech track: about 45 min of 16-bit stereo WAV at 48 kHz
MAX_CONTROLS_BYTES = 16 * MIB  # a control track: about 300k frames of every control as CSV
MAX_VIDEO_BYTES = 2048 * MIB  # a reference video
# s: decoded speech, checked while decoding: 460 MB of float32 samples at 16 kHz. A small file at a low
# bitrate can hold far more (50 MB of 8 kbit/s MP3 is 14 h, 3 GB decoded); a feature's dialogue fits
MAX_AUDIO_SECONDS = 2 * 3600
FETCH_TIMEOUT_S = 300.0  # seconds one fetch (stat + download) may take before its row fails
LIMITS = {"portrait": MAX_IMAGE_BYTES, "audio": MAX_AUDIO_BYTES, "controls": MAX_CONTROLS_BYTES,
          "reference_video": MAX_VIDEO_BYTES}  # manifest column -> limit

DEFAULT_SCHEMES = ("file", "s3")
URI_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://(.*)$", re.DOTALL)

T = TypeVar("T")


class InputError(ValueError):
    """An input the policy or a limit refuses; the message names the cause, never the file's content."""


def check_duration(seconds: float, max_seconds: float | None) -> None:
    """Refuse speech longer than the job's cap on a row's length (--max-seconds; None: no cap)."""
    if max_seconds is not None and seconds > max_seconds:
        raise InputError(f"audio is {seconds:.2f} s long, over the --max-seconds cap of {max_seconds:g} s")


def split_uri(uri: str) -> tuple[str, str]:
    """(scheme, rest): ('file', path) for a plain path or file://, the lower-cased scheme otherwise."""
    match = URI_SCHEME.match(uri)
    if not match:
        return "file", uri
    return match.group(1).lower(), match.group(2)


def normalize(uri: str) -> str:
    """A URI in the form the policy compares: local paths resolved (symlinks, '..'), keys with '..' folded."""
    scheme, rest = split_uri(uri)
    if "\0" in uri:  # os.path raises ValueError on it; no file system or object store names one
        raise InputError("a NUL character is not allowed in a path")
    if scheme == "file":
        return os.path.realpath(rest)
    return f"{scheme}://{posixpath.normpath(rest)}" if rest else f"{scheme}://"


def manifest_root(manifest_uri: str) -> str:
    """The folder (or bucket prefix) a manifest sits in: its rows may read what lies under it."""
    normal = normalize(manifest_uri)
    scheme, rest = split_uri(normal)
    if scheme == "file":
        return os.path.dirname(normal)
    return f"{scheme}://{posixpath.dirname(rest)}"


def _under(uri: str, root: str) -> bool:
    if root == "/" or root.endswith("://"):  # the whole local file system, or a whole scheme ("s3://")
        return uri.startswith(root)
    root = root.rstrip("/")
    return uri == root or uri.startswith(root + "/")


@dataclass(frozen=True)
class InputPolicy:
    schemes: frozenset[str]
    roots: tuple[str, ...]  # normalized

    @classmethod
    def for_manifest(cls, manifest_uri: str, roots: Iterable[str] = (), schemes: Iterable[str] = ()) -> InputPolicy:
        """The default policy of a manifest (its own folder, local paths and s3://) widened by `roots` and `schemes`."""
        roots = list(roots)
        if any(not r.strip() for r in roots):  # '' would resolve to the working directory: never meant
            raise InputError("--allow-root '': give a folder or a URI prefix")
        extra = {s.lower().removesuffix("://") for s in schemes}
        bad = sorted(s for s in extra if not re.fullmatch(r"[a-z][a-z0-9+.-]*", s))
        if bad:
            raise InputError(f"--allow-scheme {bad[0]!r}: not a URI scheme (e.g. https, gs)")
        return cls(frozenset(DEFAULT_SCHEMES) | extra, (manifest_root(manifest_uri), *(normalize(r) for r in roots)))

    def check(self, uri: str) -> str:
        """`uri` normalized (what the row goes on to read), or InputError naming why the policy refuses it."""
        if "::" in uri:
            raise InputError("chained URIs ('::') are not allowed")
        scheme, _ = split_uri(uri)
        if scheme not in self.schemes:
            raise InputError(f"scheme {scheme!r} is not allowed (allowed: {', '.join(sorted(self.schemes))}; "
                             "add one with --allow-scheme)")
        normal = normalize(uri)
        if not any(_under(normal, root) for root in self.roots):
            raise InputError(f"outside the allowed roots ({', '.join(self.roots)}; add one with --allow-root)")
        return normal


# ---------------------------------------------------------------- bounded reads (worker side)


def _with_timeout(fn: Callable[[], T], timeout_s: float) -> T:
    """fn() on a daemon thread, or InputError after timeout_s: a stalled read fails its row, not the job.

    The stalled thread is left behind (a blocked read cannot be interrupted); it holds no lock of ours.
    """
    outcome: dict = {}

    def target() -> None:
        try:
            outcome["value"] = fn()
        except BaseException as e:  # handed to the caller's thread below
            outcome["error"] = e

    thread = threading.Thread(target=target, daemon=True, name="eartalk-fetch")
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise InputError(f"fetch timed out after {timeout_s:g} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def _check_size(size: int, limit: int) -> None:
    if size > limit:
        raise InputError(f"{size:,} bytes, over the {limit:,}-byte limit")


def _local_path(uri: str, limit: int) -> str:
    """A local input's path, once it is a regular file within `limit` (stat only: nothing is opened)."""
    path = split_uri(uri)[1]
    st = os.stat(path)  # FileNotFoundError: the caller's "not found"
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{_kind(st.st_mode)}, not a regular file")
    _check_size(st.st_size, limit)
    return path


def probe_local(uri: str, limit: int) -> None:
    """What fetching a local input would refuse (missing, not a regular file, too large), from a stat alone."""
    _local_path(uri, limit)


def _remote_open(uri: str, limit: int, options: storage.StorageOptions | None):
    fs, path = storage.filesystem(uri, options)
    info = fs.info(path)  # FileNotFoundError: the caller's "not found"
    if info.get("type") != "file":
        raise InputError(f"{info.get('type') or 'not a file'}, not a regular file")
    _check_size(int(info.get("size") or 0), limit)
    return fs.open(path, "rb")


def _copy(source, sink, limit: int) -> None:
    """Chunks of `source` into `sink`, never more than `limit` bytes (a size that lied is caught here)."""
    total = 0
    while chunk := source.read(MIB):
        total += len(chunk)
        _check_size(total, limit)
        sink.write(chunk)


def fetch_bounded(uri: str, local_dir: Path, options: storage.StorageOptions | None, limit: int,
                  timeout_s: float = FETCH_TIMEOUT_S) -> Path:
    """A local path for an input: a local file is checked and used in place, a remote one downloaded."""
    if not storage.is_remote(uri):
        return Path(_with_timeout(lambda: _local_path(uri, limit), timeout_s))
    local = Path(local_dir) / f"{uuid.uuid4().hex[:8]}-{posixpath.basename(split_uri(uri)[1]) or 'input'}"

    def download() -> Path:
        with _remote_open(uri, limit, options) as source, open(local, "wb") as sink:
            _copy(source, sink, limit)
        return local

    return _with_timeout(download, timeout_s)


def read_bounded(uri: str, options: storage.StorageOptions | None, limit: int,
                 timeout_s: float = FETCH_TIMEOUT_S) -> bytes:
    """An input's bytes, at most `limit` of them."""
    def read() -> bytes:
        if storage.is_remote(uri):
            with _remote_open(uri, limit, options) as source:
                data = source.read(limit + 1)
        else:
            path = _local_path(uri, limit)
            # O_NONBLOCK: a FIFO swapped in after the stat opens at once instead of waiting for a writer
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
            with os.fdopen(fd, "rb") as f:
                mode = os.fstat(f.fileno()).st_mode
                if not stat.S_ISREG(mode):
                    raise InputError(f"{_kind(mode)}, not a regular file")
                data = f.read(limit + 1)
        _check_size(len(data), limit)
        return data

    return _with_timeout(read, timeout_s)
