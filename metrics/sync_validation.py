"""Validation of metrics.sync on real clips: shifted and mismatched audio, the figures that say how far to trust
it (benchmarks/sync_validation.py prints them over the whole corpus; tests use a fixed part)."""

from __future__ import annotations

import numpy as np

from . import sync_model, sync_net
from .sync import measure_sync
from .sync_corpus import SAMPLE_RATE, ClipInputs
from .sync_model import SyncModel
from .sync_net import SyncNet

SHIFTS = (-10, -6, -3, 0, 3, 6, 10)  # frames the audio is delayed by
MISMATCHES = 3  # other clips' audio tried against each clip
SPEAKER_FOLDS = 4  # the network is trained 4 times, each time with every 4th clip (speaker) held out


def delayed(audio: np.ndarray, frames: int, fps: float) -> np.ndarray:
    """The audio delayed by `frames` video frames (negative: advanced), same length, silence padded."""
    shift = int(round(frames * SAMPLE_RATE / fps))
    if shift >= 0:
        return np.concatenate([np.zeros(shift, np.float32), audio[:len(audio) - shift]])
    return np.concatenate([audio[-shift:], np.zeros(-shift, np.float32)])


def fitted(audio: np.ndarray, length: int) -> np.ndarray:
    """`audio` looped or cut to `length` samples."""
    return np.resize(audio, length).astype(np.float32)


def auc(positives: list[float], negatives: list[float]) -> float:
    """P(positive > negative), ties counting half; None scores (unmeasured) rank lowest."""
    pos = np.array([-np.inf if p is None else p for p in positives])
    neg = np.array([-np.inf if n is None else n for n in negatives])
    greater = (pos[:, None] > neg[None, :]).mean()
    ties = (pos[:, None] == neg[None, :]).mean()
    return float(greater + 0.5 * ties)


def measure(clip: ClipInputs, view: str, audio: np.ndarray, model: SyncModel | None, net: SyncNet | None):
    landmarks, crops = (clip.landmarks, clip.crops) if view == "full" else (clip.landmarks_128, clip.crops_128)
    return measure_sync(landmarks, audio, SAMPLE_RATE, clip.fps, crops=crops, model=model, net=net)


def held_out_models(clips: list[ClipInputs]) -> list[SyncModel]:
    """One regressor per clip, fitted on every other clip (each clip is one speaker: leave-one-speaker-out)."""
    return [sync_model.fit(sync_model.corpus_examples(clips[:i] + clips[i + 1:])) for i in range(len(clips))]


def held_out_nets(clips: list[ClipInputs], folds: int = SPEAKER_FOLDS, log=None) -> list[SyncNet]:
    """For each clip, the network trained on the clips of the other folds (clip i is in fold i % folds; one
    speaker per clip, so every clip is measured by a network that never saw its speaker). A network's
    training takes minutes, hence folds rather than one network per clip."""
    nets = []
    for fold in range(folds):
        training = [c for i, c in enumerate(clips) if i % folds != fold]
        nets.append(sync_net.train(sync_net.corpus_examples(training), meta={"fold": fold}))
        if log:
            log(f"sync net fold {fold + 1}/{folds}: final loss {nets[-1].meta['final_loss']:.3f} "
                f"(chance {nets[-1].meta['chance_loss']:.3f}), {nets[-1].meta['train_s']} s")
    return [nets[i % folds] for i in range(len(clips))]


def validate(clips: list[ClipInputs], view: str, models: list[SyncModel | None], nets: list[SyncNet | None] | None = None,
             shifts=SHIFTS, mismatches: int = MISMATCHES) -> dict:
    """The trust figures of one view; clip i is measured with models[i] and nets[i] (None: the shipped ones)."""
    nets = nets or [None] * len(clips)
    errors, relative, in_sync, own, other, per_clip = [], [], [], [], [], {}
    unmeasured = 0
    for i, clip in enumerate(clips):
        clip_errors = {}
        for k in shifts:
            result = measure(clip, view, delayed(clip.audio, k, clip.fps), models[i], nets[i])
            if result is None:
                errors.append(np.inf)
                clip_errors[k] = None
                unmeasured += k == 0
                continue
            errors.append(abs(result.offset_frames - k))
            clip_errors[k] = result.offset_frames
            if k == 0:
                in_sync.append(result.offset_frames)
                own.append(result.confidence)
        for j in range(1, mismatches + 1):
            donor = clips[(i + j) % len(clips)]
            result = measure(clip, view, fitted(donor.audio, len(clip.audio)), models[i], nets[i])
            other.append(None if result is None else result.confidence)
        per_clip[clip.name] = clip_errors
        if clip_errors.get(0) is not None:
            relative += [np.inf if clip_errors[k] is None else abs(clip_errors[k] - clip_errors[0] - k) for k in shifts if k]
    errors, relative = np.array(errors), np.array(relative)
    finite = errors[np.isfinite(errors)]
    return {"offset_mae_frames": float(finite.mean()) if finite.size else None,
            "within_1_frame": float((errors <= 1).mean()),
            "within_1_frame_relative": float((relative <= 1).mean()) if relative.size else None,
            "in_sync_offset_mean": float(np.mean(in_sync)) if in_sync else None,
            "in_sync_offset_std": float(np.std(in_sync)) if in_sync else None,
            "auc_in_sync_vs_mismatched": auc(own, other),
            "clips_unmeasured": unmeasured,
            "offsets_per_clip": per_clip}
