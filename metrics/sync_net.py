"""A small audio-visual sync network, self-supervised on the real corpus (SyncNet's recipe, multi-way form).

What it learns: two encoders, one for a window of grey mouth crops (WINDOW_FRAMES frames around a video
frame, metrics/sync_features.py) and one for the log-mel window around that frame's time, whose embeddings
agree (cosine similarity) when the two are in sync. Training is a classification over lags: for each mouth
window the audio windows at every lag within +-max_lag frames of the same clip, plus windows of other
clips' speech, are the candidates, and the one at lag 0 is the answer (Chung et al., "Perfect match",
2019). The same-clip shifts make it learn fine timing on one voice and face; the other speakers' windows
teach it that unrelated speech agrees with nothing.

How it measures a video (`lag_curves`): the mean similarity of every frame's mouth window with the audio
window `lag` frames later, over lags (the lag curve) and over every circular shift of the audio (its null).
metrics.sync puts that curve beside the regressor's in null standard units.

Trained in minutes on CPU, deterministic for a seed, saved as safetensors + JSON (never a pickle):

    python -m metrics.sync_net --corpus ../shared/media/corpus --out metrics/sync_weights \
        --hold-out megactor_ENTF_2.mp4 megactor_CHTF_4.mp4 real3dportrait_May_5s.mp4 megactor_CHTF_2.mp4

benchmarks/sync_validation.py retrains it with whole speakers held out (SPEAKER_FOLDS), so its figures are
on speakers it never saw.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import sync_model

SHIPPED = Path(__file__).resolve().parent / "sync_weights"
WEIGHTS_FILE = "sync_net.safetensors"
CONFIG_FILE = "sync_net.json"
FORMAT = "eartalk-sync-net-v1"
# corpus speakers the shipped weights never see (16 s of the corpus's 3.6 minutes): CI judges the shipped
# weights on them (tests/metrics/test_sync_validation.py)
HELD_OUT_SPEAKERS = ("megactor_ENTF_2.mp4", "megactor_CHTF_4.mp4", "real3dportrait_May_5s.mp4", "megactor_CHTF_2.mp4")


@dataclass
class SyncNetConfig:
    window_frames: int = 5  # mouth crops per video window (centred on the frame)
    audio_taps_s: tuple[float, ...] = tuple(round(0.01 * i, 2) for i in range(-12, 13))  # log-mel rows around the frame
    n_mels: int = 24
    embed_dim: int = 64
    max_lag: int = 15  # frames: same-clip candidates at every lag within +-max_lag
    other_clip_negatives: int = 16  # audio windows of other clips per mouth window
    steps: int = 1500
    batch: int = 32  # mouth windows a step
    lr: float = 2e-3
    seed: int = 0

    def __post_init__(self):
        if self.window_frames < 1 or self.window_frames % 2 == 0:
            raise ValueError(f"window_frames must be odd and >= 1, got {self.window_frames}")
        if self.max_lag < 1 or self.steps < 0 or self.batch < 1 or self.embed_dim < 1:
            raise ValueError(f"max_lag, batch and embed_dim must be >= 1 and steps >= 0, got {self.max_lag}, "
                             f"{self.batch}, {self.embed_dim}, {self.steps}")
        self.audio_taps_s = tuple(float(t) for t in self.audio_taps_s)

    def mel_config(self) -> sync_model.SyncModelConfig:
        return sync_model.SyncModelConfig(n_mels=self.n_mels, taps_s=self.audio_taps_s)


def _conv2d(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2))


def _conv1d(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv1d(cin, cout, 3, stride=stride, padding=1), nn.BatchNorm1d(cout), nn.ReLU())


class SyncNet(nn.Module):
    def __init__(self, config: SyncNetConfig):
        super().__init__()
        self.config = config
        h, w = 32, 48  # metrics.sync_features.MOUTH_CROP_HW
        self.video = nn.Sequential(_conv2d(config.window_frames, 32), _conv2d(32, 64), _conv2d(64, 96), nn.Flatten(),
                                   nn.Linear(96 * (h // 8) * (w // 8), 128), nn.ReLU(), nn.Linear(128, config.embed_dim))
        taps = len(config.audio_taps_s)
        self.audio = nn.Sequential(_conv1d(config.n_mels, 64, 1), _conv1d(64, 96, 2), _conv1d(96, 96, 2), nn.Flatten(),
                                   nn.Linear(96 * ((taps + 3) // 4), 128), nn.ReLU(), nn.Linear(128, config.embed_dim))
        self.log_scale = nn.Parameter(torch.tensor(np.log(10.0), dtype=torch.float32))  # similarity -> logit

    def embed_video(self, windows: torch.Tensor) -> torch.Tensor:
        """(N, window_frames, 32, 48) normalised crops -> (N, embed_dim) unit vectors."""
        return F.normalize(self.video(windows), dim=1)

    def embed_audio(self, windows: torch.Tensor) -> torch.Tensor:
        """(N, taps, n_mels) log-mel windows -> (N, embed_dim) unit vectors."""
        return F.normalize(self.audio(windows.transpose(1, 2)), dim=1)


def video_windows(crops: np.ndarray, window_frames: int) -> np.ndarray:
    """(F, window_frames, h, w) float32: each frame's crop window (edges repeat the end crops), each window
    brought to zero mean and unit spread (lighting and skin tone are not timing)."""
    c = np.asarray(crops, np.float32)
    half = window_frames // 2
    idx = np.clip(np.arange(len(c))[:, None] + np.arange(-half, half + 1)[None, :], 0, len(c) - 1)
    w = c[idx]
    w = w - w.mean(axis=(1, 2, 3), keepdims=True)
    return w / (w.std(axis=(1, 2, 3), keepdims=True) + 1.0)


def audio_windows(audio: np.ndarray, sample_rate: int, fps: float, first_frame: int, num_frames: int,
                  config: SyncNetConfig) -> np.ndarray:
    """(num_frames, taps, n_mels) float32 log-mel windows of frames first_frame .. first_frame + num_frames - 1."""
    mel = config.mel_config()
    rows = sync_model.audio_design(sync_model.log_mel(audio, sample_rate, mel), fps, first_frame, num_frames, mel)
    return rows.reshape(num_frames, len(config.audio_taps_s), config.n_mels).astype(np.float32)


@dataclass
class _Clip:
    video: np.ndarray  # (F, window_frames, h, w)
    audio: np.ndarray  # (F + 2 * max_lag, taps, n_mels): frames -max_lag .. F + max_lag - 1


def _training_clips(examples, config: SyncNetConfig) -> list[_Clip]:
    out = []
    for crops, audio, sample_rate, fps in examples:
        n = len(crops)
        if n <= 2 * config.max_lag:
            continue
        out.append(_Clip(video_windows(crops, config.window_frames),
                         audio_windows(audio, sample_rate, fps, -config.max_lag, n + 2 * config.max_lag, config)))
    return out


def _augment(video: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Mirror half the windows, blur a third as a small render would (2x or 3x down and up), jitter by <= 2 px."""
    n = len(video)
    flip = torch.rand(n, generator=gen) < 0.5
    video = torch.where(flip[:, None, None, None], video.flip(-1), video)
    blur = torch.randint(0, 3, (n,), generator=gen)
    for factor in (2, 3):
        pick = blur == factor - 1
        if pick.any() and torch.rand(1, generator=gen) < 0.66:
            small = F.interpolate(video[pick], scale_factor=1 / factor, mode="area")
            video[pick] = F.interpolate(small, size=video.shape[-2:], mode="bilinear", align_corners=False)
    dy, dx = (int(v) for v in torch.randint(-2, 3, (2,), generator=gen))
    return torch.roll(video, shifts=(dy, dx), dims=(-2, -1))


def train(examples, config: SyncNetConfig = SyncNetConfig(), meta: dict | None = None, log=None) -> SyncNet:
    """Train on in-sync examples (mouth crops (F, h, w), audio, sample rate, fps); one speaker per clip is
    assumed (other clips' speech is the mismatched kind)."""
    clips = _training_clips(examples, config)
    if len(clips) < 2:
        raise ValueError(f"sync net training needs >= 2 clips longer than {2 * config.max_lag} frames, got {len(clips)}")
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    net = SyncNet(config)
    opt = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, config.lr, total_steps=max(config.steps, 1), pct_start=0.1)
    frames = np.array([len(c.video) for c in clips], np.float64)
    lags = np.arange(-config.max_lag, config.max_lag + 1)
    L, K = config.max_lag, config.other_clip_negatives
    net.train()
    start, losses = time.perf_counter(), []
    for step in range(config.steps):
        which = rng.choice(len(clips), config.batch, p=frames / frames.sum())
        video, audio = [], []
        for c in which:
            clip = clips[c]
            t = int(rng.integers(len(clip.video)))
            video.append(clip.video[t])
            same = clip.audio[t + L + lags]  # (2L+1, taps, mels): lag 0 at index L
            others = []
            for o in rng.choice([i for i in range(len(clips)) if i != c], K):
                other = clips[o]
                others.append(other.audio[L + int(rng.integers(len(other.video)))])
            audio.append(np.concatenate([same, np.stack(others)]))
        v = net.embed_video(_augment(torch.from_numpy(np.stack(video)), gen))  # (B, D)
        a = net.embed_audio(torch.from_numpy(np.concatenate(audio)))  # (B * (2L+1+K), D)
        a = a.view(config.batch, 2 * L + 1 + K, -1)
        logits = net.log_scale.exp() * torch.einsum("bd,bkd->bk", v, a)
        loss = F.cross_entropy(logits, torch.full((config.batch,), L))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if log and (step + 1) % 100 == 0:
            log(f"step {step + 1}/{config.steps} loss {np.mean(losses[-100:]):.3f} ({time.perf_counter() - start:.0f} s)")
    net.eval()
    net.meta = dict(meta or {}, clips_trained=len(clips), frames=int(frames.sum()),
                    final_loss=float(np.mean(losses[-100:])) if losses else None,
                    chance_loss=float(np.log(2 * L + 1 + K)), train_s=round(time.perf_counter() - start, 1))
    return net


@torch.no_grad()
def lag_curves(net: SyncNet, crops: np.ndarray, audio: np.ndarray, sample_rate: int, fps: float, max_lag: int,
               face: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(2 max_lag + 1,) mean similarity of each frame's mouth window with the audio window lag frames later,
    lags -max_lag .. max_lag; and (F,) the same at every circular shift s (audio of frame t - s against
    the mouth at t), for the null. `face` (F,) bool limits the mean to frames with a face."""
    n = len(crops)
    v = net.embed_video(torch.from_numpy(video_windows(crops, net.config.window_frames))).numpy()
    a = net.embed_audio(torch.from_numpy(audio_windows(audio, sample_rate, fps, -max_lag, n + 2 * max_lag, net.config))).numpy()
    keep = np.ones(n, bool) if face is None else np.asarray(face, bool)
    curve = np.array([float((v * a[max_lag + lag:max_lag + lag + n]).sum(1)[keep].mean()) for lag in range(-max_lag, max_lag + 1)])
    sims = v[keep] @ a[max_lag:max_lag + n].T  # (kept frames, F): mouth at t against the audio of every frame
    rows = np.flatnonzero(keep)
    circular = np.array([float(sims[np.arange(len(rows)), (rows - s) % n].mean()) for s in range(n)])
    return curve, circular


def save(net: SyncNet, folder: str | Path) -> Path:
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(folder / WEIGHTS_FILE))
    (folder / CONFIG_FILE).write_text(json.dumps({"format": FORMAT, "config": asdict(net.config),
                                                  "meta": getattr(net, "meta", {})}, indent=1) + "\n")
    return folder


def load(folder: str | Path = SHIPPED) -> SyncNet:
    """The network saved in `folder` (safetensors + JSON only), in eval mode."""
    from safetensors.torch import load_file

    folder = Path(folder)
    spec = json.loads((folder / CONFIG_FILE).read_text())
    if spec.get("format") != FORMAT:
        raise ValueError(f"{folder / CONFIG_FILE}: format {spec.get('format')!r} is not {FORMAT!r}")
    net = SyncNet(SyncNetConfig(**spec["config"]))
    try:
        net.load_state_dict(load_file(str(folder / WEIGHTS_FILE)))
    except RuntimeError as err:
        raise ValueError(f"{folder / WEIGHTS_FILE}: weights do not fit the config ({str(err).splitlines()[0]})") from None
    net.meta = spec.get("meta", {})
    return net.eval()


_SHIPPED_NET: SyncNet | None = None


def shipped() -> SyncNet:
    """The shipped network, loaded once per process."""
    global _SHIPPED_NET
    if _SHIPPED_NET is None:
        _SHIPPED_NET = load(SHIPPED)
    return _SHIPPED_NET


def corpus_examples(clips, views: tuple[str, ...] = ("full", "128")) -> list:
    """train() examples from metrics.sync_corpus.ClipInputs, one per clip and view (the regressor's, less
    the landmarks)."""
    return [(crops, audio, sample_rate, fps) for _, crops, audio, sample_rate, fps in sync_model.corpus_examples(clips, views)]


def main(argv: list[str] | None = None) -> int:
    from .sync_corpus import load_clip

    p = argparse.ArgumentParser(description="Train the sync network on a corpus of in-sync talking-head MP4s.")
    p.add_argument("--corpus", required=True, help="folder of MP4s, one speaker per clip, their own speech")
    p.add_argument("--out", required=True, help="folder for sync_net.safetensors + sync_net.json")
    p.add_argument("--cache", default="out/sync_cache", help="landmark/crop cache (keyed by file content)")
    p.add_argument("--clips", nargs="*", help="only these file names from the corpus")
    p.add_argument("--hold-out", nargs="*", default=[], help="file names of speakers to keep out of training")
    p.add_argument("--steps", type=int, default=SyncNetConfig.steps)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    paths = sorted(Path(args.corpus).glob("*.mp4"))
    if args.clips:
        paths = [q for q in paths if q.name in set(args.clips)]
    paths = [q for q in paths if q.name not in set(args.hold_out)]
    if len(paths) < 2:
        print(f"error: {args.corpus}: needs >= 2 MP4 clips to train on (other clips' speech is the mismatched kind)",
              file=sys.stderr)
        return 2
    torch.set_num_threads(min(4, torch.get_num_threads()))
    clips = [load_clip(q, args.cache) for q in paths]
    command = "python -m metrics.sync_net " + " ".join(argv if argv is not None else sys.argv[1:])
    net = train(corpus_examples(clips), SyncNetConfig(steps=args.steps, seed=args.seed),
                meta={"command": command, "clips": [q.name for q in paths], "held_out": sorted(args.hold_out)}, log=lambda m: print(m, file=sys.stderr))
    save(net, args.out)
    print(json.dumps({"out": str(args.out), "clips": len(paths), **{k: net.meta[k] for k in ("frames", "final_loss", "chance_loss", "train_s")}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
