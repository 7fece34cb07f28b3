"""Audio encoder: the mel front end under a half-precision model, as DeepSpeed bf16/fp16 training runs it."""

from __future__ import annotations

import pytest
import torch

from tests.model.conftest import small_generator


@pytest.mark.parametrize("audio_level", [False, True])
@pytest.mark.parametrize("wave_dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_a_half_precision_model_encodes_any_wave_dtype_in_fp32_mels(wave_dtype, audio_level):
    """Regression: DeepSpeed bf16 training casts the whole generator (mel window and filterbank buffers
    included) and the batch's audio to bf16, and torch.stft refuses bf16 (and half with n_fft 640, not a
    power of two, on CUDA). The mels are computed in fp32 whatever the dtypes; the tokens come out in the
    model's dtype, finite and close to the fp32 model's."""
    g = small_generator(audio_level=audio_level)
    wave = torch.randn(1, 16_000) * 0.1
    with torch.no_grad():
        full = g.audio(wave, 25.0, 25)
        g = g.to(torch.bfloat16)
        half = g.audio(wave.to(wave_dtype), 25.0, 25)
    assert half.dtype == torch.bfloat16
    assert torch.isfinite(half).all()
    assert (half.float() - full).abs().max().item() < 0.05 * full.abs().max().item()


def test_mels_stay_fp32_under_autocast():
    """Autocast would lower the filterbank matmul to bf16, and the log of small powers underflows there."""
    g = small_generator()
    wave = torch.randn(1, 16_000) * 0.1
    with torch.no_grad():
        full = g.audio.logmel(wave)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mels = g.audio.logmel(wave.to(torch.bfloat16))
    assert mels.dtype == torch.float32
    assert (mels - full).abs().max().item() < 1e-2
