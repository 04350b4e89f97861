"""FAISS over the Hellinger embedding: candidate generation for the two-stage search.

z = concat_h sqrt(w_h * phi_h) (``services.divergence.hellinger_embedding``); squared L2 on z is the weighted
squared Hellinger distance, which orders neighbors almost as JS and SKL do, and FAISS computes it with BLAS
(CPU) or on a GPU. Kinds: ``flat`` = ``IndexFlatL2`` (exact L2, 4 bytes per dimension); ``ivf`` = an inverted
file over ``nlist`` k-means cells, codec ``sq8`` (IVF + 8-bit scalar quantiser, 1 byte per dimension) or
``flat`` (float32) or ``pq`` (a PCA to ``PCA_DIM`` dimensions with a random rotation, then IVF-PQ with
``PQ_BYTES`` one-byte codes per vector: the large-corpus tier of ``tuning.py``). The embedding lives in the
FAISS file (written by ``save``): rebuilding it on load would mean re-assigning every vector to its cell,
minutes at N = 1M, against a plain read.
"""

from __future__ import annotations

import logging
import math
import threading

import faiss
import numpy as np

from retrieval_service.search import tuning
from services.divergence import hellinger_embedding

log = logging.getLogger(__name__)

GPU_MAX_K = 2048  # FAISS GPU k-selection limit; larger requests go to the CPU copy
CODECS = tuning.CODECS
PCA_DIM = 128  # 94% of the embedding's variance on real gabor descriptors; assignment 6x cheaper than 768
PQ_BYTES = 64  # 2 PCA dimensions per sub-quantiser
PQ_TRAIN_PER_CENTROID = 40  # 10,240 points per 256-centroid sub-quantiser (FAISS: 256 -> 65,536) ...
PQ_TRAIN_ITERATIONS = 10  # ... and 10 k-means rounds (FAISS: 25): PQ training 48 s -> ~5 s at 2 dims each
RELEASE_EVERY = 16  # chunks (1 M rows) between unmapping the store pages the build has read
FS_SUBQUANTIZERS = 64  # fast-scan PQ: 64 x 4-bit codes (32 bytes), scanned with SIMD table lookups
PQ_MIN_TRAIN = 65536  # PCA and 256-centroid sub-quantisers want more points than 40 per cell at small nlist


def _ivf(dim: int, nlist: int, codec: str) -> faiss.Index:
    """An untrained IVF index of ``codec`` over ``dim``-dimensional embeddings (owns its quantiser)."""
    d = min(PCA_DIM, dim) if codec == "pq" else dim
    quantizer = faiss.IndexFlatL2(d)
    if codec == "sq8":
        ivf = faiss.IndexIVFScalarQuantizer(quantizer, d, nlist, faiss.ScalarQuantizer.QT_8bit)
    elif codec in ("pq", "pqfs"):
        if codec == "pq":
            ivf = faiss.IndexIVFPQ(quantizer, d, nlist, math.gcd(d, PQ_BYTES), 8)
        else:
            ivf = faiss.IndexIVFPQFastScan(quantizer, d, nlist, math.gcd(d, FS_SUBQUANTIZERS), 4)
        ivf.pq.cp.max_points_per_centroid = PQ_TRAIN_PER_CENTROID
        ivf.pq.cp.niter = PQ_TRAIN_ITERATIONS
    else:
        ivf = faiss.IndexIVFFlat(quantizer, d, nlist)
    ivf.own_fields = True
    quantizer.this.disown()  # the IVF index frees its quantizer
    if codec not in ("pq", "pqfs"):
        return ivf
    pca = faiss.PCAMatrix(dim, d, 0.0, True)  # random rotation: spreads the variance over the sub-quantisers
    index = faiss.IndexPreTransform(pca, ivf)
    index.own_fields = True
    pca.this.disown()
    ivf.this.disown()
    return index


def index_settings(codec: str) -> dict:
    """The construction constants an index of ``codec`` depends on (besides kind and nlist): what a cache of
    built indexes (bench/scale.py) must key on."""
    if codec == "pq":
        return dict(pca_dim=PCA_DIM, pq_bytes=PQ_BYTES, pq_train=PQ_TRAIN_PER_CENTROID,
                    pq_iter=PQ_TRAIN_ITERATIONS)
    if codec == "pqfs":
        return dict(pca_dim=PCA_DIM, fs_m=FS_SUBQUANTIZERS, pq_train=PQ_TRAIN_PER_CENTROID,
                    pq_iter=PQ_TRAIN_ITERATIONS)
    return {}


def build_index(store, weights: np.ndarray, kind: str, nlist: int, codec: str, progress: bool,
                chunk: int = 65536, seed: int = 0) -> faiss.Index:
    """A CPU FAISS index over the embedding of ``store`` (N, D, B), filled chunk by chunk."""
    n, d, b = store.shape
    dim = d * b
    if kind == "flat":
        index = faiss.IndexFlatL2(dim)
    else:
        index = _ivf(dim, nlist, codec)
        n_train = tuning.TRAIN_POINTS_PER_CELL * nlist
        n_train = min(n, max(n_train, PQ_MIN_TRAIN) if codec in ("pq", "pqfs") else n_train)
        sample = np.sort(np.random.default_rng(seed).choice(n, n_train, replace=False))
        ivf = faiss.extract_index_ivf(index)
        ivf.cp.max_points_per_centroid = math.ceil(n_train / nlist)  # no second subsampling inside FAISS
        index.train(hellinger_embedding(store[sample], weights))
    chunks = range(0, n, chunk)
    if progress:
        from tqdm import tqdm

        chunks = tqdm(chunks, desc="embedding", unit="chunk")
    release = getattr(store, "release", None)  # a memory-mapped HistogramStore
    for i, start in enumerate(chunks):
        index.add(hellinger_embedding(store[start : start + chunk], weights))
        if release is not None and i % RELEASE_EVERY == RELEASE_EVERY - 1:
            release()  # pages already embedded leave this process's RSS (they stay in the page cache)
    return index


class CandidateIndex:
    """Searches a FAISS index on CPU, or on a GPU copy when one is available.

    CPU searches may run concurrently (FAISS releases the GIL and parallelises with OpenMP). A GPU index is
    not thread-safe, even for reads: its searches are serialised by a lock.
    """

    def __init__(self, index: faiss.Index, device: str | None = None):
        self.cpu = index
        ivf = faiss.try_extract_index_ivf(index)
        self.nlist = int(ivf.nlist) if ivf is not None else 0
        self._pretransform = isinstance(index, faiss.IndexPreTransform)
        self.gpu = None
        self._gpu_lock = threading.Lock()
        gpu_id = _gpu_id(device)
        if gpu_id is not None:
            self._resources = faiss.StandardGpuResources()
            self.gpu = faiss.index_cpu_to_gpu(self._resources, gpu_id, index)

    def search(self, z: np.ndarray, k: int, nprobe: int) -> tuple[np.ndarray, np.ndarray]:
        """Squared L2 distances and ids (nq, k) of the k nearest embeddings; -1 ids where fewer were found."""
        z = np.ascontiguousarray(z, dtype=np.float32)
        if self.gpu is not None and k <= GPU_MAX_K and nprobe <= GPU_MAX_K:  # GPU limits on k and nprobe
            with self._gpu_lock:
                if self.nlist:
                    faiss.GpuParameterSpace().set_index_parameter(self.gpu, "nprobe", nprobe)
                return self.gpu.search(z, k)
        if self.nlist:
            params = faiss.SearchParametersIVF(nprobe=min(nprobe, self.nlist))
            if self._pretransform:  # the PCA passes its sub-index's parameters on
                outer = faiss.SearchParametersPreTransform()
                outer.index_params = params
                return self.cpu.search(z, k, params=outer)
            return self.cpu.search(z, k, params=params)
        return self.cpu.search(z, k)


def _gpu_id(device: str | None) -> int | None:
    """None: the first GPU when FAISS sees one; "cpu": none; "cuda[:n]": GPU n, or CPU with a warning when
    this FAISS build has no GPU (torch may still extract descriptors on CUDA)."""
    if device is not None and not str(device).startswith("cuda"):
        return None
    n_gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    if n_gpus == 0:
        if device is not None:
            log.warning("device %r requested but this FAISS build sees no GPU: searching on CPU", device)
        return None
    gpu_id = int(str(device).split(":", 1)[1]) if device and ":" in str(device) else 0
    if gpu_id >= n_gpus:
        raise ValueError(f"device {device!r}: FAISS sees only {n_gpus} GPU(s)")
    return gpu_id
