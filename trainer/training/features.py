"""Trunk features of a frozen backbone (``--freeze-until``), computed once per (image, view) and shared by
every round, run and seed that uses the same model.

A frozen trunk never changes, so its output for an (image, view) is a pure function of the ``model_key``
(arch, weights file sha256 or the init seed, freeze point, input size, views, crop scale, normalisation) and
the image's content address (its sha256; source images already live under it in the source cache).

Views: 0 is the evaluation view (resize + centre crop); 1..V-1 are RandomResizedCrop(input, (crop_scale, 1))
+ flip from uniforms seeded by (image key, view) only, not by the run's seed, so every run shares them. A
run's own seeded augmentation uniforms pick the view of each sample (``view_indices``): runs still differ by
seed and stay bit-reproducible and resumable. Evaluation uses view 0.

Storage: ``<cache_dir>/features/<model_key>/<key[:2]>/<key>.<view>.npy`` (float16), each file written to a
temporary sibling and renamed (services.fileio), so a kill never leaves a partial file and concurrent runs
write identical bytes; an unreadable file is recomputed. A bounded in-memory LRU (bytes) sits in front.
"""

from __future__ import annotations

import hashlib
import io
import json
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from services.backbones import Normalization
from services.fileio import atomic_write, file_sha256
from trainer.config import RunConfig
from trainer.rounds.plan import generator_for
from trainer.training.augment import UNIFORMS
from trainer.training.data import ImageStore, normalise

FORMAT = 1  # bump when the meaning of a cached view changes (augment.py, data.py decoding)


def model_key(cfg: RunConfig, norm: Normalization) -> tuple[str, dict]:
    """(sha256 hex, the fields it hashes) of everything that fixes the trunk's output for an image view."""
    fields = {
        "format": FORMAT,
        "arch": cfg.arch,
        "weights_sha256": file_sha256(cfg.weights) if cfg.weights else None,
        "init_seed": None if cfg.weights else cfg.seed,  # a random trunk is the seed's (torch.manual_seed)
        "freeze_until": cfg.freeze_until,
        "input_size": cfg.input_size,
        "views": cfg.views,
        "crop_scale": cfg.crop_scale,
        "normalization": [list(norm.mean), list(norm.std)],
    }
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()
    return digest, fields


def view_uniforms(image_key: str, view: int) -> torch.Tensor:
    """(5,) augmentation uniforms of training view ``view`` of an image: seeded by (image key, view) only."""
    return torch.rand(UNIFORMS, generator=generator_for(f"{image_key}:view:{view}"))


def view_indices(u: torch.Tensor, views: int) -> torch.Tensor:
    """(N,) training view per sample from its run-seeded uniforms ``u`` (N, 5): uniform over 1..V-1; 0 (the
    centre crop) when V is 1."""
    if views == 1:
        return torch.zeros(len(u), dtype=torch.long)
    return 1 + torch.clamp((u[:, 0] * (views - 1)).long(), max=views - 2)


def _content_address(path: str) -> str | None:
    """The sha256 a SourceCache object is named by (``objects/<sha[:2]>/<sha256>.<ext>``), else None."""
    p = Path(path)
    stem = p.name.split(".", 1)[0]
    if len(stem) == 64 and p.parent.name == stem[:2] and p.parent.parent.name == "objects":
        return stem
    return None


@dataclass
class CacheStats:
    forwards: int = 0  # (image, view) pairs run through the trunk
    memory_hits: int = 0
    disk_hits: int = 0

    def line(self) -> str:
        return f"{self.forwards} trunk forwards, {self.memory_hits} from memory, {self.disk_hits} from disk"


class TrunkFeatures:
    """The inputs of the model's tail for (image, view) pairs: cached trunk features (``root`` set), or the
    view images for the live trunk (``root`` None, ``--no-feature-cache``)."""

    def __init__(
        self,
        trunk: nn.Module,
        norm: Normalization,
        store: ImageStore,
        device: torch.device,
        batch_size: int,
        root: Path | None,
        memory_bytes: int = 1 << 30,
    ):
        self.trunk, self.norm, self.store, self.device = trunk, norm, store, device
        self.batch_size = max(1, batch_size)
        self.root = root
        self.memory_bytes = memory_bytes
        self.stats = CacheStats()
        self._keys: dict[str, str] = {}
        self._memory: OrderedDict[tuple[str, int], torch.Tensor] = OrderedDict()
        self._held = 0
        self._lock = threading.Lock()

    def take_stats(self) -> CacheStats:
        """The counts since the last call (a round's), reset to zero."""
        stats, self.stats = self.stats, CacheStats()
        return stats

    @property
    def cached(self) -> bool:
        return self.root is not None

    def image_key(self, path: str) -> str:
        """The content address (sha256) of an image file, hashed once per path."""
        if path not in self._keys:
            self._keys[path] = _content_address(path) or file_sha256(path)
        return self._keys[path]

    def images(self, paths: Sequence[str], views: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, S, S): view ``views[i]`` of ``paths[i]``."""
        uniforms = [
            None if v == 0 else view_uniforms(self.image_key(p), v)
            for p, v in zip(paths, views.tolist(), strict=True)
        ]
        return self.store.views(paths, uniforms)

    def batch(self, paths: Sequence[str], views: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """(x, from_features): cached trunk features (N, C, H, W) float32, or uint8 view images."""
        if not self.cached:
            return self.images(paths, views), False
        return self.features(paths, views), True

    def features(self, paths: Sequence[str], views: torch.Tensor) -> torch.Tensor:
        """float32 (N, C, H, W) trunk features of the views on the CPU; missing ones computed in batches."""
        # Callers may sit in inference mode (evaluation); tensors kept in the LRU must serve training too.
        with torch.inference_mode(False):
            wanted = [(self.image_key(p), int(v)) for p, v in zip(paths, views.tolist(), strict=True)]
            found = {item: f for item in dict.fromkeys(wanted) if (f := self._lookup(item)) is not None}
            missing = [(p, item) for p, item in zip(paths, wanted, strict=True) if item not in found]
            missing = list({item: p for p, item in missing}.items())  # each (image, view) once
            for lo in range(0, len(missing), self.batch_size):
                chunk = missing[lo : lo + self.batch_size]
                for item, f in zip((i for i, _ in chunk), self._compute(chunk), strict=True):
                    found[item] = f
                    self._store(item, f)
            return torch.stack([found[item] for item in wanted]).float()

    def _compute(self, chunk: list[tuple[tuple[str, int], str]]) -> torch.Tensor:
        paths = [p for _, p in chunk]
        views = torch.tensor([v for (_, v), _ in chunk], dtype=torch.long)
        x = normalise(self.images(paths, views).to(self.device), self.norm)
        with torch.no_grad():
            f = self.trunk(x).half().cpu()  # (n, C, H, W)
        self.stats.forwards += len(chunk)
        return f

    def _path(self, item: tuple[str, int]) -> Path:
        key, view = item
        return self.root / key[:2] / f"{key}.{view}.npy"

    def _lookup(self, item: tuple[str, int]) -> torch.Tensor | None:
        with self._lock:
            if item in self._memory:
                self._memory.move_to_end(item)
                self.stats.memory_hits += 1
                return self._memory[item]
        try:
            f = torch.from_numpy(np.load(self._path(item), allow_pickle=False))
        except (OSError, ValueError, EOFError):
            return None  # absent, or unreadable: recomputed and rewritten
        self.stats.disk_hits += 1
        self._remember(item, f)
        return f

    def _store(self, item: tuple[str, int], f: torch.Tensor) -> None:
        buf = io.BytesIO()
        np.save(buf, f.numpy(), allow_pickle=False)
        # No fsync: after a power loss a lost or torn file is recomputed, never trusted (np.load fails).
        atomic_write(self._path(item), buf.getvalue(), fsync=False)
        self._remember(item, f)

    def _remember(self, item: tuple[str, int], f: torch.Tensor) -> None:
        size = f.numel() * f.element_size()
        with self._lock:
            if item in self._memory or size > self.memory_bytes:
                return
            self._memory[item] = f
            self._held += size
            while self._held > self.memory_bytes:
                _, old = self._memory.popitem(last=False)
                self._held -= old.numel() * old.element_size()


def open_features(cfg: RunConfig, model: nn.Module, store: ImageStore, device: torch.device) -> TrunkFeatures:
    """The run's TrunkFeatures; cached in ``<cache_dir>/features/<model_key>/`` unless --no-feature-cache."""
    root = None
    if cfg.caches_features:
        key, fields = model_key(cfg, model.normalization)
        root = cfg.resolved_cache_dir() / "features" / key
        if not (root / "key.json").is_file():
            atomic_write(root / "key.json", json.dumps(fields, indent=2, sort_keys=True), fsync=False)
    memory = cfg.feature_memory_mb << 20
    return TrunkFeatures(model.trunk, model.normalization, store, device, cfg.batch_size, root, memory)
