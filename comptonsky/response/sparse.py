"""Sparse response storage: segmented CSR in both orientations, parallel numba gather kernels.

Data index i = k · n_psi + p, with k the flattened (Em, Phi) index and p the PsiChi pixel. For each
k the response is a sparse matrix S_k (n_model, n_psi), stored k-major as ``rows`` (S_k in CSR,
for the adjoint (Rᵀy)_j = Σ_k Σ_p S_k[j, p] y_{k,p}) and ``cols`` (S_kᵀ in CSR, for the forward
(R x)_{k,p} = Σ_j S_k[j, p] x_j), so that both products are gathers over (k, row range) tiles.
R_ij is stored when R_ij > threshold · max_i R_ij; the exposure is that of the stored elements, so
the operator stays consistent. Design and measurements: docs/performance.md.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

import numba
import numpy as np
from numba import prange
from threadpoolctl import threadpool_info, threadpool_limits

from .._numba import njit
from ..errors import InvalidDataError
from .operator import ResponseOperator, ResponseSubset

__all__ = ["SegmentedCSR", "SparseResponse", "SparseSubset", "build_rows", "index_dtype"]

logger = logging.getLogger(__name__)


def index_dtype(n_columns: int) -> np.dtype:
    """uint16 for up to 65536 columns, else int32."""
    return np.dtype(np.uint16) if n_columns <= np.iinfo(np.uint16).max + 1 else np.dtype(np.int32)


@dataclass
class SegmentedCSR:
    """k-major CSR of n_seg matrices of shape (n_rows, n_cols) sharing one index/value array:
    the elements of row r of segment k are ``ptr[k, r] : ptr[k, r + 1]`` (``ptr`` (n_seg,
    n_rows + 1) int64, absolute offsets), with columns ``idx`` (nnz,) uint16 or int32 and values
    ``val`` (nnz,) float32 or float64 in cm² s."""

    ptr: np.ndarray
    idx: np.ndarray
    val: np.ndarray
    n_cols: int

    @property
    def n_seg(self) -> int:
        return int(self.ptr.shape[0])

    @property
    def n_rows(self) -> int:
        return int(self.ptr.shape[1] - 1)

    @property
    def nnz(self) -> int:
        return int(self.val.shape[0])

    @property
    def nbytes(self) -> int:
        return int(self.ptr.nbytes + self.idx.nbytes + self.val.nbytes)


# numba kernels: accumulation in the value dtype within a row segment, in float64 across them.

@njit(parallel=True, fastmath=True, cache=True, nogil=True)
def _gather(start, end, idx, val, vec, stride, n_vec, n_chunks, out):  # pragma: no cover
    """out[k, r] = Σ_n val[n] · v_k[idx[n]] over n in start[k, r]:end[k, r], with
    v_k = vec[k·stride:][:n_vec]; ``out`` zero-filled on entry (its dtype is the accumulator's)."""
    n_seg, n_rows = start.shape
    chunk = (n_rows + n_chunks - 1) // n_chunks
    for task in prange(n_seg * n_chunks):
        k = task // n_chunks
        r0 = (task % n_chunks) * chunk
        r1 = min(r0 + chunk, n_rows)
        v = vec[k * stride:k * stride + n_vec]
        for r in range(r0, r1):
            a0 = out[k, r]  # zero, typed like out (a literal 0 would promote float32)
            a1 = a0
            a2 = a0
            a3 = a0
            n = start[k, r]
            e = end[k, r]
            while n + 4 <= e:
                a0 += val[n] * v[idx[n]]
                a1 += val[n + 1] * v[idx[n + 1]]
                a2 += val[n + 2] * v[idx[n + 2]]
                a3 += val[n + 3] * v[idx[n + 3]]
                n += 4
            while n < e:
                a0 += val[n] * v[idx[n]]
                n += 1
            out[k, r] = (a0 + a1) + (a2 + a3)


@njit(cache=True, nogil=True)
def _scatter_rows(ptr, idx, val, rows, coef, out):  # pragma: no cover - compiled
    """out[k, idx] += val · coef[t] over the elements of rows[t] (a few rows)."""
    n_seg = ptr.shape[0]
    for t in range(rows.shape[0]):
        j = rows[t]
        c = coef[t]
        for k in range(n_seg):
            for n in range(ptr[k, j], ptr[k, j + 1]):
                out[k, idx[n]] += val[n] * c


@njit(parallel=True, cache=True, nogil=True)
def _regroup(ptr, idx, n_groups, counts, fill, gptr, gidx, gval, val):  # pragma: no cover
    """Split each segment's columns p into groups p mod n_groups (local column p // n_groups):
    pass 1 (not ``fill``) counts into ``counts[g·n_seg + k, r]``, pass 2 writes at ``gptr``."""
    n_seg = ptr.shape[0]
    n_rows = ptr.shape[1] - 1
    for k in prange(n_seg):
        for r in range(n_rows):
            for n in range(ptr[k, r], ptr[k, r + 1]):
                g = idx[n] % n_groups
                s = g * n_seg + k
                if fill:
                    o = gptr[s, r] + counts[s, r]
                    gidx[o] = idx[n] // n_groups
                    gval[o] = val[n]
                counts[s, r] += 1


@njit(parallel=True, cache=True, nogil=True)
def _count_block(block, thr, counts, totals, kept):  # pragma: no cover - compiled
    """Per row r and segment k of a dense block (n_rows, n_seg, n_cols): elements > thr[r]."""
    n_rows, n_seg, n_cols = block.shape
    for r in prange(n_rows):
        t = thr[r]
        tot = 0.0
        kp = 0.0
        for k in range(n_seg):
            c = 0
            for p in range(n_cols):
                v = block[r, k, p]
                tot += v
                if v > t:
                    c += 1
                    kp += v
            counts[k, r] = c
        totals[r] = tot
        kept[r] = kp


@njit(parallel=True, cache=True, nogil=True)
def _fill_block(block, thr, ptr, idx, val):  # pragma: no cover - compiled
    """Write the kept elements of a dense block into k-major CSR arrays."""
    n_rows, n_seg, n_cols = block.shape
    for r in prange(n_rows):
        t = thr[r]
        for k in range(n_seg):
            o = ptr[k, r]
            for p in range(n_cols):
                v = block[r, k, p]
                if v > t:
                    idx[o] = p
                    val[o] = v
                    o += 1


@njit(parallel=True, cache=True, nogil=True)
def _transpose_counts(ptr, idx, n_cols, counts):  # pragma: no cover - compiled
    n_seg = ptr.shape[0]
    n_rows = ptr.shape[1] - 1
    for k in prange(n_seg):
        for n in range(ptr[k, 0], ptr[k, n_rows]):
            counts[k, idx[n]] += 1


@njit(parallel=True, cache=True, nogil=True)
def _transpose_fill(ptr, idx, val, tptr, tidx, tval):  # pragma: no cover - compiled
    n_seg = ptr.shape[0]
    n_rows = ptr.shape[1] - 1
    n_cols = tptr.shape[1] - 1
    for k in prange(n_seg):
        nxt = tptr[k, :n_cols].copy()
        for r in range(n_rows):
            for n in range(ptr[k, r], ptr[k, r + 1]):
                c = idx[n]
                o = nxt[c]
                tidx[o] = r
                tval[o] = val[n]
                nxt[c] = o + 1


def _ptr_from_counts(counts: np.ndarray) -> np.ndarray:
    """k-major absolute offsets (n_seg, n_rows + 1) from counts (n_seg, n_rows)."""
    n_seg, n_rows = counts.shape
    flat = np.zeros(n_seg * n_rows + 1, dtype=np.int64)
    np.cumsum(counts.reshape(-1), out=flat[1:])
    ptr = np.empty((n_seg, n_rows + 1), dtype=np.int64)
    ptr[:, :n_rows] = flat[:-1].reshape(n_seg, n_rows)
    ptr[:, n_rows] = flat[n_rows::n_rows][:n_seg]
    return ptr


def transpose(rows: SegmentedCSR) -> SegmentedCSR:
    """The per-segment transpose (S_kᵀ for every k, columns sorted within each row)."""
    counts = np.zeros((rows.n_seg, rows.n_cols), dtype=np.int64)
    _transpose_counts(rows.ptr, rows.idx, rows.n_cols, counts)
    tptr = _ptr_from_counts(counts)
    tidx = np.empty(rows.nnz, dtype=index_dtype(rows.n_rows))
    tval = np.empty(rows.nnz, dtype=rows.val.dtype)
    _transpose_fill(rows.ptr, rows.idx, rows.val, tptr, tidx, tval)
    return SegmentedCSR(tptr, tidx, tval, rows.n_rows)


_BLAS_LIMITED = False


def limit_blas_threads() -> bool:
    """Run BLAS single-threaded from now on in this process (once; logged); True if done.

    OpenBLAS workers busy-wait after each threaded call, and in an RL iteration the vector
    operations right before the sparse kernels leave them spinning on the numba threads' cores
    (docs/performance.md). Undo with ``threadpoolctl.threadpool_limits(n, user_api="blas")``.
    """
    global _BLAS_LIMITED
    if _BLAS_LIMITED or numba.get_num_threads() < 2:
        return False
    _BLAS_LIMITED = True
    if not any(i.get("user_api") == "blas" and i.get("num_threads", 1) > 1
               for i in threadpool_info()):
        return False
    threadpool_limits(1, user_api="blas")
    logger.info("sparse response: BLAS limited to 1 thread so that its spinning worker threads "
                "do not take cores from the %d numba kernel threads", numba.get_num_threads())
    return True


def _n_chunks(n_seg: int) -> int:
    threads = numba.get_num_threads()
    return max(1, -(-4 * threads // max(n_seg, 1)))


def build_rows(blocks: Iterable[tuple[int, int, np.ndarray]], n_model: int, n_seg: int,
               n_cols: int, dtype, threshold: float
               ) -> tuple[SegmentedCSR, np.ndarray, float, float]:
    """The rows orientation from dense row ``blocks`` (j0, j1, rows (j1 − j0, n_seg · n_cols)):
    every row in order, in ``dtype``, each used before the next is asked for; kept are the
    R_ij > threshold · max_i R_ij.

    Returns
    -------
    rows : SegmentedCSR
    row_kept : ndarray, shape (n_model,), float64
        Σ_i R_ij of the kept elements.
    dropped_flux_fraction, max_row_dropped_fraction : float
        As :class:`SparseResponse`'s.

    The blocks are checked before they get here (:meth:`~.source.ResponseSource.blocks`:
    finite values ≥ 0).
    """
    dtype = np.dtype(dtype)
    row_total = np.zeros(n_model)
    row_kept = np.zeros(n_model)
    counts = np.empty((n_seg, n_model), dtype=np.int64)
    pieces = []
    for j0, j1, block in blocks:
        thr = (block.max(axis=1).astype(np.float64) * threshold).astype(dtype)
        if threshold == 0.0:
            thr[:] = 0
        b3 = block.reshape(j1 - j0, n_seg, n_cols)
        _count_block(b3, thr, counts[:, j0:j1], row_total[j0:j1], row_kept[j0:j1])
        ptr = _ptr_from_counts(counts[:, j0:j1])
        idx = np.empty(int(ptr[-1, -1]), dtype=index_dtype(n_cols))
        val = np.empty(int(ptr[-1, -1]), dtype=dtype)
        _fill_block(b3, thr, ptr, idx, val)
        pieces.append((j0, ptr, idx, val))
    gptr = _ptr_from_counts(counts)
    idx = np.empty(int(gptr[-1, -1]), dtype=index_dtype(n_cols))
    val = np.empty(int(gptr[-1, -1]), dtype=dtype)
    while pieces:                      # join segment by segment, freeing the pieces
        j0, ptr, pidx, pval = pieces.pop(0)
        for k in range(n_seg):
            s, e, d = int(ptr[k, 0]), int(ptr[k, -1]), int(gptr[k, j0])
            idx[d:d + e - s] = pidx[s:e]
            val[d:d + e - s] = pval[s:e]
    total = float(row_total.sum())
    dropped = float((total - row_kept.sum()) / total) if total > 0 else 0.0
    with np.errstate(invalid="ignore", divide="ignore"):
        f = np.where(row_total > 0, 1.0 - row_kept / row_total, 0.0)
    return (SegmentedCSR(gptr, idx, val, n_cols), row_kept, dropped,
            float(f.max()) if f.size else 0.0)


class _SparseProducts:
    """Products through the forward orientation ``_fwd`` (segments ``_fwd_ptr``, or the row
    ranges ``_start:_end``) and the adjoint orientation ``_adj`` (segments ``_adj_ptr`` of
    ``_width`` columns)."""

    _start = _end = None

    def _matvec(self, x):
        start = self._fwd_ptr[:, :-1] if self._start is None else self._start
        end = self._fwd_ptr[:, 1:] if self._end is None else self._end
        out = np.zeros(start.shape, dtype=self.dtype)
        _gather(start, end, self._fwd.idx, self._fwd.val, x.astype(self.dtype), 0,
                self.n_model, _n_chunks(start.shape[0]), out)
        return out.reshape(-1).astype(np.float64)

    def _rmatvec(self, y):
        ptr = self._adj_ptr
        out = np.zeros((ptr.shape[0], ptr.shape[1] - 1), dtype=self.dtype)
        _gather(ptr[:, :-1], ptr[:, 1:], self._adj.idx, self._adj.val, y.astype(self.dtype),
                self._width, self._width, _n_chunks(ptr.shape[0]), out)
        return out.sum(axis=0, dtype=np.float64)

    def _matvec_rows(self, rows, coef):
        out = np.zeros((self._adj_ptr.shape[0], self._width), dtype=np.float64)
        _scatter_rows(self._adj_ptr, self._adj.idx, self._adj.val, rows.astype(np.int64),
                      np.asarray(coef, dtype=np.float64), out)
        return out.reshape(-1)


class SparseResponse(_SparseProducts, ResponseOperator):
    """Response held as segmented CSR in both orientations; parallel numba gather kernels.

    Parameters
    ----------
    rows, cols : SegmentedCSR
        The n_seg segments (n_model, n_psi) of the adjoint orientation and their transposes
        (computed from ``rows`` when None).
    model_axes, data_axes, pixel_solid_angle, unit, row_sums
        See :class:`~.operator.ResponseOperator`.
    threshold, dropped_flux_fraction, max_row_dropped_fraction : float
        The relative threshold the elements were kept with, and Σ of the dropped elements over
        Σ R (overall, and in the worst model element's row).
    """

    storage = "sparse"

    def __init__(self, rows: SegmentedCSR, cols: SegmentedCSR | None, model_axes, data_axes,
                 pixel_solid_angle, unit, threshold: float = 0.0,
                 dropped_flux_fraction: float = 0.0, max_row_dropped_fraction: float = 0.0,
                 row_sums: np.ndarray | None = None):
        super().__init__(model_axes, data_axes, pixel_solid_angle, unit, row_sums=row_sums,
                         dtype=rows.val.dtype)
        self.rows, self.n_seg, self.n_psi = rows, rows.n_seg, rows.n_cols
        if rows.n_rows != self.n_model or self.n_seg * self.n_psi != self.n_data:
            raise InvalidDataError(
                f"sparse response has {rows.n_rows} rows × {self.n_seg} segments × "
                f"{self.n_psi} columns, expected {self.n_model} rows and {self.n_data} data "
                "elements")
        self.cols = cols if cols is not None else transpose(rows)
        self.threshold = float(threshold)
        self.dropped_flux_fraction = float(dropped_flux_fraction)
        self.max_row_dropped_fraction = float(max_row_dropped_fraction)
        self._fwd, self._fwd_ptr = self.cols, self.cols.ptr
        self._adj, self._adj_ptr, self._width = self.rows, self.rows.ptr, self.n_psi
        limit_blas_threads()

    @property
    def nnz(self) -> int:
        return self.rows.nnz

    @property
    def density(self) -> float:
        """Stored elements / dense elements."""
        return self.nnz / (self.n_model * self.n_data)

    @property
    def nbytes(self) -> int:
        return self.rows.nbytes + self.cols.nbytes

    @property
    def bytes_per_product(self) -> int:
        return self.rows.nbytes

    def _subset(self, k, n_subsets, axis, indices):
        return SparseSubset(self, k, n_subsets, axis, indices)

    def regrouped(self, n_groups: int) -> SegmentedCSR:
        """The rows orientation split by PsiChi column p mod ``n_groups`` (made once, shared).

        Segment g · n_seg + k holds the elements of segment k with p ≡ g (mod n_groups), at
        local column p // n_groups: one more copy of :attr:`rows` in memory.
        """
        def make():
            r = self.rows
            counts = np.zeros((n_groups * r.n_seg, r.n_rows), dtype=np.int64)
            _regroup(r.ptr, r.idx, n_groups, counts, False, counts, r.idx, r.val, r.val)
            gptr = _ptr_from_counts(counts)
            gidx = np.empty(r.nnz, dtype=r.idx.dtype)
            gval = np.empty(r.nnz, dtype=r.val.dtype)
            counts[:] = 0
            _regroup(r.ptr, r.idx, n_groups, counts, True, gptr, gidx, gval, r.val)
            logger.info("OSEM PsiChi subsets: holding the sparse response regrouped by subset "
                        "(%.2f GB extra)", (gidx.nbytes + gval.nbytes + gptr.nbytes) / 1e9)
            return SegmentedCSR(gptr, gidx, gval, -(-r.n_cols // n_groups))
        return self._shared_copy(("regrouped", n_groups), make)


class SparseSubset(_SparseProducts, ResponseSubset):
    """A sparse response restricted to an interleaved data subset.

    Phi subsets (``mode='segments'``) gather from the parent's (Em, φ) segments of the subset
    directly. PsiChi subsets (``mode='regrouped'``) run the forward product on the selected
    rows of the forward orientation and the adjoint on :meth:`SparseResponse.regrouped`.
    """

    def __init__(self, parent: SparseResponse, k: int, n_subsets: int, axis: str,
                 indices: np.ndarray):
        super().__init__(parent, indices)
        self._fwd, n_psi = parent.cols, parent.n_psi
        if axis == "Phi":
            self.mode = "segments"
            seg = parent._phi_segments(k, n_subsets)
            self._fwd_ptr, self._adj_ptr = parent.cols.ptr[seg], parent.rows.ptr[seg]
            self._adj, self._width = parent.rows, n_psi
        else:
            self.mode = "regrouped"
            self._adj = parent.regrouped(n_subsets)
            self.extra_bytes = self._adj.nbytes
            self._adj_ptr = self._adj.ptr[k * parent.n_seg:(k + 1) * parent.n_seg]
            p = np.arange(k, n_psi, n_subsets)
            self._width = len(p)
            self._fwd_ptr = parent.cols.ptr
            self._start = np.ascontiguousarray(parent.cols.ptr[:, p])
            self._end = np.ascontiguousarray(parent.cols.ptr[:, p + 1])
