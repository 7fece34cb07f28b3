"""SyncNet LSE-C / LSE-D (Chung & Zisserman 2016, "Out of time"; the Wav2Lip evaluation protocol), run
only from a user-provided `syncnet_v2.model` state dict (EARTALK_SYNCNET_WEIGHTS).

The network is the published `S` model (audio: 13 MFCC x 20 steps = 0.2 s; video: 5 frames of a 224 px
face crop, BGR 0..255). The protocol: embed every 5-frame window and its 0.2 s of MFCC, average the
pairwise distances per lag over +-15 frames; LSE-D = the minimum mean distance, LSE-C = median - minimum.

Departure: syncnet_python crops faces from S3FD boxes; here the crop uses the same rule (box half-size
`bs`, crop_scale 0.4) on a box from dlib's 68 landmarks, so values are close to but not identical with
published LSE numbers.
"""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np
import torch
from torch import nn

CROP_SIZE = 224
CROP_SCALE = 0.4
MAX_SHIFT = 15  # frames either way
BATCH = 20  # windows per forward pass


def _conv2d(cin: int, cout: int, **kw) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, **kw), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


def _conv3d(cin: int, cout: int, **kw) -> list[nn.Module]:
    return [nn.Conv3d(cin, cout, **kw), nn.BatchNorm3d(cout), nn.ReLU(inplace=True)]


def _head(dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, dim))


class SyncNet(nn.Module):
    """Module names and indices match the published state dict (netcnnaud, netfcaud, netcnnlip, netfclip)."""

    def __init__(self, embedding_dim: int = 1024):
        super().__init__()
        self.netcnnaud = nn.Sequential(  # (B, 1, 13, 20) MFCC -> (B, 512, 1, 1)
            *_conv2d(1, 64, kernel_size=3, padding=1), nn.MaxPool2d(1, 1),
            *_conv2d(64, 192, kernel_size=3, padding=1), nn.MaxPool2d(3, stride=(1, 2)),
            *_conv2d(192, 384, kernel_size=3, padding=1),
            *_conv2d(384, 256, kernel_size=3, padding=1),
            *_conv2d(256, 256, kernel_size=3, padding=1), nn.MaxPool2d(3, stride=2),
            *_conv2d(256, 512, kernel_size=(5, 4)))
        self.netfcaud = _head(embedding_dim)
        self.netfclip = _head(embedding_dim)
        self.netcnnlip = nn.Sequential(  # (B, 3, 5, 224, 224) BGR -> (B, 512, 1, 1, 1)
            *_conv3d(3, 96, kernel_size=(5, 7, 7), stride=(1, 2, 2)), nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2)),
            *_conv3d(96, 256, kernel_size=(1, 5, 5), stride=(1, 2, 2), padding=(0, 1, 1)),
            nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
            *_conv3d(256, 256, kernel_size=(1, 3, 3), padding=(0, 1, 1)),
            *_conv3d(256, 256, kernel_size=(1, 3, 3), padding=(0, 1, 1)),
            *_conv3d(256, 256, kernel_size=(1, 3, 3), padding=(0, 1, 1)), nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2)),
            *_conv3d(256, 512, kernel_size=(1, 6, 6)))

    def forward_aud(self, mfcc: torch.Tensor) -> torch.Tensor:
        return self.netfcaud(self.netcnnaud(mfcc).flatten(1))

    def forward_lip(self, clips: torch.Tensor) -> torch.Tensor:
        return self.netfclip(self.netcnnlip(clips).flatten(1))


@lru_cache(maxsize=1)
def load_syncnet(path: str) -> SyncNet:
    """The network from a state dict file; raises ValueError naming the file when it does not fit."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle/zip errors come in many types
        raise ValueError(f"{path}: cannot load SyncNet weights ({type(e).__name__}: {e})") from None
    net = SyncNet()
    try:
        net.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as e:
        raise ValueError(f"{path}: not a SyncNet state dict ({str(e).splitlines()[0]})") from None
    return net.eval()


def mfcc(audio: np.ndarray, sample_rate: int = 16000, num_coefficients: int = 13) -> np.ndarray:
    """(13, T) MFCC at 100 Hz with python_speech_features' defaults (25 ms rectangular frames, 512-point
    FFT, 26 mel filters, pre-emphasis 0.97, lifter 22, c0 = log frame energy), which SyncNet was trained on."""
    frame, step, n_fft, n_filters = int(0.025 * sample_rate), int(0.01 * sample_rate), 512, 26
    x = np.append(audio[0], audio[1:] - 0.97 * audio[:-1]).astype(np.float64)
    count = 1 + int(np.ceil(max(0, len(x) - frame) / step))
    x = np.pad(x, (0, (count - 1) * step + frame - len(x)))
    frames = x[np.arange(count)[:, None] * step + np.arange(frame)[None, :]]
    power = np.abs(np.fft.rfft(frames, n_fft)) ** 2 / n_fft
    energy = np.where(power.sum(1) == 0, np.finfo(float).eps, power.sum(1))
    mel = np.linspace(0, 2595 * np.log10(1 + (sample_rate / 2) / 700), n_filters + 2)
    bins = np.floor((n_fft + 1) * (700 * (10 ** (mel / 2595) - 1)) / sample_rate).astype(int)
    bank = np.zeros((n_filters, n_fft // 2 + 1))
    for j in range(n_filters):
        lo, mid, hi = bins[j:j + 3]
        bank[j, lo:mid] = (np.arange(lo, mid) - lo) / max(mid - lo, 1)
        bank[j, mid:hi] = (hi - np.arange(mid, hi)) / max(hi - mid, 1)
    feats = power @ bank.T
    feats = np.log(np.where(feats == 0, np.finfo(float).eps, feats))
    from scipy.fft import dct

    cepstra = dct(feats, type=2, axis=1, norm="ortho")[:, :num_coefficients]
    cepstra *= 1 + 11.0 * np.sin(np.pi * np.arange(num_coefficients) / 22)
    cepstra[:, 0] = np.log(energy)
    return cepstra.T.astype(np.float32)


def face_crops(frames: np.ndarray, landmarks: np.ndarray) -> np.ndarray | None:
    """(F, 224, 224, 3) BGR crops by syncnet_python's rule around each frame's face box (the last seen box
    where a frame has none); None when no frame has a face."""
    boxes = [None] * len(frames)
    last = None
    for i in range(len(frames)):
        if np.isfinite(landmarks[i]).all():
            (x0, y0), (x1, y1) = landmarks[i].min(0), landmarks[i].max(0)
            last = ((x0 + x1) / 2, (y0 + y1) / 2, max(x1 - x0, y1 - y0) / 2)
        boxes[i] = last
    first = next((b for b in boxes if b is not None), None)
    if first is None:
        return None
    crops = []
    for frame, box in zip(frames, boxes):
        mx, my, bs = box or first
        pad = int(bs * (1 + 2 * CROP_SCALE))
        padded = np.pad(frame, ((pad, pad), (pad, pad), (0, 0)), constant_values=110)
        mx, my = mx + pad, my + pad
        face = padded[int(my - bs):int(my + bs * (1 + 2 * CROP_SCALE)), int(mx - bs * (1 + CROP_SCALE)):int(mx + bs * (1 + CROP_SCALE))]
        crops.append(cv2.resize(cv2.cvtColor(face, cv2.COLOR_RGB2BGR), (CROP_SIZE, CROP_SIZE)))
    return np.stack(crops)


@torch.inference_mode()
def lse(path: str, frames: np.ndarray, landmarks: np.ndarray, audio: np.ndarray, sample_rate: int, fps: float) -> tuple[float, float] | None:
    """(LSE-C, LSE-D) of a 25 fps video with its 16 kHz audio; None without a face or under 6 frames."""
    if abs(fps - 25.0) > 0.01 or sample_rate != 16000:
        raise ValueError(f"SyncNet needs 25 fps video and 16 kHz audio (got {fps:g} fps, {sample_rate} Hz)")
    net = load_syncnet(path)
    crops = face_crops(frames, landmarks)
    if crops is None:
        return None
    coefficients = mfcc(audio, sample_rate)  # (13, T) at 4 steps per video frame
    length = min(len(crops), coefficients.shape[1] // 4)
    windows = length - 5
    if windows < 1:
        return None
    video = torch.from_numpy(crops[:length]).float().permute(3, 0, 1, 2)  # (3, F, 224, 224)
    cc = torch.from_numpy(coefficients)
    lip, aud = [], []
    for start in range(0, windows, BATCH):
        idx = range(start, min(windows, start + BATCH))
        lip.append(net.forward_lip(torch.stack([video[:, i:i + 5] for i in idx])))
        aud.append(net.forward_aud(torch.stack([cc[None, :, 4 * i:4 * i + 20] for i in idx])))
    lip_feat, aud_feat = torch.cat(lip), torch.cat(aud)  # (W, 1024)
    padded = nn.functional.pad(aud_feat, (0, 0, MAX_SHIFT, MAX_SHIFT))
    span = 2 * MAX_SHIFT + 1
    dists = torch.stack([nn.functional.pairwise_distance(lip_feat[[i]].repeat(span, 1), padded[i:i + span])
                         for i in range(windows)], 1)  # (span, W)
    mean = dists.mean(1)
    minimum = float(mean.min())
    return float(mean.median()) - minimum, minimum
