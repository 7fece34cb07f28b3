"""The one conversion between images and the generator's tensors, used by the render actor and training.

Images are uint8 RGB arrays, channels last, (..., S, S, 3), as media decodes and encodes them; the
generator takes and yields float tensors in [0, 1], channels first, (..., 3, S, S). Rendering and
training convert with these two functions, so a rendered video and a training sample round the same way.
"""

from __future__ import annotations

import numpy as np
import torch


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """(..., S, S, 3) uint8 -> (..., 3, S, S) float32 in [0, 1], contiguous (a copy: the array stays untouched)."""
    # writable: torch warns on read-only arrays, such as a portrait read back from a bytes column
    array = np.require(images, np.uint8, ["C_CONTIGUOUS", "WRITEABLE"])
    return torch.from_numpy(array).movedim(-1, -3).float().div_(255.0).contiguous()


def tensor_to_images(frames: torch.Tensor) -> np.ndarray:
    """(..., 3, S, S) float in [0, 1] (any dtype or device) -> (..., S, S, 3) uint8 on the CPU.

    Values outside [0, 1] clip; each channel rounds to the nearest level (halves to even), so a frame
    that round-trips through `images_to_tensor` comes back unchanged.
    """
    return (frames.float().clamp(0, 1) * 255).round().to(torch.uint8).movedim(-3, -1).cpu().numpy()
