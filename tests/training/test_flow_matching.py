"""The flow head's training loss (training/losses.py: flow_matching_error, and transformer_loss with
GeneratorConfig.head = "flow"): it learns, and the generator's stage-2 loss trains through it."""

from __future__ import annotations

import math

import pytest
import torch

from model import CONTROL_NAMES
from model.flow_head import FlowHead
from tests.model.test_flow_head import flow_generator
from training.config import LossConfig
from training.losses import flow_matching_error, transformer_loss


@pytest.fixture
def one_thread():
    """The overfit runs thousands of tiny matmuls, which threads only slow down on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_the_head_overfits_a_few_fixed_tokens_and_then_samples_them(one_thread):
    """Four fixed conditions, each with one target token: the loss falls, and sampling from fresh noise
    lands on each condition's own target (a head that could not learn, or ignored its condition, would not)."""
    torch.manual_seed(0)
    head = FlowHead(features=8, cond_width=16, width=64, layers=2, steps=8, noise_std=1.0)
    cond, target = torch.randn(4, 16), torch.randn(4, 8) * 0.5
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-2)
    history = []
    for _ in range(150):
        loss = flow_matching_error(head, cond.repeat(16, 1), target.repeat(16, 1)).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(loss.item())
    first, last = sum(history[:10]) / 10, sum(history[-10:]) / 10
    assert last < 0.3 * first, (first, last)
    with torch.no_grad():
        samples = head.sample(cond.repeat(8, 1), torch.randn(32, 8)).view(8, 4, 8)  # (draws, conditions, K)
    error = (samples - target).abs().mean()
    swapped = (samples - target.roll(1, dims=0)).abs().mean()  # against another condition's target
    assert error < 0.2 * target.abs().mean() and error < 0.2 * swapped, (error, swapped)


def test_the_flow_matching_error_is_the_velocity_error_on_the_straight_path():
    """With a zero-velocity head the error is |x_1 - x_0|^2, whose mean over noise is |x_1|^2 + noise_std^2."""
    torch.manual_seed(0)
    head = FlowHead(features=4, cond_width=8, width=16, layers=1, steps=2, noise_std=0.5)
    target = torch.full((20_000, 4), 0.3)
    squared = flow_matching_error(head, torch.randn(20_000, 8), target)
    assert squared.shape == (20_000, 4)
    assert squared.mean().item() == pytest.approx(0.3**2 + 0.5**2, rel=0.02)


def test_the_stage_two_loss_of_a_flow_generator_is_flow_matching_and_trains_the_head_and_transformer():
    g = flow_generator().train()
    S, F = g.config.image_size, 4
    portrait, frames = torch.rand(2, 3, S, S), torch.rand(2, F, 3, S, S)
    audio = torch.randn(2, F * 640) * 0.1
    controls = torch.full((2, F, len(CONTROL_NAMES)), math.nan)
    loss = transformer_loss(g, LossConfig(mouth_weight=2.0, self_forcing=0.5), portrait, frames, audio, 25.0,
                            controls)
    assert set(loss) == {"total", "flow_mse", "mouth_mse"}
    torch.testing.assert_close(loss["total"], loss["flow_mse"] + 2.0 * loss["mouth_mse"])
    loss["total"].backward()
    assert g.flow_head.out.weight.grad.abs().sum() > 0
    assert g.transformer.layers[0].attn.qkv.weight.grad.abs().sum() > 0  # through the head's conditioning
    assert all(p.grad is None for p in g.vae.parameters())  # the VAE stays frozen in stage 2
