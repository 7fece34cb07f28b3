"""The input policy and bounded reads on real files, a real FIFO, /dev/zero, a stalled TCP server and moto S3."""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest

from pipelines.inputs import InputError, InputPolicy, fetch_bounded, read_bounded
from pipelines.manifest import validate_rows
from pipelines.render import ConfigError, RenderConfig


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "a.png").write_bytes(b"x")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "b.png").write_bytes(b"y")
    return tmp_path


@pytest.mark.parametrize("uri, cause", [
    ("{d}/other/b.png", "outside the allowed roots"),
    ("{d}/m/../other/b.png", "outside the allowed roots"),
    ("file://{d}/other/b.png", "outside the allowed roots"),
    ("{d}/m/link.png", "outside the allowed roots"),  # a symlink inside pointing outside
    ("{d}/mx/a.png", "outside the allowed roots"),  # a sibling sharing the root's prefix
    ("http://127.0.0.1:1/x", "scheme 'http' is not allowed"),
    ("ftp://127.0.0.1/x", "scheme 'ftp' is not allowed"),
    ("s3://bucket/m/a.png", "outside the allowed roots"),
    ("s3://bucket/x::file://{d}/other/b.png", "chained URIs"),
    ("{d}/m/a\0.png", "NUL character"),
])
def test_the_default_policy_refuses_what_lies_outside_the_manifest_folder(folder, uri, cause):
    (folder / "m" / "link.png").symlink_to(folder / "other" / "b.png")
    policy = InputPolicy.for_manifest(str(folder / "m" / "manifest.jsonl"))
    with pytest.raises(InputError, match=cause):
        policy.check(uri.format(d=folder))
    assert policy.check(str(folder / "m" / "a.png")) == str(folder / "m" / "a.png")


def test_allowed_roots_and_schemes_widen_the_policy_and_s3_roots_are_prefixes(folder):
    policy = InputPolicy.for_manifest("s3://bucket/manifests/today.jsonl", roots=[str(folder / "other"), "s3://media/dub/"],
                                      schemes=["https"])
    assert policy.check(str(folder / "other" / "b.png")) == str(folder / "other" / "b.png")
    assert policy.check("s3://bucket/manifests/x/a.png") == "s3://bucket/manifests/x/a.png"
    assert policy.check("s3://media/dub/de.m4a") == "s3://media/dub/de.m4a"
    for refused in ("s3://bucket/manifests/../secrets/key", "s3://media/dubbing/x", "s3://bucket/other.png",
                    "https://cdn.example.com/a.png"):  # https is allowed, but no root of it is
        with pytest.raises(InputError, match="outside the allowed roots"):
            policy.check(refused)


def test_rows_the_policy_refuses_fail_naming_row_column_and_cause(folder):
    import pandas as pd

    df = pd.DataFrame({"id": ["ok", "out"], "portrait": ["a.png", "a.png"], "audio": ["a.png", "/etc/passwd"],
                       "controls": [None, "ftp://h/c.csv"]})
    rows, failures = validate_rows(df, str(folder / "m" / "manifest.csv"))
    assert [r.id for r in rows] == ["ok"] and rows[0].portrait == str(folder / "m" / "a.png")
    assert failures[0].error.startswith("row 1 (id 'out'): audio: outside the allowed roots")
    assert "; controls: scheme 'ftp' is not allowed" in failures[0].error


def test_a_bad_allow_root_or_scheme_is_a_usage_error(folder):
    for kwargs in ({"allowed_roots": ("",)}, {"allowed_schemes": ("no scheme",)}):
        with pytest.raises(ConfigError):
            RenderConfig(str(folder / "m" / "manifest.jsonl"), str(folder / "out"), **kwargs)


def test_non_regular_files_are_refused_without_blocking_and_sizes_are_capped(folder):
    fifo = folder / "m" / "fifo.csv"
    os.mkfifo(fifo)
    start = time.perf_counter()
    with pytest.raises(InputError, match="a FIFO, not a regular file"):
        read_bounded(str(fifo), None, 1 << 20)
    with pytest.raises(InputError, match="a FIFO, not a regular file"):
        fetch_bounded(str(fifo), folder, None, 1 << 20)
    with pytest.raises(InputError, match="a character device, not a regular file"):
        read_bounded("/dev/zero", None, 1 << 20)
    with pytest.raises(InputError, match="a directory, not a regular file"):
        fetch_bounded(str(folder / "m"), folder, None, 1 << 20)
    assert time.perf_counter() - start < 5.0  # nothing waited for a writer or read a device
    big = folder / "m" / "big.csv"
    big.write_bytes(b"0" * 1001)
    with pytest.raises(InputError, match="1,001 bytes, over the 1,000-byte limit"):
        read_bounded(str(big), None, 1000)
    assert read_bounded(str(big), None, 1001) == b"0" * 1001


def test_a_fetch_that_stalls_times_out():
    """A server that accepts and never answers: the fetch fails after its timeout instead of hanging the row."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    accepted = []
    threading.Thread(target=lambda: accepted.append(server.accept()), daemon=True).start()
    start = time.perf_counter()
    try:
        with pytest.raises(InputError, match="fetch timed out after 1 s"):
            read_bounded(f"http://127.0.0.1:{server.getsockname()[1]}/x.csv", None, 1 << 20, timeout_s=1.0)
    finally:
        server.close()
    assert time.perf_counter() - start < 10.0


def test_remote_inputs_are_capped_by_their_stored_size(s3_server, s3_bucket, tmp_path, monkeypatch):
    import storage

    fs = s3_server.filesystem()
    fs.pipe(f"{s3_bucket}/in/c.csv", b"frame,yaw\n0,1\n")
    fs.pipe(f"{s3_bucket}/in/dir/x", b"1")
    options = storage.StorageOptions(s3_server.endpoint_url, s3_server.access_key, s3_server.secret_key, s3_server.region)
    assert read_bounded(f"s3://{s3_bucket}/in/c.csv", options, 100) == b"frame,yaw\n0,1\n"
    assert fetch_bounded(f"s3://{s3_bucket}/in/c.csv", tmp_path, options, 100).read_bytes() == b"frame,yaw\n0,1\n"
    with pytest.raises(InputError, match="14 bytes, over the 10-byte limit"):
        fetch_bounded(f"s3://{s3_bucket}/in/c.csv", tmp_path, options, 10)
    with pytest.raises(InputError, match="not a regular file"):
        read_bounded(f"s3://{s3_bucket}/in/dir", options, 100)
    with pytest.raises(FileNotFoundError):
        read_bounded(f"s3://{s3_bucket}/in/nope.csv", options, 100)
