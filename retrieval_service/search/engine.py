"""The search engine: FAISS candidates on the Hellinger embedding, then an exact re-rank by the divergence.

Two stages (DESIGN.md "Search engine"): FAISS returns the nearest embeddings (squared weighted Hellinger,
``ann.py``), the engine computes the requested divergence on the stored histograms (float16 or uint8,
``store.py``) of those candidates (``services.divergence.paired``) and ranks by (distance, source_id).
Windows come from one fixed ranked list per query (``ranking.py``), so [0, 10) + [10, 20) == [0, 20)
exactly. ``exact=True`` scans every stored histogram.
Distances are always computed on the stored (decoded) histograms, by both paths. The settings (candidate
index, cells, probes, re-rank depth, store dtype) follow from N by ``tuning.plan`` unless given.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import faiss
import numpy as np

from retrieval_service.search import ann, code_tables, ranking, storage, tuning
from retrieval_service.search.store import U8, HistogramStore, encode, open_store, store_file, write_store
from services.chunks import run_chunks
from services.divergence import METRICS, hellinger_embedding, paired, pairwise, validate_histograms
from services.errors import DescriptorError, IndexIntegrityError
from services.fileio import atomic_path, file_sha256

KINDS = tuning.KINDS
DEFAULT_RERANK_FACTOR = tuning.FLAT_RERANK_FACTOR
SCAN_BLOCK = 32768  # stored rows per exact-scan block: (nq, 32768) float32 distances at a time
RERANK_PAIRS = 16384  # (query, candidate) pairs gathered and re-ranked per block


class SearchEngine:
    """k-nearest stored histograms of query histograms by weighted JS or SKL. Source ids are row numbers."""

    def __init__(self, store: np.ndarray, weights: np.ndarray, index: faiss.Index, *, kind: str,
                 nprobe: int, rerank_factor: int, codec: str, device: str | None = None):
        # (N, D, B) stored histograms, usually a read-only memory map; indexing decodes to float32
        self._store = store if isinstance(store, HistogramStore) else HistogramStore(np.asarray(store))
        self._weights = np.asarray(weights, dtype=np.float32)
        self._index = ann.CandidateIndex(index, device)
        self._kind = kind
        self.nprobe = int(nprobe)
        self.rerank_factor = int(rerank_factor)
        self.codec = codec
        self._row_file = None  # code_tables.RowFile of a memory-mapped uint8 store, opened on first re-rank

    # ---------------------------------------------------------------- construction
    @classmethod
    def build(cls, histograms, weights, *, kind: str = "auto", ivf_threshold: int = tuning.IVF_THRESHOLD,
              nlist: int | None = None, nprobe: int | None = None, rerank_factor: int | None = None,
              codec: str | None = None, store_dtype=None, directory: str | os.PathLike | None = None,
              device: str | None = None, progress: bool = False) -> SearchEngine:
        """Index (N, D, B) histograms (any sliceable float array, memory map or lazy source) with per-filter
        ``weights`` (D,).

        Settings left as None follow from N (``tuning.plan``). ``directory``: the store is streamed straight
        into ``directory`` block by block and memory-mapped from there (``save`` into the same directory then
        writes only the FAISS index and ``engine.json``), so N is bounded by the disk, not the memory;
        without it the store is held in memory.
        """
        if getattr(histograms, "ndim", None) != 3:
            shape = getattr(histograms, "shape", "?")
            raise DescriptorError(f"histograms must be (N, D, B), got shape {shape}")
        n, d, b = histograms.shape
        if n >= 2**32:
            raise ValueError("at most 2**32 - 1 sources per engine")
        p = tuning.plan(n, d, b, kind=kind, codec=codec, nlist=nlist, nprobe=nprobe,
                        rerank_factor=rerank_factor, store_dtype=store_dtype, ivf_threshold=ivf_threshold)
        weights = np.asarray(weights, dtype=np.float32)
        store = _store_of(histograms, p.store_dtype, directory)
        index = ann.build_index(store, weights, p.kind, p.nlist, p.codec, progress)
        store.release()  # the build read every row: serving maps only the rows it re-ranks
        return cls(store, weights, index, kind=p.kind, nprobe=p.nprobe, rerank_factor=p.rerank_factor,
                   codec=p.codec, device=device)

    # ---------------------------------------------------------------- properties
    @property
    def size(self) -> int:
        return int(self._store.shape[0])

    @property
    def dim(self) -> int:
        return int(self._store.shape[1])

    @property
    def bins(self) -> int:
        return int(self._store.shape[2])

    @property
    def kind(self) -> str:
        return self._kind

    @property
    def weights(self) -> np.ndarray:
        return self._weights.copy()

    @property
    def nlist(self) -> int:
        return self._index.nlist

    def histograms(self, ids) -> np.ndarray:
        """Stored histograms of ``ids`` (decoded): float32 (n, D, B); an unknown id raises IndexError."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        bad = (ids < 0) | (ids >= self.size)
        if bad.any():
            raise IndexError(f"source_id {int(ids[bad][0])} is not in this index (0..{self.size - 1})")
        return np.asarray(self._store[ids], dtype=np.float32)

    # ---------------------------------------------------------------- search
    def search(self, queries, k: int, offset: int = 0, metric: str = "js", exact: bool = False,
               exclude: Iterable[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Window [offset, offset + k) of each query's ranking: distances float32 (nq, k), ids int64 (nq, k).

        Sorted by (distance, source_id); padded with (inf, -1) past the eligible sources. ``exclude``: source
        ids never returned (unknown ids are ignored).
        """
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}; expected one of {METRICS}")
        if k < 1 or offset < 0:
            raise ValueError(f"need k >= 1 and offset >= 0, got k={k}, offset={offset}")
        q = validate_histograms(queries, self.dim, self.bins)  # (nq, D, B)
        if exclude is None:
            exclude = ()
        elif not isinstance(exclude, np.ndarray | list | tuple):
            exclude = list(exclude)  # any iterable, e.g. a set or generator
        excl = np.unique(np.asarray(exclude, dtype=np.int64).reshape(-1))
        excl = excl[(excl >= 0) & (excl < self.size)]
        window = offset + k
        if exact:
            keys = self._exact_keys(q, window, metric, excl)
        else:
            keys = self._two_stage_keys(q, window, metric, excl)
        dist, ids = ranking.decode_keys(keys[:, offset:window])
        return dist, ids

    def _exact_keys(self, q: np.ndarray, window: int, metric: str, excl: np.ndarray) -> np.ndarray:
        """Full scan: the ``window`` smallest (distance, id) keys per query. (nq, window) uint64"""
        if self._store.dtype != U8 or len(q) <= code_tables.QUERY_CHUNK:
            return self._scan_keys(q, window, metric, excl)
        step = code_tables.QUERY_CHUNK  # a uint8 scan holds the tables of this many queries at a time
        return np.concatenate([self._scan_keys(q[s : s + step], window, metric, excl)
                               for s in range(0, len(q), step)])

    def _scan_keys(self, q: np.ndarray, window: int, metric: str, excl: np.ndarray) -> np.ndarray:
        best = np.full((len(q), window), ranking.NO_KEY)
        tables = self._tables(q, metric)
        for start in range(0, self.size, SCAN_BLOCK):
            stop = min(self.size, start + SCAN_BLOCK)
            ids = np.arange(start, stop, dtype=np.int64)
            if tables is not None:  # contiguous rows: one plain read per block (page cache, not RSS)
                block = self._store.read_raw(start, stop).reshape(stop - start, -1)
                dist = code_tables.distances_to_rows(tables, block, 0, stop - start)
            else:
                dist = pairwise(metric, q, self._store[start:stop], self._weights)
            keys = ranking.encode_keys(dist, ids[None, :])  # (nq, c)
            hit = excl[(excl >= start) & (excl < stop)] - start
            keys[:, hit] = ranking.NO_KEY
            best = ranking.smallest_keys(np.concatenate([best, keys], axis=1), window)
        return ranking.smallest_keys(best, window)

    def _two_stage_keys(self, q: np.ndarray, window: int, metric: str, excl: np.ndarray) -> np.ndarray:
        eligible = self.size - len(excl)
        ends = ranking.bucket_ends(window)
        pools = [min(eligible, self.rerank_factor * e) for e in ends]  # candidate pool size per bucket
        r_max = pools[-1]
        out = np.full((len(q), window), ranking.NO_KEY)
        if r_max == 0:
            return out
        z = hellinger_embedding(q, self._weights)  # (nq, D*B)
        cand = self._candidates(z, r_max, excl, self.nprobe)  # (nq, r_max), -1 where none
        n_valid = (cand >= 0).sum(axis=1)
        dist = self._rerank(q, cand, metric)  # (nq, r_max)
        # IVF cells that hold fewer than r_max eligible sources: short pools come from an exhaustive probe.
        short = np.flatnonzero(n_valid < r_max)
        if len(short):
            ex_cand = self._candidates(z[short], r_max, excl, self.nlist or 1)
            ex_dist = self._rerank(q[short], ex_cand, metric)
        for i in range(len(q)):
            keys = ranking.encode_keys(dist[i, : n_valid[i]], cand[i, : n_valid[i]])
            fallback = None
            if n_valid[i] < r_max:
                j = int(np.searchsorted(short, i))
                ok = ex_cand[j] >= 0
                fallback = ranking.encode_keys(ex_dist[j][ok], ex_cand[j][ok])
            bucket_pools = [keys[:r] if n_valid[i] >= r else fallback[:r] for r in pools]
            listed = ranking.ranked_list(bucket_pools, ends)[:window]
            out[i, : len(listed)] = listed
        return out

    def _candidates(self, z: np.ndarray, r: int, excl: np.ndarray, nprobe: int) -> np.ndarray:
        """The first r non-excluded FAISS candidates of each query, in FAISS order; -1 padded. (nq, r)"""
        k = min(self.size, r + len(excl))
        _, ids = self._index.search(z, k, nprobe)
        drop = ids < 0
        if len(excl):
            drop |= np.isin(ids, excl)
        order = np.argsort(drop, axis=1, kind="stable")  # kept ids first, FAISS order preserved
        ids = np.take_along_axis(np.where(drop, -1, ids), order, axis=1)[:, :r]
        if ids.shape[1] < r:
            ids = np.concatenate([ids, np.full((len(ids), r - ids.shape[1]), -1)], axis=1)
        return ids

    def _tables(self, q: np.ndarray, metric: str) -> np.ndarray | None:
        """Per-query term tables when the store is uint8 (``code_tables``), else None (element-wise path)."""
        return code_tables.query_tables(metric, q, self._weights) if self._store.dtype == U8 else None

    @property
    def _codes(self):
        """The uint8 rows for the re-rank: a ``code_tables.RowFile`` (pread) over a memory-mapped store, so
        random candidate rows never map the store into this process; the (N, D*B) array otherwise."""
        rows = self._store.raw.reshape(self.size, self.dim * self.bins)
        if not isinstance(self._store.raw, np.memmap) or self._store.path is None:
            return rows
        if self._row_file is None:
            self._row_file = code_tables.RowFile(self._store.path, rows)
        return self._row_file

    def _rerank(self, q: np.ndarray, cand: np.ndarray, metric: str) -> np.ndarray:
        """Divergence of each query to its candidates (-1 entries get inf). (nq, R) float32"""
        threads = max(1, faiss.omp_get_max_threads())  # as many as FAISS's candidate search uses
        if self._store.dtype == U8:
            return code_tables.rerank(metric, q, self._weights, self._codes, cand, threads)
        nq, r = cand.shape
        out = np.full((nq, r), np.inf, dtype=np.float32)
        step = max(1, RERANK_PAIRS // r)

        def block(s: int) -> None:  # numpy's large ufuncs release the GIL: blocks run on separate cores
            c = cand[s : s + step]
            hist = self._store[np.maximum(c, 0).reshape(-1)].reshape(*c.shape, self.dim, self.bins)
            d = paired(metric, q[s : s + step], hist, self._weights)
            out[s : s + step] = np.where(c >= 0, d, np.inf)

        run_chunks(block, range(0, nq, step), threads)
        return out

    # ---------------------------------------------------------------- persistence
    def save(self, directory: str | os.PathLike) -> dict[str, str]:
        """Write the store (``histograms.f16`` or ``.u8``), ``embedding.faiss`` and ``engine.json`` into an
        existing directory. A store built into this directory (``build(directory=...)``) is not rewritten.

        Returns {filename: sha256}. Each file is written under a temporary name and renamed.
        """
        directory = Path(directory)
        if not directory.is_dir():
            raise FileNotFoundError(f"not a directory: {directory}")
        name = store_file(self._store.dtype)
        built_here = self._store.path is not None and self._store.path == (directory / name).absolute()
        if built_here and self._store.sha256:
            sums = {name: self._store.sha256}
        else:
            sums = {name: write_store(directory / name, self._store.raw, self._store.dtype)}
        with atomic_path(directory / storage.EMBEDDING_FILE) as tmp:
            faiss.write_index(self._index.cpu, str(tmp))
        sums[storage.EMBEDDING_FILE] = file_sha256(directory / storage.EMBEDDING_FILE)
        fields = {
            "format": storage.ENGINE_FORMAT,
            "size": self.size, "dim": self.dim, "bins": self.bins,
            "kind": self.kind, "codec": self.codec, "nlist": self.nlist, "nprobe": self.nprobe,
            "rerank_factor": self.rerank_factor, "bucket_base": ranking.BUCKET_BASE,
            "weights": [float(x) for x in self._weights],
            "histogram_dtype": self._store.dtype.str,
            "checksums": dict(sums),
        }
        sums[storage.ENGINE_FILE] = storage.write_engine_json(directory / storage.ENGINE_FILE, fields)
        return sums

    @classmethod
    def load(cls, directory: str | os.PathLike, *, mmap: bool = True, verify: bool = True,
             device: str | None = None) -> SearchEngine:
        """Open an engine written by ``save``. ``verify`` re-hashes both data files against ``engine.json``
        (seconds per GB); sizes are always checked. Any damage raises ``IndexIntegrityError``."""
        directory = Path(directory)
        meta = storage.read_engine_json(directory / storage.ENGINE_FILE)
        try:
            shape = (int(meta["size"]), int(meta["dim"]), int(meta["bins"]))
            checksums = dict(meta["checksums"])
            weights = np.asarray(meta["weights"], dtype=np.float32)
            kind, codec = str(meta["kind"]), str(meta["codec"])
            nprobe, rerank_factor = int(meta["nprobe"]), int(meta["rerank_factor"])
            dtype = np.dtype(meta.get("histogram_dtype", "<f2"))
            name = store_file(dtype)
        except (KeyError, TypeError, ValueError) as exc:
            raise IndexIntegrityError(f"{directory / storage.ENGINE_FILE}: invalid field {exc}") from exc
        if verify:
            storage.verify_files(directory, checksums)
        store = open_store(directory / name, shape, dtype, mmap_file=mmap)
        path = directory / storage.EMBEDDING_FILE
        if not path.is_file():
            raise IndexIntegrityError(f"index file missing: {path}")
        try:
            index = faiss.read_index(str(path))
        except RuntimeError as exc:  # FAISS reports unreadable files as RuntimeError
            raise IndexIntegrityError(f"{path} is not a readable FAISS index: {exc}") from exc
        if index.ntotal != shape[0] or index.d != shape[1] * shape[2]:
            raise IndexIntegrityError(
                f"{path} holds {index.ntotal} vectors of dimension {index.d}, expected {shape[0]} of "
                f"{shape[1] * shape[2]}"
            )
        return cls(store, weights, index, kind=kind, nprobe=nprobe, rerank_factor=rerank_factor,
                   codec=codec, device=device)


def _store_of(histograms, dtype, directory) -> HistogramStore:
    """Validate ``histograms`` block by block into a store of ``dtype``: a file in ``directory`` (memory-
    mapped), or an in-memory array. Bounded temporaries either way."""
    n, d, b = histograms.shape

    def prepare(block, start):
        try:
            return validate_histograms(block, d, b)
        except DescriptorError as exc:
            raise DescriptorError(f"rows from {start}: {exc}") from exc

    if directory is not None:
        path = (Path(directory) / store_file(dtype)).absolute()
        if (isinstance(histograms, HistogramStore) and histograms.path is not None
                and Path(histograms.path).absolute() == path and histograms.dtype == dtype):
            # Re-indexing the store already in ``directory`` (other index settings): its rows were validated
            # when it was written; rewriting 7.7 GB at 10 M onto itself would buy nothing.
            histograms.sha256 = histograms.sha256 or file_sha256(path)
            return histograms
        sha = write_store(path, histograms, dtype, prepare)
        stored = open_store(path, (n, d, b), dtype)
        stored.sha256 = sha
        return stored
    raw = np.empty((n, d, b), dtype=dtype)
    for start in range(0, n, 16384):
        raw[start : start + 16384] = encode(prepare(histograms[start : start + 16384], start), dtype)
    return HistogramStore(raw)
