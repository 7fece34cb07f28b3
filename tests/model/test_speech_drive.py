"""The speech's lip drive (model/speech_drive.py) and the `lip` token the generator builds from it."""

from __future__ import annotations

import math

import numpy as np
import torch

from model import RenderRequest
from model.config import AUDIO_SAMPLE_RATE, get_preset
from model.controls import CONTROL_NAMES, stack_controls
from model.generator import Generator
from model.speech_drive import speech_lip_drive

FPS = 25.0


def syllables(seconds: float = 2.0, rate_hz: float = 4.0) -> np.ndarray:
    """A 200 Hz voice whose loudness rises and falls `rate_hz` times a second, silent in between."""
    t = np.arange(int(seconds * AUDIO_SAMPLE_RATE)) / AUDIO_SAMPLE_RATE
    envelope = np.clip(np.sin(2 * np.pi * rate_hz * t), 0.0, None)
    return (0.3 * envelope * np.sin(2 * np.pi * 200 * t) * (1 + np.sin(2 * np.pi * 900 * t))).astype(np.float32)


def test_the_drive_opens_on_syllables_leads_the_voice_and_stays_shut_in_silence():
    audio = syllables()
    frames = 50
    drive = speech_lip_drive(audio, FPS, frames, lead_s=0.0)
    assert drive.shape == (frames,) and drive.dtype == np.float32 and 0.0 <= drive.min() and drive.max() <= 1.0
    assert drive.max() > 0.8 and drive.min() < 0.2  # opens wide on the loud parts, nearly shuts between them
    led = speech_lip_drive(audio, FPS, frames, lead_s=0.16)
    lags = range(-8, 9)
    corr = [np.corrcoef(np.roll(drive, -k)[10:-10], led[10:-10])[0, 1] for k in lags]
    assert list(lags)[int(np.argmax(corr))] == 4  # 160 ms = 4 frames earlier
    assert not speech_lip_drive(np.zeros(AUDIO_SAMPLE_RATE, np.float32), FPS, 25, 0.16).any()


def test_the_lip_token_is_the_rows_intensity_times_the_speech_drive():
    torch.manual_seed(0)
    generator = Generator(get_preset("tiny", n_layers=1, d_model=64, n_heads=2)).eval()
    assert generator.config.lip_from_speech
    audio = torch.from_numpy(syllables())
    frames = generator.num_frames(len(audio), FPS)
    given = torch.full((frames,), math.nan)
    given[:10] = 0.3
    request = RenderRequest(portrait=torch.rand(3, 128, 128), audio=audio, fps=FPS, controls={"lip": given})
    values = stack_controls(request.controls, frames)
    generator.fill_lip_from_speech(values, request)
    lip = values[:, CONTROL_NAMES.index("lip")]
    drive = speech_lip_drive(audio.numpy(), FPS, frames, generator.config.audio_lead_ms / 1000)
    assert drive.max() > 0.5
    assert torch.allclose(lip[:10], 0.3 * torch.from_numpy(drive[:10]))  # a given intensity scales the drive
    assert torch.allclose(lip[10:], torch.from_numpy(drive[10:]))  # an absent one is 1
    assert torch.isnan(values[:, CONTROL_NAMES.index("yaw")]).all()  # other absent controls stay absent

    off = Generator(get_preset("tiny", n_layers=1, d_model=64, n_heads=2, lip_from_speech=False)).eval()
    off.load_state_dict(generator.state_dict())
    with torch.no_grad():
        _, tokens_on = generator.condition_tokens([RenderRequest(request.portrait, audio, FPS)], frames)
        _, tokens_off = off.condition_tokens([RenderRequest(request.portrait, audio, FPS)], frames)
    assert not torch.allclose(tokens_on, tokens_off)  # the drive reaches the control tokens
