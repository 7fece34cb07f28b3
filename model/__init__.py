"""EARTalking generator in pure PyTorch: frame VAE, audio encoder, SFA transformer, FCIC controls.

No Ray, no storage: callers hand in tensors and local checkpoint directories.
"""

from pathlib import Path

from .checkpoint import CheckpointError, checkpoint_version, load_checkpoint, save_checkpoint
from .config import AUDIO_SAMPLE_RATE, PRESETS, GeneratorConfig, get_preset
from .controls import CONTROL_NAMES, CONTROL_SPECS, EXPRESSIONS, ControlSpec, stack_controls
from .frame_vae import FrameVAE
from .generator import Generator, RenderRequest, num_frames_for
from .inference import InferenceReport, prepare_for_inference
from .kv_cache import KVCache
from .transformer import sfa_mask

DEFAULT_CHECKPOINT = Path(__file__).resolve().parent / "checkpoints" / "tiny"

__all__ = [
    "AUDIO_SAMPLE_RATE", "CONTROL_NAMES", "CONTROL_SPECS", "CheckpointError", "ControlSpec", "DEFAULT_CHECKPOINT",
    "EXPRESSIONS", "FrameVAE", "Generator", "GeneratorConfig", "InferenceReport", "KVCache", "PRESETS",
    "RenderRequest", "checkpoint_version", "get_preset", "load_checkpoint", "num_frames_for",
    "prepare_for_inference", "save_checkpoint", "sfa_mask", "stack_controls",
]
