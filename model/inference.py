"""Prepare a generator for its device, with DeepSpeed inference where it serves, and say what was chosen.

- CUDA: `deepspeed.init_inference` with an explicit half dtype (bf16 where supported, else fp16).
  DeepSpeed's kernel injection knows HF architectures, not this one; for a custom module it converts
  dtype and places the module, which is what we use it for. A CUDA graph of the whole module is not
  captured: the per-frame step reads and writes the KV cache, so graph capture is left to torch.compile
  (`compile=True`), which handles the static per-step shapes. With continuous batching (slots.py) a step's
  batch is its busy slots, so a compiled step is specialised once per busy count it meets.
- CPU: `deepspeed.init_inference(..., dtype=torch.float32)`: the CPU accelerator rejects DeepSpeed's
  fp16 default. Outputs equal the plain module's.
- Anything DeepSpeed refuses (not installed, an accelerator it does not know): plain PyTorch, with the
  reason in the report.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import torch

from .generator import Generator

log = logging.getLogger(__name__)


@dataclass
class InferenceReport:
    engine: str  # "deepspeed" or "torch"
    device: str
    dtype: str
    compiled: bool
    note: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def pick_dtype(device: torch.device) -> torch.dtype:
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def prepare_for_inference(generator: Generator, device: str | torch.device = "cpu", use_deepspeed: bool = True,
                          compile: bool = False) -> tuple[Generator, InferenceReport]:
    device = torch.device(device)
    dtype = pick_dtype(device)
    generator = generator.eval()
    engine, note = "torch", ""
    if use_deepspeed:
        try:
            import deepspeed

            ds_engine = deepspeed.init_inference(generator, dtype=dtype, replace_with_kernel_inject=False)
            generator = ds_engine.module
            engine = "deepspeed"
        except Exception as e:  # DeepSpeed missing or refusing this device: serve with plain torch
            note = f"deepspeed unavailable ({type(e).__name__}: {e}); using plain torch"
            log.warning(note)
    generator = generator.to(device=device, dtype=dtype)
    # the mel front end keeps fp32 whatever the model dtype: log of small powers underflows in half
    generator.audio.logmel.float()
    if compile:
        generator.transformer.forward_cached = torch.compile(generator.transformer.forward_cached, dynamic=False)
    return generator, InferenceReport(engine, str(device), str(dtype).replace("torch.", ""), compile, note)
