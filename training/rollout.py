"""A generator's video of one portrait speaking one clip, as uint8 frames: what the acceptance checks
measure and what a training run logs as its sample video."""

from __future__ import annotations

import numpy as np


def render_frames(generator, portrait: np.ndarray, audio: np.ndarray, fps: float,
                  controls: dict[str, np.ndarray] | None = None, seed: int = 0) -> np.ndarray:
    """(F, S, S, 3) uint8 frames of `portrait` ((S, S, 3) uint8) speaking `audio` (mono float32 at
    model.AUDIO_SAMPLE_RATE), F covering the audio; `controls` maps control names to (F,) tracks; `seed`
    is the request's (the flow head's noise; the regression head ignores it)."""
    import torch

    from model import RenderRequest
    from model.frames import images_to_tensor, tensor_to_images

    tensors = None if controls is None else {k: torch.from_numpy(np.asarray(v, np.float32)) for k, v in controls.items()}
    request = RenderRequest(portrait=images_to_tensor(portrait), audio=torch.from_numpy(np.asarray(audio, np.float32)),
                            fps=fps, controls=tensors, seed=seed)
    count = generator.num_frames(len(audio), fps)
    frames = []
    with torch.no_grad():
        for batch in generator.stream([request]):  # (B, 3, S, S) per frame step
            frames.append(tensor_to_images(batch[0]))
            if len(frames) >= count:
                break
    return np.stack(frames[:count])
