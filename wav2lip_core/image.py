"""Avatar images: bytes → BGR uint8, size checked from the header before any pixel is decoded.

Pillow reads the header lazily, so a 20000×20000 "decompression bomb" is refused after a few
bytes. EXIF orientation is applied; alpha is dropped; grayscale, palette, CMYK and 16-bit images
become 8-bit BGR.
"""

from __future__ import annotations

import io
import struct
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import BadRequest, LimitExceeded, UnsupportedMedia

FORMATS = ("JPEG", "PNG", "WEBP", "BMP")  # the API contract's jpg/png/webp/bmp
MIN_SIDE = 32  # below this no face crop can carry a mouth
_WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")  # 16-bit (or 32-bit int) grayscale
# What Pillow's plugins raise on corrupt or truncated data, at open (header) as well as at load
# (e.g. "Truncated File Read", "could not create decoder object", struct.error from EXIF).
_PILLOW_ERRORS = (OSError, ValueError, SyntaxError, EOFError, IndexError, struct.error)


def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """Decode an avatar to contiguous BGR uint8 (H, W, 3); typed errors for anything else."""
    im = _opened(data, max_pixels)
    try:
        im = ImageOps.exif_transpose(im)
        rgb = _to_rgb8(im)
    except _PILLOW_ERRORS as e:  # truncated or corrupt pixel data
        raise UnsupportedMedia(f"image could not be decoded: {e}", code="bad_image") from e
    return np.ascontiguousarray(rgb[:, :, ::-1])


def image_size(data: bytes, max_pixels: int) -> tuple[int, int]:
    """(width, height) from the header, checked as `decode_image` checks it; no pixel decoded."""
    return _opened(data, max_pixels).size


def _opened(data: bytes, max_pixels: int) -> Image.Image:
    """The image with only its header read, its size checked against the limits."""
    if not data:
        raise BadRequest("image is empty", code="empty_image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data), formats=FORMATS)
    except UnidentifiedImageError as e:
        raise UnsupportedMedia("image is not a JPEG, PNG, WebP or BMP file", code="bad_image") from e
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise LimitExceeded(f"image is too large; the limit is {max_pixels} pixels", code="image_too_large") from e
    except _PILLOW_ERRORS as e:  # a known format whose header is corrupt or cut short
        raise UnsupportedMedia(f"image header could not be read: {e}", code="bad_image") from e
    w, h = im.size
    if w * h > max_pixels:
        raise LimitExceeded(f"image is {w}×{h} = {w * h} pixels; the limit is {max_pixels}", code="image_too_large")
    if min(w, h) < MIN_SIDE:
        raise LimitExceeded(f"image is {w}×{h}; both sides must be at least {MIN_SIDE} pixels", code="image_too_small")
    return im


def _to_rgb8(im: Image.Image) -> np.ndarray:
    if im.mode in _WIDE_MODES:
        wide = np.asarray(im, dtype=np.uint32)
        gray = (wide >> 8).astype(np.uint8) if wide.max(initial=0) > 255 else wide.astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if im.mode == "F":
        gray = np.clip(np.asarray(im), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    return np.asarray(im.convert("RGB"))  # L, LA, P, PA, RGBA, CMYK, YCbCr …: alpha dropped
