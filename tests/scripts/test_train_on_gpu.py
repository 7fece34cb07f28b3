"""scripts/train_on_gpu.sh on the CPU with a few steps: the data sets (synthetic + one real corpus clip,
held-out speakers out), both training stages with the flow head, the checkpoint, curves and acceptance
in one folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest

from media import load_audio
from model import AUDIO_SAMPLE_RATE

from model.checkpoint import check_weights
from tests.conftest import REPO_ROOT, SHARED_MEDIA


def short_speech(path: Path, seconds: float) -> Path:
    """The first `seconds` of the held-out speech as 16-bit PCM: acceptance's sync check renders it all."""
    audio = load_audio(SHARED_MEDIA / "speech" / "english.wav")[: int(seconds * AUDIO_SAMPLE_RATE)]
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(AUDIO_SAMPLE_RATE)
        w.writeframes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())
    return path


@pytest.mark.training
@pytest.mark.ray
def test_the_gpu_training_script_runs_end_to_end_on_the_cpu_with_a_few_steps(tmp_path):
    out = tmp_path / "run"
    speech = short_speech(tmp_path / "speech.wav", 4.0)
    command = ["bash", str(REPO_ROOT / "scripts" / "train_on_gpu.sh"), str(out), "--media", str(SHARED_MEDIA),
               "--vae-steps", "2", "--steps", "2", "--batch-clips", "1", "--vae-batch-frames", "2",
               "--clip-frames", "4", "--synthetic-clips", "2", "--corpus-include", "megactor_CHTF_4.mp4",
               "--accept-speech", str(speech), "--accept-seconds", "2", "--accept-blink-seconds", "4",
               "--checkpoint-every", "2", "--minutes", "5",
               "--accept-speakers", "megactor_ENTF_2.mp4", "sadtalker_WDA_BobMenendez_000.mp4"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1500,
                          env={**os.environ, "PYTHON": sys.executable})
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["device"] == "cpu"
    config = check_weights(out / "final")
    assert config.head == "flow" and config.flow_steps == 4
    split = json.loads((out / "split.json").read_text())
    assert split["train"] == ["megactor_CHTF_4.mp4"] and "mimictalk_Trump_10s.mp4" in split["held_out"]
    manifest = json.loads((out / "dataset" / "dataset.json").read_text())
    assert manifest["source"]["parts"]["synthetic"] == 2 and manifest["source"]["parts"]["corpus"] >= 1
    curves = json.loads((out / "curves.json").read_text())
    assert "transformer/flow_mse" in curves and "vae/l1" in curves
    assert (out / "curves.png").stat().st_size > 1000
    report = json.loads((out / "acceptance" / "acceptance.json").read_text())
    # the held-out speakers' checks ran: 2 clips, each spoken by the held-out portrait and another one's face
    assert report["held_out_sync"]["of"] == 4 and summary["held_out_sync"].endswith("of 4")
    assert summary["mouth_amplitude_ratio"] == report["mouth_amplitude"]["ratio"]


def test_a_missing_media_folder_exits_2_naming_it(tmp_path):
    done = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "train_on_gpu.sh"), str(tmp_path / "run"),
                           "--media", str(tmp_path / "nowhere")], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHON": sys.executable})
    assert done.returncode == 2 and "nowhere" in done.stderr
