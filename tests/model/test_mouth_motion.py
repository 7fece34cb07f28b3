"""Mouth-motion magnification (model/mouth_motion.py): syllable-rate mouth motion shown larger, the rest as predicted."""

from __future__ import annotations

import dataclasses
import math

import torch

from model.mouth_motion import magnify, motion_rates, mouth_cells, start_motion
from tests.model.conftest import request, small_generator

L = 16  # the tiny preset's latent grid


def shown_track(track: torch.Tensor, gain: float, fps: float = 25.0) -> torch.Tensor:
    """(F,) value of every latent cell over F frames -> (F, L, L) the decoded latents' values."""
    cells = mouth_cells(L)
    motion, rates = start_motion(torch.full((1, 1, L, L), float(track[0]))), motion_rates(fps)[None]
    out = []
    for value in track:
        frame, motion = magnify(torch.full((1, 1, L, L), float(value)), motion, rates, cells, gain)
        out.append(frame[0, 0])
    return torch.stack(out)


def spread_ratio(track: torch.Tensor, gain: float, fps: float) -> float:
    """The mouth cells' shown spread over the track's, after the first two seconds."""
    settled = int(2 * fps)
    return float(shown_track(track, gain, fps)[settled:, mouth_cells(L).bool()].std(dim=0).mean() / track[settled:].std())


def test_syllable_rate_motion_of_the_mouth_cells_is_shown_larger_and_other_cells_as_predicted():
    t = torch.arange(200) / 25.0
    track = torch.sin(2 * math.pi * 4.0 * t)  # a 4 Hz opening and closing
    shown = shown_track(track, gain=3.0)
    mouth = mouth_cells(L).bool()
    assert mouth.any() and not mouth.all()
    assert torch.equal(shown[:, ~mouth], track[:, None].expand(-1, int((~mouth).sum())))
    assert 1.9 < spread_ratio(track, 3.0, 25.0) < 2.3  # the band passes most of the 4 Hz motion


def test_frame_to_frame_jitter_is_magnified_less_than_syllable_motion_at_any_frame_rate():
    for fps in (25.0, 30.0, 60.0):
        frames = torch.arange(int(8 * fps))
        syllables = torch.sin(2 * math.pi * 4.0 * frames / fps)
        jitter = (-1.0) ** frames.float()  # a cell flickering every frame, as landmark-visible noise does
        assert spread_ratio(jitter, 3.0, fps) < 1.75 < 2.0 < spread_ratio(syllables, 3.0, fps)
        assert math.isclose(spread_ratio(jitter, 1.0, fps), 1.0, rel_tol=1e-5)  # gain 1 shows the latents as predicted


def test_a_held_or_slowly_moving_mouth_is_shown_as_predicted():
    held = shown_track(torch.full((100,), 0.7), gain=3.0)
    assert torch.allclose(held, torch.full_like(held, 0.7))
    slow = torch.linspace(0.0, 1.0, 250)  # 10 s drift, as a slow head turn moves the mouth cells
    error = (shown_track(slow, gain=3.0)[25:, mouth_cells(L).bool()] - slow[25:, None]).abs().max()
    baseline_rate, smoothing_rate = motion_rates(25.0).tolist()
    # how much further the baseline trails a ramp than the smoothed track does
    lag = (slow[1] - slow[0]) * ((1 - baseline_rate) / baseline_rate - (1 - smoothing_rate) / smoothing_rate)
    assert error <= (3.0 - 1.0) * lag * 1.01 and error < 0.045  # the ramp is shown 4 % of its range ahead


def test_the_rates_are_time_constants_in_seconds_at_any_frame_rate():
    for fps in (10.0, 25.0, 60.0):
        frames = int(round(fps))  # one second: four baseline time constants, about 23 smoothing ones
        baseline_rate, smoothing_rate = motion_rates(fps).tolist()
        assert math.isclose((1 - baseline_rate) ** frames, math.exp(-4.0), rel_tol=0.05)
        assert math.isclose((1 - smoothing_rate) ** frames, math.exp(-1 / 0.044), rel_tol=0.05)


def test_gain_one_decodes_the_models_latents_unchanged():
    g = small_generator()
    off = small_generator()
    off.config = dataclasses.replace(off.config, mouth_magnification=1.0)
    assert g.config.mouth_magnification == 3.0  # the tiny preset's
    r = request(g, 12)
    with torch.no_grad():
        on_frames = torch.cat(list(g.stream([r])))
        off_frames = torch.cat(list(off.stream([r])))
        ref = off.vae.reference(r.portrait[None])
        audio, controls = off.condition_tokens([r], 12)
        latents = torch.stack(list(off.rollout(ref.latent, audio, controls)), dim=1)
        plain = off.decode_latents(latents, r.portrait[None])[0]
    assert (off_frames - plain).abs().max() < 1e-5
    assert (on_frames - off_frames).abs().max() > 1e-3  # magnified frames differ ...
    rows = slice(int(0.5 * g.config.image_size), None)
    assert (on_frames[..., :rows.start // 2, :] - off_frames[..., :rows.start // 2, :]).abs().max() < \
        (on_frames[..., rows, :] - off_frames[..., rows, :]).abs().max()  # ... most around the mouth
