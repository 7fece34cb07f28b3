"""The render job with manifest, inputs, checkpoint and outputs all in S3 (moto server on loopback)."""

from __future__ import annotations

import io

import pandas as pd

from jobs.render import main as render_main
from tests.pipelines.helpers import check_video, short_speech, write_jsonl


def test_render_reads_and_writes_everything_through_s3(tmp_path, monkeypatch, s3_server, s3_bucket, ray_local,
                                                       astronaut_png, speech_wav, shared_media, random_tiny_checkpoint):
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    fs = s3_server.filesystem()
    speech = short_speech(speech_wav, tmp_path / "speech.wav", 1.2)
    fs.put(str(speech), f"{s3_bucket}/inputs/speech.wav")
    fs.put(str(astronaut_png), f"{s3_bucket}/inputs/astronaut.png")
    fs.put(str(shared_media / "portraits" / "biden.jpg"), f"{s3_bucket}/inputs/biden.jpg")
    fs.put(str(random_tiny_checkpoint), f"{s3_bucket}/checkpoints/tiny", recursive=True)
    manifest = write_jsonl(tmp_path / "manifest.jsonl", [
        {"id": "astronaut", "portrait": "inputs/astronaut.png", "audio": "inputs/speech.wav"},  # relative to the manifest
        {"id": "biden", "portrait": f"s3://{s3_bucket}/inputs/biden.jpg", "audio": "inputs/speech.wav", "fps": 24},
        {"id": "missing", "portrait": "inputs/nobody.png", "audio": "inputs/speech.wav"},
    ])
    fs.put(str(manifest), f"{s3_bucket}/manifest.jsonl")

    code = render_main([f"s3://{s3_bucket}/manifest.jsonl", "--output", f"s3://{s3_bucket}/out", "--run-id", "s3run",
                        "--checkpoint", f"s3://{s3_bucket}/checkpoints/tiny", "--max-failed-fraction", "0.5",
                        "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--no-metrics"])
    assert code == 0

    with fs.open(f"{s3_bucket}/out/results/s3run.parquet", "rb") as f:
        df = pd.read_parquet(io.BytesIO(f.read())).set_index("id")
    assert df.loc["astronaut", "status"] == "ok" and df.loc["biden", "status"] == "ok"
    assert df.loc["astronaut", "output_uri"] == f"s3://{s3_bucket}/out/videos/s3run/astronaut.mp4"
    assert "not found" in df.loc["missing", "error"] or "No such file" in df.loc["missing", "error"]
    assert sorted(fs.ls(f"{s3_bucket}/out/videos/s3run")) == [f"{s3_bucket}/out/videos/s3run/astronaut.mp4", f"{s3_bucket}/out/videos/s3run/biden.mp4"]
    for row_id, fps in (("astronaut", 25.0), ("biden", 24.0)):
        local = tmp_path / f"{row_id}.mp4"
        fs.get(f"{s3_bucket}/out/videos/s3run/{row_id}.mp4", str(local))
        check_video(local, expected_audio_s=1.2, fps=fps)
    assert not [k for k in fs.find(f"{s3_bucket}/out") if ".tmp-" in k]  # no temporary objects left behind


def test_missing_s3_checkpoint_is_a_usage_error(tmp_path, monkeypatch, s3_server, s3_bucket, capsys):
    """Regression: fetch_dir's FileNotFoundError for a missing remote checkpoint escaped as a traceback, not exit 2."""
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    manifest = write_jsonl(tmp_path / "manifest.jsonl", [{"id": "a", "portrait": "p.png", "audio": "a.wav"}])
    code = render_main([str(manifest), "--output", str(tmp_path / "out"), "--checkpoint", f"s3://{s3_bucket}/checkpoints/nope",
                        "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"])
    assert code == 2
    assert f"checkpoint not found: s3://{s3_bucket}/checkpoints/nope" in capsys.readouterr().err
