"""Image decoding for descriptors: any PIL-readable file -> uint8 (size, size, 3), deterministic.

Decisions (they change descriptors, so they are fixed here and documented):
- The pixel count is checked from the header BEFORE decoding (decompression bombs): more than ``max_pixels``
  -> ``ImageDecodeError``; nothing is decoded.
- EXIF orientation is APPLIED (the image as viewers show it). An unreadable EXIF block is ignored.
- Transparency (RGBA, LA, PA, P/L/RGB with a transparency key) is composited on WHITE, so what hides under
  alpha = 0 never changes the descriptor.
- 16/32-bit integer grayscale (I;16*, I) is scaled by 1/257 (0..65535 -> 0..255); float (F) is clipped to
  0..255; CMYK/YCbCr/LAB/HSV use PIL's conversion to RGB (ICC profiles ignored); 1-bit and L are replicated to
  RGB.
- Multi-frame files (GIF, TIFF) use their first frame.
- Geometry: resize the shorter side to ``size`` and centre-crop, done in one resampling step (PIL ``resize``
  with the centre square as ``box``; bilinear with antialiasing, i.e. the filter widens when downscaling).
  JPEGs larger than twice the target are first DCT-downscaled by libjpeg (``draft``, by powers of two, never
  below ``size``): faster, and just as deterministic for a given file.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from services.errors import ImageDecodeError

DEFAULT_MAX_PIXELS = 40_000_000

ImageSource = bytes | bytearray | memoryview | str | Path | BinaryIO


def _read_bytes(src: ImageSource) -> bytes:
    if isinstance(src, bytes | bytearray | memoryview):
        return bytes(src)
    if isinstance(src, str | Path):
        try:
            return Path(src).read_bytes()
        except OSError as exc:
            raise ImageDecodeError(f"cannot read image file {src}: {exc.strerror or exc}") from exc
    if hasattr(src, "read"):
        return src.read()
    raise TypeError(f"expected bytes, a path or a binary file, got {type(src).__name__}")


def _open(data: bytes, max_pixels: int) -> Image.Image:
    """Open (header only) and check the pixel count; raises ImageDecodeError."""
    if not data:
        raise ImageDecodeError("empty file: no image data")
    try:
        with warnings.catch_warnings():
            # Our own limit replaces PIL's bomb heuristics (which only warn below 2x their limit).
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(f"image has too many pixels (limit {max_pixels:,}): {exc}") from exc
    except UnidentifiedImageError as exc:
        raise ImageDecodeError("not a recognised image format") from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageDecodeError(f"corrupt or truncated image header: {exc}") from exc
    width, height = img.size
    if width < 1 or height < 1:
        raise ImageDecodeError(f"image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ImageDecodeError(
            f"image has too many pixels: {width}x{height} = {width * height:,} > limit {max_pixels:,}"
        )
    return img


def probe_image(src: ImageSource, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int, str]:
    """(width, height, format) from the header alone, with ``load_image``'s checks before decoding."""
    img = _open(_read_bytes(src), max_pixels)
    return img.size[0], img.size[1], img.format or "unknown"


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any mode -> RGB following the module's rules (alpha on white, 16-bit scaled)."""
    mode = img.mode
    if mode == "P" or (mode in ("L", "RGB") and "transparency" in img.info):
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        img = Image.fromarray(np.clip(np.rint(arr / 257.0), 0, 255).astype(np.uint8), "L")
        mode = "L"
    elif mode == "F":
        img = Image.fromarray(
            np.clip(np.rint(np.asarray(img, dtype=np.float64)), 0, 255).astype(np.uint8), "L"
        )
        mode = "L"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img if mode == "RGB" else img.convert("RGB")


def _decode(img: Image.Image, size: int) -> np.ndarray:
    width, height = img.size
    if img.format == "JPEG" and min(width, height) >= 2 * size:
        # Request the scaled size whose shorter side is still >= size; draft only reduces by 1/2, 1/4, 1/8.
        scale = size / min(width, height)
        img.draft(img.mode, (max(size, int(width * scale + 0.999)), max(size, int(height * scale + 0.999))))
    img.load()
    if getattr(img, "n_frames", 1) > 1:
        img.seek(0)
    try:
        if img.getexif().get(ExifTags.Base.Orientation, 1) in range(2, 9):
            img = ImageOps.exif_transpose(img)
    except (OSError, ValueError, SyntaxError, KeyError, TypeError):
        pass  # broken EXIF: orientation ignored, still deterministic for these bytes
    img = _to_rgb(img)
    width, height = img.size
    side = min(width, height)
    box = ((width - side) / 2.0, (height - side) / 2.0, (width + side) / 2.0, (height + side) / 2.0)
    out = img.resize((size, size), Image.Resampling.BILINEAR, box=box)
    return np.asarray(out, dtype=np.uint8).reshape(size, size, 3)


def load_image(src: ImageSource, size: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode ``src`` to uint8 (size, size, 3); ``ImageDecodeError`` naming the problem when it cannot."""
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    img = _open(_read_bytes(src), max_pixels)
    try:
        return _decode(img, size)
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(f"image has too many pixels: {exc}") from exc
    except (OSError, ValueError, SyntaxError, EOFError, IndexError) as exc:
        # PIL reports truncated data as OSError("image file is truncated ...") and bad data in many other
        # ways.
        raise ImageDecodeError(f"corrupt or truncated {img.format or 'image'} data: {exc}") from exc
