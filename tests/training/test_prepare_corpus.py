"""Ray Data preparation of a real video corpus into training shards, labelled by the offline landmarker."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

from training.prepare import list_videos, prepare_corpus
from training.shards import ClipDataset


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, shared_media):
    """A folder of MP4s: 2 s of the real talking-head video, and a corrupt file."""
    root = tmp_path_factory.mktemp("corpus")
    (root / "speaker1").mkdir()
    subprocess.run(["ffmpeg", "-loglevel", "error", "-i", str(shared_media / "video" / "talking_512px_8s.mp4"),
                    "-t", "2", "-c:v", "libx264", "-c:a", "aac", str(root / "speaker1" / "clip.mp4")], check=True)
    (root / "broken.mp4").write_bytes(b"not a video at all")
    return root


def test_a_video_folder_becomes_labelled_training_shards(corpus, tmp_path, ray_local):
    summary = prepare_corpus(str(corpus), tmp_path / "shards", image_size=128, fps=25.0, clip_frames=25,
                             videos_per_shard=1)
    assert summary["clips"] == 2, summary
    assert any("broken.mp4" in e for e in summary["errors"]), "the corrupt file is reported by name"
    ds = ClipDataset(tmp_path / "shards")
    clip = ds[0]
    assert clip.frames.shape == (25, 128, 128, 3) and clip.audio.shape == (16000,)
    assert np.abs(clip.audio).max() > 0.01, "the video's real speech is carried"
    yaw, blink = clip.controls[:, 0], clip.controls[:, 3]
    assert yaw[0] == pytest.approx(0.0, abs=1e-4), "pose is relative to the clip's first frame"
    assert np.isfinite(yaw).mean() > 0.8 and np.all(np.nan_to_num(blink, nan=0.5) <= 1.0)
    gaze_x, gaze_y = clip.controls[:, 4], clip.controls[:, 5]
    assert gaze_x[0] == pytest.approx(0.0, abs=1e-4) and gaze_y[0] == pytest.approx(0.0, abs=1e-4), \
        "gaze is relative to the clip's first frame"
    assert np.isfinite(gaze_x).mean() > 0.8 and np.nanmax(np.abs(gaze_x)) < 2.0
    assert np.isnan(clip.controls[:, 6]).all(), "lip has no estimator: absent"


def test_an_empty_folder_is_refused_with_the_cause(tmp_path):
    with pytest.raises(FileNotFoundError, match="no video files"):
        list_videos(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no such folder"):
        list_videos(str(tmp_path / "missing"))


def test_a_video_without_an_audio_track_is_refused_with_the_cause(shared_media, tmp_path):
    from training.prepare import VideoToShard

    silent = tmp_path / "silent.mp4"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-i", str(shared_media / "video" / "talking_512px_8s.mp4"),
                    "-t", "1", "-an", "-c:v", "libx264", str(silent)], check=True)
    with pytest.raises(ValueError, match="silent.mp4: the video has no audio track"):
        VideoToShard(str(tmp_path / "shards"), image_size=128, fps=25.0, clip_frames=25).video_clips(str(silent))


def test_eartalk_prepare_refuses_a_folder_without_videos_before_starting_ray(tmp_path, capsys):
    from jobs.cli import main as eartalk

    assert eartalk(["prepare", str(tmp_path), str(tmp_path / "shards")]) == 2
    assert f"{tmp_path}: no video files" in capsys.readouterr().err and not (tmp_path / "shards").exists()


def test_videos_under_an_s3_prefix_are_listed_and_fetched_through_the_storage_options(s3_server, s3_bucket, corpus, tmp_path):
    from storage import StorageOptions
    from training.prepare import VideoToShard

    fs = s3_server.filesystem()
    fs.put(str(corpus / "speaker1" / "clip.mp4"), f"{s3_bucket}/corpus/a/clip.mp4")
    fs.pipe(f"{s3_bucket}/corpus/notes.txt", b"not a video")
    options = StorageOptions(endpoint_url=s3_server.endpoint_url, key=s3_server.access_key,
                             secret=s3_server.secret_key, region=s3_server.region)
    videos = list_videos(f"s3://{s3_bucket}/corpus", options)
    assert videos == [f"s3://{s3_bucket}/corpus/a/clip.mp4"]
    clips = VideoToShard(str(tmp_path / "shards"), image_size=128, fps=25.0, clip_frames=25,
                         storage_options=options).video_clips(videos[0])
    assert len(clips) == 2 and clips[0].info["source"] == videos[0]
