"""Object storage through fsspec: local paths, file:// and s3:// with the same code.

S3 settings are read once on the driver (`StorageOptions.from_env`) and handed to every Ray worker
explicitly, because workers of an existing cluster do not inherit the submitting shell's environment.
Credentials are never logged: `StorageOptions.__repr__` hides them.

Publishing is all-or-nothing: `publish_file` writes the complete local file to a temporary sibling and
moves it into place (a local rename is atomic; on S3 the final key appears in one server-side copy), so
no reader ever sees a half-written video or table.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import fsspec
from fsspec.core import url_to_fs


@dataclass(frozen=True)
class StorageOptions:
    endpoint_url: str | None = None  # e.g. http://127.0.0.1:9000 for MinIO / moto
    key: str | None = field(default=None, repr=False)
    secret: str | None = field(default=None, repr=False)
    region: str | None = None

    @classmethod
    def from_env(cls, endpoint_url: str | None = None) -> "StorageOptions":
        return cls(
            endpoint_url=endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL"),
            key=os.environ.get("AWS_ACCESS_KEY_ID"),
            secret=os.environ.get("AWS_SECRET_ACCESS_KEY"),
            region=os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION"),
        )

    def for_protocol(self, protocol: str) -> dict:
        if protocol not in ("s3", "s3a"):
            return {}
        opts: dict = {}
        if self.key:
            opts["key"], opts["secret"] = self.key, self.secret
        client_kwargs = {k: v for k, v in (("endpoint_url", self.endpoint_url), ("region_name", self.region)) if v}
        if client_kwargs:
            opts["client_kwargs"] = client_kwargs
        return opts


def protocol_of(uri: str) -> str:
    return uri.split("://", 1)[0] if "://" in uri else "file"


def filesystem(uri: str, options: StorageOptions | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path inside it) for a local path, file:// or s3:// URI."""
    return url_to_fs(uri, **(options or StorageOptions()).for_protocol(protocol_of(uri)))


def is_remote(uri: str) -> bool:
    return protocol_of(uri) not in ("file", "local")


def join(uri: str, *parts: str) -> str:
    return posixpath.join(uri.rstrip("/"), *[p.strip("/") for p in parts])


def full_uri(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """A path returned by fs.ls/glob turned back into a URI other tools can open."""
    protocol = fs.protocol[0] if isinstance(fs.protocol, (tuple, list)) else fs.protocol
    return path if protocol in ("file", "local") else f"{protocol}://{path}"


def resolve(uri: str, base: str) -> str:
    """A manifest's relative path resolved against the manifest's own folder (absolute URIs unchanged)."""
    if "://" in uri or uri.startswith("/"):
        return uri
    if "://" not in base:
        return str(Path(base).resolve().parent / uri)
    protocol, path = base.split("://", 1)
    # object keys are literal ('m/../a' is not 'a'): fold '..' and '.' away here
    return f"{protocol}://{posixpath.normpath(posixpath.join(posixpath.dirname(path), uri))}"


def exists(uri: str, options: StorageOptions | None = None) -> bool:
    fs, path = filesystem(uri, options)
    return fs.exists(path)


def read_bytes(uri: str, options: StorageOptions | None = None) -> bytes:
    fs, path = filesystem(uri, options)
    with fs.open(path, "rb") as f:
        return f.read()


def fetch(uri: str, local_dir: Path, options: StorageOptions | None = None) -> Path:
    """A local path for `uri`: local files are used in place, remote ones downloaded into local_dir."""
    if not is_remote(uri):
        return Path(uri.removeprefix("file://"))
    fs, path = filesystem(uri, options)
    local = Path(local_dir) / f"{uuid.uuid4().hex[:8]}-{posixpath.basename(path)}"
    fs.get(path, str(local))
    return local


def fetch_dir(uri: str, local_dir: Path, options: StorageOptions | None = None) -> Path:
    """A local copy of a folder (e.g. a checkpoint) for `uri`; local folders are used in place."""
    if not is_remote(uri):
        return Path(uri.removeprefix("file://"))
    fs, path = filesystem(uri, options)
    local = Path(local_dir) / posixpath.basename(path.rstrip("/"))
    local.mkdir(parents=True, exist_ok=True)
    for name in fs.ls(path, detail=False):
        fs.get(name, str(local / posixpath.basename(name)))
    return local


def publish_file(local: Path, uri: str, options: StorageOptions | None = None) -> None:
    """Put a complete local file at `uri`, atomically (temporary sibling, then move)."""
    fs, path = filesystem(uri, options)
    parent = posixpath.dirname(path)
    if parent:
        fs.makedirs(parent, exist_ok=True)
    temporary = f"{parent}/.tmp-{uuid.uuid4().hex}-{posixpath.basename(path)}"
    if not is_remote(uri):
        try:
            shutil.copyfile(local, temporary)
            os.replace(temporary, path)
        finally:
            if os.path.exists(temporary):  # the move failed: no temporary is left beside the outputs
                os.remove(temporary)
        return
    fs.put_file(str(local), temporary)
    try:
        fs.mv(temporary, path)
    finally:
        if fs.exists(temporary):
            fs.rm(temporary)


def publish_bytes(data: bytes, uri: str, options: StorageOptions | None = None) -> None:
    import tempfile

    with tempfile.NamedTemporaryFile(delete=False) as f:
        f.write(data)
    try:
        publish_file(Path(f.name), uri, options)
    finally:
        os.unlink(f.name)
