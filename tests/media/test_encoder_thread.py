"""media.EncoderThread: an MP4 encoded on its own thread, finished and handed on there."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from media import EncoderThread, MediaError, encode_mp4, read_video


def frames(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (32, 48, 3), dtype=np.uint8)
    return [np.roll(base, i, axis=1) for i in range(n)]


def test_the_threaded_encoder_writes_the_same_video_and_finishes_on_its_thread(tmp_path):
    audio = np.zeros(16000, np.float32)
    seen = {}

    def then(count: int) -> str:
        seen["thread"], seen["count"] = threading.current_thread(), count
        return "published"

    encoder = EncoderThread(tmp_path / "threaded.mp4", 25.0, transform=lambda f: f[:, ::-1], max_pending=2)
    for f in frames(12):
        encoder.add(f)
    assert encoder.finish(audio, then).result(timeout=60) == "published"
    assert seen["count"] == 12 and seen["thread"] is not threading.current_thread()
    encode_mp4(tmp_path / "plain.mp4", [f[:, ::-1] for f in frames(12)], 25.0, audio)
    threaded, plain = read_video(tmp_path / "threaded.mp4"), read_video(tmp_path / "plain.mp4")
    assert threaded.frames.shape == plain.frames.shape == (12, 32, 48, 3)
    assert np.abs(threaded.frames.astype(int) - plain.frames.astype(int)).max() <= 1
    assert encoder.encode_s > 0 and encoder.transform_s > 0


def test_a_bad_frame_or_a_failing_hand_on_is_the_futures_error_and_abort_removes_the_file(tmp_path):
    encoder = EncoderThread(tmp_path / "bad.mp4", 25.0)
    encoder.add(frames(1)[0])
    encoder.add(np.zeros((1, 1, 3), np.uint8))  # too small for yuv420p
    encoder.add(frames(1)[0])  # ignored once the thread has failed
    with pytest.raises(MediaError, match="at least 2x2"):
        encoder.finish(np.zeros(160, np.float32)).result(timeout=60)
    encoder.abort()
    assert not (tmp_path / "bad.mp4").exists()

    def upload_fails(count: int):
        raise OSError("the store is gone")

    encoder = EncoderThread(tmp_path / "ok.mp4", 25.0)
    encoder.add(frames(1)[0])
    with pytest.raises(OSError, match="the store is gone"):
        encoder.finish(np.zeros(160, np.float32), upload_fails).result(timeout=60)
    encoder.abort()
    assert not (tmp_path / "ok.mp4").exists()
