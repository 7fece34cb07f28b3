"""Audio-visual sync: mouth motion predicted from the speech, correlated with the mouth motion seen, over lags.

Offset sign: `offset_frames > 0` means the audio lags the video (the sound comes after the mouth moves);
delaying a video's audio by k frames moves the offset by +k.

Method (chosen and validated on the whole real corpus, ../shared/media/corpus, 19 speakers; docs/sync.md
has the figures and benchmarks/sync_validation.py reproduces them):
1. Seen: five mouth tracks per frame (inner/outer lip gap, mouth width, jaw opening from dlib landmarks
   over the inter-ocular distance; mouth-crop pixel motion from grey crops in the face's frame),
   high-passed at 0.5 Hz and z-scored per clip. Frames without a face are interpolated.
2. Predicted: the same five tracks from the speech by a ridge regressor on a +-240 ms log-mel window
   (metrics/sync_model.py, fitted on the corpus; held-out-speaker figures in the docs). Predicting the
   mouth from the spectrum uses what the voice says about the lips (vowel openness, closures), which one
   band's energy does not: the old energy-vs-jaw correlation recovered shifts but read unrelated speech
   nearly as confidently as the right one.
3. Lag curve: for each lag within +-max_lag frames (at most +-max_lag_s), the mean Pearson correlation
   over the tracks between the seen tracks and the prediction from the audio moved by that lag. The
   regressor's window reaches both ways, so the natural lead of mouth over voice is part of its fit.
4. Second opinion: the jaw opening against the speech's formant-band (~500-2600 Hz) log energy, both
   band-passed to 1-6 Hz, over voiced frames, at each lag plus the natural lead (the median peak of
   this curve on the fit's in-sync clips, stored with the regressor). It shares no weights with step 3
   and the two fail on different clips.
5. Third opinion, learned from pixels: the sync network (metrics/sync_net.py, SyncNet's recipe trained on
   the corpus): the mean cosine similarity of each frame's mouth-crop window with the log-mel window lag
   frames later. It reads the mouth's pixels, not landmarks, and was never told what a mouth track is.
   It votes only where its own curve stands out (confidence >= net_min_confidence, the level unrelated
   speech stays under): on a mouth unlike the real ones it learned (the synthetic puppet's, some renders)
   its curve is noise, and noise summed at unit scale would move the peak of a short clip.
6. Null, offset, confidence: every opinion at every circular shift beyond the searched lags is the clip's
   own null (this mouth against speech it does not follow). Each curve is put in its own null's standard
   units, weighted (regressor 1, energy 0.5, network 1) and summed; the peak of the sum is the offset. The
   confidence is that peak minus what chance picks as a peak (the mean maximum of the summed null over
   runs as long as the lag search), in the summed null's standard deviations: ~0 for unrelated speech,
   higher the more clearly the audio drives the mouth.

Limits: needs >= 2 s with a face on at least half the frames, >= 4 fps, and enough frames for a null
beyond the lag search; the mouth-motion track and the network need the frames (or crops), without them
four tracks and the energy curve vote; offsets beyond the lag search are not found.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from dataclasses import asdict, dataclass, field

import numpy as np

from . import sync_model


@dataclass
class SyncConfig:
    max_lag: int = 15  # frames searched either way ...
    max_lag_s: float = 0.7  # ... and at most this many seconds (low frame rates)
    min_seconds: float = 2.0  # shorter videos are not measured
    min_face_fraction: float = 0.5  # share of frames with a face
    min_fps: float = 4.0  # below this a syllable (~4-5 per second) falls between frames
    null_margin: int = 4  # frames between the searched lags and the null's circular shifts
    min_null_shifts: int = 8  # fewer circular shifts than this: no null, not measured
    regressor_weight: float = 1.0  # weight of the regressor's curve (step 3)
    energy_weight: float = 0.5  # weight of the jaw-vs-speech-energy curve beside the regressor's (step 4)
    net_weight: float = 1.0  # weight of the sync network's curve (step 5; metrics/sync_net.py)
    net_min_confidence: float = 1.0  # the network votes only where its own curve's confidence reaches this

    def __post_init__(self):
        if self.max_lag < 1:
            raise ValueError(f"max_lag must be >= 1, got {self.max_lag}")
        if self.max_lag_s <= 0 or self.min_seconds <= 0 or self.min_fps <= 0:
            raise ValueError(f"max_lag_s, min_seconds and min_fps must be > 0, got {self.max_lag_s}, "
                             f"{self.min_seconds}, {self.min_fps}")
        if min(self.regressor_weight, self.energy_weight, self.net_weight) < 0:
            raise ValueError(f"regressor_weight, energy_weight and net_weight must be >= 0, got {self.regressor_weight}, "
                             f"{self.energy_weight}, {self.net_weight}")
        if not 0 < self.min_face_fraction <= 1:
            raise ValueError(f"min_face_fraction must be in (0, 1], got {self.min_face_fraction}")


@dataclass
class SyncResult:
    offset_frames: float  # > 0: audio lags video
    confidence: float  # peak z-score against the clip's circular-shift null; ~0-2.5 for unrelated audio
    lags: np.ndarray = field(repr=False)  # (L,) frames
    curve: np.ndarray = field(repr=False)  # (L,) combined lag curve, in null standard units
    raw_lag: int = 0  # the curve's peak (the model absorbs the natural lead, so this equals the offset)
    peak_correlation: float = float("nan")  # the regressor's mean correlation at the peak
    null_mean: float = float("nan")  # mean and std of the circular-shift correlations
    null_std: float = float("nan")
    chance_peak: float = float("nan")  # mean maximum of the null over runs as long as the lag search


@functools.lru_cache(maxsize=1)
def measure_version() -> str:
    """12 hex digits naming what the sync figures depend on: the shipped weights' files and the default
    settings. Figures of two versions are on different measures (results record it; compare does not judge
    sync across versions)."""
    h = hashlib.sha256(json.dumps(asdict(SyncConfig()), sort_keys=True).encode())
    for path in sorted(sync_model.SHIPPED.iterdir()):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:12]


def mel_filterbank(n_fft: int, sample_rate: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    """(n_mels, n_fft // 2 + 1) triangular HTK-mel filters."""
    hz_to_mel = lambda f: 2595.0 * np.log10(1.0 + f / 700.0)  # noqa: E731
    mel_to_hz = lambda m: 700.0 * (10.0 ** (m / 2595.0) - 1.0)  # noqa: E731
    edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    freqs = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    bank = np.zeros((n_mels, freqs.size))
    for i in range(n_mels):
        lo, mid, hi = edges[i:i + 3]
        bank[i] = np.clip(np.minimum((freqs - lo) / (mid - lo), (hi - freqs) / (hi - mid)), 0.0, None)
    return bank


def frame_mel_energies(audio: np.ndarray, sample_rate: int, fps: float, num_frames: int, mel_bands: int = 20,
                       fft_size: int = 1024) -> np.ndarray:
    """(F, mel_bands) mel power per video frame, one FFT window (fft_size samples at 16 kHz) centred on each
    frame's interval; frames past the audio's end read silence."""
    n_fft = fft_size * sample_rate // 16000
    hop = sample_rate / fps
    centres = (np.arange(num_frames) * hop + hop / 2).astype(np.int64)
    # frames past the audio's end (a rendered video can outrun its speech by a frame) read silence
    right = max(n_fft, int(centres.max(initial=0)) + n_fft - len(audio))
    padded = np.pad(audio.astype(np.float64), (n_fft // 2, right))
    windows = padded[centres[:, None] + np.arange(n_fft)[None, :]]  # (F, n_fft): centre at index n_fft//2
    power = np.abs(np.fft.rfft(windows * np.hanning(n_fft), axis=1)) ** 2
    return power @ mel_filterbank(n_fft, sample_rate, mel_bands, 80.0, 7600.0).T


def _column_corr(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over columns of the Pearson correlation of (F, C) a and b."""
    a, b = sync_model.standardise(a), sync_model.standardise(b)
    return float((a * b).mean(axis=0).mean())


ENERGY_MELS = 40  # mel bands of the energy curve's spectrum (80-7600 Hz)
ENERGY_BAND = (12, 30)  # mel bands summed: ~500-2600 Hz, the vowels' formants
ENERGY_FFT = 512  # samples at 16 kHz = 32 ms; three windows spread over each frame's interval are averaged
SYLLABLE_HZ = (1.0, 6.0)  # band-pass of the jaw and the band energy
VOICED_FRACTION = 0.3  # voiced: energy above p20 + this x (p95 - p20)


def _syllable_band(x: np.ndarray, fps: float) -> np.ndarray:
    import scipy.signal

    lo, hi = SYLLABLE_HZ[0], min(SYLLABLE_HZ[1], 0.45 * fps)
    b, a = scipy.signal.butter(2, [lo / (fps / 2), hi / (fps / 2)], "band")
    return scipy.signal.filtfilt(b, a, x - x.mean(), padlen=min(9, len(x) - 1))


def frame_band_energy(audio: np.ndarray, sample_rate: int, fps: float, num_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Per video frame: log energy of ENERGY_BAND and whether the frame is voiced (total energy high)."""
    n_fft = ENERGY_FFT * sample_rate // 16000
    hop = sample_rate / fps
    centres = np.arange(num_frames) * hop + hop / 2
    padded = np.pad(np.asarray(audio, np.float64), (n_fft // 2, max(n_fft, int(centres.max(initial=0)) + n_fft - len(audio))))
    bank = mel_filterbank(n_fft, sample_rate, ENERGY_MELS, 80.0, 7600.0)
    power = np.zeros((num_frames, n_fft // 2 + 1))
    for offset in (-hop / 3, 0.0, hop / 3):  # a frame (33-45 ms) is longer than one 32 ms window
        starts = np.clip((centres + offset).astype(np.int64), 0, None)
        windows = padded[starts[:, None] + np.arange(n_fft)[None, :]]
        power += np.abs(np.fft.rfft(windows * np.hanning(n_fft), axis=1)) ** 2 / 3
    mel = power @ bank.T
    energy = np.log(mel.sum(1) + 1e-8)
    p20, p95 = np.percentile(energy, [20, 95])
    return np.log(mel[:, ENERGY_BAND[0]:ENERGY_BAND[1]].sum(1) + 1e-8), energy > p20 + VOICED_FRACTION * (p95 - p20)


def energy_curve(landmarks: np.ndarray, audio: np.ndarray, sample_rate: int, fps: float, lags: np.ndarray,
                 lead: int) -> tuple[np.ndarray, np.ndarray]:
    """The unlearned second opinion: correlation of the jaw opening with the speech's formant-band energy,
    both band-passed to syllable rates, over voiced frames, at `lags` + `lead` frames; and (F,) the same
    correlation (all frames) at every circular shift, for its null."""
    iod = np.linalg.norm(landmarks[:, 36:42].mean(1) - landmarks[:, 42:48].mean(1), axis=1)
    jaw = np.linalg.norm(landmarks[:, 8] - landmarks[:, 33], axis=1) / np.maximum(iod, 1e-6)
    ok = np.isfinite(jaw)
    idx = np.arange(len(jaw))
    jaw = _syllable_band(np.interp(idx, idx[ok], jaw[ok]), fps)
    band, voiced = frame_band_energy(audio, sample_rate, fps, len(jaw))
    band = _syllable_band(band, fps)
    n = len(jaw)
    curve = []
    for lag in lags + lead:  # audio at t + lag pairs with the jaw at t
        if abs(lag) >= n - 10:
            curve.append(np.nan)
            continue
        v, a, g = (jaw[:n - lag], band[lag:], voiced[lag:]) if lag >= 0 else (jaw[-lag:], band[:n + lag], voiced[:n + lag])
        curve.append(np.corrcoef(v[g], a[g])[0, 1] if g.sum() >= 10 and v[g].std() > 1e-9 and a[g].std() > 1e-9 else np.nan)
    jz, bz = sync_model.standardise(jaw[:, None])[:, 0], sync_model.standardise(band[:, None])[:, 0]
    circular = np.array([float((jz * np.roll(bz, s)).mean()) for s in range(n)])
    return np.array(curve), circular


def energy_lead(landmarks: np.ndarray, audio: np.ndarray, sample_rate: int, fps: float, max_lag: int = 15) -> float | None:
    """Seconds the energy curve's peak sits after lag 0 on an in-sync clip (its natural lead), or None."""
    lags = np.arange(-max_lag, max_lag + 1)
    curve, _ = energy_curve(landmarks, audio, sample_rate, fps, lags, 0)
    return float(lags[int(np.nanargmax(curve))] / fps) if np.isfinite(curve).any() else None


def _chance_peak(null: np.ndarray, lags: int) -> float:
    """What chance picks as a peak: the mean maximum of each run of `lags` consecutive null shifts."""
    runs = [null[s:s + lags].max() for s in range(len(null) - lags + 1)]
    return float(np.mean(runs)) if runs else float(null.max())


def _confidence(curve: np.ndarray, null: np.ndarray) -> float:
    """One curve's peak above chance, in its null's standard deviations (0 where it cannot be read)."""
    if not (np.isfinite(curve).all() and np.isfinite(null).all()) or null.std() <= 1e-9:
        return 0.0
    return float((curve.max() - _chance_peak(null, len(curve))) / null.std())


def measure_sync(landmarks: np.ndarray, audio: np.ndarray, sample_rate: int, fps: float,
                 config: SyncConfig = SyncConfig(), frames: np.ndarray | None = None, crops: np.ndarray | None = None,
                 model: sync_model.SyncModel | None = None, net=None) -> SyncResult | None:
    """Sync of `landmarks` (F, 68, 2; NaN rows where no face) with `audio`; None when not measurable (under
    min_seconds of frames, under min_face_fraction with a face, silent audio, under min_fps, or too few
    frames for a null beyond the lag search).

    `frames` (F, H, W, 3) RGB in the landmarks' pixel scale, or ready `crops` (F, h, w) grey mouth crops
    (metrics.sync_features), add the mouth-motion track and the network's opinion; `model` and `net` default
    to the shipped regressor and network.
    """
    num_frames = len(landmarks)
    face = np.isfinite(landmarks).all(axis=(1, 2))
    if (audio is None or not np.any(audio) or fps < config.min_fps or num_frames < config.min_seconds * fps
            or face.mean() < config.min_face_fraction):
        return None
    max_lag = min(config.max_lag, math.ceil(config.max_lag_s * fps))
    first_null, last_null = max_lag + config.null_margin, num_frames - max_lag - config.null_margin  # circular shifts
    if last_null - first_null + 1 < config.min_null_shifts:
        return None
    model = model or sync_model.shipped()
    if crops is None and frames is not None:
        from .sync_features import mouth_crops

        crops = mouth_crops(frames, landmarks)
    seen = sync_model.visual_targets(landmarks, crops, fps, model.config.highpass_hz)
    usable = np.isfinite(seen).all(axis=0)
    if not usable.any():
        return None
    seen = seen[:, usable]
    logmel = sync_model.log_mel(audio, sample_rate, model.config)
    predicted = model.predict(logmel, fps, -max_lag, num_frames + 2 * max_lag)[:, usable]  # frames -max_lag .. F+max_lag
    predicted = sync_model.highpass(predicted, fps, model.config.highpass_hz)
    lags = np.arange(-max_lag, max_lag + 1)
    # lag L pairs the mouth at frame t with the audio at t + L: audio that lags by L frames peaks there
    model_curve = np.array([_column_corr(seen, predicted[max_lag + lag:max_lag + lag + num_frames]) for lag in lags])
    at_zero = predicted[max_lag:max_lag + num_frames]
    # each opinion: (weight, lag curve, (F,) the same at every circular shift)
    opinions = [(config.regressor_weight, model_curve,
                 np.array([_column_corr(seen, np.roll(at_zero, s, axis=0)) for s in range(num_frames)]))]
    if config.energy_weight > 0:
        opinions.append((config.energy_weight,
                         *energy_curve(landmarks, audio, sample_rate, fps, lags, round(model.natural_lead_s * fps))))
    if config.net_weight > 0 and crops is not None:
        from . import sync_net

        n_curve, n_circular = sync_net.lag_curves(net or sync_net.shipped(), crops, audio, sample_rate, fps, max_lag, face)
        if _confidence(n_curve, n_circular[first_null:last_null + 1]) >= config.net_min_confidence:
            opinions.append((config.net_weight, n_curve, n_circular))
    if not np.isfinite(opinions[0][1]).all() or not np.isfinite(opinions[0][2]).all():
        return None
    # every opinion in its own null's standard units, weighted and summed; one that cannot be read is left out
    curve, circular = np.zeros(len(lags)), np.zeros(num_frames)
    for weight, o_curve, o_circular in opinions:
        o_null = o_circular[first_null:last_null + 1]
        if weight > 0 and np.isfinite(o_curve).all() and np.isfinite(o_null).all() and o_null.std() > 1e-9:
            curve = curve + weight * (o_curve - o_null.mean()) / o_null.std()
            circular = circular + weight * (o_circular - o_null.mean()) / o_null.std()
    if not circular.any():
        return None
    null = circular[first_null:last_null + 1]
    peak = int(np.argmax(curve))
    peak_correlation = float(model_curve[peak])
    null_mean, null_std = float(null.mean()), float(null.std()) + 1e-9
    chance = _chance_peak(null, len(lags))
    return SyncResult(offset_frames=float(lags[peak]), confidence=float((curve[peak] - chance) / null_std),
                      lags=lags, curve=curve, raw_lag=int(lags[peak]), peak_correlation=peak_correlation,
                      null_mean=null_mean, null_std=null_std, chance_peak=float(chance))
