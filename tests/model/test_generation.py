"""FCIC controls, batching and determinism of Generator.stream."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from model import CONTROL_NAMES, CONTROL_SPECS, stack_controls
from tests.model.conftest import request, small_generator


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
    F = 4
    free = render(generator, [request(generator, F)])[0]
    for name, spec in CONTROL_SPECS.items():
        steered = render(generator, [request(generator, F, controls={name: torch.full((F,), float(spec.max))})])[0]
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


def test_training_loss_backpropagates_and_hides_controls(generator):
    generator.train()
    S, F = generator.config.image_size, 6
    portrait = torch.rand(2, 3, S, S)
    frames = torch.rand(2, F, 3, S, S)
    audio = torch.randn(2, int(F * 16000 / 25)) * 0.1
    controls = torch.full((2, F, len(CONTROL_NAMES)), math.nan)
    controls[..., 0] = 10.0
    loss = generator.training_loss(portrait, frames, audio, 25.0, controls)
    loss["total"].backward()
    assert torch.isfinite(loss["total"]) and generator.head.weight.grad is not None
    assert all(p.grad is None for p in generator.vae.parameters())  # the VAE is frozen in stage 2
    vae_loss = generator.vae.loss(frames[0], portrait[:1].expand(F, -1, -1, -1))
    assert set(vae_loss) >= {"total", "l1", "motion_l1", "kl"} and torch.isfinite(vae_loss["total"])


def loss_and_teacher_forced_prediction(g, ref: torch.Tensor, target: torch.Tensor):
    """training_loss on latents (1, F, Cl, L, L) with quiet noise as audio, and the prediction it scores."""
    F = target.shape[1]
    audio = torch.randn(1, F * 640) * 0.1
    with torch.no_grad():
        loss = g.training_loss(None, None, audio, 25.0, latents=(ref, target))
        prev = torch.cat((ref[:, None], target[:, :-1]), dim=1)
        pred = g.forward_full(ref, prev, g.audio(audio, 25.0, F),
                              g.controls(torch.full((1, F, len(CONTROL_NAMES)), math.nan)))
    return loss, pred


def test_change_weight_adds_the_error_on_what_changed_since_the_previous_frame():
    """Only frame k differs from its predecessor (a step change), so the change term is frame k's error alone."""
    g = small_generator(change_weight=2.0).eval()  # eval: no history noise, dropout or self-forcing
    S, F, k = g.config.image_size, 6, 3
    torch.manual_seed(0)
    ref = g.vae.reference(torch.rand(1, 3, S, S)).latent
    target = ref[:, None].repeat(1, F, 1, 1, 1)
    target[:, k:] += torch.randn_like(ref)[:, None]  # frames k.. moved from the portrait; only k changed
    loss, pred = loss_and_teacher_forced_prediction(g, ref, target)
    changed = (target[:, k] - target[:, k - 1]).abs()
    expected = ((pred[:, k] - target[:, k]).pow(2) * changed).sum() / changed.sum()
    torch.testing.assert_close(loss["change_mse"], expected)
    torch.testing.assert_close(loss["total"], loss["latent_mse"] + loss["motion_mse"] + 2.0 * loss["change_mse"])


def test_mouth_weight_adds_the_error_on_the_mouth_cells():
    """A target that moved only inside MOUTH_REGION: the mouth term is the mean error over those cells."""
    from model.face_regions import region_cells

    g = small_generator(mouth_weight=3.0).eval()
    S, F = g.config.image_size, 4
    torch.manual_seed(0)
    ref = g.vae.reference(torch.rand(1, 3, S, S)).latent  # (1, Cl, L, L)
    L = ref.shape[-1]
    cells = region_cells(L)
    assert 0 < cells.sum() < L * L and cells[0].sum() == 0 and cells[-1].sum() > 0  # lower face only
    target = ref[:, None] + torch.randn(1, F, *ref.shape[1:]) * cells  # moved in the mouth cells alone
    loss, pred = loss_and_teacher_forced_prediction(g, ref, target)
    squared = (pred - target).pow(2)
    expected = (squared * cells).sum() / (cells.sum() * squared.numel() / (L * L))
    torch.testing.assert_close(loss["mouth_mse"], expected)
    torch.testing.assert_close(loss["total"], loss["latent_mse"] + loss["motion_mse"] + 3.0 * loss["mouth_mse"])


def test_self_forcing_trains_on_the_models_own_rollout_as_history():
    """self_forcing=1 puts exactly the inference rollout in each block; 0 leaves teacher forcing."""
    g = small_generator(self_forcing=1.0)
    S, F = g.config.image_size, 5
    ref = g.vae.reference(torch.rand(2, 3, S, S)).latent
    teacher = torch.cat((ref[:, None], torch.randn(2, F - 1, *ref.shape[1:])), dim=1)  # (B, F, Cl, L, L)
    audio_tokens = g.audio(torch.randn(2, int(F * 16000 / 25)) * 0.1, 25.0, F)
    control_tokens = g.controls(torch.full((2, F, len(CONTROL_NAMES)), math.nan))
    with torch.no_grad():
        rolled = torch.stack(list(g.rollout(ref, audio_tokens, control_tokens)), dim=1)  # (B, F, Cl, L, L)
        history = g.self_forced_history(teacher, ref, audio_tokens, control_tokens)
    assert torch.equal(history[:, 0], ref)  # frame 0 still sees the portrait
    torch.testing.assert_close(history[:, 1:], rolled[:, :-1])
    assert not torch.allclose(history[:, 1:], teacher[:, 1:])

    g.config = dataclasses.replace(g.config, self_forcing=0.0)
    assert torch.equal(g.self_forced_history(teacher, ref, audio_tokens, control_tokens), teacher)


def test_self_forced_training_loss_differs_from_teacher_forcing_and_backpropagates():
    g = small_generator(self_forcing=1.0, history_noise=0.0).train()
    S, F = g.config.image_size, 4
    torch.manual_seed(1)
    batch = torch.rand(2, 3, S, S), torch.rand(2, F, 3, S, S), torch.randn(2, F * 640) * 0.1, 25.0
    own = g.training_loss(*batch)
    own["total"].backward()
    assert torch.isfinite(own["total"]) and g.head.weight.grad is not None
    g.config = dataclasses.replace(g.config, self_forcing=0.0)
    teacher = g.training_loss(*batch)
    assert not torch.isclose(own["total"], teacher["total"])


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
    with pytest.raises(AssertionError):
        GeneratorConfig(image_size=100)


def _pinned_decoder(generator, flow_x: float):
    """The VAE decoder with its flow fixed to a constant shift and its mask saturated to 'copy'."""
    vae = generator.vae
    with torch.no_grad():
        vae.to_flow[-1].weight.zero_()
        vae.to_flow[-1].bias.copy_(torch.tensor([math.atanh(flow_x / vae.max_flow), 0.0]))
        vae.to_paint[-1].weight.zero_()
        vae.to_paint[-1].bias[0] = 40.0  # sigmoid -> 1: every pixel comes from the warped portrait
    return vae


def test_decoder_warps_the_portraits_pixels():
    from model import Generator, get_preset

    generator = Generator(get_preset("tiny", n_layers=1)).eval()
    S = generator.config.image_size
    portrait = torch.rand(2, 3, S, S)
    latents = torch.randn(2, generator.config.latent_channels, generator.config.latent_size, generator.config.latent_size)
    vae = _pinned_decoder(generator, 0.0)
    with torch.no_grad():
        unmoved = vae.decode(latents, vae.reference(portrait))
    assert (unmoved - portrait).abs().max().item() < 1e-5  # zero flow returns the portrait exactly
    vae = _pinned_decoder(generator, 2.0 / S)  # one pixel in grid_sample's [-1, 1] units
    with torch.no_grad():
        shifted = vae.decode(latents, vae.reference(portrait))
    # output pixel x samples the portrait at x + 1: the face moves one pixel left
    assert (shifted[..., :-1] - portrait[..., 1:]).abs().max().item() < 1e-4


def test_vae_region_weight_adds_the_error_on_the_eyes_and_mouth_pixels():
    """A frame that differs from the (exactly copied) portrait in one eye only: the region term is that
    squared error over the eyes' and mouth's pixels, and the total grows by vae_region_weight times it."""
    import dataclasses

    from model import Generator, get_preset
    from model.face_regions import EYES_REGION, MOUTH_REGION, region_cells

    generator = Generator(get_preset("tiny", n_layers=1))
    S = generator.config.image_size
    vae = _pinned_decoder(generator, 0.0)  # the reconstruction is the portrait, whatever the frame
    portrait = torch.rand(1, 3, S, S)
    frame = portrait.clone()
    eye = (slice(int(0.40 * S), int(0.44 * S)), slice(int(0.34 * S), int(0.40 * S)))
    frame[:, :, eye[0], eye[1]] = 0.0  # a closed lid, painted dark
    error = (portrait - frame).abs()
    features = torch.maximum(region_cells(S, EYES_REGION), region_cells(S, MOUTH_REGION))
    unweighted = vae.loss(frame, portrait)
    assert torch.isclose(unweighted["region_mse"], error.pow(2).sum() / (3 * features.sum()), rtol=1e-4)
    # all the error lies in the region, a small share of the frame: the region term is the frame's / share
    assert torch.isclose(unweighted["region_mse"] * features.mean(), unweighted["mse"], rtol=1e-4)
    vae.cfg = dataclasses.replace(vae.cfg, vae_region_weight=2.0)
    weighted = vae.loss(frame, portrait)
    torch.testing.assert_close(weighted["total"] - unweighted["total"], 2.0 * unweighted["region_mse"],
                               rtol=1e-4, atol=1e-6)


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


def test_a_window_in_a_longer_recording_gets_that_recordings_audio_tokens():
    g = small_generator(audio_level=True, history_noise=0.0, self_forcing=0.0)
    B, F_, all_frames, fps = 2, 5, 12, 25.0
    torch.manual_seed(1)
    audio = torch.randn(B, all_frames * 640) * 0.1
    ref = torch.randn(B, *g.vae.encode(torch.rand(1, 3, 64, 64)).shape[1:])
    target = torch.randn(B, F_, *ref.shape[1:])
    starts = torch.tensor([0, 6])
    loss = g.training_loss(None, None, audio, fps, latents=(ref, target), audio_start=starts)
    every = g.audio(audio, fps, all_frames)  # (B, 12, A, D)
    tokens = torch.stack([every[b, s:s + F_] for b, s in enumerate(starts.tolist())])
    controls = g.controls(torch.full((B, F_, len(CONTROL_NAMES)), math.nan))
    pred = g.forward_full(ref, torch.cat((ref[:, None], target[:, :-1]), 1), tokens, controls)
    assert loss["latent_mse"].item() == pytest.approx((pred - target).pow(2).mean().item(), rel=1e-5)
