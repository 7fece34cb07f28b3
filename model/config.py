"""Hyperparameters of the EARTalking generator, and the named sizes (`tiny`, `base`).

One dataclass holds everything a checkpoint needs to rebuild the network; it is saved as JSON beside the
weights (checkpoint.py). Sizes are chosen through `get_preset(name)`, never by literals elsewhere.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

AUDIO_SAMPLE_RATE = 16_000  # Hz: every audio tensor the model sees is mono at this rate
# fields that only shape the training loss: a checkpoint's architecture does not depend on them, and a
# resumed training run may change them
TRAINING_ONLY_FIELDS = frozenset({"history_noise", "control_dropout", "self_forcing", "change_weight", "mouth_weight",
                                  "vae_region_weight", "vae_blink_weight"})


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
    # ---- transformer
    d_model: int = 256  # token width
    n_layers: int = 5
    n_heads: int = 4
    mlp_ratio: float = 3.0
    rope_base: float = 10_000.0  # RoPE base over frame positions
    # ---- Sink Frame Window Attention policy (streaming-llm's start_size / recent_size)
    sink_frames: int = 1  # reference frames kept forever at the start of the cache
    window_frames: int = 8  # most recent frame blocks attended to, the current one included
    # ---- FCIC controls
    control_dropout: float = 0.5  # training: probability that a given control is hidden for a whole clip
    history_noise: float = 0.1  # training: std of noise added to teacher-forced previous-frame latents
    self_forcing: float = 0.0  # training: share of clips whose history is the model's own rollout
    change_weight: float = 0.0  # training: weight of the loss term on what changed since the previous frame
    mouth_weight: float = 0.0  # training: weight of the loss term on the mouth and chin's latent cells (MOUTH_REGION)
    vae_region_weight: float = 0.0  # training, stage 1: weight of the squared error on the eyes' and mouth's pixels
    # training, stage 1: weight of the loss that reads the blink label from the latent's eye cells (needs the
    # lid layer's readout): without it the encoder has no reason to carry a lid the decoder cannot yet draw
    vae_blink_weight: float = 0.0

    def __post_init__(self) -> None:
        assert len(self.vae_channels) >= 2, "the VAE decoder predicts its flow at the second-finest scale"
        assert self.image_size % (2 ** len(self.vae_channels)) == 0, "image_size must divide by the VAE stride"
        assert self.latent_size % self.latent_patch == 0, "latent grid must divide into patches"
        assert self.d_model % self.n_heads == 0 and self.head_dim % 2 == 0, "head dim must be even for RoPE"
        assert self.sink_frames >= 1 and self.window_frames >= 1
        assert 0.0 <= self.control_dropout <= 1.0 and 0.0 <= self.self_forcing <= 1.0
        assert self.change_weight >= 0.0 and self.mouth_weight >= 0.0 and self.vae_region_weight >= 0.0
        assert self.vae_blink_weight >= 0.0 and (self.vae_blink_weight == 0.0 or self.vae_lid_layer), \
            "vae_blink_weight trains the lid layer's readout: it needs vae_lid_layer"

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
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def to_dict(self) -> dict:
        d = asdict(self)
        d["vae_channels"] = list(self.vae_channels)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "GeneratorConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown config fields: {unknown}")
        d = dict(d)
        if "vae_channels" in d:
            d["vae_channels"] = tuple(d["vae_channels"])
        return cls(**d)


PRESETS: dict[str, GeneratorConfig] = {
    # CPU default: trains on 2 cores in under an hour; 5.7M parameters (23 MB of fp32 safetensors).
    # With the decoder's lid layer and blink readout (frame_vae.py): the shipped checkpoint's architecture.
    "tiny": GeneratorConfig(vae_lid_layer=True),
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
