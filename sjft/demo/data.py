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
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from services.fileio import atomic_write
from sjft.demo.textures import GENERATORS, Gray, _grid, _smooth_noise

MANIFEST_NAME = "demo_manifest.json"
FORMAT_VERSION = 2  # 2: 64 source classes (52 distractors)


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


def build_parser():
    """``python -m sjft.demo.data --out DIR``: only the data (the container entrypoint indexes it)."""
    import argparse

    from services.clihelp import HelpFormatter

    parser = argparse.ArgumentParser(
        prog="python -m sjft.demo.data", formatter_class=HelpFormatter,
        description="Write the demo's synthetic source corpus and target set, nothing more.",
    )
    parser.add_argument("--out", type=Path, required=True, help="directory to write source/ and target/ into")
    parser.add_argument("--seed", type=int, default=0, help="seed of every generated image")
    parser.add_argument("--size", type=int, default=64, help="image side, px")
    parser.add_argument("--source-per-class", type=int, default=48, help="source images per texture class")
    parser.add_argument("--target-train", type=int, default=12, help="target training images per class")
    parser.add_argument("--target-val", type=int, default=24, help="target validation images per class")
    return parser


def main(argv: list[str] | None = None) -> int:
    """``python -m sjft.demo.data``: write the data, print one line."""
    args = build_parser().parse_args(argv)
    manifest = generate(args.out, seed=args.seed, size=args.size, source_per_class=args.source_per_class,
                        target_train=args.target_train, target_val=args.target_val)
    print(f"demo data: {len(manifest.source_classes)} source classes, {len(manifest.mapping)} target classes "
          f"-> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
