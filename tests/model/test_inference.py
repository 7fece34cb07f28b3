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


@pytest.mark.parametrize("audio_level", [False, True])
def test_a_half_precision_model_reads_fp32_mels(audio_level):
    """What prepare_for_inference makes on a GPU, on CPU: a bf16 model whose mel front end stays fp32. The
    audio tokens come out in the model's dtype, close to the fp32 model's."""
    g = small_generator(audio_level=audio_level)
    wave = torch.randn(1, 16_000) * 0.1
    with torch.no_grad():
        full = g.audio(wave, 25.0, 25)
        g = g.to(torch.bfloat16)
        g.audio.logmel.float()
        half = g.audio(wave, 25.0, 25)
    assert half.dtype == torch.bfloat16
    assert (half.float() - full).abs().max().item() < 0.05 * full.abs().max().item()


def test_audio_shorter_than_the_analysis_window_renders():
    """Down to one sample: stft's centring needs more than n_fft / 2 samples, so short clips are padded."""
    g = small_generator()
    for samples in (1, 100, 320, 321):
        frames = list(g.stream([_short_request(g, samples)]))
        assert len(frames) == g.num_frames(samples, 25.0) == 1


def _short_request(g, samples: int):
    from model import RenderRequest

    S = g.config.image_size
    return RenderRequest(portrait=torch.rand(3, S, S), audio=torch.randn(samples) * 0.1, fps=25.0)
