"""Synthetic demo data: a SOURCE corpus of texture classes and a small TARGET set built from known ones.

Pure numpy + PIL and deterministic by seed: the same seed gives byte-identical PNG files, whatever order the
classes are generated in (each class draws from its own child of one ``SeedSequence``).

Each target class is made from a KNOWN subset of source generators (e.g. "zebra" = fine stripes at 0 or
90 degrees, bent by a smooth warp, inside an animal-shaped mask, on a faint background), so the low-level
statistics the index compares match those source classes. ``demo_manifest.json`` records that mapping; the
demo measures how many retrieved source images come from the matching classes, against random selection.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from services.fileio import atomic_write

MANIFEST_NAME = "demo_manifest.json"
FORMAT_VERSION = 2  # 2: 64 source classes (44 distractors)

Gray = np.ndarray  # (S, S) float64 in [0, 1]


@dataclass(frozen=True)
class SourceClass:
    """A source class: texture ``kind`` at characteristic length ``scale`` (px) and ``angle`` (deg)."""

    name: str
    kind: str
    scale: float
    angle: float = 0.0


@dataclass(frozen=True)
class TargetClass:
    """A target class: each image comes from one of the ``matching`` source classes, deformed and masked."""

    name: str
    matching: tuple[str, ...]
    warp: float  # amplitude of the smooth coordinate warp, px
    mask: str  # "ellipse" or "blob": the object shape over the faint background


def _stripes(name: str, scale: float, angle: float) -> SourceClass:
    return SourceClass(name, "stripes", scale, angle)


# The 20 classes of the first demo (12 of them are what the 6 target classes are built from) ...
BASE_CLASSES: tuple[SourceClass, ...] = (
    *(_stripes(f"stripes_fine_{a:03d}", 4.5, a) for a in (0, 45, 90, 135)),
    *(_stripes(f"stripes_coarse_{a:03d}", 14.0, a) for a in (0, 45, 90, 135)),
    SourceClass("checker_fine", "checker", 3.0),
    SourceClass("checker_coarse", "checker", 10.0),
    SourceClass("dots_fine", "dots", 5.0),
    SourceClass("dots_coarse", "dots", 14.0),
    SourceClass("rings_fine", "rings", 5.0),
    SourceClass("rings_coarse", "rings", 16.0),
    SourceClass("noise_fine", "noise", 2.0),
    SourceClass("noise_coarse", "noise", 10.0),
    SourceClass("blobs", "blobs", 8.0),
    SourceClass("crosshatch_fine", "crosshatch", 5.0, 0.0),
    SourceClass("crosshatch_diagonal", "crosshatch", 9.0, 45.0),
    SourceClass("gradient", "gradient", 64.0),
)

# ... and distractors: textures no target class is made of, so that (as in the paper, where the relevant
# images are a small part of ImageNet) the 12 matching classes are 12 of 64 and a random pick is mostly
# irrelevant. Their kinds differ from the matching ones; kinds the index confused with a target class were
# dropped (spirals and radial spokes at the rings' scales, fine zigzags, small cells: measured on the top-8
# neighbours of the target images).
DISTRACTOR_CLASSES: tuple[SourceClass, ...] = (
    *(SourceClass(f"waves_{s:02.0f}_{a:03d}", "waves", s, a) for s in (6.0, 12.0, 20.0) for a in (0, 90)),
    *(SourceClass(f"zigzag_{s:02.0f}_{a:03d}", "zigzag", s, a) for s in (12.0,) for a in (0, 90)),
    *(SourceClass(f"bricks_{s:02.0f}", "bricks", s) for s in (5.0, 9.0, 16.0)),
    *(SourceClass(f"hexagons_{s:02.0f}", "hexagons", s) for s in (5.0, 9.0, 16.0)),
    *(SourceClass(f"diamonds_{s:02.0f}", "diamonds", s) for s in (4.0, 7.0, 12.0)),
    *(SourceClass(f"speckle_{100 * s:02.0f}", "speckle", s) for s in (0.02, 0.06, 0.15, 0.3)),
    *(SourceClass(f"scratches_{s:02.0f}", "scratches", s) for s in (8.0, 12.0, 20.0, 40.0)),
    *(SourceClass(f"cells_{s:02.0f}", "cells", s) for s in (10.0, 18.0)),
    *(SourceClass(f"streaks_{a:03d}", "streaks", 8.0, a) for a in (0, 22, 45, 67, 90, 112, 135)),
    *(SourceClass(f"plaid_{s:02.0f}", "plaid", s, 30.0) for s in (6.0, 14.0)),
    *(SourceClass(f"triangles_{s:02.0f}", "triangles", s) for s in (6.0, 14.0)),
    SourceClass("radial_06", "radial", 6.0),
    *(SourceClass(f"squares_{s:02.0f}", "squares", s) for s in (4.0, 9.0)),
    SourceClass("grid_10", "grid", 10.0),
    SourceClass("flat", "flat", 1.0),
    SourceClass("vignette", "vignette", 1.0),
)

SOURCE_CLASSES: tuple[SourceClass, ...] = BASE_CLASSES + DISTRACTOR_CLASSES

TARGET_CLASSES: tuple[TargetClass, ...] = (
    TargetClass("zebra", ("stripes_fine_000", "stripes_fine_090"), warp=1.0, mask="blob"),
    TargetClass("tiger", ("stripes_coarse_045", "stripes_coarse_135"), warp=3.0, mask="blob"),
    TargetClass("leopard", ("dots_fine", "dots_coarse"), warp=1.5, mask="ellipse"),
    TargetClass("chessboard", ("checker_fine", "checker_coarse"), warp=0.0, mask="ellipse"),
    TargetClass("ripples", ("rings_fine", "rings_coarse"), warp=1.0, mask="blob"),
    TargetClass("clouds", ("noise_coarse", "blobs"), warp=2.0, mask="ellipse"),
)

_SOURCE_BY_NAME = {c.name: c for c in SOURCE_CLASSES}


@dataclass
class DemoManifest:
    """What was generated, and which source classes each target class was built from (the ground truth)."""

    seed: int
    size: int
    source_dir: str
    target_dir: str
    source_classes: dict[str, dict] = field(default_factory=dict)  # name -> generator params + count
    target_classes: dict[str, dict] = field(default_factory=dict)  # name -> matching, train, val counts
    mapping: dict[str, list[str]] = field(default_factory=dict)  # target class -> matching source classes
    format_version: int = FORMAT_VERSION

    def random_fraction(self, target_class: str) -> float:
        """Expected share of matching-class images among uniform random source picks for ``target_class``."""
        total = sum(c["count"] for c in self.source_classes.values())
        matching = sum(self.source_classes[s]["count"] for s in self.mapping[target_class])
        return matching / total

    def save(self, path: Path) -> None:
        atomic_write(path, json.dumps(asdict(self), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: Path) -> DemoManifest:
        return cls(**json.loads(Path(path).read_text()))


# --- texture generators: (x, y, rng, scale, angle) -> (S, S) gray in [0, 1] ---


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    return x, y


def _rotated(x: np.ndarray, y: np.ndarray, angle_deg: float) -> np.ndarray:
    theta = math.radians(angle_deg)
    return x * math.cos(theta) + y * math.sin(theta)


def _gen_stripes(x, y, rng, scale, angle):
    u = _rotated(x, y, angle + rng.uniform(-6, 6))
    return 0.5 + 0.5 * np.sin(2 * math.pi * u / scale + rng.uniform(0, 2 * math.pi))


def _gen_crosshatch(x, y, rng, scale, angle):
    a = angle + rng.uniform(-5, 5)
    u, v = _rotated(x, y, a), _rotated(x, y, a + 90)
    phase = rng.uniform(0, 2 * math.pi)
    return 0.25 * (2 + np.sin(2 * math.pi * u / scale) + np.sin(2 * math.pi * v / scale + phase))


def _gen_checker(x, y, rng, scale, angle):
    ox, oy = rng.uniform(0, 2 * scale, 2)
    return (((x + ox) // scale + (y + oy) // scale) % 2).astype(np.float64)


def _gen_dots(x, y, rng, scale, angle):
    # Spots on a jittered lattice of pitch ``scale`` (radius ~ scale / 3): leopard-like, density set by scale.
    size = x.shape[0]
    n = int(math.ceil(size / scale)) + 1
    gy, gx = np.mgrid[0:n, 0:n].astype(np.float64)
    cx = (gx + rng.uniform(-0.3, 0.3, gx.shape)) * scale + rng.uniform(0, scale)
    cy = (gy + rng.uniform(-0.3, 0.3, gy.shape)) * scale + rng.uniform(0, scale)
    r2 = (scale / 3.0) ** 2 * rng.uniform(0.7, 1.3, gx.shape)
    d2 = (x[..., None] - cx.ravel()) ** 2 + (y[..., None] - cy.ravel()) ** 2  # (S, S, n*n)
    return (d2 < r2.ravel()).any(axis=-1).astype(np.float64)


def _gen_rings(x, y, rng, scale, angle):
    size = x.shape[0]
    cx, cy = rng.uniform(0.2 * size, 0.8 * size, 2)
    return 0.5 + 0.5 * np.sin(2 * math.pi * np.hypot(x - cx, y - cy) / scale + rng.uniform(0, 6.3))


def _smooth_noise(size: int, rng: np.random.Generator, scale: float) -> np.ndarray:
    cells = max(2, int(round(size / scale)))
    coarse = (rng.random((cells, cells)) * 255).astype(np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((size, size), Image.BICUBIC), dtype=np.float64) / 255.0


def _gen_noise(x, y, rng, scale, angle):
    img = _smooth_noise(x.shape[0], rng, scale)
    return (img - img.min()) / max(img.max() - img.min(), 1e-6)


def _gen_blobs(x, y, rng, scale, angle):
    size = x.shape[0]
    img = np.zeros_like(x)
    for _ in range(6):
        cx, cy = rng.uniform(0, size, 2)
        img += np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * scale**2))
    return img / img.max()


def _gen_gradient(x, y, rng, scale, angle):
    u = _rotated(x, y, rng.uniform(0, 360)) / scale
    return (u - u.min()) / max(u.max() - u.min(), 1e-6)


def _gen_waves(x, y, rng, scale, angle):
    # Stripes bent by a slow sine: wavy lines, no single orientation.
    a = angle + rng.uniform(-6, 6)
    u, v = _rotated(x, y, a), _rotated(x, y, a + 90)
    bend = rng.uniform(0.8, 1.6) * scale * np.sin(2 * math.pi * v / (4 * scale) + rng.uniform(0, 6.3))
    return 0.5 + 0.5 * np.sin(2 * math.pi * (u + bend) / scale + rng.uniform(0, 6.3))


def _gen_zigzag(x, y, rng, scale, angle):
    a = angle + rng.uniform(-6, 6)
    u, v = _rotated(x, y, a), _rotated(x, y, a + 90)
    tri = np.abs(((v / (1.5 * scale)) % 2.0) - 1.0) * 1.5 * scale  # triangle wave across the stripes
    return (((u + tri + rng.uniform(0, scale)) / scale) % 1.0 < 0.5).astype(np.float64)


def _gen_bricks(x, y, rng, scale, angle):
    ox, oy = rng.uniform(0, 4 * scale, 2)
    row = np.floor((y + oy) / scale)
    xx = x + ox + (row % 2) * scale  # every other row shifted by half a brick (bricks are 2 scale wide)
    mortar = (((y + oy) % scale) < 1.2) | (((xx % (2 * scale))) < 1.2)
    return np.where(mortar, 0.0, 1.0)


def _gen_hexagons(x, y, rng, scale, angle):
    # Honeycomb edges: distance to the nearest centre of a hexagonal lattice vs the second nearest.
    ox, oy = rng.uniform(0, 2 * scale, 2)
    cells = _lattice(x.shape[0], scale, rng, jitter=0.0, hexagonal=True, offset=(ox, oy))
    return _cell_edges(x, y, cells, width=1.0)


def _gen_diamonds(x, y, rng, scale, angle):
    u, v = _rotated(x, y, 45 + rng.uniform(-4, 4)), _rotated(x, y, 135 + rng.uniform(-4, 4))
    return (((u // scale) + (v // scale)) % 2).astype(np.float64)


def _gen_spiral(x, y, rng, scale, angle):
    size = x.shape[0]
    cx, cy = rng.uniform(0.3 * size, 0.7 * size, 2)
    r, theta = np.hypot(x - cx, y - cy), np.arctan2(y - cy, x - cx)
    arms = int(rng.integers(2, 5))
    return 0.5 + 0.5 * np.sin(2 * math.pi * r / scale + arms * theta)


def _gen_speckle(x, y, rng, scale, angle):
    # Isolated bright pixels on a dark field: density ``scale``.
    return (rng.random(x.shape) < scale).astype(np.float64)


def _gen_scratches(x, y, rng, scale, angle):
    # Random thin straight lines, length ``scale``.
    size = x.shape[0]
    img = np.zeros_like(x)
    for _ in range(int(3 * size * size / (scale * 60))):
        x0, y0 = rng.uniform(0, size, 2)
        theta = rng.uniform(0, math.pi)
        t = np.linspace(0, scale, int(scale) * 2)
        xs = np.clip((x0 + t * math.cos(theta)).astype(int), 0, size - 1)
        ys = np.clip((y0 + t * math.sin(theta)).astype(int), 0, size - 1)
        img[ys, xs] = 1.0
    return img


def _lattice(size, scale, rng, jitter, hexagonal=False, offset=(0.0, 0.0)):
    n = int(math.ceil(size / scale)) + 2
    gy, gx = np.mgrid[-1:n, -1:n].astype(np.float64)
    if hexagonal:
        gx = gx + 0.5 * (gy % 2)
        gy = gy * math.sqrt(3) / 2
    cx = (gx + rng.uniform(-jitter, jitter, gx.shape)) * scale + offset[0]
    cy = (gy + rng.uniform(-jitter, jitter, gy.shape)) * scale + offset[1]
    return np.stack([cx.ravel(), cy.ravel()], axis=1)  # (n*n, 2)


def _cell_edges(x, y, centres, width):
    d = np.hypot(x[..., None] - centres[:, 0], y[..., None] - centres[:, 1])  # (S, S, n)
    two = np.partition(d, 1, axis=-1)[..., :2]
    return (two[..., 1] - two[..., 0] < width).astype(np.float64)


def _gen_cells(x, y, rng, scale, angle):
    # Voronoi cell outlines of a jittered lattice (cracked mud, giraffe without colour).
    centres = _lattice(x.shape[0], scale, rng, jitter=0.45, offset=tuple(rng.uniform(0, scale, 2)))
    return _cell_edges(x, y, centres, width=1.0)


def _gen_streaks(x, y, rng, scale, angle):
    # Noise smeared along one direction (wood grain): drawn on a larger canvas, rotated, centre-cropped so no
    # corner is left empty.
    size = x.shape[0]
    big = int(size * 1.5)
    coarse = (rng.random((max(2, big // 2), max(2, big // 16))) * 255).astype(np.uint8)
    img = Image.fromarray(coarse).resize((big, big), Image.BICUBIC).rotate(angle + rng.uniform(-5, 5),
                                                                          resample=Image.BILINEAR)
    lo = (big - size) // 2
    arr = np.asarray(img, dtype=np.float64)[lo : lo + size, lo : lo + size] / 255.0
    return (arr - arr.min()) / max(arr.max() - arr.min(), 1e-6)


def _gen_plaid(x, y, rng, scale, angle):
    a = rng.uniform(0, 180)
    u, v = _rotated(x, y, a), _rotated(x, y, a + 60)
    return 0.25 * (2 + np.sin(2 * math.pi * u / scale) + np.sin(2 * math.pi * v / (1.7 * scale)))


def _gen_triangles(x, y, rng, scale, angle):
    u, v = _rotated(x, y, rng.uniform(0, 60)), _rotated(x, y, 60 + rng.uniform(0, 60))
    return (((u // scale) + (v // scale) + ((u + v) // scale)) % 2).astype(np.float64)


def _gen_radial(x, y, rng, scale, angle):
    size = x.shape[0]
    cx, cy = rng.uniform(0.3 * size, 0.7 * size, 2)
    spokes = int(round(2 * math.pi * size / (4 * scale)))
    return 0.5 + 0.5 * np.sin(spokes * np.arctan2(y - cy, x - cx))


def _gen_squares(x, y, rng, scale, angle):
    # Small filled squares on a regular grid (tiles), gaps of ``scale / 2``.
    ox, oy = rng.uniform(0, scale, 2)
    return ((((x + ox) % scale) < 0.6 * scale) & (((y + oy) % scale) < 0.6 * scale)).astype(np.float64)


def _gen_grid(x, y, rng, scale, angle):
    ox, oy = rng.uniform(0, scale, 2)
    return ((((x + ox) % scale) < 1.0) | (((y + oy) % scale) < 1.0)).astype(np.float64)


def _gen_flat(x, y, rng, scale, angle):
    return np.full_like(x, rng.uniform(0.2, 0.8)) + rng.normal(0, 0.01, x.shape)


def _gen_vignette(x, y, rng, scale, angle):
    size = x.shape[0]
    cx, cy = rng.uniform(0.3 * size, 0.7 * size, 2)
    return np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * (rng.uniform(0.3, 0.6) * size) ** 2))


GENERATORS: dict[str, Callable[..., Gray]] = {
    "stripes": _gen_stripes,
    "crosshatch": _gen_crosshatch,
    "checker": _gen_checker,
    "dots": _gen_dots,
    "rings": _gen_rings,
    "noise": _gen_noise,
    "blobs": _gen_blobs,
    "gradient": _gen_gradient,
    "waves": _gen_waves,
    "zigzag": _gen_zigzag,
    "bricks": _gen_bricks,
    "hexagons": _gen_hexagons,
    "diamonds": _gen_diamonds,
    "spiral": _gen_spiral,
    "speckle": _gen_speckle,
    "scratches": _gen_scratches,
    "cells": _gen_cells,
    "streaks": _gen_streaks,
    "plaid": _gen_plaid,
    "triangles": _gen_triangles,
    "radial": _gen_radial,
    "squares": _gen_squares,
    "grid": _gen_grid,
    "flat": _gen_flat,
    "vignette": _gen_vignette,
}


def source_texture(cls: SourceClass, size: int, rng: np.random.Generator, coords=None) -> Gray:
    """A grayscale texture of source class ``cls`` (scale jittered +-15%); ``coords`` lets targets warp it."""
    x, y = coords if coords is not None else _grid(size)
    scale = cls.scale * rng.uniform(0.87, 1.15)
    return np.clip(GENERATORS[cls.kind](x, y, rng, scale, cls.angle), 0.0, 1.0)


def _tint(gray: Gray, rng: np.random.Generator) -> np.ndarray:
    """Two random colours whose luminance differs by a controlled contrast; uint8 (S, S, 3)."""
    base = rng.uniform(40, 120)
    contrast = rng.uniform(90, 130)
    c0 = np.clip(base + rng.uniform(-30, 30, 3), 0, 255)
    c1 = np.clip(base + contrast + rng.uniform(-30, 30, 3), 0, 255)
    return np.clip(c0 + (c1 - c0) * gray[..., None], 0, 255).astype(np.uint8)


def _mask(kind: str, x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Soft object mask in [0, 1] covering most of the frame: the object the target image is 'of'."""
    size = x.shape[0]
    cx, cy = size / 2 + rng.uniform(-0.08, 0.08, 2) * size
    ax, ay = rng.uniform(0.50, 0.62, 2) * size
    theta = rng.uniform(0, math.pi)
    u = ((x - cx) * math.cos(theta) + (y - cy) * math.sin(theta)) / ax
    v = (-(x - cx) * math.sin(theta) + (y - cy) * math.cos(theta)) / ay
    r = np.hypot(u, v)
    if kind == "blob":  # a lumpy outline: radius modulated by a few low harmonics
        phi = np.arctan2(v, u)
        p3, p5 = rng.uniform(0, 2 * math.pi, 2)
        r = r / (1 + 0.15 * np.sin(3 * phi + p3) + 0.1 * np.sin(5 * phi + p5))
    return np.clip((1.0 - r) * size / 3.0 + 0.5, 0.0, 1.0)


def target_image(cls: TargetClass, size: int, rng: np.random.Generator) -> np.ndarray:
    """An RGB target image: a matching source texture, warped, in an object mask over a faint background."""
    x, y = _grid(size)
    if cls.warp > 0:  # smooth, low-frequency displacement so targets are not copies of source images
        wx = (_smooth_noise(size, rng, size / 3) - 0.5) * 2 * cls.warp
        wy = (_smooth_noise(size, rng, size / 3) - 0.5) * 2 * cls.warp
        x, y = x + wx, y + wy
    source = _SOURCE_BY_NAME[cls.matching[rng.integers(len(cls.matching))]]
    fg = _tint(source_texture(source, size, rng, coords=(x, y)), rng).astype(np.float64)
    bg_gray = _smooth_noise(size, rng, size / 2)
    bg = np.clip(fg.mean(axis=(0, 1)) * 0.8 + 40 * (bg_gray[..., None] - 0.5), 0, 255)
    m = _mask(cls.mask, *_grid(size), rng)[..., None]
    return np.clip(m * fg + (1 - m) * bg, 0, 255).astype(np.uint8)


# --- writing the trees ---


def _save_png(rgb: np.ndarray, path: Path) -> None:
    # PIL's PNG with fixed options is byte-identical for identical pixels (the determinism test relies on it).
    Image.fromarray(rgb).save(path, format="PNG", optimize=False, compress_level=6)


def generate(
    out: Path,
    seed: int = 0,
    size: int = 64,
    source_per_class: int = 48,
    target_train: int = 12,
    target_val: int = 24,
) -> DemoManifest:
    """Write ``out/source/<class>/*.png``, ``out/target/{train,val}/<class>/*.png``, ``demo_manifest.json``.

    Deterministic: one ``SeedSequence(seed)`` is split into one child per class (source classes first, then
    target classes), so a class's images depend only on the seed and its position in the tables above.
    """
    if min(size, source_per_class, target_train, target_val) < 1:
        raise ValueError("size and every count must be >= 1")
    out = Path(out)
    source_dir, target_dir = out / "source", out / "target"
    children = np.random.SeedSequence(seed).spawn(len(SOURCE_CLASSES) + len(TARGET_CLASSES))
    manifest = DemoManifest(seed=seed, size=size, source_dir="source", target_dir="target")

    for cls, child in zip(SOURCE_CLASSES, children[: len(SOURCE_CLASSES)], strict=True):
        rng = np.random.default_rng(child)
        folder = source_dir / cls.name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(source_per_class):
            _save_png(_tint(source_texture(cls, size, rng), rng), folder / f"{cls.name}_{i:04d}.png")
        manifest.source_classes[cls.name] = {
            "kind": cls.kind, "scale": cls.scale, "angle": cls.angle, "count": source_per_class,
        }

    for cls, child in zip(TARGET_CLASSES, children[len(SOURCE_CLASSES):], strict=True):
        rng = np.random.default_rng(child)
        for split, count in (("train", target_train), ("val", target_val)):
            folder = target_dir / split / cls.name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                _save_png(target_image(cls, size, rng), folder / f"{cls.name}_{split}_{i:04d}.png")
        manifest.target_classes[cls.name] = {
            "matching": list(cls.matching), "warp": cls.warp, "mask": cls.mask,
            "train": target_train, "val": target_val,
        }
        manifest.mapping[cls.name] = list(cls.matching)

    manifest.save(out / MANIFEST_NAME)
    return manifest


def main(argv: list[str] | None = None) -> int:
    """``python -m demo.data --out DIR``: only the data (the container entrypoint indexes it)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m demo.data", description=main.__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--source-per-class", type=int, default=48)
    parser.add_argument("--target-train", type=int, default=12)
    parser.add_argument("--target-val", type=int, default=24)
    args = parser.parse_args(argv)
    manifest = generate(args.out, seed=args.seed, size=args.size, source_per_class=args.source_per_class,
                        target_train=args.target_train, target_val=args.target_val)
    print(f"demo data: {len(manifest.source_classes)} source classes, {len(manifest.mapping)} target classes "
          f"-> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
