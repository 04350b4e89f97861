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
- Memory: an image whose centre square is at least ``REDUCING_GAP`` x ``size`` is box-reduced by an integer
  factor (``Image.reduce``, alpha premultiplied) in its decoded mode BEFORE any mode conversion, EXIF
  transpose excepted, so conversions and compositing run on the small image. Smaller images take the exact
  path above unchanged (same bytes out). The full-resolution decode buffer itself cannot be avoided for
  PNG and friends; :func:`decode_cost` estimates it so callers can bound concurrent decodes.
"""

from __future__ import annotations

import io
import math
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from services.errors import ImageDecodeError, ImageTooLargeError

DEFAULT_MAX_PIXELS = 40_000_000
# Reduce early only while the reduced square keeps >= 3x the target side: PIL's own guidance for reducing_gap
# ("indistinguishable from fair resampling in most cases"); measured JS drift in RELIABILITY.md.
REDUCING_GAP = 3
_REDUCIBLE = frozenset({"L", "LA", "RGB", "RGBA", "I", "F"})  # modes Image.reduce averages correctly
_BYTES_PER_PIXEL = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}  # PIL: 4 otherwise

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


def open_image(data: bytes, max_pixels: int) -> Image.Image:
    """Open (header only) and check the pixel count: the one place that does it (decoding, probing, the API's
    413, thumbnails). ImageTooLargeError past ``max_pixels``, ImageDecodeError for anything unreadable."""
    if not data:
        raise ImageDecodeError("empty file: no image data")
    try:
        with warnings.catch_warnings():
            # Our own limit replaces PIL's bomb heuristics (which only warn below 2x their limit).
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        message = f"image has too many pixels (limit {max_pixels:,}): {exc}"
        raise ImageTooLargeError(message, limit=max_pixels) from exc
    except UnidentifiedImageError as exc:
        raise ImageDecodeError("not a recognised image format") from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageDecodeError(f"corrupt or truncated image header: {exc}") from exc
    width, height = img.size
    if width < 1 or height < 1:
        raise ImageDecodeError(f"image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"image has too many pixels: {width}x{height} = {width * height:,} > limit {max_pixels:,}",
            width,
            height,
            max_pixels,
        )
    return img


def probe_image(src: ImageSource, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int, str]:
    """(width, height, format) from the header alone, with ``load_image``'s checks before decoding."""
    img = open_image(_read_bytes(src), max_pixels)
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


def _draft_scale(img: Image.Image, size: int) -> int:
    """The power-of-two DCT scale libjpeg will decode a JPEG at (1 for any other format)."""
    if img.format != "JPEG":
        return 1
    scale = 1
    while scale < 8 and min(img.size) // (2 * scale) >= size:
        scale *= 2
    return scale


def decode_cost(src: ImageSource, size: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> int:
    """Upper estimate of the bytes ``load_image(src, size)`` holds at its peak, from the header alone.

    The decoded buffer (JPEG: at its draft scale), plus one full-size copy when the mode must be converted
    or premultiplied before reducing, times two when EXIF orientation transposes it.
    """
    data = _read_bytes(src)
    img = open_image(data, max_pixels)
    scale = _draft_scale(img, size)
    pixels = -(-img.size[0] // scale) * -(-img.size[1] // scale)
    per_pixel = _BYTES_PER_PIXEL.get(img.mode, 4)
    if img.mode in ("P", "PA", "La", "RGBa") or "transparency" in img.info:
        per_pixel += 8  # -> RGBA, then premultiplied (RGBa) by reduce, the original still referenced
    elif img.mode not in ("L", "RGB"):
        per_pixel += 4  # RGBA -> RGBa (premultiplied), I;16 -> I, CMYK -> RGB, 1 -> L
    turned = False
    # PNG's getexif() DECODES the whole image when no eXIf chunk precedes the pixels (it may follow them):
    # the estimate must stay header-only, so such a PNG counts as not turned.
    if img.format != "PNG" or "exif" in img.info:
        try:
            turned = img.getexif().get(ExifTags.Base.Orientation, 1) in range(2, 9)
        except (OSError, ValueError, SyntaxError, KeyError, TypeError):
            pass
    # + the output and the decoder's own buffers (zlib window, line buffers): a few MB, measured
    return len(data) + pixels * per_pixel * (2 if turned else 1) + 4 * size * size + (8 << 20)


def _reduce(img: Image.Image, size: int, box: tuple[float, ...]) -> tuple[Image.Image, tuple[float, ...]]:
    """Box-reduce a large image by an integer factor before any mode conversion; the box, re-expressed.

    Mirrors ``Image.resize(..., reducing_gap=REDUCING_GAP)`` (same factor, same safe box), but reduces in the
    decoded mode so the RGB conversion and alpha compositing that follow touch only the reduced pixels.
    """
    factor = int((box[2] - box[0]) / size / REDUCING_GAP)
    if factor < 2:
        return img, box
    mode = img.mode
    if mode.startswith("I;16"):
        img = img.convert("I")  # 16-bit: reduce in 32-bit integers, scaled to 8 bits afterwards
    elif mode == "1":
        img = img.convert("L")
    elif mode in ("P", "PA", "La", "RGBa") or (mode in ("L", "RGB") and "transparency" in img.info):
        img = img.convert("RGBA")  # a palette index or a transparency key cannot be averaged
    elif mode not in _REDUCIBLE:
        img = img.convert("RGB")  # CMYK, YCbCr, LAB, HSV: averaged only once in RGB
    width, height = img.size
    support = (box[2] - box[0]) / size * 0.5  # bilinear support - 0.5, in input px (PIL's safe box)
    safe = (
        max(0, int(box[0] - support)),
        max(0, int(box[1] - support)),
        min(width, math.ceil(box[2] + support)),
        min(height, math.ceil(box[3] + support)),
    )
    reduced = img.reduce(factor, box=safe)
    return reduced, tuple((v - safe[i % 2]) / factor for i, v in enumerate(box))


def _decode(img: Image.Image, size: int) -> np.ndarray:
    width, height = img.size
    scale = _draft_scale(img, size)
    if scale > 1:
        # Request the scaled size whose shorter side is still >= size; draft only reduces by 1/2, 1/4, 1/8.
        ratio = size / min(width, height)
        img.draft(img.mode, (max(size, int(width * ratio + 0.999)), max(size, int(height * ratio + 0.999))))
    img.load()
    if getattr(img, "n_frames", 1) > 1:
        img.seek(0)
    try:
        if img.getexif().get(ExifTags.Base.Orientation, 1) in range(2, 9):
            img = ImageOps.exif_transpose(img)
    except (OSError, ValueError, SyntaxError, KeyError, TypeError):
        pass  # broken EXIF: orientation ignored, still deterministic for these bytes
    width, height = img.size
    side = min(width, height)
    box = ((width - side) / 2.0, (height - side) / 2.0, (width + side) / 2.0, (height + side) / 2.0)
    img, box = _reduce(img, size, box)  # the full-resolution image is released here when it was reduced
    img = _to_rgb(img)
    out = img.resize((size, size), Image.Resampling.BILINEAR, box=box)
    return np.asarray(out, dtype=np.uint8).reshape(size, size, 3)


def load_image(src: ImageSource, size: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode ``src`` to uint8 (size, size, 3); ``ImageDecodeError`` naming the problem when it cannot."""
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    img = open_image(_read_bytes(src), max_pixels)
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
