"""FCIC controls, batching and determinism of Generator.stream."""

from __future__ import annotations

import math

import pytest
import torch

from model import CONTROL_NAMES, CONTROL_SPECS, stack_controls
from model.config import ConfigError
from tests.model.conftest import pinned_decoder, request, small_generator


def render(g, reqs) -> list[torch.Tensor]:
    """Each request's own frames, (F, 3, S, S)."""
    steps = torch.stack(list(g.stream(reqs)), dim=1)  # (B, Fmax, 3, S, S)
    return [steps[i, : g.num_frames(r.audio.numel(), r.fps)] for i, r in enumerate(reqs)]


def test_control_given_from_frame_k_changes_output_from_k_on_only(generator):
    F, k = 12, 7
    yaw = torch.full((F,), math.nan)
    yaw[k:] = 30.0
    free = render(generator, [request(generator, F)])[0]
    steered = render(generator, [request(generator, F, controls={"yaw": yaw})])[0]
    diff = (free - steered).abs().flatten(1).amax(1)  # (F,)
    assert torch.all(diff[:k] == 0)
    assert torch.all(diff[k:] > 1e-4)


def test_absent_controls_equal_the_free_path(generator):
    F = 6
    free = render(generator, [request(generator, F)])[0]
    all_nan = {name: torch.full((F,), math.nan) for name in CONTROL_NAMES}
    assert torch.equal(free, render(generator, [request(generator, F, controls=all_nan)])[0])
    assert torch.equal(free, render(generator, [request(generator, F, controls={})])[0])


def test_every_control_changes_the_output(generator):
    # each control is set to its range's middle: an absent `lip` is full intensity, its range's max, so
    # the max would equal the free path
    F = 4
    free = render(generator, [request(generator, F)])[0]
    for name, spec in CONTROL_SPECS.items():
        middle = float(spec.min + spec.max) / 2
        steered = render(generator, [request(generator, F, controls={name: torch.full((F,), middle)})])[0]
        assert (free - steered).abs().max() > 1e-5, name


def test_batch_of_different_lengths_and_fps_equals_rendering_each_alone(generator):
    reqs = [request(generator, 5, seed=1), request(generator, 11, fps=30.0, seed=2),
            request(generator, 8, fps=24.0, seed=3, controls={"blink": torch.zeros(8)})]
    together = render(generator, reqs)
    for r, frames in zip(reqs, together):
        alone = render(generator, [r])[0]
        assert frames.shape == alone.shape
        assert (frames - alone).abs().max().item() < 1e-5


def test_same_inputs_give_the_same_frames(generator):
    assert torch.equal(render(generator, [request(generator, 5)])[0], render(generator, [request(generator, 5)])[0])


def test_frame_count_covers_the_audio_within_one_frame(generator):
    for seconds, fps in ((1.0, 25.0), (2.37, 25.0), (1.0, 29.97), (0.01, 25.0)):
        n = generator.num_frames(int(seconds * 16000), fps)
        assert 0 <= n / fps - seconds < 1.0 / fps + 1e-9 or n == 1


def test_unknown_control_and_wrong_portrait_size_are_refused(generator):
    with pytest.raises(ValueError, match="unknown control 'smile'"):
        stack_controls({"smile": torch.zeros(3)}, 3)
    bad = request(generator, 3)
    bad.portrait = torch.rand(3, 32, 32)
    with pytest.raises(ValueError, match="portrait must be"):
        next(generator.stream([bad]))


def test_audio_window_of_frame_t_is_centred_audio_lead_ms_later():
    """With a 160 ms lead at 25 fps, frame t sees exactly the window an unled encoder gives frame t + 4."""
    from model.audio_encoder import AudioEncoder

    torch.manual_seed(0)
    wave = torch.randn(1, 16000 * 2) * 0.1
    led = AudioEncoder(small_generator().config).frame_features(wave, 25.0, 50)
    assert small_generator().config.audio_lead_ms == 160.0
    unled = AudioEncoder(small_generator(audio_lead_ms=0.0).config).frame_features(wave, 25.0, 50)
    torch.testing.assert_close(led[:, :40], unled[:, 4:44])
    assert not torch.allclose(led[:, :40], unled[:, :40])


def test_presets_have_the_documented_sizes():
    from model import GeneratorConfig, Generator, get_preset

    tiny = Generator(get_preset("tiny"))
    params = sum(p.numel() for p in tiny.parameters())
    assert params * 4 <= 25e6  # the shipped checkpoint budget (fp32 safetensors)
    with torch.device("meta"):
        base = Generator(get_preset("base"))
    assert sum(p.numel() for p in base.parameters()) > 200e6
    assert get_preset("base").image_size >= 256
    with pytest.raises(KeyError, match="unknown preset"):
        get_preset("huge")
    with pytest.raises(ConfigError, match=r"image_size must divide by the VAE's stride 8 .*got 100"):
        GeneratorConfig(image_size=100)


def test_decoder_warps_the_portraits_pixels():
    from model import Generator, get_preset

    generator = Generator(get_preset("tiny", n_layers=1)).eval()
    S = generator.config.image_size
    portrait = torch.rand(2, 3, S, S)
    latents = torch.randn(2, generator.config.latent_channels, generator.config.latent_size, generator.config.latent_size)
    vae = pinned_decoder(generator, 0.0)
    with torch.no_grad():
        unmoved = vae.decode(latents, vae.reference(portrait))
    assert (unmoved - portrait).abs().max().item() < 1e-5  # zero flow returns the portrait exactly
    vae = pinned_decoder(generator, 2.0 / S)  # one pixel in grid_sample's [-1, 1] units
    with torch.no_grad():
        shifted = vae.decode(latents, vae.reference(portrait))
    # output pixel x samples the portrait at x + 1: the face moves one pixel left
    assert (shifted[..., :-1] - portrait[..., 1:]).abs().max().item() < 1e-4


def test_decoder_output_depends_on_the_portrait(generator):
    S = generator.config.image_size
    latents = torch.randn(1, generator.config.latent_channels, generator.config.latent_size, generator.config.latent_size)
    with torch.no_grad():
        a = generator.vae.decode(latents, generator.vae.reference(torch.rand(1, 3, S, S)))
        b = generator.vae.decode(latents, generator.vae.reference(torch.rand(1, 3, S, S)))
    assert (a - b).abs().mean().item() > 0.05


def test_speech_level_ignores_recording_gain_and_reads_silence_as_zero():
    from model.audio_encoder import LogMel, speech_level

    torch.manual_seed(0)
    t = torch.arange(32000) / 16000
    speech = torch.sin(2 * math.pi * 220 * t) * (0.2 + 0.8 * (torch.sin(2 * math.pi * 3 * t) > 0))  # loud/quiet
    wave = torch.cat((torch.zeros(8000), speech))[None]  # 0.5 s of silence first
    logmel = LogMel(n_mels=40, hop_ms=10.0)
    level = speech_level(logmel(wave))[0]  # (M,)
    quieter = speech_level(logmel(wave * 0.1))[0]
    assert torch.allclose(level, quieter, atol=1e-3), "the level depends on the recording's gain"
    assert level[5:45].max() == 0.0, "silence must read as level 0"
    loud, soft = level[60:].max().item(), level[60:].min().item()
    assert loud == pytest.approx(1.0, abs=0.05) and 0.5 < soft < 0.95  # 0.2x amplitude = 14 dB below
