"""Helpers shared by the pipeline tests: manifests of real inputs and checks of the published videos."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np

from model import AUDIO_SAMPLE_RATE


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def short_speech(src: Path, dst: Path, seconds: float) -> Path:
    """The first `seconds` of a real speech file, as mono WAV at the model's rate (keeps the suite fast)."""
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(src), "-t", str(seconds), "-ac", "1", "-ar", str(AUDIO_SAMPLE_RATE), str(dst)],
                   check=True)
    return dst


def ffprobe(path: Path) -> dict:
    out = subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-show_streams", "-show_format", "-of", "json", str(path)],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def check_video(path: Path, expected_audio_s: float, fps: float = 25.0) -> dict:
    """H.264 yuv420p + AAC, duration equal to the audio's within one frame, decodes back to real frames."""
    from media import read_video

    info = ffprobe(path)
    streams = {s["codec_type"]: s for s in info["streams"]}
    assert streams["video"]["codec_name"] == "h264"
    assert streams["video"]["pix_fmt"] == "yuv420p"
    assert streams["audio"]["codec_name"] == "aac"
    frames = int(streams["video"]["nb_read_frames"])
    duration = frames / fps
    assert abs(duration - expected_audio_s) <= 1.0 / fps + 1e-6, (duration, expected_audio_s)
    clip = read_video(path)
    assert clip.frames.shape[0] == frames
    assert clip.frames.std() > 1.0  # not a blank video
    assert clip.audio is not None and abs(clip.audio.size / AUDIO_SAMPLE_RATE - expected_audio_s) < 0.15
    return {"frames": frames, "duration_s": duration}
