"""Training checkpoints on local disk or object storage (fsspec: paths, file://, s3://).

Layout under the run's output URI:

    checkpoints/step-00000400/model.safetensors   model.save_checkpoint: weights + config.json
    checkpoints/step-00000400/config.json
    checkpoints/step-00000400/trainer.pt           optimizer + scheduler state, torch RNG (torch.save; loaded weights_only)
    checkpoints/step-00000400/trainer.json         {"stage": "vae"|"transformer", "step": 400, ...}
    checkpoints/step-00000400/loss.json            the loss weights the run trains with (config.LossConfig)
    checkpoints/LATEST                             "step-00000400", written last, so a reader never
                                                   sees a half-written checkpoint as the latest
    final/model.safetensors, final/config.json     the finished model, what load_checkpoint reads
    final/loss.json                                the loss weights that trained it

Steps count globally across both stages (the VAE's steps first), so one number orders every
checkpoint of a run. Saving writes into a local temporary folder and uploads it through `storage`; S3
settings arrive as `storage.StorageOptions`, as everywhere else (None: the storage module's defaults).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

import storage
from storage import StorageOptions
from training.config import LossConfig

LATEST = "LATEST"


@dataclass
class TrainerState:
    stage: str  # "vae" or "transformer"
    step: int  # global step: VAE steps, then transformer steps
    optimizer: dict
    scheduler: dict
    rng: dict
    loss: dict | None = None  # LossConfig fields the run trains with; None: a checkpoint without them


def _fs(uri: str, options: StorageOptions | None):
    """(filesystem, path without a trailing slash), so paths below it join with one '/'."""
    fs, path = storage.filesystem(uri, options)
    return fs, path.rstrip("/")


def _upload(local: Path, uri: str, options: StorageOptions | None) -> None:
    fs, path = _fs(uri, options)
    fs.makedirs(path, exist_ok=True)
    for file in sorted(local.iterdir()):
        fs.put_file(str(file), f"{path}/{file.name}")


def save_training_checkpoint(output_uri: str, generator: torch.nn.Module, state: TrainerState,
                             options: StorageOptions | None = None) -> str:
    """Write a checkpoint for `state.step` and point LATEST at it; returns its URI."""
    from model import save_checkpoint

    name = f"step-{state.step:08d}"
    target = f"{output_uri.rstrip('/')}/checkpoints/{name}"
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp)
        save_checkpoint(generator, local)
        torch.save({"optimizer": state.optimizer, "scheduler": state.scheduler, "rng": state.rng}, local / "trainer.pt")
        (local / "trainer.json").write_text(json.dumps({"stage": state.stage, "step": state.step}) + "\n")
        if state.loss is not None:
            LossConfig.from_dict(state.loss).save(local)
        _upload(local, target, options)
    fs, root = _fs(output_uri, options)
    with fs.open(f"{root}/checkpoints/{LATEST}", "w") as f:
        f.write(name)
    return target


def latest_checkpoint(output_uri: str, options: StorageOptions | None = None) -> str | None:
    """URI of the newest complete checkpoint of a run, or None for a fresh run."""
    fs, root = _fs(output_uri, options)
    marker = f"{root}/checkpoints/{LATEST}"
    if not fs.exists(marker):
        return None
    with fs.open(marker, "r") as f:
        name = f.read().strip()
    return f"{output_uri.rstrip('/')}/checkpoints/{name}"


def load_training_checkpoint(uri: str, options: StorageOptions | None = None) -> tuple[torch.nn.Module, TrainerState]:
    """The generator and trainer state saved at `uri` (downloaded first when remote)."""
    from model import load_checkpoint

    fs, path = _fs(uri, options)
    if not fs.exists(f"{path}/trainer.json"):
        raise FileNotFoundError(f"{uri}: not a training checkpoint (no trainer.json)")
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp)
        for remote in fs.ls(path, detail=False):
            fs.get_file(remote, str(local / Path(remote).name))
        generator = load_checkpoint(local)
        meta = json.loads((local / "trainer.json").read_text())
        # weights_only: tensors and plain containers only, so a tampered file cannot run code on load
        saved = torch.load(local / "trainer.pt", map_location="cpu", weights_only=True)
        losses = LossConfig.read(local)
    state = TrainerState(stage=meta["stage"], step=int(meta["step"]), optimizer=saved["optimizer"],
                         scheduler=saved["scheduler"], rng=saved["rng"],
                         loss=None if losses is None else losses.to_dict())
    return generator, state


def save_final(output_uri: str, generator: torch.nn.Module, options: StorageOptions | None = None,
               losses: LossConfig | None = None) -> str:
    from model import save_checkpoint

    target = f"{output_uri.rstrip('/')}/final"
    with tempfile.TemporaryDirectory() as tmp:
        save_checkpoint(generator, Path(tmp))
        if losses is not None:
            losses.save(Path(tmp))
        _upload(Path(tmp), target, options)
    return target


def copy_checkpoint(uri: str, local_dir: str | Path, options: StorageOptions | None = None) -> Path:
    """Download a model checkpoint (model.safetensors + config.json) into a local folder."""
    fs, path = _fs(uri, options)
    local = Path(local_dir)
    if local.exists():
        shutil.rmtree(local)
    local.mkdir(parents=True)
    for name in ("model.safetensors", "config.json"):
        fs.get_file(f"{path}/{name}", str(local / name))
    return local
