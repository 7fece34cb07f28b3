"""Preparation of a real talking-head video corpus (HDTF / VoxCeleb-style folders of MP4s) into
training shards (shards.py), as a Ray Data job; `eartalk prepare` (jobs/prepare.py) runs it.

Per video (one task per file, fanned out over the cluster):
  decode with PyAV (media.read_video), resample to the training fps by frame picking, detect the face
  on each clip's first frame and align it to the canonical crop (faces.align_face); the other frames
  of the clip reuse that crop's transform, so head motion stays visible inside a fixed crop, as the
  generator must render it. Controls per frame from the offline landmarker, relative to the clip's
  first frame (the clip's portrait), the same convention as the puppet's labels:
    yaw/pitch/roll = faces.head_pose(frame) - head_pose(first frame), degrees
    blink          = faces.eye_openness(frame), the control's unit (0 closed .. 1 open)
    gaze_x/gaze_y  = faces.gaze.gaze(frame) - gaze(first frame): the iris inside the eye contour
    lip            = NaN (no estimator for it here: the model learns it as absent)
  Clips where the face is lost on more than MAX_LOST_FRACTION of frames are dropped; lost frames
  inside a kept clip get NaN controls.
Each Ray task writes its own shard folder; the driver writes dataset.json listing them.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from pathlib import Path

import cv2
import numpy as np

import storage
from model.config import AUDIO_SAMPLE_RATE
from training.puppet import PUPPET_CONTROLS
from storage import StorageOptions
from training.shards import Clip, write_manifest, write_shard

log = logging.getLogger(__name__)

MAX_LOST_FRACTION = 0.2  # clips losing the face on more frames than this are dropped
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi")
# one video per task: decoding + per-frame dlib landmarks is ~1 CPU; more CPUs per task would idle
CPUS_PER_VIDEO = 1


def list_videos(input_uri: str, storage_options: StorageOptions | None = None) -> list[str]:
    """Every video file under a local folder or object-storage prefix, sorted (deterministic shards)."""
    fs, root = storage.filesystem(input_uri, storage_options)
    if not fs.exists(root):
        raise FileNotFoundError(f"{input_uri}: no such folder or prefix")
    files = [f for f in fs.find(root) if f.lower().endswith(VIDEO_SUFFIXES)]
    if not files:
        raise FileNotFoundError(f"{input_uri}: no video files ({', '.join(VIDEO_SUFFIXES)})")
    return sorted(storage.full_uri(fs, f) for f in files)


class VideoToShard:
    """Ray Data callable: a batch of video URIs -> one shard folder on the output, per batch."""

    def __init__(self, output_dir: str, image_size: int, fps: float, clip_frames: int,
                 storage_options: StorageOptions | None = None):
        from faces import FaceAnalyzer

        self.analyzer = FaceAnalyzer()  # loads the dlib models once per worker
        self.output_dir = Path(output_dir)
        self.image_size = image_size
        self.fps = fps
        self.clip_frames = clip_frames
        self.storage_options = storage_options

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        clips: list[Clip] = []
        errors: list[str] = []
        for uri in batch["uri"]:
            try:
                clips.extend(self.video_clips(str(uri)))
            except Exception as err:  # one bad file must not sink the corpus; it is reported
                errors.append(f"{uri}: {type(err).__name__}: {err}")
        name = ""
        if clips:
            digest = hashlib.sha256("\n".join(map(str, batch["uri"])).encode()).hexdigest()[:12]
            name = f"shard-{digest}"
            write_shard(self.output_dir / name, clips)
        return {"shard": [name], "clips": [len(clips)], "errors": ["\n".join(errors)]}

    def video_clips(self, uri: str) -> list[Clip]:
        from media import read_video

        with tempfile.TemporaryDirectory() as tmp:
            video = read_video(str(storage.fetch(uri, Path(tmp), self.storage_options)))
        if video.audio is None or len(video.audio) == 0:  # read_video gives None without an audio stream
            raise ValueError(f"{uri}: the video has no audio track")
        if video.sample_rate != AUDIO_SAMPLE_RATE:
            raise ValueError(f"{uri}: audio decoded at {video.sample_rate} Hz, expected {AUDIO_SAMPLE_RATE}")
        # frame picking to the training fps (nearest source frame for each target time)
        duration = len(video.frames) / video.fps
        count = int(duration * self.fps)
        picks = np.minimum(np.round(np.arange(count) / self.fps * video.fps).astype(int), len(video.frames) - 1)
        samples_per_clip = int(round(self.clip_frames / self.fps * AUDIO_SAMPLE_RATE))
        clips = []
        for c, first in enumerate(range(0, count - self.clip_frames + 1, self.clip_frames)):
            frames = [np.asarray(video.frames[i]) for i in picks[first:first + self.clip_frames]]
            start = int(round(first / self.fps * AUDIO_SAMPLE_RATE))
            audio = np.asarray(video.audio[start:start + samples_per_clip], np.float32)
            if len(audio) < samples_per_clip:
                audio = np.pad(audio, (0, samples_per_clip - len(audio)))
            clip = self.label_clip(frames, audio, {"source": uri, "clip": c, "first_frame": int(first)})
            if clip is not None:
                clips.append(clip)
        return clips

    def label_clip(self, frames: list[np.ndarray], audio: np.ndarray, info: dict) -> Clip | None:
        from faces import NoFaceError, align_face, eye_openness, head_pose
        from faces.gaze import gaze

        try:
            reference = align_face(frames[0], self.image_size)
        except NoFaceError:
            return None
        transform = np.asarray(reference.transform, np.float64)[:2]  # image -> crop, 2x3
        crops = np.stack([cv2.warpAffine(f, transform, (self.image_size, self.image_size), flags=cv2.INTER_AREA,
                                         borderMode=cv2.BORDER_REFLECT) for f in frames])  # (F, S, S, 3)
        ref_landmarks = self.analyzer.landmarks(frames[0])
        if ref_landmarks is None:
            return None
        ref_pose = np.asarray(head_pose(ref_landmarks, frames[0].shape))
        ref_gaze = np.asarray(gaze(frames[0], ref_landmarks))  # NaN when the first frame's eyes are shut
        labels = np.full((len(frames), len(PUPPET_CONTROLS)), np.nan, np.float32)
        lost = 0
        for f, frame in enumerate(frames):
            landmarks = self.analyzer.landmarks(frame)
            if landmarks is None:
                lost += 1
                continue
            yaw, pitch, roll = np.asarray(head_pose(landmarks, frame.shape)) - ref_pose
            labels[f, :4] = (yaw, pitch, roll, float(eye_openness(landmarks)))
            labels[f, 4:6] = np.asarray(gaze(frame, landmarks)) - ref_gaze
        if lost > MAX_LOST_FRACTION * len(frames):
            return None
        return Clip(portrait=crops[0], frames=crops, audio=audio, controls=labels, info=info)


def prepare_corpus(input_uri: str, output_dir: str | Path, image_size: int = 128, fps: float = 25.0,
                   clip_frames: int = 50, videos_per_shard: int = 4,
                   storage_options: StorageOptions | None = None) -> dict:
    """Run the Ray Data job; returns {"shards", "clips", "errors"}. Uses the current Ray cluster
    (or starts a local one); `storage_options` reach every worker that reads the input."""
    import ray

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    videos = list_videos(input_uri, storage_options)
    # INPUT: one row per video URI. OUTPUT: one row per shard written (shard name, clip count, errors).
    # Fan-in: VIDEOS_PER_SHARD videos per batch -> one shard; actors hold the dlib models.
    ds = ray.data.from_items([{"uri": v} for v in videos], override_num_blocks=max(1, len(videos) // videos_per_shard))
    results = ds.map_batches(
        VideoToShard,
        fn_constructor_kwargs={"output_dir": str(output_dir), "image_size": image_size, "fps": fps,
                               "clip_frames": clip_frames, "storage_options": storage_options},
        batch_size=videos_per_shard,
        num_cpus=CPUS_PER_VIDEO,
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=max(1, int(ray.available_resources().get("CPU", 1)))),
    ).take_all()
    shards = sorted(r["shard"] for r in results if r["shard"])
    errors = [line for r in results for line in str(r["errors"]).splitlines() if line]
    clips = int(sum(int(r["clips"]) for r in results))
    if not shards:
        raise ValueError(f"{input_uri}: no usable clips in {len(videos)} videos; errors: {errors[:5]}")
    write_manifest(output_dir, image_size=image_size, fps=fps, clip_frames=clip_frames,
                   sample_rate=AUDIO_SAMPLE_RATE, controls=list(PUPPET_CONTROLS), shards=shards,
                   source={"kind": "corpus", "input": input_uri, "videos": len(videos), "errors": errors})
    return {"shards": shards, "clips": clips, "errors": errors}

