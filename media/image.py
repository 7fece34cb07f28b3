"""Image decode (JPEG, PNG, WebP, ...) to RGB uint8 with Pillow, EXIF orientation applied, transparency
flattened onto mid-grey."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .audio import MediaError

MAX_PIXELS = 40_000_000  # refuse decompression bombs
# Transparent pixels become mid-grey: the model's neutral input (about 0 once scaled to [-1, 1]), and
# half-transparent hair edges blend halfway between dark and light, not into a black (alpha dropped) or white halo
BACKGROUND = (128, 128, 128)


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
            return np.asarray(on_background(im).convert("RGB"), dtype=np.uint8).copy()
    except MediaError:
        raise
    except Image.DecompressionBombError as e:  # Pillow's own limit, hit in open() before ours: not an OSError
        raise MediaError(f"{path}: image too large ({e})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise MediaError(f"{path}: corrupt or unsupported image ({e})") from None


def on_background(im: Image.Image) -> Image.Image:
    """`im` composited onto BACKGROUND if it has alpha or a transparent colour (RGBA, LA, P or RGB with tRNS)."""
    if not im.has_transparency_data:
        return im
    background = Image.new("RGBA", im.size, (*BACKGROUND, 255))
    return Image.alpha_composite(background, im.convert("RGBA")).convert("RGB")
