"""Hyperparameters of the EARTalking generator, and the named sizes (`tiny`, `base`).

One dataclass holds everything a checkpoint needs to rebuild the network, and nothing else (the loss
weights that trained it live in training/config.py); it is saved as JSON beside the weights
(checkpoint.py). Sizes are chosen through `get_preset(name)`, never by literals elsewhere. Every field is
checked once, in `__post_init__`, and a bad one raises `ConfigError` naming it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace

HEADS = ("regression", "flow")  # GeneratorConfig.head's choices
AUDIO_SAMPLE_RATE = 16_000  # Hz: every audio tensor the model sees is mono at this rate
# loss weights that checkpoints written before training/config.py existed carry in their config.json:
# read and dropped, since they never shaped the weights (training.config.LossConfig holds them now)
RETIRED_FIELDS = frozenset({"history_noise", "control_dropout", "self_forcing", "change_weight", "mouth_weight",
                            "vae_region_weight", "vae_blink_weight"})


class ConfigError(ValueError):
    """A config field holding a value it cannot take.

    The message is a template in which `{name}` stands for each field it mentions, so a command line can
    name its flags instead (`jobs/train.py`): `str(error)` names the fields themselves.
    """

    def __init__(self, field: str, template: str):
        self.field, self.template = field, template
        super().__init__(self.naming(lambda name: name))

    def naming(self, name_of: Callable[[str], str]) -> str:
        """The message with every `{name}` written as `name_of(name)`."""
        message, start = self.template, 0
        while (open_at := message.find("{", start)) >= 0 and (close_at := message.find("}", open_at)) >= 0:
            name = message[open_at + 1 : close_at]
            if not name.isidentifier():  # a value's own braces (a dict's repr): left as they are
                start = close_at + 1
                continue
            shown = name_of(name)
            message = message[:open_at] + shown + message[close_at + 1 :]
            start = open_at + len(shown)
        return message


def _shown(value) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:g}"
    return repr(value).replace("{", "(").replace("}", ")")


def check_int(name: str, value, low: int | None = None) -> None:
    """`value` is an int (not a bool), at least `low`; else ConfigError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(name, f"{{{name}}} must be an int, got {_shown(value)}")
    if low is not None and value < low:
        raise ConfigError(name, f"{{{name}}} must be >= {low}, got {_shown(value)}")


def check_number(name: str, value, low: float | None = None, high: float | None = None,
                 positive: bool = False) -> None:
    """`value` is a finite real number in [low, high] (> 0 with `positive`); else ConfigError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(name, f"{{{name}}} must be a finite number, got {_shown(value)}")
    if positive and value <= 0:
        raise ConfigError(name, f"{{{name}}} must be > 0, got {_shown(value)}")
    if low is not None and high is not None and not low <= value <= high:
        raise ConfigError(name, f"{{{name}}} must be in [{low:g}, {high:g}], got {_shown(value)}")
    if low is not None and value < low:
        raise ConfigError(name, f"{{{name}}} must be >= {low:g}, got {_shown(value)}")


def check_bool(name: str, value) -> None:
    if not isinstance(value, bool):
        raise ConfigError(name, f"{{{name}}} must be true or false, got {_shown(value)}")


@dataclass(frozen=True)
class GeneratorConfig:
    # ---- frames and the frame VAE
    image_size: int = 128  # pixels, side of the square canonical face crop
    vae_channels: tuple[int, ...] = (32, 64, 128)  # conv width per stage; each stage halves the resolution
    latent_channels: int = 8  # channels of the latent grid
    latent_patch: int = 4  # latent pixels per token side: one token covers latent_patch x latent_patch cells
    # a third layer the decoder blends in: the portrait's own skin, sampled a few pixels above each pixel
    # (frame_vae.py), so a lid can close by copying the skin over the eye instead of painting it from nothing
    vae_lid_layer: bool = False
    # ---- audio
    n_mels: int = 40  # log-mel bands, computed in torch (audio_encoder.py)
    mel_hop_ms: float = 10.0  # ms between mel frames
    audio_context_ms: float = 200.0  # ms of audio around each video frame's centre fed to its audio tokens
    # the audio window is centred this far after the frame: a mouth shapes a sound before it is heard
    # (100-300 ms in real speech), and the synthetic data's puppet leads by the same 160 ms
    audio_lead_ms: float = 160.0
    audio_tokens: int = 2  # audio tokens per video frame
    # add each mel frame's loudness relative to the utterance's loud frames (audio_encoder.speech_level):
    # the per-frame LayerNorm of the log-mels removes the level, which is what drives the puppet's mouth
    audio_level: bool = False
    # a direct path from each frame's audio tokens to the latent change of its mouth and chin cells
    # (face_regions.MOUTH_REGION), added to the transformer head's: the shortest route from the sound to the jaw
    audio_mouth: bool = False
    # at inference the `lip` token is the row's lip intensity (1 where absent) times the speech's lip drive
    # (speech_drive.py): the loudness pace the LayerNormed mels lack, as the mouth opening to draw
    lip_from_speech: bool = False
    # at inference each decoded frame shows its mouth and chin cells' band-passed motion (the syllables', not
    # a head turn's or frame-to-frame jitter) times this (mouth_motion.py); the latents the model feeds
    # itself are untouched; 1 decodes them as predicted
    mouth_magnification: float = 1.0
    # ---- transformer
    d_model: int = 256  # token width
    n_layers: int = 5
    n_heads: int = 4
    mlp_ratio: float = 3.0  # MLP hidden width / d_model
    rope_base: float = 10_000.0  # RoPE base over frame positions
    # ---- Sink Frame Window Attention policy (streaming-llm's start_size / recent_size)
    sink_frames: int = 1  # reference frames kept forever at the start of the cache
    window_frames: int = 8  # most recent frame blocks attended to, the current one included
    # ---- output head (generator.py): "regression" predicts each frame token's latent delta from the
    # portrait's latent; "flow" samples it with a per-token flow-matching MLP (flow_head.py)
    head: str = "regression"
    flow_width: int = 256  # hidden width of the flow head's MLP
    flow_layers: int = 3  # adaLN residual blocks in the flow head
    flow_steps: int = 4  # Euler steps per frame token when sampling
    flow_noise_std: float = 1.0  # std of the noise the flow path starts from, in latent units

    def __post_init__(self) -> None:
        if isinstance(self.vae_channels, list):  # JSON and callers may hand a list; the frozen config keeps a tuple
            object.__setattr__(self, "vae_channels", tuple(self.vae_channels))
        for name in ("image_size", "latent_channels", "latent_patch", "n_mels", "audio_tokens", "d_model",
                     "n_layers", "n_heads", "sink_frames", "window_frames", "flow_width", "flow_layers",
                     "flow_steps"):
            check_int(name, getattr(self, name), low=1)
        for name in ("mel_hop_ms", "audio_context_ms", "mlp_ratio", "rope_base", "flow_noise_std"):
            check_number(name, getattr(self, name), positive=True)
        check_number("audio_lead_ms", self.audio_lead_ms)
        check_number("mouth_magnification", self.mouth_magnification, low=1.0, high=4.0)
        for name in ("vae_lid_layer", "audio_level", "audio_mouth", "lip_from_speech"):
            check_bool(name, getattr(self, name))
        if self.head not in HEADS:
            raise ConfigError("head", f"{{head}} must be one of {', '.join(HEADS)}, got {_shown(self.head)}")
        if self.head == "flow" and self.audio_mouth:
            # the audio-to-mouth path adds a deterministic delta; the flow head samples the whole delta
            raise ConfigError("audio_mouth", "{audio_mouth} adds to the regression head's delta; "
                              "the flow head ({head} = 'flow') samples the whole delta itself")
        if not isinstance(self.vae_channels, tuple) or len(self.vae_channels) < 2 or any(
                isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in self.vae_channels):
            # the decoder predicts its flow at the second-finest scale, so there are at least two stages
            raise ConfigError("vae_channels", "{vae_channels} must be a list of at least two ints >= 1, "
                              f"got {_shown(self.vae_channels)}")
        stride = 2 ** len(self.vae_channels)
        if self.image_size % stride:
            raise ConfigError("image_size", f"{{image_size}} must divide by the VAE's stride {stride} "
                              f"(2 ** len(vae_channels)), got {self.image_size}")
        if self.latent_size % self.latent_patch:
            raise ConfigError("latent_patch", f"{{latent_patch}} must divide the latent grid's side "
                              f"{self.latent_size}, got {self.latent_patch}")
        if self.d_model % self.n_heads or self.head_dim % 2:
            raise ConfigError("n_heads", f"{{n_heads}} must split d_model {self.d_model} into heads of an even "
                              f"width (RoPE rotates pairs), got {self.n_heads}")

    # ---- derived sizes
    @property
    def latent_size(self) -> int:  # side of the latent grid
        return self.image_size // (2 ** len(self.vae_channels))

    @property
    def frame_tokens(self) -> int:  # P: latent tokens per frame
        return (self.latent_size // self.latent_patch) ** 2

    @property
    def token_features(self) -> int:  # latent values carried by one frame token
        return self.latent_channels * self.latent_patch**2

    @property
    def head_dim(self) -> int:  # D: width of one attention head
        return self.d_model // self.n_heads

    def to_dict(self) -> dict:
        out = asdict(self)
        out["vae_channels"] = list(self.vae_channels)
        return out

    @classmethod
    def from_dict(cls, saved: dict) -> "GeneratorConfig":
        """The config a checkpoint saved; its RETIRED_FIELDS are dropped, any other unknown field is refused."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(saved) - known - RETIRED_FIELDS)
        if unknown:
            raise ConfigError(unknown[0], f"unknown config fields: {unknown}")
        return cls(**{k: v for k, v in saved.items() if k in known})


PRESETS: dict[str, GeneratorConfig] = {
    # CPU default: trains on 2 cores in under an hour; 5.7M parameters (23 MB of fp32 safetensors).
    # With the decoder's lid layer and blink readout (frame_vae.py) and the speech's lip drive at
    # inference, its syllable-rate mouth motion shown three times as large (mouth_motion.py): the shipped
    # checkpoint's architecture.
    "tiny": GeneratorConfig(vae_lid_layer=True, lip_from_speech=True, mouth_magnification=3.0),
    # Paper scale for GPUs: 256x256 frames, 16x16 latent grid of 256 tokens, ~330M parameters.
    "base": GeneratorConfig(
        image_size=256,
        vae_channels=(64, 128, 256, 256),
        latent_channels=16,
        latent_patch=1,
        n_mels=80,
        audio_tokens=4,
        d_model=1024,
        n_layers=24,
        mlp_ratio=4.0,
        n_heads=16,
        window_frames=16,
    ),
}


def get_preset(name: str, **overrides) -> GeneratorConfig:
    """A named size, optionally with fields overridden (e.g. fewer layers in tests)."""
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return replace(PRESETS[name], **overrides)
