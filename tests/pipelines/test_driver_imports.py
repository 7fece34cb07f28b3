"""The render driver never imports torch (about 230 MB resident for good): the checkpoint's check runs in a
child process, and nothing the driver imports pulls torch in (benchmarks/scale.py measures its memory)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

import storage
from pipelines.render import ConfigError, checkpoint_facts, default_checkpoint
from tests.conftest import REPO_ROOT
from tests.pipelines.helpers import write_jsonl

DRIVER = """
import json, sys
from jobs.render import main
code = main(sys.argv[1:])
print(json.dumps({"code": code, "torch": "torch" in sys.modules}))
"""


def driver(args: list[str]) -> dict:
    proc = subprocess.run([sys.executable, "-c", DRIVER, *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_a_dry_run_and_a_run_without_rows_to_render_import_no_torch(tmp_path, random_tiny_checkpoint):
    manifest = write_jsonl(tmp_path / "m.jsonl", [{"id": "bad/id", "portrait": "p.png", "audio": "a.wav"}])
    common = [str(manifest), "--output", str(tmp_path / "out"), "--checkpoint", str(random_tiny_checkpoint),
              "--run-id", "r1", "--max-failed-fraction", "1", "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    assert driver([*common, "--dry-run"]) == {"code": 0, "torch": False}
    # the whole job: checkpoint check, manifest, resume scan, results Parquet and MLflow run (no row to render)
    assert driver(common) == {"code": 0, "torch": False}
    assert (tmp_path / "out" / "results" / "r1.parquet").is_file()


def test_a_checkpoint_refused_by_the_child_check_is_a_usage_error_naming_the_problem(tmp_path, random_tiny_checkpoint):
    broken = tmp_path / "ckpt"
    shutil.copytree(random_tiny_checkpoint, broken)
    (broken / "model.safetensors").write_bytes(b"\x80\x04not a safetensors file")
    with pytest.raises(ConfigError, match="pickle / torch.save file, not safetensors; refusing to unpickle it"):
        checkpoint_facts(str(broken), storage.StorageOptions.from_env())
    config, version = checkpoint_facts(str(random_tiny_checkpoint), storage.StorageOptions.from_env())
    assert config.image_size == 128 and version.startswith("sha256:")


def test_the_default_checkpoint_is_models_without_importing_it():
    from model import DEFAULT_CHECKPOINT

    assert default_checkpoint() == DEFAULT_CHECKPOINT
