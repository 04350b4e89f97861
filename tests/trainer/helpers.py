"""Small target trees for trainer tests."""

from __future__ import annotations

from pathlib import Path

from tests.imagegen import write_image_folder

CLASSES = {"stripes": ("stripes", 5.0), "dots": ("dots", 6.0), "checker": ("checker", 4.0)}


def make_target(root: Path, train: int = 4, val: int = 3, size: int = 32, seed: int = 1) -> Path:
    write_image_folder(root / "train", CLASSES, per_class=train, size=size, seed=seed)
    write_image_folder(root / "val", CLASSES, per_class=val, size=size, seed=seed + 100)
    return root
