"""Small, fast generator configurations for the model tests (fp32, CPU, fixed seeds)."""

from __future__ import annotations

import math

import pytest
import torch

from model import Generator, RenderRequest, get_preset


def small_generator(seed: int = 0, **overrides) -> Generator:
    """A 2-layer generator at 64 px whose output head is randomised (it starts at zero in training)."""
    sizes = dict(image_size=64, vae_channels=(16, 32), latent_channels=4, latent_patch=4, d_model=64, n_layers=2,
                 n_heads=2, n_mels=16, sink_frames=1, window_frames=3)
    sizes.update(overrides)
    torch.manual_seed(seed)
    g = Generator(get_preset("tiny", **sizes)).eval()
    torch.nn.init.normal_(g.head.weight, std=0.05)
    torch.nn.init.normal_(g.head.bias, std=0.05)
    return g


def request(g: Generator, frames: int, fps: float = 25.0, seed: int = 0, controls=None) -> RenderRequest:
    gen = torch.Generator().manual_seed(seed)
    S = g.config.image_size
    samples = int(round(frames * 16000 / fps))
    return RenderRequest(torch.rand(3, S, S, generator=gen), torch.randn(samples, generator=gen) * 0.1, fps, controls)


@pytest.fixture
def generator() -> Generator:
    return small_generator()


def pinned_decoder(generator, flow_x: float):
    """The VAE decoder with its flow fixed to a constant shift and its mask saturated to 'copy'."""
    vae = generator.vae
    with torch.no_grad():
        vae.to_flow[-1].weight.zero_()
        vae.to_flow[-1].bias.copy_(torch.tensor([math.atanh(flow_x / vae.max_flow), 0.0]))
        vae.to_paint[-1].weight.zero_()
        vae.to_paint[-1].bias[0] = 40.0  # sigmoid -> 1: every pixel comes from the warped portrait
    return vae
