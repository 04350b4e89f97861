"""load_image: every common mode to uint8 RGB, deterministic geometry, typed errors, bombs refused
undecoded."""

from __future__ import annotations

import io
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from services.errors import ImageDecodeError
from services.images import DEFAULT_MAX_PIXELS, load_image, probe_image


def encode(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def gradient(w: int = 60, h: int = 40) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // w, y * 255 // h, (x + y) % 256], axis=-1).astype(np.uint8)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height (1-bit) followed by a tiny IDAT: decoding it would fail."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0\0"))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
    "make",
    [
        lambda a: encode(Image.fromarray(a)),
        lambda a: encode(Image.fromarray(a), "JPEG", quality=90),
        lambda a: encode(Image.fromarray(a).convert("L")),
        lambda a: encode(Image.fromarray(a).convert("LA")),
        lambda a: encode(Image.fromarray(a).convert("RGBA")),
        lambda a: encode(Image.fromarray(a).convert("P", palette=Image.Palette.ADAPTIVE)),
        lambda a: encode(Image.fromarray(a).convert("CMYK"), "JPEG"),
        lambda a: encode(Image.fromarray(a).convert("1")),
        lambda a: encode(Image.fromarray(a), "GIF"),
        lambda a: encode(Image.fromarray(a), "TIFF"),
        lambda a: encode(Image.fromarray(a), "BMP"),
        lambda a: encode(Image.fromarray(a), "WEBP"),
    ],
    ids=["png", "jpeg", "L", "LA", "RGBA", "P", "CMYK-jpeg", "1bit", "gif", "tiff", "bmp", "webp"],
)
def test_modes_decode_to_rgb(make):
    out = load_image(make(gradient()), 32)
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    assert out.std() > 5, "content survived"


def test_geometry_is_shorter_side_resize_and_centre_crop():
    a = np.zeros((40, 120, 3), dtype=np.uint8)
    a[:, :40] = (255, 0, 0)  # left third: cropped away
    a[:, 40:80] = (0, 255, 0)
    a[:, 80:] = (0, 0, 255)
    out = load_image(encode(Image.fromarray(a)), 20)
    assert out.shape == (20, 20, 3)
    assert (out[2:-2, 2:-2] == (0, 255, 0)).all()
    square = gradient(64, 64)
    expected = np.asarray(Image.fromarray(square).resize((32, 32), Image.Resampling.BILINEAR))
    assert np.array_equal(load_image(encode(Image.fromarray(square)), 32), expected)


def test_transparency_is_composited_on_white():
    rgba = np.zeros((16, 16, 4), dtype=np.uint8)
    rgba[..., :3] = (10, 200, 30)  # hidden colour under alpha = 0
    assert (load_image(encode(Image.fromarray(rgba, "RGBA")), 16) == 255).all()
    rgba[..., 3] = 255
    assert (load_image(encode(Image.fromarray(rgba, "RGBA")), 16) == (10, 200, 30)).all()


def test_16_bit_grayscale_is_scaled_not_clipped():
    a = np.full((8, 8), 65535, dtype=np.uint16)
    a[:, :4] = 257 * 100
    img = Image.fromarray(a)
    assert img.mode.startswith("I")
    out = load_image(encode(img), 8)
    assert (out[:, :3] == 100).all() and (out[:, 5:] == 255).all()


def test_exif_orientation_is_applied():
    a = gradient(40, 20)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    rotated = load_image(encode(Image.fromarray(a), "PNG", exif=exif), 20)
    expected = load_image(encode(Image.fromarray(a).transpose(Image.Transpose.ROTATE_270)), 20)
    assert np.array_equal(rotated, expected)


def test_sources_bytes_path_and_file_agree(tmp_path):
    data = encode(Image.fromarray(gradient()), "JPEG")
    path = tmp_path / "a.jpg"
    path.write_bytes(data)
    ref = load_image(data, 24)
    assert np.array_equal(load_image(path, 24), ref)
    assert np.array_equal(load_image(str(path), 24), ref)
    assert np.array_equal(load_image(io.BytesIO(data), 24), ref)
    assert np.array_equal(load_image(data, 24), ref), "deterministic"


def test_large_jpeg_draft_keeps_the_result_close():
    big = np.asarray(Image.fromarray(gradient(64, 48)).resize((1024, 768), Image.Resampling.BICUBIC))
    out = load_image(encode(Image.fromarray(big), "JPEG", quality=95), 64)
    ref = np.asarray(Image.fromarray(big).resize((85, 64), Image.Resampling.BILINEAR))[:, 10:74]
    assert np.abs(out.astype(int) - ref.astype(int)).mean() < 3


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8)), "not a recognised image"),
        (encode(Image.fromarray(gradient(200, 200)), "JPEG")[:600], "truncated"),
        (encode(Image.fromarray(gradient(200, 200)), "JPEG")[:-400], "truncated"),
        (encode(Image.fromarray(gradient(200, 200)))[:300], "truncated"),
    ],
    ids=["empty", "random", "jpeg-header-cut", "truncated-jpeg", "truncated-png"],
)
def test_bad_bytes_raise_image_decode_error(data, message):
    with pytest.raises(ImageDecodeError, match=message):
        load_image(data, 32)


@pytest.mark.parametrize("side", [20_000, 7_000], ids=["above-pil-limit", "above-our-limit"])
def test_pixel_bombs_are_refused_before_decoding(side):
    data = png_header_only(side, side)
    assert len(data) < 200
    start = time.perf_counter()
    with pytest.raises(ImageDecodeError, match="too many pixels"):
        load_image(data, 32)
    assert time.perf_counter() - start < 0.5
    assert side * side > DEFAULT_MAX_PIXELS


def test_max_pixels_is_a_parameter_and_probe_reads_only_the_header():
    data = encode(Image.fromarray(gradient(100, 50)))
    with pytest.raises(ImageDecodeError, match="5,000 > limit 4,999"):
        load_image(data, 16, max_pixels=4_999)
    assert probe_image(data) == (100, 50, "PNG")
    assert probe_image(png_header_only(3000, 2000)) == (3000, 2000, "PNG")
    with pytest.raises(ImageDecodeError, match="too many pixels"):
        probe_image(png_header_only(20_000, 20_000))
