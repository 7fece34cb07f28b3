"""prepare_for_inference: DeepSpeed's init_inference where it serves (the CPU accelerator here)."""

from __future__ import annotations

import pytest
import torch

from model import prepare_for_inference
from tests.model.conftest import request, small_generator


def test_cpu_preparation_goes_through_deepspeed_fp32_with_unchanged_outputs():
    plain = small_generator()
    req = request(plain, 6)
    expected = torch.stack(list(plain.stream([req])))
    prepared, report = prepare_for_inference(small_generator(), "cpu")
    assert report.engine == "deepspeed" and report.dtype == "float32" and report.device == "cpu", report
    assert (torch.stack(list(prepared.stream([req]))) - expected).abs().max().item() < 1e-5


def test_plain_torch_path_reports_itself():
    _, report = prepare_for_inference(small_generator(), "cpu", use_deepspeed=False)
    assert report.engine == "torch" and report.note == ""


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_preparation_uses_half_precision_and_stays_close_to_fp32():
    plain = small_generator()
    req = request(plain, 6)
    expected = torch.stack(list(plain.stream([req])))
    prepared, report = prepare_for_inference(small_generator(), "cuda")
    assert report.dtype in ("bfloat16", "float16")
    got = torch.stack([f.float().cpu() for f in prepared.stream([req])])
    assert (got - expected).abs().mean().item() < 0.05
