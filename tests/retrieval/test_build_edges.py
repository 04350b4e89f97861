"""The edge fit on worker processes gives ``fit_edges``'s edges bit for bit, also when sampled files are
unreadable (the reservoir is then planned again) and when the reservoir overflows (values replaced)."""

from __future__ import annotations

import numpy as np
import torch

from retrieval_service.build.edges import fit_edges_in_processes
from retrieval_service.build.shards import make_loader
from retrieval_service.build.workers import ExtractionSetup
from retrieval_service.index.corpus import enumerate_corpus
from services.extract import DescriptorExtractor, fit_edges, make_spec
from tests.retrieval.buildutil import image_folder


def test_parallel_edge_fit_equals_the_serial_one_with_unreadable_samples(tmp_path):
    corpus = enumerate_corpus(image_folder(tmp_path / "images", bad=True))
    spec = make_spec("gabor", size=32, bins=8)
    batches = [list(range(i, min(i + 5, len(corpus.records)))) for i in range(0, len(corpus.records), 5)]
    extractor = DescriptorExtractor(spec, device="cpu")
    loader = make_loader(corpus.root, corpus.records, spec.size, batches, 0)
    readable = [b.images.numpy() for b in loader if b.ok.any()]
    assert sum(len(r) for r in readable) < len(corpus.records)  # the bad files are in the sample
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # as the build's in-process fit and every worker run
    try:
        expected = fit_edges(extractor, readable, spec.bins, max_values_per_filter=3_000, seed=5)
    finally:
        torch.set_num_threads(before)
    setup = ExtractionSetup.of(spec, "cpu", None)
    edges = fit_edges_in_processes(
        setup, extractor, corpus.root, corpus.records, batches, spec.bins, 5, processes=2, capacity=3_000
    )
    assert np.array_equal(edges, expected)
