"""MP4 encode (H.264 yuv420p + AAC) and decode with PyAV.

`encode_mp4` writes the whole file locally; callers upload it only once it is complete, so no reader
ever sees a partial video.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterable

import av
import numpy as np

from .audio import MODEL_SAMPLE_RATE, MediaError, load_audio

AAC_FRAME = 1024  # samples per AAC frame
CRF = "18"  # x264 quality: visually lossless for our small frames


def fps_fraction(fps: float) -> Fraction:
    """25 -> 25/1, 29.97 -> 30000/1001."""
    return Fraction(fps).limit_denominator(1001)


def encode_mp4(path: str | Path, frames: Iterable[np.ndarray], fps: float, audio: np.ndarray | None,
               sample_rate: int = MODEL_SAMPLE_RATE) -> int:
    """Write (H, W, 3) uint8 RGB frames + mono float audio to an MP4 at `path`. Returns the frame count."""
    path = Path(path)
    count = 0
    with av.open(str(path), mode="w", format="mp4") as container:
        video = container.add_stream("libx264", rate=fps_fraction(fps))
        video.pix_fmt = "yuv420p"
        video.options = {"crf": CRF, "preset": "veryfast"}
        astream = None
        if audio is not None:
            astream = container.add_stream("aac", rate=sample_rate)
            astream.layout = "mono"
        for image in frames:
            if count == 0:
                video.height, video.width = image.shape[:2]
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            container.mux(video.encode(frame))
            count += 1
        container.mux(video.encode())  # flush
        if astream is not None:
            samples = np.asarray(audio, dtype=np.float32).reshape(1, -1)
            for start in range(0, samples.shape[1], AAC_FRAME):
                chunk = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples[:, start : start + AAC_FRAME]), format="fltp", layout="mono")
                chunk.sample_rate = sample_rate
                chunk.pts = start
                container.mux(astream.encode(chunk))
            container.mux(astream.encode())
    if count == 0:
        raise MediaError(f"{path}: no frames to encode")
    return count


@dataclass
class VideoClip:
    frames: np.ndarray  # (F, H, W, 3) uint8 RGB
    fps: float
    audio: np.ndarray | None  # (N,) float32 mono, or None without an audio track
    sample_rate: int


def read_video(path: str | Path, sample_rate: int = MODEL_SAMPLE_RATE, max_frames: int | None = None) -> VideoClip:
    """Decode every video frame (RGB) and the audio track (mono at `sample_rate`)."""
    path = Path(path)
    if not path.is_file():
        raise MediaError(f"{path}: video file not found")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise MediaError(f"{path}: no video stream")
            stream = container.streams.video[0]
            fps = float(stream.average_rate or stream.guessed_rate or 25)
            frames = []
            for frame in container.decode(stream):
                frames.append(frame.to_ndarray(format="rgb24"))
                if max_frames is not None and len(frames) >= max_frames:
                    break
            has_audio = bool(container.streams.audio)
    except MediaError:
        raise
    except av.error.FFmpegError as e:
        raise MediaError(f"{path}: unreadable video ({e})") from None
    if not frames:
        raise MediaError(f"{path}: video has no frames")
    audio = load_audio(path, sample_rate) if has_audio else None
    return VideoClip(np.stack(frames), fps, audio, sample_rate)


def probe_video(path: str | Path) -> dict:
    """Stream facts without decoding: codec names, size, fps, frame count, duration (s)."""
    with av.open(str(path)) as container:
        v = container.streams.video[0]
        a = container.streams.audio[0] if container.streams.audio else None
        return {
            "video_codec": v.codec_context.name,
            "audio_codec": a.codec_context.name if a else None,
            "width": v.codec_context.width,
            "height": v.codec_context.height,
            "fps": float(v.average_rate or 0),
            "frames": v.frames,
            "duration_s": float(container.duration / av.time_base) if container.duration else None,
        }
