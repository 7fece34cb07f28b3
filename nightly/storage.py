"""Small fsspec helpers for the nightly: URIs in object storage (s3://) or local paths, atomic writes.

s3fs reads the endpoint from `AWS_ENDPOINT_URL` (botocore honours it), so a MinIO/moto endpoint needs no
extra option here. Writes go to a temporary sibling object first and are then moved into place: a local
rename is atomic, and on S3 the final object appears in one PUT/COPY, so a reader never sees half a ledger.
"""

from __future__ import annotations

import posixpath
import uuid

import fsspec
from fsspec.core import url_to_fs


def filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path inside it) for a local path, file:// or s3:// URI."""
    return url_to_fs(uri)


def join(uri: str, *parts: str) -> str:
    """Join path parts onto a URI with '/' (also for s3://bucket/prefix)."""
    return posixpath.join(uri.rstrip("/"), *[p.strip("/") for p in parts])


def is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def full_uri(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """A path returned by fs.ls/glob turned back into a URI other tools can open."""
    protocol = fs.protocol[0] if isinstance(fs.protocol, (tuple, list)) else fs.protocol
    if protocol in ("file", "local"):
        return path
    return f"{protocol}://{path}"


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.exists(path)


def read_bytes(uri: str) -> bytes:
    fs, path = filesystem(uri)
    with fs.open(path, "rb") as f:
        return f.read()


def write_bytes_atomic(uri: str, data: bytes) -> None:
    """Write `data` to `uri` so readers see either the old object or the whole new one."""
    fs, path = filesystem(uri)
    parent = posixpath.dirname(path)
    if parent:
        fs.makedirs(parent, exist_ok=True)
    temporary = f"{path}.tmp-{uuid.uuid4().hex}"
    with fs.open(temporary, "wb") as f:
        f.write(data)
    try:
        fs.mv(temporary, path)
    finally:
        if fs.exists(temporary):
            fs.rm(temporary)
