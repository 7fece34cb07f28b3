"""MP4 encode (H.264 yuv420p + AAC) and decode with PyAV.

`encode_mp4` writes the whole file locally; callers upload it only once it is complete, so no reader
ever sees a partial video. `EncoderThread` runs one writer on its own thread, so a video is encoded while
the next frames are generated and finished (and handed on, e.g. uploaded) without the generator waiting.
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Iterable

import av
import cv2
import numpy as np

from model import AUDIO_SAMPLE_RATE

from .audio import MediaError, load_audio

AAC_FRAME = 1024  # samples per AAC frame
CRF = "18"  # x264 quality: visually lossless for our small frames


def fps_fraction(fps: float) -> Fraction:
    """25 -> 25/1, 29.97 -> 30000/1001."""
    return Fraction(fps).limit_denominator(1001)


class Mp4Writer:
    """Incremental H.264 (yuv420p) + AAC writer: add frames as they are generated, then `close(audio)`."""

    def __init__(self, path: str | Path, fps: float, audio_sample_rate: int | None = AUDIO_SAMPLE_RATE):
        self.path = Path(path)
        self.fps = fps
        self.frames = 0
        self.container = av.open(str(self.path), mode="w", format="mp4")
        self.video = self.container.add_stream("libx264", rate=fps_fraction(fps))
        self.video.pix_fmt = "yuv420p"
        self.video.options = {"crf": CRF, "preset": "veryfast"}
        # every stream must exist before the first packet is muxed (the header is written then)
        self.audio = None
        if audio_sample_rate:
            self.audio = self.container.add_stream("aac", rate=audio_sample_rate)
            self.audio.layout = "mono"

    def add(self, image: np.ndarray) -> None:
        """One (H, W, 3) uint8 RGB frame."""
        if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] < 2 or image.shape[1] < 2:
            raise MediaError(f"{self.path}: frames must be (H, W, 3) RGB of at least 2x2, got {image.shape}")
        if self.frames == 0:
            # yuv420p halves the chroma planes: libx264 refuses odd sides, so the frames lose their last row/column
            self.video.height, self.video.width = image.shape[0] & ~1, image.shape[1] & ~1
        image = np.ascontiguousarray(image[: self.video.height, : self.video.width])
        # OpenCV's BT.601 conversion (the same limited-range luma as swscale's, chroma averaged over 2x2)
        # costs about a sixth of what swscale's rgb24 -> yuv420p does inside the encoder, on every frame
        frame = av.VideoFrame.from_ndarray(cv2.cvtColor(image, cv2.COLOR_RGB2YUV_I420), format="yuv420p")
        self.container.mux(self.video.encode(frame))
        self.frames += 1

    def close(self, audio: np.ndarray | None) -> int:
        """Flush the video, write the mono float audio track, finish the file; returns the frame count."""
        try:
            if self.frames == 0:
                raise MediaError(f"{self.path}: no frames to encode")
            self.container.mux(self.video.encode())
            if (audio is None) != (self.audio is None):
                raise ValueError("audio must be given exactly when the writer was opened with an audio sample rate")
            if audio is not None:
                stream, sample_rate = self.audio, self.audio.rate
                samples = np.asarray(audio, dtype=np.float32).reshape(1, -1)
                for start in range(0, samples.shape[1], AAC_FRAME):
                    chunk = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples[:, start : start + AAC_FRAME]), format="fltp", layout="mono")
                    chunk.sample_rate = sample_rate
                    chunk.pts = start
                    self.container.mux(stream.encode(chunk))
                self.container.mux(stream.encode())
        finally:
            self.container.close()
        return self.frames

    def abort(self) -> None:
        """Give up: close the container and remove the partial file."""
        self.container.close()
        self.path.unlink(missing_ok=True)


_FINISH = object()  # queue marker: no more frames, finish the file


class EncoderThread:
    """An Mp4Writer fed through a bounded queue by its own thread: `add` returns at once (it waits only
    while `max_pending` frames are queued, which bounds memory when encoding is slower than generation),
    `finish(audio, then)` closes the file and runs `then(frames)` on the thread (an upload, say) and returns
    a Future of then's result. A failure (a bad frame, the encoder, `then`) is the Future's exception.

    `transform` runs on each frame on the thread before encoding (compositing); `encode_s` and
    `transform_s` are the thread's seconds spent encoding and transforming.
    """

    def __init__(self, path: str | Path, fps: float, transform: Callable[[np.ndarray], np.ndarray] | None = None,
                 max_pending: int = 64, audio_sample_rate: int | None = AUDIO_SAMPLE_RATE):
        self.writer = Mp4Writer(path, fps, audio_sample_rate)
        self.transform = transform
        self.encode_s = self.transform_s = 0.0
        self.result: Future = Future()
        self._queue: queue.Queue = queue.Queue(max_pending)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"encode-{self.writer.path.name}", daemon=True)
        self._thread.start()

    def add(self, image: np.ndarray) -> None:
        """Queue one (H, W, 3) uint8 RGB frame (ignored once the thread has failed: `result` says why)."""
        while not self.result.done():
            try:
                self._queue.put(image, timeout=0.5)
                return
            except queue.Full:
                continue

    def finish(self, audio: np.ndarray | None, then: Callable[[int], Any] | None = None) -> Future:
        """No more frames: close the file with `audio` and run `then(frames)` on the thread. Returns `result`."""
        self.add((_FINISH, audio, then))  # type: ignore[arg-type]
        return self.result

    def abort(self) -> None:
        """Give up: stop the thread, close the container and remove the partial file."""
        self._stop.set()
        try:
            self._queue.put_nowait(None)
        except queue.Full:
            pass
        self._thread.join()
        self.writer.abort()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                item = self._queue.get()
                if item is None:
                    continue
                if isinstance(item, tuple) and item and item[0] is _FINISH:
                    _, audio, then = item
                    t0 = time.perf_counter()
                    frames = self.writer.close(audio)
                    self.encode_s += time.perf_counter() - t0
                    self.result.set_result(then(frames) if then else frames)
                    return
                if self.transform is not None:
                    t0 = time.perf_counter()
                    item = self.transform(item)
                    self.transform_s += time.perf_counter() - t0
                t0 = time.perf_counter()
                self.writer.add(item)
                self.encode_s += time.perf_counter() - t0
        except BaseException as e:  # the owner reads it from `result`; the thread ends
            self.writer.container.close()
            self.result.set_exception(e)
        finally:
            if not self.result.done():  # aborted
                self.result.cancel()


def encode_mp4(path: str | Path, frames: Iterable[np.ndarray], fps: float, audio: np.ndarray | None,
               sample_rate: int = AUDIO_SAMPLE_RATE) -> int:
    """Write (H, W, 3) uint8 RGB frames + mono float audio to an MP4 at `path`. Returns the frame count."""
    writer = Mp4Writer(path, fps, sample_rate if audio is not None else None)
    try:
        for image in frames:
            writer.add(image)
    except BaseException:  # a bad frame, or the frame source failing: no half-written file is left behind
        writer.abort()
        raise
    return writer.close(audio)


@dataclass
class VideoClip:
    frames: np.ndarray  # (F, H, W, 3) uint8 RGB
    fps: float
    audio: np.ndarray | None  # (N,) float32 mono, or None without an audio track
    sample_rate: int


def read_video(path: str | Path, sample_rate: int = AUDIO_SAMPLE_RATE, max_frames: int | None = None) -> VideoClip:
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
    path = Path(path)
    if not path.is_file():
        raise MediaError(f"{path}: video file not found")
    try:
        container = av.open(str(path))
    except av.error.FFmpegError as e:
        raise MediaError(f"{path}: unreadable video ({e})") from None
    with container:
        if not container.streams.video:
            raise MediaError(f"{path}: no video stream")
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
