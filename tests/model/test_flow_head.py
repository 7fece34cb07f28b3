"""The flow-matching head (model/flow_head.py) in the generator: its config, its shapes, its seeds, its
checkpoints."""

from __future__ import annotations

import json

import pytest
import torch

from model import Generator, GeneratorConfig, get_preset, load_checkpoint, save_checkpoint
from model.checkpoint import check_weights
from model.config import ConfigError
from model.flow_head import FlowHead, TokenNoise
from tests.model.conftest import request

FLOW_SIZES = dict(image_size=64, vae_channels=(16, 32), latent_channels=4, latent_patch=4, d_model=64, n_layers=2,
                  n_heads=2, n_mels=16, sink_frames=1, window_frames=3, head="flow", flow_width=32, flow_layers=2,
                  flow_steps=3)


def flow_generator(seed: int = 0) -> Generator:
    """A 2-layer generator at 64 px with the flow head, its zero-started layers (adaLN-Zero) randomised."""
    torch.manual_seed(seed)
    g = Generator(get_preset("tiny", **FLOW_SIZES)).eval()
    head = g.flow_head
    for layer in (head.out, head.out_modulation, *(block.modulation for block in head.blocks)):
        torch.nn.init.normal_(layer.weight, std=0.05)
    return g


def test_the_default_head_is_regression_and_the_flow_config_round_trips_through_json():
    assert get_preset("tiny").head == "regression"
    config = get_preset("tiny", **FLOW_SIZES)
    assert GeneratorConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


@pytest.mark.parametrize("field, value, needle", [
    ("head", "diffusion", "must be one of regression, flow"),
    ("flow_steps", 0, "must be >= 1"),
    ("flow_width", 2.5, "must be an int"),
    ("flow_layers", 0, "must be >= 1"),
    ("flow_noise_std", 0.0, "must be > 0"),
])
def test_a_bad_head_field_is_refused_naming_it(field, value, needle):
    with pytest.raises(ConfigError, match=needle) as error:
        get_preset("tiny", **{field: value})
    assert error.value.field == field and field in str(error.value)


def test_the_flow_head_refuses_the_audio_mouth_path():
    with pytest.raises(ConfigError) as error:
        get_preset("tiny", head="flow", audio_mouth=True)
    assert error.value.field == "audio_mouth"


def test_the_regression_generator_has_no_flow_weights_and_the_flow_generator_no_linear_head():
    regression = Generator(get_preset("tiny", **{**FLOW_SIZES, "head": "regression"}))
    flow = Generator(get_preset("tiny", **FLOW_SIZES))
    assert not any(k.startswith("flow_head.") for k in regression.state_dict())
    assert "head.weight" not in flow.state_dict() and any(k.startswith("flow_head.") for k in flow.state_dict())


def test_the_head_maps_tokens_to_tokens_and_starts_at_zero_velocity():
    head = FlowHead(features=12, cond_width=16, width=32, layers=2, steps=3, noise_std=0.5)
    x, cond = torch.randn(2, 5, 12), torch.randn(2, 5, 16)
    v = head.velocity(x, torch.rand(2, 5), cond)
    assert v.shape == (2, 5, 12) and v.abs().max() == 0  # adaLN-Zero: nothing moves before training
    assert torch.equal(head.sample(cond, x), x * 0.5)  # so a sample is the scaled noise itself
    torch.nn.init.normal_(head.out.weight, std=0.1)
    assert head.sample(cond, x).shape == (2, 5, 12) and not torch.equal(head.sample(cond, x), x * 0.5)


def test_the_generator_predicts_latents_of_the_frames_shape_with_the_flow_head():
    g = flow_generator()
    cfg = g.config
    B, F, Pb = 2, 3, g.block_tokens
    hidden = torch.randn(B, F, Pb, cfg.d_model)
    ref = torch.randn(B, cfg.latent_channels, cfg.latent_size, cfg.latent_size)
    out = g.predict_latents(hidden, ref, torch.randn(B, F, cfg.audio_tokens, cfg.d_model), TokenNoise([0, 1]))
    assert out.shape == (B, F, cfg.latent_channels, cfg.latent_size, cfg.latent_size)
    with pytest.raises(ValueError, match="2 generators for a batch of 3"):
        g.predict_latents(hidden.repeat(2, 1, 1, 1)[:3], ref.repeat(2, 1, 1, 1)[:3], None, TokenNoise([0, 1]))


def video(g: Generator, seed: int, frames: int = 4, other: int | None = None) -> torch.Tensor:
    """(F, 3, S, S) video of the same portrait and speech with `seed`, alone or batched beside seed `other`."""
    reqs = [request(g, frames, seed=0)]
    reqs[0].seed = seed
    if other is not None:
        reqs.append(request(g, frames, seed=0))
        reqs[1].seed = other
    return torch.stack(list(g.stream(reqs)))[:, 0]


def test_the_same_seed_gives_the_same_video_and_other_seeds_other_videos():
    g = flow_generator()
    first = video(g, seed=7)
    assert torch.equal(first, video(g, seed=7))
    assert (first - video(g, seed=8)).abs().max() > 1e-3
    # a video's noise is its own: batching it beside another seed leaves it unchanged
    torch.testing.assert_close(video(g, seed=7, other=3), first, atol=1e-5, rtol=0)


def test_the_regression_head_ignores_the_seed():
    torch.manual_seed(0)
    g = Generator(get_preset("tiny", **{**FLOW_SIZES, "head": "regression"})).eval()
    torch.nn.init.normal_(g.head.weight, std=0.05)
    assert torch.equal(video(g, seed=1), video(g, seed=2))


def test_a_flow_checkpoint_saves_passes_the_weights_check_and_loads_with_the_same_frames(tmp_path):
    g = flow_generator()
    save_checkpoint(g, tmp_path / "flow")
    config = check_weights(tmp_path / "flow")
    assert config.head == "flow" and config == g.config
    assert json.loads((tmp_path / "flow" / "config.json").read_text())["config"]["head"] == "flow"
    loaded = load_checkpoint(tmp_path / "flow")
    assert torch.equal(video(loaded, seed=5), video(g, seed=5))


def test_sampling_with_the_held_modulations_equals_euler_steps_of_the_velocity():
    """The fast path (hidden-state modulations once, time's once per step) against the reference: plain
    Euler steps of `velocity`, everything recomputed per token and step."""
    torch.manual_seed(0)
    head = FlowHead(features=12, cond_width=16, width=32, layers=2, steps=3, noise_std=0.7)
    for layer in (head.out, head.out_modulation, *(block.modulation for block in head.blocks)):
        torch.nn.init.normal_(layer.weight, std=0.2)
    cond, noise = torch.randn(2, 5, 16), torch.randn(2, 5, 12)
    x = noise * 0.7
    for i in range(3):
        x = x + head.velocity(x, torch.full((2, 5), i / 3), cond) / 3
    with torch.no_grad():
        torch.testing.assert_close(head.sample(cond, noise), x.detach(), atol=1e-5, rtol=0)


def test_the_cached_rollout_equals_the_full_pass_fed_its_own_frames_with_the_same_seeds():
    """The oracle for the flow head: streaming with the KV cache and a teacher-forced pass under the SFA mask,
    given the rollout's own latents as history and generators of the same seeds, sample the same frames."""
    g = flow_generator()
    cfg, F = g.config, 5  # more frames than sink + window, so the window slides
    torch.manual_seed(1)
    ref = torch.randn(2, cfg.latent_channels, cfg.latent_size, cfg.latent_size)
    audio = torch.randn(2, F, cfg.audio_tokens, cfg.d_model)
    controls = torch.randn(2, F, g.block_tokens - cfg.frame_tokens - cfg.audio_tokens, cfg.d_model)
    with torch.no_grad():
        rolled = torch.stack(list(g.rollout(ref, audio, controls, TokenNoise([4, 9]))), dim=1)  # (B, F, Cl, L, L)
        prev = torch.cat((ref[:, None], rolled[:, :-1]), dim=1)
        full = g.forward_full(ref, prev, audio, controls, TokenNoise([4, 9]))
    torch.testing.assert_close(full, rolled, atol=1e-4, rtol=0)
