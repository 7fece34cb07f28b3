"""Checkpoints: a directory holding `model.safetensors` (weights) and `config.json` (config + format).

Only safetensors is ever read: pickles (torch.save files included) are refused before anything is
deserialised, because unpickling runs arbitrary code. Loading checks the format version, the config and
every tensor's name and shape, and names the first problem it finds.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .config import GeneratorConfig
from .generator import Generator

FORMAT = "eartalking-generator"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names the file and the problem."""


def save_checkpoint(generator: Generator, directory: str | Path, extra: dict | None = None) -> Path:
    """Write weights + config to `directory` (created); returns the directory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in generator.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_FILE), metadata={"format": FORMAT, "format_version": str(FORMAT_VERSION)})
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "config": generator.config.to_dict(), **(extra or {})}
    (directory / CONFIG_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return directory


def checkpoint_version(directory: str | Path) -> str:
    """Short content hash of the weights and of the config they render with: what results rows and MLflow
    call the model version. The same weights under another config (`mouth_magnification`, `lip_from_speech`)
    render other videos, so they are another version; fields the loader drops (RETIRED_FIELDS) are not."""
    digest = hashlib.sha256()
    with open(Path(directory) / WEIGHTS_FILE, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    config, _ = read_config(directory)
    digest.update(json.dumps(config.to_dict(), sort_keys=True).encode())
    return f"sha256:{digest.hexdigest()[:12]}"


def read_config(directory: str | Path) -> tuple[GeneratorConfig, dict]:
    """A checkpoint's GeneratorConfig and its whole config.json; loss weights older checkpoints saved are dropped."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: missing ({CONFIG_FILE} must sit beside {WEIGHTS_FILE})")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: format is {meta.get('format')!r}, expected {FORMAT!r}")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: format_version {meta.get('format_version')!r}, this code reads {FORMAT_VERSION}")
    try:
        return GeneratorConfig.from_dict(meta["config"]), meta
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: invalid config ({e})") from None


def refuse_pickle(path: Path) -> None:
    """Refuse a pickle (protocol >= 2 starts with 0x80) or a torch.save zip ("PK") under a weights name.

    A safetensors file starts with its JSON header's length (8 bytes, little-endian) and then "{", so it is
    recognised first: that length's low byte may itself be 0x80.
    """
    with open(path, "rb") as f:
        head = f.read(9)
    if head[8:9] == b"{" and 8 + int.from_bytes(head[:8], "little") <= path.stat().st_size:
        return
    if head[:1] == b"\x80" or head[:2] == b"PK":
        raise CheckpointError(f"{path}: this is a pickle / torch.save file, not safetensors; refusing to unpickle it")


def expected_tensors(config: GeneratorConfig) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """name -> (shape, dtype) of the state dict `config` builds, computed on the meta device (nothing allocated)."""
    with torch.device("meta"):
        model = Generator(config)
    return {k: (tuple(v.shape), v.dtype) for k, v in model.state_dict().items()}


def check_weights(directory: str | Path) -> GeneratorConfig:
    """The checkpoint's config, once its weights file's header agrees with it; else CheckpointError.

    Reads config.json and the safetensors header only (names, shapes, dtypes): no tensor is loaded and the
    network is built on the meta device, so a config naming a huge network is refused in milliseconds
    when its parameter count disagrees with the file's tensors. The error names the parameter counts and
    the first tensor that differs.
    """
    from safetensors import safe_open

    directory = Path(directory)
    config, _ = read_config(directory)
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{weights}: missing")
    refuse_pickle(weights)
    try:
        with safe_open(str(weights), framework="pt", device="cpu") as f:
            found = {k: (tuple(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{weights}: corrupt or not a safetensors file ({e})") from None
    expected = expected_tensors(config)
    want, have = sum(math.prod(s) for s, _ in expected.values()), sum(math.prod(s) for s, _ in found.values())
    counts = (f"config.json implies {want:,} parameters in {len(expected)} tensors, "
              f"the file holds {have:,} in {len(found)}")
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    if missing or unexpected:
        first = f"missing {missing[0]!r}" if missing else f"unexpected {unexpected[0]!r}"
        raise CheckpointError(f"{weights}: tensors do not match config.json ({counts}): "
                              f"{len(missing)} missing, {len(unexpected)} unexpected, first {first}")
    for name, (shape, dtype) in expected.items():
        if found[name][0] != shape:
            raise CheckpointError(f"{weights}: {name} has shape {found[name][0]}, config.json implies {shape} ({counts})")
        if found[name][1] not in SAFETENSORS_FLOAT_DTYPES and dtype.is_floating_point:
            raise CheckpointError(f"{weights}: {name} has dtype {found[name][1]}, expected a floating-point dtype")
    return config


# safetensors' names of the dtypes a floating-point parameter may be stored in (load_state_dict casts them)
SAFETENSORS_FLOAT_DTYPES = frozenset({"F64", "F32", "F16", "BF16"})


def load_checkpoint(directory: str | Path, device: str | torch.device = "cpu", expect: GeneratorConfig | None = None) -> Generator:
    """Rebuild a Generator from a checkpoint directory (or its model.safetensors path), in eval mode."""
    directory = Path(directory)
    if directory.is_file() and directory.name == WEIGHTS_FILE:
        directory = directory.parent
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: checkpoint directory not found")
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        pickles = sorted(p.name for p in directory.glob("*") if p.suffix in {".pt", ".pth", ".bin", ".ckpt", ".pkl"})
        hint = f" (found {pickles}: pickled checkpoints are refused, convert them to safetensors)" if pickles else ""
        raise CheckpointError(f"{weights}: missing{hint}")
    config, _ = read_config(directory)
    if expect is not None and expect != config:
        diff = {k: (v, expect.to_dict()[k]) for k, v in config.to_dict().items() if expect.to_dict()[k] != v}
        raise CheckpointError(f"{directory}: config differs from the expected one (checkpoint, expected): {diff}")
    refuse_pickle(weights)
    try:
        state = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{weights}: corrupt or not a safetensors file ({e})") from None
    model = Generator(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{weights}: tensors do not match config.json: missing {missing[:5]}, unexpected {unexpected[:5]}")
    for name, tensor in state.items():
        if tensor.shape != expected[name].shape:
            raise CheckpointError(f"{weights}: {name} has shape {tuple(tensor.shape)}, config.json implies {tuple(expected[name].shape)}")
    model.load_state_dict(state)
    return model.to(device).eval()


# fields a fine-tuning run may switch on over its starting checkpoint, and how each grows the weights
GROWABLE_FIELDS = frozenset({"audio_level", "audio_mouth", "vae_lid_layer"})
# the flow head's fields: they shape no weight of a regression checkpoint, and flow_steps (the sampler's
# Euler steps) and flow_noise_std (where the path starts) shape none of a flow checkpoint's either
FLOW_FIELDS = frozenset({"flow_width", "flow_layers", "flow_steps", "flow_noise_std"})
FLOW_SAMPLING_FIELDS = frozenset({"flow_steps", "flow_noise_std"})


def _grow_audio_input(weight: torch.Tensor, config: GeneratorConfig) -> torch.Tensor:
    """The audio projection's first weight (d_model, K * n_mels) -> (d_model, K * (n_mels + 1)), K mel frames.

    The level inputs start at zero, which keeps the network's function unchanged at the start of fine-tuning.
    """
    rows = weight.shape[0]
    per_frame = weight.view(rows, -1, config.n_mels)  # (d_model, K, n_mels)
    return torch.cat((per_frame, per_frame.new_zeros(rows, per_frame.shape[1], 1)), dim=2).flatten(1)


def fine_tune_refusals(checkpoint: GeneratorConfig, new: GeneratorConfig) -> dict[str, tuple]:
    """Architecture fields a fine-tuning run cannot change from its checkpoint: name -> (checkpoint, new).

    Every field shapes the weights; GROWABLE_FIELDS may be switched on, and a regression checkpoint may be
    fine-tuned into the flow head (`head` regression -> flow, with any flow fields: everything but the
    head is taken over, the flow head starts fresh). Between flow checkpoints the sampling fields may change.
    """
    old, target = checkpoint.to_dict(), new.to_dict()
    differ = {k: (old[k], target[k]) for k in target if old[k] != target[k]}
    to_flow = (old["head"], target["head"]) == ("regression", "flow")
    free = (FLOW_FIELDS | {"head"}) if to_flow else FLOW_SAMPLING_FIELDS if old["head"] == "flow" else FLOW_FIELDS
    return {k: v for k, v in differ.items()
            if k not in free and (k not in GROWABLE_FIELDS or v != (False, True))}


def init_from_checkpoint(generator: Generator, directory: str | Path) -> dict[str, str]:
    """Load a checkpoint's weights into `generator` to fine-tune it; returns what was grown.

    Anything `fine_tune_refusals` names is refused with the differing fields.
    """
    source = load_checkpoint(directory)
    refused = fine_tune_refusals(source.config, generator.config)
    if refused:
        raise CheckpointError(f"{directory}: cannot fine-tune into a different architecture (checkpoint, new): {refused}")
    state, grown = source.state_dict(), {}
    if source.config.audio_level != generator.config.audio_level:
        key = "audio.proj.0.weight"
        state[key] = _grow_audio_input(state[key], source.config)
        grown[key] = "level inputs added at zero"
    if source.config.audio_mouth != generator.config.audio_mouth:
        state.update({k: v for k, v in generator.state_dict().items() if k.startswith("audio_mouth.")})
        grown["audio_mouth"] = "audio-to-mouth path added at zero"
    if source.config.vae_lid_layer != generator.config.vae_lid_layer:
        state.update({k: v for k, v in generator.state_dict().items() if k.startswith(("vae.to_lid.", "vae.to_lid_flow.", "vae.lid_readout."))})
        grown["vae_lid_layer"] = "lid layer added, blended in at almost zero"
    if source.config.head != generator.config.head:
        # the regression head's linear layer has no counterpart in the flow head's MLP; the flow head starts
        # as built (adaLN-zero: zero velocity), on the checkpoint's transformer, audio, controls and VAE
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
        state.update({k: v for k, v in generator.state_dict().items() if k.startswith("flow_head.")})
        grown["flow_head"] = "regression head replaced by a fresh flow head"
    generator.load_state_dict(state)
    return grown
