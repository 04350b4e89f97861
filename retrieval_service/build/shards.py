"""Build plumbing: decoding sources in DataLoader workers, and the histogram shard files of a partial build.

A shard ``shards/shard-00000.npz`` covers candidate positions ``[i * shard_size, (i + 1) * shard_size)`` of
the sorted corpus and holds, per candidate: ``positions`` int64, ``ok`` bool, ``hists`` float16 (n, D, B)
(zero rows where not ok), ``sha256`` (hex), ``width``/``height`` int32 (original size), ``reasons`` (why
not ok), ``ext`` (the format read from the header) and ``nbytes``. Shards are written to a temporary file,
fsynced and renamed, so a shard file that exists is complete.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from retrieval_service.index.corpus import CorpusError, SourceRecord, UnsafeSourcePath, open_source_bytes
from services.errors import ImageDecodeError
from services.fileio import atomic_writer
from services.images import load_image, probe_image

MAX_REASON = 300  # characters of a skip reason kept in the shard and the report
FORMAT_EXTS = {
    "JPEG": "jpg", "MPO": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp",
    "TIFF": "tif",
}


@dataclass
class DecodedBatch:
    """One loader batch: every candidate of it, and the decoded images of the readable ones (in order)."""

    positions: np.ndarray  # (n,) int64 candidate positions
    ok: np.ndarray  # (n,) bool
    images: torch.Tensor  # (n_ok, S, S, 3) uint8
    sha256: list[str]
    width: np.ndarray  # (n,) int32
    height: np.ndarray  # (n,) int32
    reasons: list[str]
    ext: list[str]  # from the decoded header ("jpg", "png", ...): table rows have no file name
    nbytes: np.ndarray  # (n,) int64 encoded size


class SourceImages(Dataset):
    """Item ``pos`` -> (pos, uint8 (S, S, 3) or None, sha256, width, height, reason, ext, nbytes); never
    raises."""

    def __init__(self, root: Path, records: list[SourceRecord], size: int):
        self.root, self.records, self.size = Path(root), records, size

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, pos: int):
        record = self.records[pos]
        try:
            data = open_source_bytes(self.root, record)
            if not data:
                return pos, None, "", 0, 0, "empty file", "", 0
            width, height, kind = probe_image(data)
            image = load_image(data, self.size)
        except (ImageDecodeError, UnsafeSourcePath, CorpusError) as exc:
            return pos, None, "", 0, 0, str(exc)[:MAX_REASON] or type(exc).__name__, "", 0
        except OSError as exc:  # vanished, unreadable or truncated-on-disk file: skip it, keep building
            return pos, None, "", 0, 0, f"cannot read: {exc.strerror or exc}"[:MAX_REASON], "", 0
        ext = FORMAT_EXTS.get(kind, kind.lower()[:8])
        return pos, image, hashlib.sha256(data).hexdigest(), width, height, "", ext, len(data)


def collate(items: list[tuple]) -> DecodedBatch:
    """Stack the readable images into one tensor (shared memory when it crosses from a worker)."""
    images = [item[1] for item in items if item[1] is not None]
    stacked = torch.from_numpy(np.stack(images)) if images else torch.empty((0, 0, 0, 3), dtype=torch.uint8)
    return DecodedBatch(
        positions=np.array([item[0] for item in items], dtype=np.int64),
        ok=np.array([item[1] is not None for item in items], dtype=bool),
        images=stacked,
        sha256=[item[2] for item in items],
        width=np.array([item[3] for item in items], dtype=np.int32),
        height=np.array([item[4] for item in items], dtype=np.int32),
        reasons=[item[5] for item in items],
        ext=[item[6] for item in items],
        nbytes=np.array([item[7] for item in items], dtype=np.int64),
    )


def make_loader(
    root: Path, records: list[SourceRecord], size: int, batches: list[list[int]], workers: int
) -> DataLoader:
    """Batches of candidate positions, decoded by ``workers`` processes (0: in this process), in order."""
    return DataLoader(
        SourceImages(root, records, size),
        batch_sampler=batches,
        num_workers=workers,
        collate_fn=collate,
        prefetch_factor=4 if workers > 0 else None,
    )


@dataclass
class Shard:
    positions: np.ndarray  # (n,) int64
    ok: np.ndarray  # (n,) bool
    hists: np.ndarray  # (n, D, B) float16, zero rows where not ok
    sha256: np.ndarray  # (n,) str
    width: np.ndarray  # (n,) int32
    height: np.ndarray  # (n,) int32
    reasons: np.ndarray  # (n,) str
    ext: np.ndarray  # (n,) str, from the decoded header
    nbytes: np.ndarray  # (n,) int64

    @classmethod
    def from_batches(cls, batches: list[DecodedBatch], hists: list[np.ndarray], dim: int, bins: int) -> Shard:
        """Join batches and their (n_ok, D, B) float32 histograms into one shard."""
        ok = np.concatenate([b.ok for b in batches])
        full = np.zeros((len(ok), dim, bins), dtype=np.float16)
        full[ok] = np.concatenate(hists).astype(np.float16) if ok.any() else full[ok]
        return cls(
            positions=np.concatenate([b.positions for b in batches]),
            ok=ok,
            hists=full,
            sha256=np.array([s for b in batches for s in b.sha256], dtype="<U64"),
            width=np.concatenate([b.width for b in batches]),
            height=np.concatenate([b.height for b in batches]),
            reasons=np.array([r for b in batches for r in b.reasons], dtype=f"<U{MAX_REASON}"),
            ext=np.array([e for b in batches for e in b.ext], dtype="<U8"),
            nbytes=np.concatenate([b.nbytes for b in batches]),
        )


def shard_path(shard_dir: Path, index: int) -> Path:
    return shard_dir / f"shard-{index:05d}.npz"


def write_shard(path: Path, shard: Shard) -> None:
    """Write atomically: temp file, fsync, rename (a present shard file is always complete)."""
    with atomic_writer(path) as fh:
        np.savez(fh, **{name: getattr(shard, name) for name in Shard.__dataclass_fields__})


def read_shard(path: Path, start: int, stop: int, dim: int, bins: int) -> Shard | None:
    """The shard at ``path`` if it exists and covers exactly positions ``start..stop-1`` with (D, B) rows."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            shard = Shard(**{name: data[name] for name in Shard.__dataclass_fields__})
    except (OSError, ValueError, KeyError, EOFError):
        return None
    if not np.array_equal(shard.positions, np.arange(start, stop)) or shard.hists.shape != (
        stop - start,
        dim,
        bins,
    ):
        return None
    return shard
