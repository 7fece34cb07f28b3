"""Audio encoder: 16 kHz mono speech -> a few tokens per video frame, at any frame rate.

Log-mel features are computed in torch (STFT + a triangular mel filterbank built here), so no external
weights are needed. Frame t (centre time (t + 0.5) / fps) gets the mel frames within
±audio_context_ms / 2 of (its centre + audio_lead_ms), flattened and projected to `audio_tokens` tokens.
Audio is not causal: a mouth shapes a sound before it is heard, so frame t looks at the sound ahead.

Each mel frame is LayerNormed over its bands, which makes the features independent of recording gain
but also removes how loud the frame is. With `audio_level` each mel frame also carries its level
relative to the loud frames of the whole utterance (`speech_level`): gain-independent still, and the
cue a jaw follows (vowels open it, consonants and pauses close it).

Optional pretrained speech features (wav2vec2 / HuBERT / Whisper) are not bundled: `PretrainedSpeechFeatures`
loads a TorchScript module from a local path when a user configures one; nothing is ever downloaded.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from .config import AUDIO_SAMPLE_RATE, GeneratorConfig


def mel_filterbank(n_mels: int, n_fft: int, sample_rate: int, f_min: float = 20.0, f_max: float | None = None) -> torch.Tensor:
    """(n_fft // 2 + 1, n_mels) triangular filters on the HTK mel scale."""
    f_max = f_max or sample_rate / 2

    def hz_to_mel(f):
        return 2595.0 * math.log10(1.0 + f / 700.0)

    mels = torch.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2)
    hz = 700.0 * (10.0 ** (mels / 2595.0) - 1.0)  # (n_mels + 2,)
    bins = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1)  # (K,)
    lower, centre, upper = hz[:-2], hz[1:-1], hz[2:]
    rising = (bins[:, None] - lower) / (centre - lower)
    falling = (upper - bins[:, None]) / (upper - centre)
    return torch.clamp(torch.minimum(rising, falling), min=0.0)  # (K, n_mels)


LEVEL_FLOOR_DB = -45.0  # this far below the utterance's loud frames counts as silence (level 0)
LEVEL_LOUD_QUANTILE = 0.95  # "loud": this quantile of the utterance's frame energies (level 1)


def speech_level(log_mel: torch.Tensor) -> torch.Tensor:
    """(B, M, n_mels) log-mel power -> (B, M) level in [0, 1.5]: 0 at or below the floor, 1 at loud frames.

    The reference is a quantile over all of each utterance's mel frames, so a quiet recording and a loud
    one of the same speech get the same levels.
    """
    energy_db = torch.logsumexp(log_mel, dim=-1) * (10.0 / math.log(10.0))  # (B, M)
    loud = torch.quantile(energy_db, LEVEL_LOUD_QUANTILE, dim=1, keepdim=True)  # (B, 1)
    return ((energy_db - loud - LEVEL_FLOOR_DB) / -LEVEL_FLOOR_DB).clamp(0.0, 1.5)


class LogMel(nn.Module):
    """(B, N) waveform at 16 kHz -> (B, M, n_mels) fp32 log-mel frames, hop = mel_hop_ms.

    Always fp32, whatever the wave's or the module's dtype: bf16 STFT is unsupported (MKL and cuFFT),
    cuFFT half needs a power-of-two n_fft (ours is 640), and the log of small powers underflows in half.
    """

    def __init__(self, n_mels: int, hop_ms: float):
        super().__init__()
        self.hop = int(round(AUDIO_SAMPLE_RATE * hop_ms / 1000))
        self.n_fft = 4 * self.hop  # 25 ms-ish analysis window at 10 ms hop
        self.register_buffer("window", torch.hann_window(self.n_fft), persistent=False)
        self.register_buffer("filters", mel_filterbank(n_mels, self.n_fft, AUDIO_SAMPLE_RATE), persistent=False)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        # DeepSpeed bf16/fp16 training casts the module (these buffers too) and the batch's audio: back to
        # fp32 here, and autocast off so the filterbank matmul is not lowered again
        wave, window, filters = wave.float(), self.window.float(), self.filters.float()
        # stft's centring reflects n_fft / 2 samples at each end, which needs more samples than that:
        # a clip that short (<= 20 ms) is padded with silence
        short = self.n_fft // 2 + 1 - wave.shape[-1]
        if short > 0:
            wave = torch.nn.functional.pad(wave, (0, short))
        with torch.autocast(wave.device.type, enabled=False):
            spec = torch.stft(wave, self.n_fft, self.hop, window=window, center=True, return_complex=True)
            power = spec.abs().pow(2).transpose(1, 2)  # (B, M, K)
            return torch.log(power @ filters + 1e-6)  # (B, M, n_mels)


class AudioEncoder(nn.Module):
    """(B, N) waveform + fps + frame count -> (B, F, A, d_model) audio tokens.

    Shapes: B batch, N samples, M mel frames, F video frames, K mel frames in a video frame's window,
    E features per mel frame, A audio tokens per video frame.
    """

    def __init__(self, config: GeneratorConfig):
        super().__init__()
        self.config = config
        self.logmel = LogMel(config.n_mels, config.mel_hop_ms)
        self.context = int(round(config.audio_context_ms / config.mel_hop_ms / 2))  # mel frames each side
        width = (2 * self.context + 1) * self.features_per_mel_frame
        self.norm = nn.LayerNorm(config.n_mels)
        self.proj = nn.Sequential(
            nn.Linear(width, config.d_model), nn.GELU(), nn.Linear(config.d_model, config.audio_tokens * config.d_model)
        )

    @property
    def features_per_mel_frame(self) -> int:
        return self.config.n_mels + int(self.config.audio_level)

    def frame_features(self, wave: torch.Tensor, fps: float, num_frames: int) -> torch.Tensor:
        """(B, N) -> (B, F, 2 * context + 1, features_per_mel_frame) mel windows centred audio_lead_ms
        after each video frame; zeros (silence, level 0) outside the clip."""
        log_mel = self.logmel(wave)  # (B, M, n_mels), fp32 whatever the model's or the wave's dtype
        dtype = self.norm.weight.dtype
        mel = self.norm(log_mel.to(dtype))
        if self.config.audio_level:
            mel = torch.cat((mel, speech_level(log_mel)[..., None].to(dtype)), dim=-1)  # (B, M, n_mels + 1)
        M = mel.shape[1]
        mel_rate = 1000.0 / self.config.mel_hop_ms  # mel frames per second
        times = (torch.arange(num_frames, device=wave.device) + 0.5) / fps + self.config.audio_lead_ms / 1000.0  # (F,) s
        centres = torch.round(times * mel_rate).long()  # (F,)
        offsets = torch.arange(-self.context, self.context + 1, device=wave.device)  # (K,)
        idx = centres[:, None] + offsets[None, :]  # (F, K)
        inside = (idx >= 0) & (idx < M)
        windows = mel[:, idx.clamp(0, M - 1)]  # (B, F, K, E)
        return windows * inside[None, :, :, None]

    def forward(self, wave: torch.Tensor, fps: float, num_frames: int) -> torch.Tensor:
        B = wave.shape[0]
        windows = self.frame_features(wave, fps, num_frames)  # (B, F, K, E)
        tokens = self.proj(windows.flatten(2))  # (B, F, A * d_model)
        return tokens.view(B, num_frames, self.config.audio_tokens, self.config.d_model)  # (B, F, A, d_model)


class PretrainedSpeechFeatures(nn.Module):
    """A user-supplied TorchScript speech model (wav2vec2 / HuBERT / Whisper encoder) from a local path.

    The module must map (B, N) 16 kHz audio to (B, M, C) features. It is loaded with torch.jit.load (no
    pickle), never downloaded. The farm's default checkpoints do not use it.
    """

    def __init__(self, path: str | Path):
        super().__init__()
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"pretrained speech model not found at {path} (configure a local TorchScript file)")
        self.model = torch.jit.load(str(path), map_location="cpu")

    @torch.no_grad()
    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return self.model(wave)
