"""The engine's files besides the histogram store (``store.py``): names, checksums, and ``engine.json``.

``engine.json`` holds the shape, dtype and checksums of the raw store file, the FAISS index parameters and the
weights, with a self-checksum over its fields.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path

from services.errors import IndexIntegrityError
from services.fileio import atomic_write, file_sha256

HISTOGRAMS_FILE = "histograms.f16"  # a float16 store; uint8 stores are histograms.u8 (store.py)
EMBEDDING_FILE = "embedding.faiss"
ENGINE_FILE = "engine.json"
ENGINE_FORMAT = 1


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
