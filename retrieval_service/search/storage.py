"""The engine's files: the float16 histogram store (raw, memory-mapped), checksums, and ``engine.json``.

``histograms.f16`` is the (N, D, B) array as raw little-endian IEEE half floats, no header: its shape lives
in ``engine.json``. float16 keeps 11 significant bits (relative error <= 4.9e-4 per bin, subnormals down to
6e-8), half the bytes of float32; the engine computes every distance on these stored values, so results are
reproducible from the file alone. A raw file maps straight into memory, so several service processes share
one copy in the page cache and start without reading it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from services.errors import IndexIntegrityError
from services.fileio import atomic_write, atomic_writer, file_sha256

HISTOGRAMS_FILE = "histograms.f16"
EMBEDDING_FILE = "embedding.faiss"
ENGINE_FILE = "engine.json"
STORE_DTYPE = np.dtype("<f2")
ENGINE_FORMAT = 1


def write_histograms(path: str | os.PathLike, histograms, chunk: int = 65536) -> str:
    """Write (N, D, B) histograms (any float array or memmap) as raw float16; returns the file's SHA-256.

    Written to a temporary name and renamed, so a reader (or a memory map of the previous file) never sees a
    half-written store.
    """
    digest = hashlib.sha256()
    with atomic_writer(path) as fh:
        for start in range(0, len(histograms), chunk):
            block = np.ascontiguousarray(histograms[start : start + chunk], dtype=STORE_DTYPE).tobytes()
            digest.update(block)
            fh.write(block)
    return digest.hexdigest()


def open_histograms(path: str | os.PathLike, shape: tuple[int, int, int], mmap: bool = True) -> np.ndarray:
    """The stored (N, D, B) float16 array, memory-mapped read-only (or read into RAM with ``mmap=False``).

    A missing file or one whose size does not match ``shape`` raises ``IndexIntegrityError``.
    """
    path = Path(path)
    expected = int(np.prod(shape)) * STORE_DTYPE.itemsize
    try:
        actual = path.stat().st_size
    except FileNotFoundError as exc:
        raise IndexIntegrityError(f"histogram store missing: {path}") from exc
    if actual != expected:
        raise IndexIntegrityError(
            f"histogram store {path} has {actual} bytes, expected {expected} for shape {shape} "
            "(truncated or from another index)"
        )
    if shape[0] == 0:
        return np.zeros(shape, dtype=STORE_DTYPE)
    if mmap:
        return np.memmap(path, dtype=STORE_DTYPE, mode="r", shape=shape)
    return np.fromfile(path, dtype=STORE_DTYPE).reshape(shape)


def _canonical(fields: Mapping) -> bytes:
    return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()


def write_engine_json(path: str | os.PathLike, fields: Mapping) -> str:
    """Write ``engine.json`` with a ``self_sha256`` over its other fields (so a flipped byte in the parameters
    is caught too); returns the file's SHA-256."""
    body = dict(fields)
    body["self_sha256"] = hashlib.sha256(_canonical(fields)).hexdigest()
    atomic_write(path, json.dumps(body, indent=2, sort_keys=True) + "\n")
    return file_sha256(path)


def read_engine_json(path: str | os.PathLike) -> dict:
    """Parse and self-verify ``engine.json``; any problem is an ``IndexIntegrityError``."""
    path = Path(path)
    try:
        body = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise IndexIntegrityError(f"engine parameters missing: {path}") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IndexIntegrityError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(body, dict) or "self_sha256" not in body:
        raise IndexIntegrityError(f"{path} has no self_sha256: not an engine file")
    recorded = body.pop("self_sha256")
    if hashlib.sha256(_canonical(body)).hexdigest() != recorded:
        raise IndexIntegrityError(f"{path} fails its self-checksum: the file was modified or damaged")
    if body.get("format") != ENGINE_FORMAT:
        raise IndexIntegrityError(f"{path} has format {body.get('format')!r}, expected {ENGINE_FORMAT}")
    return body


def verify_files(directory: Path, checksums: Mapping[str, str]) -> None:
    """Raise ``IndexIntegrityError`` naming the first file that is missing or whose SHA-256 differs."""
    for name, expected in checksums.items():
        path = directory / name
        if not path.is_file():
            raise IndexIntegrityError(f"index file missing: {path}")
        actual = file_sha256(path)
        if actual != expected:
            raise IndexIntegrityError(
                f"{path} fails its checksum (sha256 {actual[:12]}..., recorded {expected[:12]}...): "
                "the file is damaged or was replaced"
            )
