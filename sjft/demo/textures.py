"""Texture generators of the demo's source classes: (x, y, rng, scale, angle) -> (S, S) gray in [0, 1].

Pure numpy (+ PIL resizing); every random choice comes from the ``rng`` passed in, so a class's images depend
only on its generator's seed (see ``data.generate``). ``x, y`` are pixel coordinates (possibly warped by
a target class), ``scale`` the characteristic length in px, ``angle`` in degrees.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from PIL import Image

Gray = np.ndarray  # (S, S) float64 in [0, 1]


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
