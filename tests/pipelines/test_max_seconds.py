"""--max-seconds: a row whose speech is longer than the job's cap fails before it is rendered, naming its length
and the cap, and the run goes on."""

from __future__ import annotations

import shutil

import pytest

from jobs.render import main as render_main
from metrics.schema import read_results
from pipelines.render import ConfigError, RenderConfig
from tests.pipelines.helpers import check_video, short_speech, write_jsonl


@pytest.mark.parametrize("value", [0, -1.0, float("nan"), float("inf"), "60", True])
def test_a_cap_that_is_not_a_positive_number_is_a_usage_error(tmp_path, value):
    with pytest.raises(ConfigError, match=r"--max-seconds must be a positive number of seconds"):
        RenderConfig(manifest_uri=str(tmp_path / "m.jsonl"), output_uri=str(tmp_path / "o"), max_seconds=value)


def test_the_cli_refuses_a_negative_cap_with_exit_2(tmp_path, capsys):
    code = render_main([str(tmp_path / "m.jsonl"), "--output", str(tmp_path / "o"), "--max-seconds", "-5"])
    assert code == 2 and "--max-seconds must be a positive number" in capsys.readouterr().err


def test_a_row_longer_than_the_cap_fails_naming_its_length_and_the_others_render(
        tmp_path, astronaut_png, speech_wav, random_tiny_checkpoint, ray_local):
    portrait = shutil.copy(astronaut_png, tmp_path)
    short = short_speech(speech_wav, tmp_path / "short.wav", 1.0)
    long = short_speech(speech_wav, tmp_path / "long.wav", 2.5)
    manifest = write_jsonl(tmp_path / "manifest.jsonl", [
        {"id": "short", "portrait": str(portrait), "audio": str(short)},
        {"id": "long", "portrait": str(portrait), "audio": str(long)},
    ])
    out = tmp_path / "out"
    code = render_main([str(manifest), "--output", str(out), "--run-id", "capped", "--checkpoint",
                        str(random_tiny_checkpoint), "--no-metrics", "--max-seconds", "2",
                        "--max-failed-fraction", "0.5", "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"])
    assert code == 0
    results = read_results(str(out / "results" / "capped.parquet")).set_index("id")
    assert results.loc["short", "status"] == "ok"
    check_video(out / "videos" / "capped" / "short.mp4", expected_audio_s=1.0)
    assert results.loc["long", "status"] == "failed"
    assert results.loc["long", "error"] == ("row 1 (id 'long'), audio: audio is 2.50 s long, "
                                            "over the --max-seconds cap of 2 s")
    assert not (out / "videos" / "capped" / "long.mp4").exists()  # refused before rendering, nothing published


def test_load_assets_applies_the_cap_from_the_decoded_length(tmp_path, astronaut_png, speech_wav):
    """The asset stage itself (no Ray): the cap is checked on the decoded audio, before any frame is made."""
    import storage
    from pipelines.stages import load_assets

    long = short_speech(speech_wav, tmp_path / "long.wav", 2.5)
    row = {"row": 3, "id": "r3", "portrait": str(astronaut_png), "audio": str(long), "fps": 25.0, "controls": ""}
    options = storage.StorageOptions.from_env()
    out = load_assets(row, image_size=128, options=options, max_seconds=2.4)
    assert out["status"] == "failed" and out["num_frames"] == 0 and out["audio_pcm"] == b""
    assert out["error"] == "row 3 (id 'r3'), audio: audio is 2.50 s long, over the --max-seconds cap of 2.4 s"
    assert load_assets(row, image_size=128, options=options, max_seconds=2.5)["status"] == "pending"  # at the cap: fine


def test_hours_of_low_bitrate_audio_stop_decoding_at_the_hard_cap(tmp_path, astronaut_png, monkeypatch):
    """Regression guard: a small low-bitrate file holds hours of speech, gigabytes once decoded (50 MB of
    8 kbit/s MP3 is 14 h, 3 GB of samples); decoding now stops at MAX_AUDIO_SECONDS, with or without a cap."""
    import subprocess

    import storage
    from pipelines import stages

    mp3 = tmp_path / "ten-minutes.mp3"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "sine=frequency=220:sample_rate=8000:duration=600",
                    "-b:a", "8k", str(mp3)], check=True)
    assert mp3.stat().st_size < 1_000_000  # 600 s of audio in well under a megabyte
    monkeypatch.setattr(stages, "MAX_AUDIO_SECONDS", 60)
    row = {"row": 0, "id": "bomb", "portrait": str(astronaut_png), "audio": str(mp3), "fps": 25.0, "controls": ""}
    out = stages.load_assets(row, image_size=128, options=storage.StorageOptions.from_env())
    assert out["status"] == "failed", out["error"]
    assert "audio: " in out["error"] and "audio is over 60 s long (stopped decoding at 6" in out["error"]
