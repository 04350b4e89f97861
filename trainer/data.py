"""The target set (ImageFolder with train/ and val/) and decoded-image storage for training.

Images are decoded once (``services.images.load_image``: shorter side to ``input_size``, centre crop) and
kept in memory as uint8 ``(3, S, S)``; the only augmentation is a horizontal flip whose bits are drawn
together with the batch composition, so a round's batches are a pure function of (seed, round) whatever the
thread count.
"""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch

from services.errors import ImageDecodeError
from services.images import load_image
from trainer.config import ConfigError

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


class TargetError(ConfigError):
    """A target folder that cannot be trained on (missing split, empty class, classes differing)."""


class ImageStore:
    """Decoded images by path: uint8 (3, S, S) tensors, decoded once (in a thread pool: PIL releases the
    GIL)."""

    def __init__(self, size: int, threads: int = 2):
        self.size = size
        self.threads = max(1, threads)
        self._images: dict[str, torch.Tensor] = {}

    def _decode(self, path: str) -> torch.Tensor:
        return torch.from_numpy(load_image(path, self.size).copy()).permute(2, 0, 1).contiguous()  # (3, S, S)

    def preload(self, paths: list[str]) -> dict[str, str]:
        """Decode every path not yet stored; returns {path: reason} for the unreadable ones."""
        todo = [p for p in dict.fromkeys(paths) if p not in self._images]
        failed: dict[str, str] = {}

        def one(path: str) -> None:
            try:
                self._images[path] = self._decode(path)
            except ImageDecodeError as exc:
                failed[path] = str(exc)

        with ThreadPoolExecutor(self.threads) as pool:
            list(pool.map(one, todo))
        return failed

    def batch(self, paths: list[str], flips: torch.Tensor | None = None) -> torch.Tensor:
        """Normalised float batch (N, 3, S, S); ``flips`` (N,) bool mirrors those images horizontally."""
        missing = [p for p in paths if p not in self._images]
        if missing:
            failed = self.preload(missing)
            if failed:
                path, reason = next(iter(failed.items()))
                raise ImageDecodeError(f"{path}: {reason}")
        x = torch.stack([self._images[p] for p in paths]).float().div_(255.0)
        if flips is not None and bool(flips.any()):
            x[flips] = x[flips].flip(-1)
        return (x - MEAN) / STD


@dataclass
class TargetSet:
    classes: list[str]
    train: list[tuple[str, int]]
    val: list[tuple[str, int]]
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def train_labels(self) -> torch.Tensor:
        return torch.tensor([y for _, y in self.train], dtype=torch.long)

    @property
    def val_labels(self) -> torch.Tensor:
        return torch.tensor([y for _, y in self.val], dtype=torch.long)


def _scan(split_dir: Path) -> dict[str, list[str]]:
    return {
        d.name: sorted(str(f) for f in d.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTS)
        for d in sorted(split_dir.iterdir())
        if d.is_dir() and not d.name.startswith(".")
    }


def load_target(root: str | Path, store: ImageStore) -> TargetSet:
    """Scan and decode ``root/{train,val}/<class>/*``; unreadable images are listed on stderr and skipped.

    Raises TargetError (one line) for a missing split, a split without classes, an empty class, or classes
    that differ between the splits.
    """
    root = Path(root)
    splits = {}
    for split in ("train", "val"):
        split_dir = root / split
        if not split_dir.is_dir():
            raise TargetError(f"target {root} has no {split}/ folder (expected {split}/<class>/<image>)")
        splits[split] = _scan(split_dir)
        if not splits[split]:
            raise TargetError(f"target {split_dir} has no class folders")
    if set(splits["train"]) != set(splits["val"]):
        only_train = sorted(set(splits["train"]) - set(splits["val"]))
        only_val = sorted(set(splits["val"]) - set(splits["train"]))
        raise TargetError(
            f"classes differ between train/ and val/: only in train {only_train}, only in val {only_val}"
        )
    classes = sorted(splits["train"])
    skipped: list[tuple[str, str]] = []
    out: dict[str, list[tuple[str, int]]] = {}
    for split, by_class in splits.items():
        failed = store.preload([p for paths in by_class.values() for p in paths])
        skipped += sorted(failed.items())
        out[split] = []
        for label, name in enumerate(classes):
            good = [(p, label) for p in by_class[name] if p not in failed]
            if not good:
                raise TargetError(f"class {name!r} in {root / split} has no readable images")
            out[split] += good
    for path, reason in skipped:
        print(f"skipped unreadable image {path}: {reason}", file=sys.stderr)
    return TargetSet(classes=classes, train=out["train"], val=out["val"], skipped=skipped)
