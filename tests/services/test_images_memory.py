"""Decoding a huge image stays within ``decode_cost``'s estimate and keeps its geometry; small ones unchanged.

Peak memory is measured in a fresh interpreter (``ru_maxrss`` before and after one decode), because PIL's
pixel buffers are allocated in C, out of tracemalloc's sight. No timing.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from services.images import REDUCING_GAP, decode_cost, load_image

SIDE = 6000  # 36 Mpx: under the 40 Mpx default limit

_PEAK = """
import io, json, resource, sys
from PIL import Image
from services.images import decode_cost, load_image
data = open(sys.argv[1], "rb").read()
run = decode_cost if sys.argv[2:] == ["cost"] else load_image
warm = io.BytesIO(); Image.new("RGB", (300, 300)).save(warm, "PNG"); load_image(warm.getvalue(), 224)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
run(data, 224)
print(json.dumps({"peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before}))
"""


def pattern(width: int, height: int) -> np.ndarray:
    y, x = np.mgrid[0:89, 0:97]  # one tile, repeated: cheap to make at 36 Mpx
    tile = np.stack([(x * 7) % 256, (y * 5) % 256, ((x // 9 + y // 11) * 40) % 256], -1).astype(np.uint8)
    return np.tile(tile, (-(-height // 89), -(-width // 97), 1))[:height, :width]


def exact(img: Image.Image, size: int) -> np.ndarray:
    """The reference geometry: one antialiased bilinear resize of the centre square, no early reduction."""
    w, h = img.size
    side = min(w, h)
    box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
    return np.asarray(img.convert("RGB").resize((size, size), Image.Resampling.BILINEAR, box=box))


@pytest.mark.parametrize("mode", ["RGBA", "P"])
def test_huge_png_decode_peak_stays_within_its_estimate(tmp_path, mode):
    base = Image.fromarray(pattern(SIDE, SIDE))
    img = base.convert("P", palette=Image.Palette.ADAPTIVE, colors=8) if mode == "P" else base.convert(mode)
    if mode == "RGBA":
        img.putalpha(200)
    path = tmp_path / "huge.png"
    img.save(path, compress_level=1)
    del base, img
    data = path.read_bytes()
    out = subprocess.run([sys.executable, "-c", _PEAK, str(path)], capture_output=True, text=True, check=True)
    peak = json.loads(out.stdout)["peak"]
    cost = decode_cost(data, 224)
    assert peak <= cost, f"{mode}: decode peaked at {peak / 2**20:.0f} MB, estimate {cost / 2**20:.0f} MB"
    # Conversions run after the early reduction: at most two full-size 4-byte buffers (RGBA and premultiplied
    # RGBa), where compositing on white at full size took five.
    assert peak <= 2.2 * SIDE * SIDE * 4


def test_decode_cost_reads_the_header_only(tmp_path):
    path = tmp_path / "huge.png"
    Image.fromarray(pattern(SIDE, SIDE)).save(path, compress_level=1)
    cmd = [sys.executable, "-c", _PEAK, str(path), "cost"]
    peak = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)["peak"]
    # PNG's getexif() would decode all 144 MB: the estimate that gates decoding must not itself decode.
    assert peak < 16 * 2**20


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L"])
def test_early_reduction_keeps_the_geometry(mode):
    img = Image.fromarray(pattern(2900, 2100)).convert(mode)  # 2100 >= REDUCING_GAP * 224 * 3: reduced by 3
    assert 2100 // (REDUCING_GAP * 224) == 3
    buf = io.BytesIO()
    img.save(buf, "PNG")
    got = load_image(buf.getvalue(), 224).astype(int)
    diff = np.abs(got - exact(img, 224))
    assert diff.mean() < 1.0 and diff.max() <= 24  # box pre-filter vs bilinear: an edge softens slightly


def test_images_under_the_reducing_gap_are_unchanged():
    img = Image.fromarray(pattern(640, 480))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    assert np.array_equal(load_image(buf.getvalue(), 224), exact(img, 224))


def test_decode_cost_counts_jpeg_draft_scale():
    buf = io.BytesIO()
    Image.fromarray(pattern(4000, 3000)).save(buf, "JPEG", quality=80)
    # libjpeg decodes at 1/8 scale (500 x 375 >= 224): the estimate must not charge the full 12 Mpx.
    assert decode_cost(buf.getvalue(), 224) < 4000 * 3000 * 4 / 2
