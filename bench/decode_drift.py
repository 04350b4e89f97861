"""How much the early reduction of large images moves descriptors: the new decode path against the exact one.

The exact path (what ``services/images.py`` did before the early reduction, and still does for images
under ``REDUCING_GAP`` x size): full-size mode conversion, then one antialiased bilinear resize of the centre
square.
For photo-like images of several sizes and modes, prints the max pixel difference and the weighted JS
divergence between the two descriptors (Gabor bank, edges fitted on the exact images), and, for scale, the
median JS between different images.

    .venv/bin/python bench/decode_drift.py
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.divergence import pairwise  # noqa: E402
from services.extract import DescriptorExtractor, fit_edges, make_spec  # noqa: E402
from services.images import _to_rgb, load_image, open_image  # noqa: E402

SIZE = 224
SHAPES = [(500, 375), (1024, 768), (1600, 1200), (2048, 2048), (3000, 2000)]


def photo(w: int, h: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([np.sin(x / (7 + seed) + y / 13), np.cos(y / (5 + seed)), np.sin((x + y) / 23)], -1)
    noise = rng.normal(0, 0.3, (h // 8 + 1, w // 8 + 1, 3)).repeat(8, 0).repeat(8, 1)[:h, :w]
    return np.clip((base + noise) * 60 + 128, 0, 255).astype(np.uint8)


def exact(data: bytes) -> np.ndarray:
    img = open_image(data, 40_000_000)
    img.load()
    img = _to_rgb(img)
    w, h = img.size
    side = min(w, h)
    box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
    return np.asarray(img.resize((SIZE, SIZE), Image.Resampling.BILINEAR, box=box))


def encode(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def main() -> None:
    cases = []
    for i, (w, h) in enumerate(SHAPES):
        rgb = Image.fromarray(photo(w, h, i))
        rgba = rgb.convert("RGBA")
        rgba.putalpha(Image.fromarray(photo(w, h, i + 7)[..., 0]))
        cases += [
            (f"RGB {w}x{h}", encode(rgb)),
            (f"RGBA {w}x{h}", encode(rgba)),
            (f"L {w}x{h}", encode(rgb.convert("L"))),
            (f"P {w}x{h}", encode(rgb.convert("P", palette=Image.Palette.ADAPTIVE))),
            (f"I;16 {w}x{h}", encode(Image.fromarray(np.asarray(rgb)[..., 0].astype(np.uint16) * 257))),
        ]
    ref = np.stack([exact(d) for _, d in cases])
    new = np.stack([load_image(d, SIZE) for _, d in cases])
    spec0 = make_spec("gabor", size=SIZE, bins=16)
    spec = spec0.with_edges(fit_edges(DescriptorExtractor(spec0, device="cpu"), iter([ref]), 16, seed=0))
    extractor = DescriptorExtractor(spec, device="cpu")
    h_ref, h_new, w = extractor.histograms(ref), extractor.histograms(new), spec.weights_array()
    worst = 0.0
    for i, (name, _) in enumerate(cases):
        js = float(pairwise("js", h_ref[i : i + 1], h_new[i : i + 1], w)[0, 0])
        worst = max(worst, js)
        px = np.abs(ref[i].astype(int) - new[i])
        print(f"{name:16s} max |dpx| {px.max():3d}  mean |dpx| {px.mean():.3f}  JS {js:.2e}")
    between = pairwise("js", h_ref, h_ref, w)
    median = float(np.median(between[between > 0]))
    print(f"max JS drift {worst:.2e}; median JS between different images {median:.3f}")


if __name__ == "__main__":
    main()
