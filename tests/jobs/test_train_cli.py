"""`eartalk train` end to end: the synthetic data set is built, both stages train, the checkpoint installs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


# set in this process by the in-process training tests (training.loops.init_distributed): a child that
# inherited them would take them for a launcher's and join the parent's process group port
DISTRIBUTED_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def run_cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in DISTRIBUTED_VARIABLES}
    return subprocess.run([sys.executable, "-m", "jobs.train", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.mark.training
def test_train_synthetic_end_to_end_installs_a_loadable_checkpoint(tmp_path, mlflow_tracking_uri):
    from model import load_checkpoint

    out = tmp_path / "run"
    proc = run_cli("--dataset", "synthetic", "--preset", "tiny", "--output", str(out), "--seed", "0",
                   "--synthetic-clips", "2", "--vae-steps", "2", "--steps", "2", "--clip-frames", "8",
                   "--vae-batch-frames", "4", "--batch-clips", "1", "--tracking-uri", mlflow_tracking_uri,
                   "--install", str(tmp_path / "installed"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert summary["steps"] == 4 and summary["run_id"]
    assert (out / "dataset" / "dataset.json").is_file()
    generator = load_checkpoint(tmp_path / "installed")
    assert generator.config.image_size == json.loads((out / "dataset" / "dataset.json").read_text())["image_size"]
    assert not generator.config.audio_level

    # fine-tuning from the installed checkpoint, growing the audio input by the level feature
    proc = run_cli("--dataset", "synthetic", "--preset", "tiny", "--output", str(tmp_path / "tuned"), "--seed", "0",
                   "--synthetic-clips", "2", "--vae-steps", "0", "--steps", "1", "--clip-frames", "8",
                   "--batch-clips", "1", "--init-from", str(tmp_path / "installed"), "--audio-level")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "grown: {'audio.proj.0.weight'" in proc.stderr
    assert load_checkpoint(tmp_path / "tuned" / "final").config.audio_level


def test_train_refuses_a_missing_dataset_and_config_with_the_cause(tmp_path):
    proc = run_cli("--dataset", str(tmp_path / "nothing"), "--output", str(tmp_path / "o"), timeout=120)
    assert proc.returncode == 2 and "neither 'synthetic' nor a shard folder" in proc.stderr
    proc = run_cli("--dataset", "synthetic", "--output", str(tmp_path / "o"),
                   "--deepspeed-config", str(tmp_path / "missing.json"), timeout=120)
    assert proc.returncode == 2 and "missing.json does not exist" in proc.stderr
    proc = run_cli("--dataset", "synthetic", "--output", str(tmp_path / "o"), "--change-weight", "-1", timeout=120)
    assert proc.returncode == 2 and "--change-weight must be >= 0, got -1" in proc.stderr
    for flag in ("--mouth-weight", "--vae-region-weight"):
        proc = run_cli("--dataset", "synthetic", "--output", str(tmp_path / "o"), flag, "-0.5", timeout=120)
        assert proc.returncode == 2 and f"{flag} must be >= 0, got -0.5" in proc.stderr
    for flag in ("--vae-blink-weight", "--closed-eye-share"):
        proc = run_cli("--dataset", "synthetic", "--output", str(tmp_path / "o"), flag, "-0.5", timeout=120)
        assert proc.returncode == 2 and f"{flag} must be" in proc.stderr and "got -0.5" in proc.stderr
    proc = run_cli("--dataset", "synthetic", "--output", str(tmp_path / "o"), "--closed-eye-share", "1.5", timeout=120)
    assert proc.returncode == 2 and "--closed-eye-share must be in [0, 1], got 1.5" in proc.stderr
    proc = run_cli("--dataset", "synthetic", "--output", str(tmp_path / "o"), "--preset", "base",
                   "--vae-blink-weight", "0.5", timeout=120)
    assert proc.returncode == 2 and "lacks; add --vae-lid-layer" in proc.stderr
    proc = run_cli("--dataset", "synthetic", "--output", str(tmp_path / "o"), "--vae-decoder-only", timeout=120)
    assert proc.returncode == 2 and "--vae-decoder-only refines the decoder of an --init-from checkpoint" in proc.stderr
    assert not (tmp_path / "o").exists(), "a refused run wrote output"
    proc = run_cli("--dataset", "synthetic", "--output", str(tmp_path / "o"), "--init-from", str(tmp_path / "no"),
                   timeout=120)
    assert proc.returncode == 2 and "--init-from" in proc.stderr and "holds no model checkpoint" in proc.stderr
    proc = run_cli("--dataset", "synthetic", "--output", str(tmp_path / "o"), "--preset", "base",
                   "--init-from", str(REPO / "model" / "checkpoints" / "tiny"), timeout=120)
    assert proc.returncode == 2 and "has another architecture than --preset base" in proc.stderr
    assert "'d_model': (256, 1024)" in proc.stderr
    assert not (tmp_path / "o").exists()  # refused before building a data set


def test_train_refuses_bad_preset_and_step_counts_before_writing_anything(tmp_path):
    out = tmp_path / "o"
    for args, cause in ((("--preset", "bogus"), "unknown --preset 'bogus'; choose one of base, tiny"),
                        (("--steps", "-1"), "--steps must be >= 0, got -1"),
                        (("--vae-steps", "-2"), "--vae-steps must be >= 0, got -2"),
                        (("--checkpoint-every", "0"), "--checkpoint-every must be >= 1, got 0")):
        proc = run_cli("--dataset", "synthetic", "--output", str(out), "--synthetic-clips", "1", *args, timeout=120)
        assert proc.returncode == 2, (args, proc.stderr[-2000:])
        assert f"eartalk train: {cause}" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        assert not out.exists(), f"{args}: a refused run wrote output"


# exactly docs/training.md's multi-GPU command
DEEPSPEED_COMMAND = ("deepspeed --num_gpus 8 --module jobs.train --dataset out/hdtf-shards "
                     "--output s3://bucket/runs/r2 --deepspeed-config configs/train/gpu_bf16_zero2.json")


def test_deepspeed_launcher_command_parses_in_the_launcher_and_in_every_rank():
    import shlex

    from deepspeed.launcher.runner import parse_args as launcher_parse_args

    from jobs.train import __doc__ as train_doc
    from jobs.train import parse_args

    argv = shlex.split(DEEPSPEED_COMMAND)
    launcher = launcher_parse_args(argv[1:])
    assert launcher.num_gpus == 8 and launcher.module and launcher.user_script == "jobs.train"
    # each rank gets the user arguments plus the launcher's --local_rank=N (the rank itself comes from the env)
    args = parse_args([*launcher.user_args, "--local_rank=3"])
    assert (args.dataset, args.output) == ("out/hdtf-shards", "s3://bucket/runs/r2")
    assert args.deepspeed_config == "configs/train/gpu_bf16_zero2.json"
    # the docstring's command uses the launcher's flags too
    documented = next(line for line in train_doc.splitlines() if line.strip().startswith("deepspeed "))
    assert launcher_parse_args(shlex.split(documented.rstrip("\\"))[1:]).module


def test_head_flags_reach_the_model_config_and_the_shipped_tiny_fine_tunes_into_the_flow_head():
    import storage
    from jobs.train import MODEL_FLAGS, _init_from_problem, parse_args
    from training.config import TrainConfig

    args = parse_args(["--dataset", "synthetic", "--output", "o", "--head", "flow", "--flow-steps", "2",
                       "--flow-width", "128"])
    overrides = {name: getattr(args, name) for name in MODEL_FLAGS if getattr(args, name) is not None}
    model = TrainConfig(dataset="d", output="o", model_overrides=overrides).model_config()
    assert (model.head, model.flow_steps, model.flow_width, model.flow_layers) == ("flow", 2, 128, 3)
    tiny = str(REPO / "model" / "checkpoints" / "tiny")
    assert _init_from_problem(tiny, "tiny", model, storage.StorageOptions()) is None
    import dataclasses

    problem = _init_from_problem(tiny, "tiny", dataclasses.replace(model, n_layers=2), storage.StorageOptions())
    assert "'n_layers': (5, 2)" in problem and "head" not in problem


def test_train_refuses_bad_flow_head_flags_naming_the_flag(tmp_path):
    proc = run_cli("--dataset", "synthetic", "--output", str(tmp_path / "o"), "--head", "flow", "--flow-width", "0",
                   timeout=120)
    assert proc.returncode == 2 and "--flow-width must be >= 1, got 0" in proc.stderr
    proc = run_cli("--dataset", "synthetic", "--output", str(tmp_path / "o"), "--head", "flow", "--audio-mouth",
                   timeout=120)
    assert proc.returncode == 2 and "--audio-mouth adds to the regression head's delta" in proc.stderr
    proc = run_cli("--dataset", "synthetic", "--output", str(tmp_path / "o"), "--head", "mean", timeout=120)
    assert proc.returncode == 2 and "invalid choice: 'mean'" in proc.stderr
    assert not (tmp_path / "o").exists()
