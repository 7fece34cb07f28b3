"""The audio-to-mouth regressor behind metrics.sync: ridge regression from a log-mel window to mouth motion.

What it predicts: five per-frame mouth tracks of a talking face, each high-passed (slow posture changes say
nothing about speech) and z-scored per clip (speakers open their mouths by different amounts):
inner-lip gap, outer-lip gap, mouth width and jaw opening (dlib landmarks over the inter-ocular distance),
and mouth-crop motion (mean |difference| of consecutive grey mouth crops, metrics/sync_features.py).

From what: log-mel energies (24 bands, 25 ms windows every 10 ms, each band's clip median removed) at 13
taps from -240 ms to +240 ms around the frame's centre. The taps are times, not frames, so one model serves
every frame rate. Because the window reaches both ways, the model learns where in time the voice sits
relative to the mouth (the natural lead). The fit also stores `natural_lead_s`, the median lag at which
metrics.sync's jaw-energy curve peaks on the fit's in-sync clips: that curve has no window to learn it.

Fitted on the real corpus (../shared/media/corpus, one speaker per clip; both the full-frame face region
and the 128 px render-size view), closed form, in seconds:

    python -m metrics.sync_model --corpus ../shared/media/corpus --out metrics/sync_weights

The benchmark (benchmarks/sync_validation.py) refits it leaving each speaker out, so its figures are on
speakers the model never saw. Weights: safetensors (numpy arrays) + JSON config; never a pickle.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import scipy.signal

SHIPPED = Path(__file__).resolve().parent / "sync_weights"
WEIGHTS_FILE = "sync_ridge.safetensors"
CONFIG_FILE = "sync_ridge.json"
FORMAT = "eartalk-sync-ridge-v1"
TARGETS = ("inner_lip", "outer_lip", "mouth_width", "jaw", "mouth_motion")


@dataclass
class SyncModelConfig:
    n_mels: int = 24
    fmin_hz: float = 80.0
    fmax_hz: float = 7600.0
    window_s: float = 0.025  # FFT window
    hop_s: float = 0.01  # log-mel frame step
    taps_s: tuple[float, ...] = tuple(round(0.04 * i, 2) for i in range(-6, 7))  # s around each video frame
    highpass_hz: float = 0.5  # mouth tracks and predictions lose what is slower than this
    ridge: float = 1000.0  # L2 penalty on the standardised design

    def __post_init__(self):
        if self.n_mels < 1:
            raise ValueError(f"n_mels must be >= 1, got {self.n_mels}")
        if not 0 < self.fmin_hz < self.fmax_hz:
            raise ValueError(f"fmin_hz/fmax_hz must satisfy 0 < fmin < fmax, got {self.fmin_hz}, {self.fmax_hz}")
        if self.window_s <= 0 or self.hop_s <= 0:
            raise ValueError(f"window_s and hop_s must be > 0, got {self.window_s}, {self.hop_s}")
        if not self.taps_s:
            raise ValueError("taps_s must name at least one tap")
        if self.ridge < 0:
            raise ValueError(f"ridge must be >= 0, got {self.ridge}")
        self.taps_s = tuple(float(t) for t in self.taps_s)


@dataclass
class SyncModel:
    config: SyncModelConfig
    mean: np.ndarray  # (taps * n_mels,) design mean
    scale: np.ndarray  # (taps * n_mels,) design std
    weights: np.ndarray  # (taps * n_mels, len(TARGETS))
    natural_lead_s: float = 0.08  # s the jaw-energy curve of in-sync speech peaks after lag 0 (median over the fit's clips)
    meta: dict = field(default_factory=dict)  # training command, clips, frames

    def predict(self, logmel: np.ndarray, fps: float, first_frame: int, num_frames: int) -> np.ndarray:
        """(num_frames, len(TARGETS)) predicted mouth tracks for frames first_frame .. first_frame + num_frames - 1."""
        X = audio_design(logmel, fps, first_frame, num_frames, self.config)
        return ((X - self.mean) / self.scale) @ self.weights


def log_mel(audio: np.ndarray, sample_rate: int, config: SyncModelConfig) -> np.ndarray:
    """(N, n_mels) log-mel energies every hop_s, each band's median over the clip removed (channel and level
    normalisation: a quiet or bass-heavy recording reads like a loud flat one)."""
    from .sync import mel_filterbank

    n_fft = int(round(config.window_s * sample_rate))
    hop = int(round(config.hop_s * sample_rate))
    padded = np.pad(np.asarray(audio, np.float64), (n_fft // 2, n_fft))
    count = len(audio) // hop + 1
    windows = padded[np.arange(count)[:, None] * hop + np.arange(n_fft)[None, :]]  # (N, n_fft) centred on k*hop
    power = np.abs(np.fft.rfft(windows * np.hanning(n_fft), axis=1)) ** 2
    mel = np.log(power @ mel_filterbank(n_fft, sample_rate, config.n_mels, config.fmin_hz, config.fmax_hz).T + 1e-6)
    return mel - np.median(mel, axis=0)


def audio_design(logmel: np.ndarray, fps: float, first_frame: int, num_frames: int, config: SyncModelConfig) -> np.ndarray:
    """(num_frames, taps * n_mels): the log-mel rows nearest each frame's centre + each tap; times outside the
    audio read as its quietest level (silence)."""
    centres = (np.arange(first_frame, first_frame + num_frames) + 0.5) / fps
    floor = logmel.min(axis=0)
    cols = []
    for tap in config.taps_s:
        pos = np.round((centres + tap) / config.hop_s).astype(np.int64)
        inside = (pos >= 0) & (pos < len(logmel))
        cols.append(np.where(inside[:, None], logmel[np.clip(pos, 0, len(logmel) - 1)], floor))
    return np.concatenate(cols, axis=1)


def highpass(x: np.ndarray, fps: float, cut_hz: float) -> np.ndarray:
    """Zero-phase 2nd-order Butterworth high-pass along axis 0."""
    if cut_hz >= 0.45 * fps:
        return x - x.mean(axis=0)
    b, a = scipy.signal.butter(2, cut_hz / (fps / 2), "high")
    return scipy.signal.filtfilt(b, a, x, axis=0, padlen=min(3 * max(len(a), len(b)), len(x) - 1))


def standardise(x: np.ndarray) -> np.ndarray:
    return (x - x.mean(axis=0)) / (x.std(axis=0) + 1e-9)


def _fill(x: np.ndarray) -> np.ndarray:
    ok = np.isfinite(x)
    if ok.all() or not ok.any():
        return x
    idx = np.arange(len(x))
    return np.interp(idx, idx[ok], x[ok])


def mouth_tracks(landmarks: np.ndarray, crops: np.ndarray | None) -> np.ndarray:
    """(F, 5) raw mouth tracks in TARGETS order (NaN frames interpolated); the motion column is NaN without crops."""
    lm = np.asarray(landmarks, np.float64)
    iod = np.maximum(np.linalg.norm(lm[:, 36:42].mean(1) - lm[:, 42:48].mean(1), axis=1), 1e-6)

    def gap(pairs):
        return np.mean([np.linalg.norm(lm[:, a] - lm[:, b], axis=1) for a, b in pairs], axis=0) / iod

    tracks = [gap([(61, 67), (62, 66), (63, 65)]), gap([(50, 58), (51, 57), (52, 56)]), gap([(48, 54)]), gap([(8, 33)])]
    if crops is None:
        tracks.append(np.full(len(lm), np.nan))
    else:
        c = np.asarray(crops, np.float32)
        c = c - c.mean(axis=(1, 2), keepdims=True)  # a global brightness change is not mouth motion
        d = np.abs(np.diff(c, axis=0)).mean(axis=(1, 2)).astype(np.float64)
        tracks.append(np.r_[d[:1], d] if len(d) else np.zeros(len(lm)))
    return np.stack([_fill(t) for t in tracks], axis=1)


def visual_targets(landmarks: np.ndarray, crops: np.ndarray | None, fps: float, cut_hz: float) -> np.ndarray:
    """(F, 5) high-passed, per-clip z-scored mouth tracks; a column that cannot be measured stays NaN."""
    raw = mouth_tracks(landmarks, crops)
    out = np.full_like(raw, np.nan)
    ok = np.isfinite(raw).all(axis=0)
    out[:, ok] = standardise(highpass(raw[:, ok], fps, cut_hz))
    return out


def fit(examples: list[tuple[np.ndarray, np.ndarray | None, np.ndarray, int, float]],
        config: SyncModelConfig = SyncModelConfig(), meta: dict | None = None) -> SyncModel:
    """Ridge fit over in-sync examples (landmarks (F, 68, 2), crops (F, h, w) or None, audio, sample rate, fps)."""
    from .sync import energy_lead

    X, Y, leads = [], [], []
    for landmarks, crops, audio, sample_rate, fps in examples:
        lead = energy_lead(landmarks, audio, sample_rate, fps)
        if lead is not None:
            leads.append(lead)
        V = visual_targets(landmarks, crops, fps, config.highpass_hz)
        X.append(audio_design(log_mel(audio, sample_rate, config), fps, 0, len(V), config))
        Y.append(V)
    X, Y = np.concatenate(X), np.concatenate(Y)
    mean, scale = X.mean(axis=0), X.std(axis=0) + 1e-9
    Xn = (X - mean) / scale
    weights = np.zeros((X.shape[1], len(TARGETS)))
    for j in range(len(TARGETS)):  # each target from the rows where it was measured
        rows = np.isfinite(Y[:, j])
        A = Xn[rows]
        weights[:, j] = np.linalg.solve(A.T @ A + config.ridge * np.eye(A.shape[1]), A.T @ Y[rows, j])
    natural_lead_s = float(np.median(leads)) if leads else 0.0
    return SyncModel(config, mean, scale, weights, natural_lead_s,
                     dict(meta or {}, frames=int(len(X)), natural_lead_s_spread=float(np.std(leads)) if leads else None))


def save(model: SyncModel, folder: str | Path) -> Path:
    from safetensors.numpy import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({"mean": model.mean.astype(np.float32), "scale": model.scale.astype(np.float32),
               "weights": model.weights.astype(np.float32)}, str(folder / WEIGHTS_FILE))
    (folder / CONFIG_FILE).write_text(json.dumps({"format": FORMAT, "targets": list(TARGETS), "config": asdict(model.config),
                                                  "natural_lead_s": model.natural_lead_s, "meta": model.meta}, indent=1) + "\n")
    return folder


def load(folder: str | Path = SHIPPED) -> SyncModel:
    """The model saved in `folder` (safetensors + JSON only)."""
    from safetensors.numpy import load_file

    folder = Path(folder)
    spec = json.loads((folder / CONFIG_FILE).read_text())
    if spec.get("format") != FORMAT or spec.get("targets") != list(TARGETS):
        raise ValueError(f"{folder / CONFIG_FILE}: format {spec.get('format')!r} with targets {spec.get('targets')} "
                         f"is not {FORMAT!r} with {list(TARGETS)}")
    tensors = load_file(str(folder / WEIGHTS_FILE))
    config = SyncModelConfig(**spec["config"])
    model = SyncModel(config, tensors["mean"].astype(np.float64), tensors["scale"].astype(np.float64),
                      tensors["weights"].astype(np.float64), float(spec["natural_lead_s"]), spec.get("meta", {}))
    if model.weights.shape != (len(config.taps_s) * config.n_mels, len(TARGETS)):
        raise ValueError(f"{folder / WEIGHTS_FILE}: weights of shape {model.weights.shape} do not fit the config")
    return model


_SHIPPED_MODEL: SyncModel | None = None


def shipped() -> SyncModel:
    """The shipped model, loaded once per process."""
    global _SHIPPED_MODEL
    if _SHIPPED_MODEL is None:
        _SHIPPED_MODEL = load(SHIPPED)
    return _SHIPPED_MODEL


def corpus_examples(clips, views: tuple[str, ...] = ("full", "128")) -> list:
    """fit() examples from metrics.sync_corpus.ClipInputs, one per clip and view."""
    from .sync_corpus import SAMPLE_RATE

    out = []
    for clip in clips:
        if "full" in views:
            out.append((clip.landmarks, clip.crops, clip.audio, SAMPLE_RATE, clip.fps))
        if "128" in views:
            out.append((clip.landmarks_128, clip.crops_128, clip.audio, SAMPLE_RATE, clip.fps))
    return out


def main(argv: list[str] | None = None) -> int:
    from .sync_corpus import load_clip

    p = argparse.ArgumentParser(description="Fit the sync regressor on a corpus of in-sync talking-head MP4s.")
    p.add_argument("--corpus", required=True, help="folder of MP4s, one speaker per clip, their own speech")
    p.add_argument("--out", required=True, help="folder for sync_ridge.safetensors + sync_ridge.json")
    p.add_argument("--cache", default="out/sync_cache", help="landmark/crop cache (keyed by file content)")
    p.add_argument("--clips", nargs="*", help="only these file names from the corpus")
    args = p.parse_args(argv)
    paths = sorted(Path(args.corpus).glob("*.mp4"))
    if args.clips:
        paths = [q for q in paths if q.name in set(args.clips)]
    if not paths:
        print(f"error: {args.corpus}: no MP4 clips to fit on", file=sys.stderr)
        return 2
    clips = [load_clip(q, args.cache) for q in paths]
    command = "python -m metrics.sync_model " + " ".join(argv if argv is not None else sys.argv[1:])
    model = fit(corpus_examples(clips), meta={"command": command, "clips": [q.name for q in paths]})
    save(model, args.out)
    print(json.dumps({"out": str(args.out), "clips": len(paths), "frames": model.meta["frames"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
