"""Hostile inputs beyond the hostile manifest (test_hostile_manifest.py): URIs that try to leave the allowed
roots by spelling (case, percent-encoding, '..' in object keys, a root's name as a prefix, symlinks), and
media whose size on disk hides their size once decoded."""

from __future__ import annotations

import os
import subprocess

import numpy as np
import pytest

from pipelines.inputs import InputError, InputPolicy


@pytest.fixture
def roots(tmp_path):
    """<tmp>/root (the manifest's folder) holding symlinks out of it, and <tmp>/root-evil beside it."""
    root, evil, secret = tmp_path / "root", tmp_path / "root-evil", tmp_path / "secret"
    for d in (root, evil, secret):
        d.mkdir()
    (secret / "passwd").write_text("PLANTED-SECRET")
    (evil / "a.wav").write_bytes(b"RIFF")
    os.symlink(secret / "passwd", root / "link.wav")
    os.symlink(secret, root / "secretdir")
    (root / "inside.wav").write_bytes(b"RIFF")
    return tmp_path


@pytest.mark.parametrize("uri", [
    "{t}/root/link.wav",  # a symlink out of the root
    "{t}/root/secretdir/passwd",  # a folder symlink out of it
    "{t}/root-evil/a.wav",  # a sibling whose name starts with the root's
    "{t}/root/../root-evil/a.wav",
    "FILE://{t}/secret/passwd",  # scheme in upper case
    "file://localhost{t}/secret/passwd",
    "s3%3A//bucket/x",  # a percent-encoded scheme is no scheme: a local path under the root, not S3
    "data:text/plain;base64,UExBTlRFRA==",
    "simplecache::file://{t}/secret/passwd",
    "HTTP://127.0.0.1:1/x",
])
def test_local_uris_that_try_to_leave_the_root_are_refused(roots, uri):
    policy = InputPolicy.for_manifest(str(roots / "root" / "manifest.jsonl"))
    uri = uri.format(t=roots)
    try:
        normal = policy.check(uri)
    except InputError:
        return
    # accepted only as a path inside the root, which is what the worker then reads
    assert normal.startswith(str(roots / "root") + "/") and "secret" not in normal, normal


def test_a_mixed_case_scheme_inside_the_root_is_read_as_the_local_file(roots):
    policy = InputPolicy.for_manifest(str(roots / "root" / "manifest.jsonl"))
    assert policy.check(f"File://{roots}/root/inside.wav") == str(roots / "root" / "inside.wav")


@pytest.mark.parametrize("uri, allowed", [
    ("s3://bucket/prefix/../other/x", False),  # '..' in a key is folded before the check, and read folded
    ("s3://bucket/prefix-evil/x", False),
    ("s3://bucket/prefix/%2e%2e/other", True),  # literal: S3 keys are never percent-decoded
    ("S3://bucket/prefix/x", True),
    ("s3://BUCKET/prefix/x", False),
    ("s3a://bucket/prefix/x", False),
    ("s3://bucket/prefix/./x", True),
])
def test_object_keys_that_try_to_leave_the_prefix_are_refused(uri, allowed):
    policy = InputPolicy.for_manifest("s3://bucket/prefix/manifest.jsonl")
    if allowed:
        assert policy.check(uri).startswith("s3://bucket/prefix/")
    else:
        with pytest.raises(InputError):
            policy.check(uri)


def test_a_reference_video_with_frames_too_large_to_hold_is_refused_before_decoding(tmp_path):
    """A 125 kB H.264 file of 7000x6000 frames: 126 MB a frame once decoded, times the video's length."""
    from media import MediaError
    from metrics.video import reference_metrics

    big = tmp_path / "big.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "color=c=gray:s=7000x6000:d=0.04",
                    "-frames:v", "1", "-c:v", "libx264", "-preset", "ultrafast", str(big)], check=True)
    assert big.stat().st_size < 1_000_000
    frames = np.zeros((3, 64, 64, 3), np.uint8)
    with pytest.raises(MediaError, match=r"reference frames too large \(7000x6000\)"):
        reference_metrics(frames, np.full((3, 68, 2), np.nan), big, detect_every=1)
