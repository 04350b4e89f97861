"""The target set (ImageFolder with train/ and val/) and a bounded store of decoded images.

Images are decoded with their shorter side at ``resize_size(input_size)`` (aspect kept) and kept as uint8
``(3, H, W)`` in an LRU of ``capacity`` images, so memory stays bounded whatever the number of sources (the
source files themselves live in the content-addressed cache on disk and are decoded again when evicted).
Batches are built by ``augment.py`` views from per-image uniforms, so they do not depend on threads.
"""

from __future__ import annotations

import sys
import threading
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from services.backbones import Normalization
from services.errors import ImageDecodeError
from trainer.config import ConfigError
from trainer.training.augment import eval_view, resize_size, train_view

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
Image.MAX_IMAGE_PIXELS = 40_000_000  # as services.images: a decompression bomb is refused, not decoded


class TargetError(ConfigError):
    """A target folder that cannot be trained on (missing split, empty class, classes differing)."""


def decode(path: str, shorter: int) -> torch.Tensor:
    """uint8 (3, H, W) with min(H, W) = ``shorter``; ImageDecodeError naming the problem."""
    try:
        with Image.open(path) as img:
            if img.format == "JPEG":
                img.draft("RGB", (shorter, shorter))  # decode JPEGs at a reduced scale when that is enough
            img = ImageOps.exif_transpose(img).convert("RGB")
            scale = shorter / min(img.size)
            size = (max(shorter, round(img.size[0] * scale)), max(shorter, round(img.size[1] * scale)))
            img = img.resize(size, Image.Resampling.BILINEAR)
            array = np.asarray(img, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as exc:
        raise ImageDecodeError(f"cannot decode {path}: {exc}") from exc
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()  # (3, H, W)


class ImageStore:
    """Decoded images by path in a bounded LRU; decoding runs in a thread pool (PIL releases the GIL)."""

    def __init__(self, input_size: int, threads: int = 2, capacity: int = 10_000, crop_scale: float = 0.35):
        self.input_size = input_size
        self.shorter = resize_size(input_size)
        self.threads = max(1, threads)
        self.capacity = max(1, capacity)
        self.crop_scale = crop_scale
        self._images: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(self.threads)  # lives as long as the store (threads exit with it)

    def __len__(self) -> int:
        return len(self._images)

    def _put(self, path: str, image: torch.Tensor) -> None:
        with self._lock:
            self._images[path] = image
            self._images.move_to_end(path)
            while len(self._images) > self.capacity:
                self._images.popitem(last=False)

    def preload(self, paths: Sequence[str]) -> dict[str, str]:
        """Decode every path not stored; returns {path: reason} for the unreadable ones."""
        todo = [p for p in dict.fromkeys(paths) if p not in self._images]
        failed: dict[str, str] = {}

        def one(path: str) -> None:
            try:
                self._put(path, decode(path, self.shorter))
            except ImageDecodeError as exc:
                failed[path] = str(exc)

        list(self._pool.map(one, todo))
        return failed

    def images(self, paths: Sequence[str]) -> list[torch.Tensor]:
        """The decoded images of ``paths`` (decoding the missing ones); ImageDecodeError when one fails."""
        found: dict[str, torch.Tensor] = {}
        with self._lock:
            for p in paths:
                if p in self._images:
                    self._images.move_to_end(p)
                    found[p] = self._images[p]
        missing = [p for p in paths if p not in found]
        decoded = self._pool.map(lambda q: decode(q, self.shorter), missing)
        for p, image in zip(missing, decoded, strict=True):
            found[p] = image
            self._put(p, image)
        return [found[p] for p in paths]

    def train_batch(self, paths: Sequence[str], uniforms: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, S, S) random-resized crops + flips; ``uniforms`` (N, 5) fix each view. Views are
        made in the thread pool (torch's resize releases the GIL); ``normalise`` runs on the device."""
        images = self.images(paths)
        views = self._pool.map(
            lambda img, u: train_view(img, u, self.input_size, self.crop_scale), images, list(uniforms)
        )
        return torch.stack(list(views))

    def views(self, paths: Sequence[str], uniforms: Sequence[torch.Tensor | None]) -> torch.Tensor:
        """uint8 (N, 3, S, S): the training view fixed by ``uniforms[i]`` (5,); the centre crop for None."""
        images = self.images(paths)

        def one(img: torch.Tensor, u: torch.Tensor | None) -> torch.Tensor:
            if u is None:
                return eval_view(img, self.input_size)
            return train_view(img, u, self.input_size, self.crop_scale)

        return torch.stack(list(self._pool.map(one, images, uniforms)))

    def eval_batch(self, paths: Sequence[str]) -> torch.Tensor:
        """uint8 (N, 3, S, S) centre crops."""
        return torch.stack([eval_view(img, self.input_size) for img in self.images(paths)])


def normalise(x: torch.Tensor, norm: Normalization | None = None) -> torch.Tensor:
    """Float (N, 3, S, S) normalised with ``norm`` (the model's (mean, std); ImageNet's by default) from
    uint8, on x's device (4x less to copy to a GPU than float)."""
    mean = MEAN if norm is None else torch.tensor(norm.mean).view(1, 3, 1, 1)
    std = STD if norm is None else torch.tensor(norm.std).view(1, 3, 1, 1)
    return (x.float().div_(255.0) - mean.to(x.device)) / std.to(x.device)


@dataclass
class TargetSet:
    classes: list[str]
    train: list[tuple[str, int]]
    val: list[tuple[str, int]]
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def train_paths(self) -> list[str]:
        return [p for p, _ in self.train]

    @property
    def val_paths(self) -> list[str]:
        return [p for p, _ in self.val]

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


def _scan_splits(root: Path) -> dict[str, dict[str, list[str]]]:
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
    return splits


def load_target(root: str | Path, store: ImageStore) -> TargetSet:
    """Scan and decode ``root/{train,val}/<class>/*``; unreadable images are listed on stderr and skipped.

    Raises TargetError (one line) for a missing split, a split without classes, an empty class, or classes
    that differ between the splits.
    """
    root = Path(root)
    splits = _scan_splits(root)
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
