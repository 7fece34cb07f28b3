"""`eartalk render`'s preflight: a machine that can never give an actor its GPUs is refused with exit 2 (a
cluster that autoscales, KubeRay's GPU workers starting at 0 replicas, is left to add them while the actors
wait); so are a checkpoint whose weights disagree with its config and a run id that would leave --output."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from jobs.render import gpu_shortfall
from jobs.render import main as render_main

REPO = Path(__file__).resolve().parents[2]
KUBERAY = "RAY_USAGE_STATS_KUBERAY_IN_USE"


@pytest.fixture
def more_gpus_than_here(ray_local, monkeypatch) -> float:
    """A --gpus-per-actor the local Ray lacks (one GPU more than it has), on a cluster that does not autoscale."""
    import ray

    monkeypatch.delenv(KUBERAY, raising=False)
    return ray.cluster_resources().get("GPU", 0) + 1


def test_local_ray_without_the_gpus_or_an_autoscaler_is_a_usage_error(more_gpus_than_here, tmp_path, capsys):
    code = render_main([str(REPO / "examples" / "manifest.jsonl"), "--output", str(tmp_path / "o"),
                        "--gpus-per-actor", f"{more_gpus_than_here:g}"])
    assert code == 2
    err = capsys.readouterr().err
    assert "eartalk render: error: --gpus-per-actor" in err and "no autoscaler to add any" in err, err
    assert not (tmp_path / "o").exists()


def test_kuberay_cluster_without_gpus_yet_waits_for_its_autoscaler(more_gpus_than_here, monkeypatch, caplog):
    monkeypatch.setenv(KUBERAY, "1")  # what KubeRay sets in the head container a `ray job submit` driver runs in
    with caplog.at_level("WARNING", logger="eartalk.render"):
        assert gpu_shortfall(more_gpus_than_here) is None
    assert "waiting for KubeRay's autoscaler" in caplog.text


@pytest.fixture
def manifest(tmp_path, astronaut_png, speech_wav) -> Path:
    from tests.pipelines.helpers import write_jsonl

    return write_jsonl(tmp_path / "m.jsonl", [{"id": "a", "portrait": str(astronaut_png), "audio": str(speech_wav)}])


def crafted_checkpoint(source: Path, target: Path, **config) -> Path:
    """A copy of a real checkpoint whose config.json has `config`'s fields changed."""
    shutil.copytree(source, target)
    meta = json.loads((target / "config.json").read_text())
    meta["config"].update(config)
    (target / "config.json").write_text(json.dumps(meta))
    return target


@pytest.mark.parametrize("config, message", [
    ({"d_model": 16384, "n_layers": 48, "n_heads": 64}, r"tensors do not match config.json \(config.json implies "),
    ({"d_model": "256"}, r"invalid config \(d_model must be an int, got '256'\)"),
    ({"n_mels": 48}, r"has shape .*, config.json implies"),
], ids=["huge", "mistyped", "other-shape"])
def test_a_checkpoint_that_disagrees_with_its_config_is_refused_before_any_actor(
        manifest, tmp_path, random_tiny_checkpoint, capsys, config, message):
    """Regression: a huge config was allocated (6.7 GB) and failed in the actor; `d_model: "256"` gave
    'not all arguments converted during string formatting'."""
    checkpoint = crafted_checkpoint(random_tiny_checkpoint, tmp_path / "ckpt", **config)
    code = render_main([str(manifest), "--output", str(tmp_path / "o"), "--checkpoint", str(checkpoint)])
    assert code == 2
    err = capsys.readouterr().err
    assert re.search(message, err) and "Traceback" not in err, err
    assert not (tmp_path / "o").exists()  # refused before anything ran or was written


def test_a_run_id_that_would_leave_the_output_is_refused(manifest, tmp_path, capsys):
    """Regression: `--run-id ../../../x` wrote the results Parquet three folders above --output."""
    for run_id in ("../../../x", "a/b", ".."):
        assert render_main([str(manifest), "--output", str(tmp_path / "o"), "--run-id", run_id]) == 2
        assert f"--run-id {run_id!r}: use letters, digits" in capsys.readouterr().err
    assert not (tmp_path / "o").exists() and not list(tmp_path.parent.glob("x"))


def test_dry_run_prints_what_would_render_skip_or_fail_and_writes_nothing(tmp_path, astronaut_png, speech_wav,
                                                                          random_tiny_checkpoint, capsys):
    from tests.pipelines.helpers import write_jsonl

    shutil.copy(astronaut_png, tmp_path / "a.png")
    os.mkfifo(tmp_path / "fifo.csv")
    manifest = write_jsonl(tmp_path / "m.jsonl", [
        {"id": "good", "portrait": "a.png", "audio": str(speech_wav)},
        {"id": "missing", "portrait": "nope.png", "audio": str(speech_wav)},
        {"id": "fifo", "portrait": "a.png", "audio": str(speech_wav), "controls": "fifo.csv"},
        {"id": "http", "portrait": "http://127.0.0.1:1/x", "audio": str(speech_wav)},
        {"id": "../x", "portrait": "a.png", "audio": str(speech_wav)},
    ])
    args = [str(manifest), "--output", str(tmp_path / "o"), "--checkpoint", str(random_tiny_checkpoint), "--dry-run",
            "--allow-root", str(speech_wav.parent)]
    assert render_main(args) == 1  # 4 of 5 rows would fail, beyond --max-failed-fraction 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    plan = {e["id"]: e for e in lines[:-1]}
    assert [e["row"] for e in lines[:-1]] == [0, 1, 2, 3, 4]
    assert plan["good"]["action"] == "render" and plan["good"]["error"] == ""
    assert plan["missing"]["error"] == "row 1 (id 'missing'): portrait: file not found"
    assert plan["fifo"]["error"] == "row 2 (id 'fifo'): controls: a FIFO, not a regular file"
    assert "audio" not in plan["http"]["error"] and "portrait: scheme 'http' is not allowed" in plan["http"]["error"]
    assert "unsafe id" in plan["../x"]["error"]
    assert lines[-1]["counts"] == {"render": 1, "skip": 0, "fail": 4} and lines[-1]["model_version"].startswith("sha256:")
    assert render_main(args + ["--max-failed-fraction", "0.8"]) == 0
    assert not (tmp_path / "o").exists()  # nothing rendered, nothing written
