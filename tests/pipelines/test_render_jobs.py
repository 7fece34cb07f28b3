"""Render jobs that meet each other: two run ids on one output."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pandas as pd
import pytest

from tests.pipelines.helpers import check_video, short_speech, write_jsonl

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def two_manifests(tmp_path_factory, astronaut_png, speech_wav, shared_media) -> tuple[Path, Path]:
    """Two manifests with the same row ids and different portraits: job A's clip0 is not job B's clip0."""
    d = tmp_path_factory.mktemp("two")
    speech = short_speech(speech_wav, d / "speech.wav", 1.0)
    a = [Path(shutil.copy(astronaut_png, d)), Path(shutil.copy(shared_media / "portraits" / "obama.jpg", d))]
    b = [Path(shutil.copy(shared_media / "portraits" / "biden.jpg", d)),
         Path(shutil.copy(shared_media / "portraits" / "obama2.jpg", d))]
    return tuple(write_jsonl(d / f"{name}.jsonl", [{"id": f"clip{i}", "portrait": str(p), "audio": str(speech)}
                                                   for i, p in enumerate(portraits)])
                 for name, portraits in (("a", a), ("b", b)))


def digest(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_two_jobs_on_one_output_each_describe_their_own_videos(tmp_path, two_manifests, random_tiny_checkpoint,
                                                               ray_local):
    """Regression guard: videos were keyed by row id alone (videos/<id>.mp4), so job B overwrote job A's
    videos and A's results (and a later resume of A) described B's video, with exit 0."""
    from metrics.schema import read_results
    from pipelines.render import RenderConfig, run_render

    out = tmp_path / "out"

    def render(manifest: Path, run_id: str):
        return run_render(RenderConfig(manifest_uri=str(manifest), output_uri=str(out), run_id=run_id,
                                       checkpoint=str(random_tiny_checkpoint), metrics=False,
                                       tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}"))

    first = render(two_manifests[0], "job-a")
    a_digests = {r.id: digest(r.output_uri) for r in first.results.itertuples()}
    second = render(two_manifests[1], "job-b")
    assert first.counts["ok"] == second.counts["ok"] == 2
    a = read_results(first.results_uri).set_index("id")
    b = read_results(second.results_uri).set_index("id")
    for row_id in ("clip0", "clip1"):
        assert a.loc[row_id, "output_uri"] == str(out / "videos" / "job-a" / f"{row_id}.mp4")
        assert b.loc[row_id, "output_uri"] == str(out / "videos" / "job-b" / f"{row_id}.mp4")
        check_video(Path(b.loc[row_id, "output_uri"]), expected_audio_s=1.0)
        # job B rendered other portraits: its files differ, and job A's are untouched by it
        assert digest(a.loc[row_id, "output_uri"]) == a_digests[row_id] != digest(b.loc[row_id, "output_uri"])
    resumed = render(two_manifests[0], "job-a")  # A again, after B: skips its rows and keeps its own videos
    assert resumed.counts == {"ok": 0, "failed": 0, "skipped": 2}
    again = read_results(resumed.results_uri).set_index("id")
    assert again["output_uri"].to_dict() == a["output_uri"].to_dict()
    assert {i: digest(u) for i, u in again["output_uri"].items()} == a_digests

