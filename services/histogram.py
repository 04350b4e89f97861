"""Exact per-filter histograms with arbitrary (fitted) edges, vectorised and cache-friendly.

Bin b holds e_b <= v < e_{b+1} (e_0 = -inf, e_B = +inf): the same answer as ``torch.searchsorted(edges, v,
right=True)``, which is the reference in tests, but about 3x faster on CPU, because a per-row binary search over
millions of values is slow there. The method:

1. each filter f gets a uniform grid of G cells over [e_1, e_{B-1}]; a value's cell is
   ``c(v) = int(clamp((v - lo_f) * iw_f, -0.5, G + 0.5) + 1 + offset)`` (float32 ops, each correctly rounded, hence
   monotone in v, and computed identically for values and edges);
2. monotonicity means only the cell c(e_j) can hold values on both sides of e_j, so each value is compared with the
   (at most ``kmax``, usually 1) edges whose cell is its own (one gather + one comparison);
3. one ``bincount`` over (image, filter, cell, side) counters, then a small scatter maps counters to bins.
"""

from __future__ import annotations

import torch

GRID_CELLS = 1024


class EdgeBinner:
    """Histogram counts of one layer's responses under its edges (D_l, B-1); tables built per filter block."""

    def __init__(self, edges: torch.Tensor, grid: int = GRID_CELLS):
        self.edges = edges.to(torch.float32)  # (D, B-1)
        self.n_bins = edges.shape[1] + 1
        self.grid, self.cells = grid, grid + 2
        span = self.edges[:, -1] - self.edges[:, 0]
        self.lo = self.edges[:, 0].clone()
        self.iw = torch.where(span > 0, grid / torch.where(span > 0, span, 1.0), torch.ones_like(span))
        self._tables: dict[tuple[int, int], tuple] = {}

    def _cell_codes(self, values: torch.Tensor, lo: torch.Tensor, iw: torch.Tensor, local: torch.Tensor):
        """The monotone cell index (step 1); ``lo``, ``iw``, ``local`` broadcast like ``values``."""
        t = values - lo
        t.mul_(iw).clamp_(-0.5, self.grid + 0.5).add_(local)
        return t.to(torch.int64).contiguous()  # a channels-last input would give strided codes

    def _table(self, first: int, count: int) -> tuple:
        """Per block of filters [first, first + count): broadcast params, candidate edges, counter -> bin map."""
        key = (first, count)
        if key in self._tables:
            return self._tables[key]
        dev = self.edges.device
        lo, iw = self.lo[first : first + count], self.iw[first : first + count]
        local = (torch.arange(count, device=dev, dtype=torch.float32) * self.cells + 1.0)  # (d,)
        edges = self.edges[first : first + count]  # (d, B-1)
        codes = self._cell_codes(edges, lo[:, None], iw[:, None], local[:, None])  # (d, B-1), same ops as values
        flat = count * self.cells
        per_cell = torch.bincount(codes.view(-1), minlength=flat)
        kmax = max(1, int(per_cell.max()))
        cand = torch.full((flat, kmax), float("inf"), device=dev)  # edges inside each cell, +inf padded
        order = torch.argsort(codes.view(-1), stable=True)
        sorted_codes = codes.view(-1)[order]
        slot = torch.arange(sorted_codes.numel(), device=dev) - torch.searchsorted(sorted_codes, sorted_codes)
        cand[sorted_codes, slot] = edges.reshape(-1)[order]
        # base[c] = edges of this filter whose cell is below c; a counter (side j, cell c) is bin base[c] + j.
        cell_ids = torch.arange(flat, device=dev).view(count, self.cells)
        base = (codes[:, None, :] < cell_ids[:, :, None]).sum(-1)  # (d, cells)
        binmap = (base[:, None, :] + torch.arange(kmax + 1, device=dev).view(1, -1, 1)).reshape(count, -1)
        table = (lo, iw, local, cand.squeeze(1) if kmax == 1 else cand, kmax, binmap.clamp_(max=self.n_bins - 1))
        self._tables[key] = table
        return table

    def counts(self, values: torch.Tensor, filter_ids: torch.Tensor) -> torch.Tensor:
        """values (N, ...) with ``filter_ids`` (broadcastable, a contiguous range) -> int64 counts (N, d, B)."""
        first = int(filter_ids.min())
        count = int(filter_ids.max()) - first + 1
        lo, iw, local, cand, kmax, binmap = self._table(first, count)
        ids = filter_ids - first
        idx = self._cell_codes(values, lo[ids], iw[ids], local[ids])  # (N, ...) local counter index
        if kmax == 1:
            above = values >= cand.index_select(0, idx.view(-1)).view(idx.shape)
        else:
            above = (values.unsqueeze(-1) >= cand.index_select(0, idx.view(-1)).view(*idx.shape, kmax)).sum(-1)
        n_img = values.shape[0]
        flat = count * self.cells
        # Counter layout (side, image, filter, cell): side 0/1.. = how many of the cell's edges v reaches.
        img_off = (torch.arange(n_img, device=values.device) * flat).view(-1, *([1] * (values.ndim - 1)))
        idx.add_(img_off).add_(above, alpha=n_img * flat)
        counters = torch.bincount(idx.view(-1), minlength=(kmax + 1) * n_img * flat)
        counters = counters.view(kmax + 1, n_img, count, self.cells).permute(1, 2, 0, 3).reshape(n_img, count, -1)
        out = torch.zeros(n_img, count, self.n_bins, dtype=torch.int64, device=values.device)
        return out.scatter_add_(2, binmap.expand(n_img, -1, -1), counters)
