"""Storage URIs against a real S3 API (moto server on loopback)."""

from __future__ import annotations

import storage


def test_relative_paths_with_dot_dot_resolve_to_the_real_s3_key(s3_server, s3_bucket):
    """Regression: '../x/a.png' beside s3://b/m/man.jsonl gave the literal key 'm/../x/a.png', which does not exist."""
    fs = s3_server.filesystem()
    fs.pipe(f"{s3_bucket}/x/a.png", b"portrait bytes")
    options = storage.StorageOptions(s3_server.endpoint_url, s3_server.access_key, s3_server.secret_key, s3_server.region)
    uri = storage.resolve("../x/./a.png", f"s3://{s3_bucket}/m/man.jsonl")
    assert uri == f"s3://{s3_bucket}/x/a.png"
    assert storage.read_bytes(uri, options) == b"portrait bytes"
