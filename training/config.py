"""What a training run is asked to do: the run's settings (`TrainConfig`) and the loss weights (`LossConfig`).

The model's own config (model.GeneratorConfig) describes the network and nothing else; how hard each
loss term pulls is training's business, so it lives here. Each dataclass checks every field once, in
`__post_init__`, and a bad value raises model.config.ConfigError naming the field (`jobs/train.py` names
its flag instead). A run's loss weights are saved as `loss.json` beside each of its checkpoints
(checkpointing.py), so a resumed run trains on with them.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from model.config import (PRESETS, RETIRED_FIELDS, ConfigError, GeneratorConfig, check_bool, check_int,
                          check_number, get_preset)

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DEEPSPEED_CONFIG = REPO_ROOT / "configs" / "train" / "cpu_fp32.json"
LOSS_FILE = "loss.json"


@dataclass(frozen=True)
class LossConfig:
    """Weights and augmentations of the two stages' losses (training/losses.py); none shapes the weights."""

    # ---- stage 2 (the SFA transformer)
    control_dropout: float = 0.5  # probability that a given control is hidden for a whole clip
    history_noise: float = 0.1  # std of noise added to the teacher-forced previous-frame latents, x latent std
    self_forcing: float = 0.0  # share of clips whose history is the model's own rollout
    change_weight: float = 0.0  # weight of the term on what changed since the previous frame
    mouth_weight: float = 0.0  # weight of the term on the mouth and chin's latent cells (face_regions.MOUTH_REGION)
    # weight of 1 - Lin's concordance between the predicted and true mouth cells over each window: squared
    # error alone pays for a mouth shrunk toward its mean, concordance pays for the motion's size and timing
    mouth_concordance_weight: float = 0.0
    # weight of the expert sync loss (training/sync_expert.py): a frozen sync network, trained on real
    # video, judges the decoded predicted frames' mouths against their speech at every lag
    sync_weight: float = 0.0
    # ---- stage 1 (the frame VAE)
    vae_region_weight: float = 0.0  # weight of the squared error on the eyes' and mouth's pixels
    # weight of the loss that reads the blink label from the latent's eye cells (the lid layer's readout):
    # without it the encoder has no reason to carry a lid the decoder cannot yet draw
    vae_blink_weight: float = 0.0

    def __post_init__(self) -> None:
        for name in ("control_dropout", "self_forcing"):
            check_number(name, getattr(self, name), low=0.0, high=1.0)
        for name in ("history_noise", "change_weight", "mouth_weight", "mouth_concordance_weight", "sync_weight",
                     "vae_region_weight", "vae_blink_weight"):
            check_number(name, getattr(self, name), low=0.0)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, saved: dict) -> "LossConfig":
        unknown = sorted(set(saved) - {f.name for f in fields(cls)})
        if unknown:
            raise ConfigError(unknown[0], f"unknown loss fields: {unknown}")
        return cls(**saved)

    def check_fits(self, model: GeneratorConfig, model_name: str) -> None:
        """Refuse a weight the model has nothing to train with (`model_name` says which model, in the message)."""
        if self.vae_blink_weight > 0 and not model.vae_lid_layer:
            raise ConfigError("vae_blink_weight", "{vae_blink_weight} trains the lid layer's readout, which "
                              f"{model_name} lacks; add {{vae_lid_layer}}")
        if self.sync_weight > 0 and model.head != "regression":
            raise ConfigError("sync_weight", "{sync_weight} judges the regression head's predicted frames; "
                              f"{model_name} has the {model.head} head")

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / LOSS_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def read(cls, directory: str | Path) -> "LossConfig | None":
        """The loss weights saved beside a checkpoint, or None where it has none.

        A checkpoint written before loss.json existed carries them in config.json's model config
        (model.config.RETIRED_FIELDS); they are read from there.
        """
        directory = Path(directory)
        if (directory / LOSS_FILE).is_file():
            return cls.from_dict(json.loads((directory / LOSS_FILE).read_text()))
        config_file = directory / "config.json"
        if config_file.is_file():
            saved = json.loads(config_file.read_text()).get("config", {})
            retired = {k: v for k, v in saved.items() if k in RETIRED_FIELDS}
            if retired:
                return cls.from_dict(retired)
        return None


@dataclass
class TrainConfig:
    dataset: str  # a shard folder (shards.py)
    output: str  # run output URI: local path, file:// or s3://
    preset: str = "tiny"  # model.get_preset name
    model_overrides: dict = field(default_factory=dict)  # GeneratorConfig fields replacing the preset's
    # LossConfig fields replacing its defaults (on resume: replacing the weights the run saved)
    loss_overrides: dict = field(default_factory=dict)
    seed: int = 0
    vae_steps: int = 200  # stage 1 optimizer steps
    steps: int = 400  # stage 2 optimizer steps
    vae_batch_frames: int = 16  # frames per VAE micro-batch
    closed_eye_share: float = 0.0  # stage 1: share of frames drawn from closed-eye frames (BatchSampler.vae_batch)
    batch_clips: int = 2  # clips per transformer micro-batch
    clip_frames: int = 24  # frames per training window, cut at random from a data-set clip
    vae_lr: float = 2e-3  # peak learning rate, stage 1
    # stage 1 trains the decoder only: the encoder, so the latent space a trained transformer predicts in,
    # stays as it is (refining an --init-from checkpoint's rendering without retraining stage 2)
    vae_decoder_only: bool = False
    lr: float = 1e-3  # peak learning rate, stage 2
    weight_decay: float = 0.01
    warmup_steps: int = 20  # linear warm-up, then cosine decay to min_lr_ratio * peak
    min_lr_ratio: float = 0.1
    # the loss hides each control for a whole clip itself (LossConfig.control_dropout); these add more, in
    # the sampler, and spans: a control present for part of a clip, as a user's track may be
    control_dropout: float = 0.0  # probability that a control is absent for a whole clip
    span_dropout: float = 0.15  # probability that a kept control loses a random span of frames
    deepspeed_config: str = str(DEFAULT_DEEPSPEED_CONFIG)  # JSON: ZeRO stage, precision, clipping
    checkpoint_every: int = 100  # global steps between checkpoints
    log_every: int = 10  # steps between logged metrics
    resume: bool = True  # continue from output/checkpoints/LATEST when there is one
    # a fresh run may start from another run's model checkpoint (fine-tuning: its weights, a new optimizer
    # and schedule); model.checkpoint.init_from_checkpoint says which architecture changes it accepts
    init_from: str | None = None
    # the sync network the expert sync loss (LossConfig.sync_weight) judges with: a metrics.sync_net folder;
    # None = the shipped one (metrics/sync_weights)
    sync_expert: str | None = None
    tracking_uri: str | None = None  # MLflow; None = no tracking
    experiment: str = "eartalk-train"
    sample_video: bool = True  # log a rendered sample MP4 to MLflow at the end
    max_minutes: float | None = None  # stop stage 2 early (and checkpoint) after this wall time

    def __post_init__(self) -> None:
        for name in ("dataset", "output", "deepspeed_config", "experiment"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ConfigError(name, f"{{{name}}} must be a non-empty string, got {getattr(self, name)!r}")
        if self.preset not in PRESETS:
            raise ConfigError("preset", f"unknown {{preset}} {self.preset!r}; choose one of {', '.join(sorted(PRESETS))}")
        check_int("seed", self.seed)
        for name, low in (("vae_steps", 0), ("steps", 0), ("vae_batch_frames", 1), ("batch_clips", 1),
                          ("clip_frames", 2), ("warmup_steps", 0), ("checkpoint_every", 1), ("log_every", 1)):
            check_int(name, getattr(self, name), low=low)
        for name in ("closed_eye_share", "min_lr_ratio", "control_dropout", "span_dropout"):
            check_number(name, getattr(self, name), low=0.0, high=1.0)
        for name in ("vae_lr", "lr"):
            check_number(name, getattr(self, name), positive=True)
        check_number("weight_decay", self.weight_decay, low=0.0)
        if self.max_minutes is not None:
            check_number("max_minutes", self.max_minutes, positive=True)
        for name in ("vae_decoder_only", "resume", "sample_video"):
            check_bool(name, getattr(self, name))
        for name in ("init_from", "sync_expert", "tracking_uri"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                raise ConfigError(name, f"{{{name}}} must be a string or None, got {getattr(self, name)!r}")
        if self.vae_decoder_only and not self.init_from:
            raise ConfigError("vae_decoder_only", "{vae_decoder_only} refines the decoder of an {init_from} "
                              "checkpoint; without one the encoder would stay at its random start")
        losses = self.fresh_losses()  # checks the loss fields
        losses.check_fits(self.model_config(), f"preset {self.preset}")

    def model_config(self) -> GeneratorConfig:
        """The preset with `model_overrides`: what a fresh run builds (checks the overrides)."""
        if not isinstance(self.model_overrides, dict):
            raise ConfigError("model_overrides", f"{{model_overrides}} must be a dict, got {self.model_overrides!r}")
        known = {f.name for f in fields(GeneratorConfig)}
        for name in sorted(self.model_overrides):
            if name in RETIRED_FIELDS:
                raise ConfigError("model_overrides", f"{{model_overrides}}: {name} is a loss weight, not part of "
                                  "the model: pass it in loss_overrides")
            if name not in known:
                raise ConfigError("model_overrides", f"{{model_overrides}}: unknown GeneratorConfig field {name!r}")
        return get_preset(self.preset, **self.model_overrides)

    def fresh_losses(self) -> LossConfig:
        """The loss weights of a run that starts afresh: the defaults with `loss_overrides`."""
        return self.resumed_losses(None)

    def resumed_losses(self, saved: LossConfig | None) -> LossConfig:
        """The loss weights a run resumed with `saved` ones trains with: those, with `loss_overrides`."""
        if not isinstance(self.loss_overrides, dict):
            raise ConfigError("loss_overrides", f"{{loss_overrides}} must be a dict, got {self.loss_overrides!r}")
        return LossConfig.from_dict({**(saved or LossConfig()).to_dict(), **self.loss_overrides})
