"""Small real image data for tests, benchmarks and demos: seeded textures written as real PNG/JPEG files, and
a small real index built from them.

Public on purpose (like ``retrieval_service.testing``): benchmarks and users' own suites want the same small,
deterministic data our tests use, without importing the test tree.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image

TEXTURE_KINDS = ("stripes", "checker", "dots", "noise", "rings", "blobs")


def stripes(size: int, period: float, angle_deg: float, phase: float = 0.0) -> np.ndarray:
    """Sinusoidal grating, values in [0, 1], ridges perpendicular to ``angle_deg`` direction."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    theta = math.radians(angle_deg)
    u = x * math.cos(theta) + y * math.sin(theta)
    return 0.5 + 0.5 * np.sin(2 * math.pi * u / period + phase)


def texture(kind: str, size: int, rng: np.random.Generator, scale: float = 8.0) -> np.ndarray:
    """One grayscale texture in [0, 1] of the given kind; ``scale`` is its characteristic length in pixels."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    if kind == "stripes":
        img = stripes(size, scale, rng.uniform(0, 180), rng.uniform(0, 2 * math.pi))
    elif kind == "checker":
        ox, oy = rng.uniform(0, scale, 2)
        img = (((x + ox) // scale + (y + oy) // scale) % 2).astype(np.float64)
    elif kind == "dots":
        img = np.zeros((size, size))
        for _ in range(int((size / scale) ** 2)):
            cx, cy = rng.uniform(0, size, 2)
            img[(x - cx) ** 2 + (y - cy) ** 2 < (scale / 3) ** 2] = 1.0
    elif kind == "noise":
        coarse = rng.random((max(2, int(size / scale)),) * 2)
        img = (
            np.asarray(Image.fromarray((coarse * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC))
            / 255.0
        )
    elif kind == "rings":
        cx, cy = rng.uniform(0, size, 2)
        img = 0.5 + 0.5 * np.sin(2 * math.pi * np.hypot(x - cx, y - cy) / scale)
    elif kind == "blobs":
        img = np.zeros((size, size))
        for _ in range(6):
            cx, cy = rng.uniform(0, size, 2)
            img += np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * (scale * 2) ** 2))
        img /= img.max()
    else:
        raise ValueError(f"unknown texture kind {kind!r}")
    return np.clip(img, 0.0, 1.0)


def to_rgb(gray: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Tint a grayscale texture with two random colours; uint8 (H, W, 3)."""
    c0, c1 = rng.uniform(0, 255, (2, 3))
    return (c0 + (c1 - c0) * gray[..., None]).clip(0, 255).astype(np.uint8)


def write_image_folder(
    root: Path,
    classes: dict[str, tuple[str, float]] | None = None,
    per_class: int = 8,
    size: int = 48,
    seed: int = 0,
    fmt: str = "png",
) -> dict[str, list[Path]]:
    """Write an ImageFolder tree ``root/<class>/<i>.<fmt>``.

    ``classes`` maps class name -> (texture kind, scale). Defaults to one class per texture kind at scale 6.
    Returns the written paths per class.
    """
    rng = np.random.default_rng(seed)
    classes = classes or {kind: (kind, 6.0) for kind in TEXTURE_KINDS}
    written: dict[str, list[Path]] = {}
    for name, (kind, scale) in classes.items():
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        written[name] = []
        for i in range(per_class):
            rgb = to_rgb(texture(kind, size, rng, scale * rng.uniform(0.8, 1.25)), rng)
            path = folder / f"{name}_{i:04d}.{fmt}"
            Image.fromarray(rgb).save(path, quality=92) if fmt in ("jpg", "jpeg") else Image.fromarray(
                rgb
            ).save(path)
            written[name].append(path)
    return written


def build_test_index(root: Path, per_class: int = 8, size: int = 32, bins: int = 8, seed: int = 0) -> Path:
    """Index of generated images (6 texture classes, ``root/images``) in ``root/index``; reused if built.

    Test modules pass a session-wide ``root`` so one build serves them all: extraction is the slow part of
    server tests on a shared CPU.
    """
    from retrieval_service.build.builder import build_index  # the heavy import only when building

    out = root / "index"
    if (out / "index.json").is_file():
        return out
    images = root / "images"
    write_image_folder(images, per_class=per_class, size=max(size, 32), seed=seed)
    build_index(images, out, size=size, bins=bins, batch_size=64, workers=0, progress=False)
    return out
