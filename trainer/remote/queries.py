"""The fixed query of each target image, asked again every round.

The service cannot re-identify an uploaded image, and a later round needs the SAME ranked list deeper. So
the trainer fixes each target image's query once, before round 0: by default (``query_mode`` auto with a Gabor
index) it computes the descriptor locally from ``GET /v1/spec`` with ``services.extract.DescriptorExtractor``
and sends ``descriptor`` + ``spec_hash`` (images never leave the machine; the descriptors are saved in the
run directory so a resumed run asks exactly the same questions). Otherwise (``image`` mode, or a conv index
whose weights the trainer lacks) it sends ``image_b64`` of the unchanged file bytes, which the service maps
to the same descriptor every time. Either way round m asks only for the new window [old K_i, new K_i) with
per-query ``offset``/``k``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from services.client import RetrievalClient, encode_image
from services.fileio import atomic_writer
from services.schemas import IndexInfo, Query
from services.spec import DescriptorSpec
from trainer.config import ConfigError, RunConfig

DESCRIPTORS = "descriptors.npz"


def target_queries(
    cfg: RunConfig, client: RetrievalClient, info: IndexInfo, paths: list[str], out: Path
) -> QueryMaker:
    """The fixed queries of the target images, train then val (trainer/remote/fetch.py docstring); descriptors
    persist in ``out`` so a resumed run asks exactly the same questions."""
    if cfg.query_mode == "image":
        return QueryMaker(paths)
    saved = out / DESCRIPTORS
    if saved.is_file():
        data = np.load(saved)
        if str(data["spec_hash"]) == info.spec_hash and len(data["descriptors"]) == len(paths):
            return QueryMaker(paths, data["descriptors"], info.spec_hash)
    computed = local_descriptors(client.spec(), paths, threads=max(1, cfg.fetch_workers))
    if computed is None:
        if cfg.query_mode == "descriptor":
            raise ConfigError("--query-mode descriptor needs a gabor index (a conv bank needs its weights)")
        return QueryMaker(paths)
    descriptors, spec_hash = computed
    if spec_hash != info.spec_hash:
        raise ConfigError(f"/v1/spec hashes to {spec_hash[:12]}, /v1/index says {info.spec_hash[:12]}")
    with atomic_writer(saved) as f:
        np.savez(f, descriptors=descriptors, spec_hash=np.array(spec_hash))
    return QueryMaker(paths, descriptors, spec_hash)


def index_key(info: IndexInfo) -> str:
    """Identity of one built index (spec + build), naming its namespace in the shared cache."""
    build = hashlib.sha256(f"{info.spec_hash}|{info.size}|{info.created}".encode()).hexdigest()
    return f"{info.spec_hash[:16]}-{build[:12]}"


class QueryMaker:
    """The fixed query of each target image (see module docstring)."""

    def __init__(
        self, paths: Sequence[str], descriptors: np.ndarray | None = None, spec_hash: str | None = None
    ):
        self.paths = list(paths)
        self.descriptors = descriptors  # (N, D, B) float32 or None for image mode
        self.spec_hash = spec_hash

    @property
    def mode(self) -> str:
        return "image" if self.descriptors is None else "descriptor"

    def query(self, i: int, k: int, offset: int) -> Query:
        if self.descriptors is None:
            data = encode_image(Path(self.paths[i]).read_bytes())
            return Query(id=str(i), image_b64=data, k=k, offset=offset)
        return Query(
            id=str(i), descriptor=self.descriptors[i].tolist(), spec_hash=self.spec_hash, k=k, offset=offset
        )


def local_descriptors(
    spec_json: dict, paths: Sequence[str], threads: int = 2
) -> tuple[np.ndarray, str] | None:
    """(N, D, B) descriptors of ``paths`` under the service's spec, or None when this spec needs conv
    weights."""
    spec = DescriptorSpec.model_validate(spec_json)
    if spec.bank != "gabor":
        return None
    from services.extract import DescriptorExtractor  # heavy (filter bank); only needed here

    extractor = DescriptorExtractor(spec, device="cpu")
    chunks = [
        extractor.histograms_from_files(paths[s : s + 64], workers=threads) for s in range(0, len(paths), 64)
    ]
    return np.concatenate(chunks).astype(np.float32), spec.spec_hash


