"""The expert sync loss: a frozen sync network judges the generator's own frames against their speech.

Wav2Lip's idea ("A lip sync expert is all you need", Prajwal et al., 2020) on this generator: squared
error on latents pays a mouth that averages the shapes a sound allows, which lands near closed; a network
trained to tell speech in time from speech out of time (metrics/sync_net.py, trained on real video only)
pays a mouth whose motion does not tell the time. Stage 2 decodes the predicted latents with the frozen
frame VAE, cuts each frame's mouth crop where the aligned crop puts the mouth, and scores every frame's
5-crop window against its clip's speech at every lag within +-max_lag frames: cross-entropy with the lag-0
window as the answer, the network's own training objective. The network's weights never change; the
gradient reaches the transformer through the decoder.

The crop is the sync measure's (metrics/sync_features.py) at the aligned crop's template face
(faces/align.py): the mouth centre, a little below it, the inter-ocular distance scaled to CROP_IOD_PX,
bilinear, grey as OpenCV makes it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from faces.align import TEMPLATE
from metrics import sync_net
from metrics.sync_features import CROP_IOD_PX, MOUTH_BELOW_CENTRE, MOUTH_CROP_HW

GREY = (0.299, 0.587, 0.114)  # cv2.COLOR_RGB2GRAY's weights
# frames of each clip the expert judges, a random run of them each step: decoding with gradients costs about
# 0.1 s of CPU a frame, so the whole 24-frame window would make a step several times the cost of the rest
JUDGED_FRAMES = 10


def mouth_grid(image_size: int) -> torch.Tensor:
    """(1, h, w, 2) grid_sample coordinates of the mouth crop in an aligned (image_size)^2 frame."""
    iod = float(TEMPLATE[1, 0] - TEMPLATE[0, 0]) * image_size
    cx = float(TEMPLATE[2, 0]) * image_size
    cy = float(TEMPLATE[2, 1]) * image_size + MOUTH_BELOW_CENTRE * iod
    h, w = MOUTH_CROP_HW
    step = iod / CROP_IOD_PX  # aligned-frame pixels per crop pixel
    xs = cx + (torch.arange(w, dtype=torch.float64) - (w - 1) / 2) * step
    ys = cy + (torch.arange(h, dtype=torch.float64) - (h - 1) / 2) * step
    # pixel centres -> grid_sample's [-1, 1] (align_corners=False)
    gx, gy = (2 * xs + 1) / image_size - 1, (2 * ys + 1) / image_size - 1
    return torch.stack(torch.meshgrid(gx, gy, indexing="xy"), dim=-1)[None].float()


class SyncExpert:
    """A frozen sync network and the crop it reads; kept out of the loss module's parameters and state."""

    def __init__(self, folder: str | Path | None = None, judged_frames: int = JUDGED_FRAMES):
        self.net = sync_net.load(folder or sync_net.SHIPPED)
        self.judged_frames = judged_frames
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.window = self.net.config.window_frames
        self.max_lag = self.net.config.max_lag
        self.source = str(folder or sync_net.SHIPPED)

    def mouth_windows(self, frames: torch.Tensor) -> torch.Tensor:
        """Frames (B, F, 3, S, S) in [0, 1] -> (B, F - window + 1, window, h, w) windows of grey mouth crops,
        each brought to zero mean and unit spread as sync_net.video_windows does (0-255 grey levels)."""
        B, F_, _, S, _ = frames.shape
        grey = torch.einsum("bfchw,c->bfhw", frames, frames.new_tensor(GREY)) * 255.0  # (B, F, S, S)
        grid = mouth_grid(S).to(frames.device, frames.dtype).expand(B * F_, -1, -1, -1)
        crops = F.grid_sample(grey.reshape(B * F_, 1, S, S), grid, mode="bilinear", padding_mode="border",
                              align_corners=False).view(B, F_, *MOUTH_CROP_HW)
        windows = crops.unfold(1, self.window, 1).permute(0, 1, 4, 2, 3)  # (B, F - window + 1, window, h, w)
        windows = windows - windows.mean(dim=(2, 3, 4), keepdim=True)
        return windows / (windows.std(dim=(2, 3, 4), keepdim=True) + 1.0)

    def judged_run(self, num_frames: int) -> slice:
        """A random run of `judged_frames` frames (all of them when the clip is shorter)."""
        n = min(self.judged_frames, num_frames)
        first = int(torch.randint(0, num_frames - n + 1, (1,)))
        return slice(first, first + n)

    def audio_windows(self, audio: torch.Tensor, sample_rate: int, fps: float, starts: torch.Tensor,
                      num_frames: int) -> torch.Tensor:
        """(B, num_frames + 2 max_lag, taps, n_mels) log-mel windows of frames start - max_lag ..
        start + num_frames + max_lag - 1 of each clip's audio (B, N)."""
        rows = [sync_net.audio_windows(a, sample_rate, fps, int(s) - self.max_lag, num_frames + 2 * self.max_lag,
                                       self.net.config)
                for a, s in zip(audio.detach().float().cpu().numpy(), starts.tolist())]
        return torch.from_numpy(np.stack(rows))

    def loss(self, frames: torch.Tensor, audio_windows: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the lag-0 audio among every lag within +-max_lag, over every window of `frames`.

        frames (B, F, 3, S, S) in [0, 1], with F >= the network's window; audio_windows from
        `audio_windows` for the same clips and frames.
        """
        net, L, half = self.net, self.max_lag, self.window // 2
        if net.config.window_frames > frames.shape[1]:
            raise ValueError(f"the expert judges windows of {net.config.window_frames} frames, got {frames.shape[1]}")
        if next(net.parameters()).device != frames.device:
            net.to(frames.device)
        windows = self.mouth_windows(frames.float())  # (B, W, window, h, w), W = F - window + 1
        B, W = windows.shape[:2]
        video = net.embed_video(windows.flatten(0, 1)).view(B, W, -1)  # (B, W, D)
        audio = net.embed_audio(audio_windows.to(frames.device).flatten(0, 1)).view(B, audio_windows.shape[1], -1)
        # window w is centred on frame w + half, whose audio at lag 0 is row w + half + L
        rows = (torch.arange(W, device=frames.device) + half + L)[:, None] + torch.arange(-L, L + 1, device=frames.device)
        candidates = audio[:, rows]  # (B, W, 2L + 1, D)
        logits = net.log_scale.exp() * torch.einsum("bwd,bwkd->bwk", video, candidates)
        target = torch.full((B * W,), L, device=frames.device)
        return F.cross_entropy(logits.flatten(0, 1), target)
