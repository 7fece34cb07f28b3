"""Image decode (JPEG, PNG, WebP, ...) to RGB uint8 with Pillow, EXIF orientation applied."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .audio import MediaError

MAX_PIXELS = 40_000_000  # refuse decompression bombs


def load_image(path: str | Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB."""
    path = Path(path)
    if not path.is_file():
        raise MediaError(f"{path}: image file not found")
    try:
        with Image.open(path) as im:
            if im.width * im.height > MAX_PIXELS:
                raise MediaError(f"{path}: image too large ({im.width}x{im.height})")
            im = ImageOps.exif_transpose(im)
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                # 16/32-bit greyscale: Pillow's convert("RGB") clips at 255 (a white face), so scale to 8 bits
                depth = np.asarray(im, dtype=np.float64)
                im = Image.fromarray((depth * (255.0 / (65535.0 if im.mode != "I" else max(depth.max(), 1.0))))
                                     .clip(0, 255).round().astype(np.uint8))
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except MediaError:
        raise
    except Image.DecompressionBombError as e:  # Pillow's own limit, hit in open() before ours: not an OSError
        raise MediaError(f"{path}: image too large ({e})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise MediaError(f"{path}: corrupt or unsupported image ({e})") from None
