"""Sparse response storage: segmented CSR in both orientations, parallel gather kernels.

Data index i = k · n_psi + p, with k the flattened (Em, Phi) index and p the PsiChi pixel. For each
k the response is a sparse matrix S_k (n_model, n_psi), stored k-major as ``rows`` (S_k in CSR,
for the adjoint (Rᵀy)_j = Σ_k Σ_p S_k[j, p] y_{k,p}) and ``cols`` (S_kᵀ in CSR, for the forward
(R x)_{k,p} = Σ_j S_k[j, p] x_j), so that both products are gathers over (k, row range) tiles.
R_ij is stored when R_ij > threshold · max_i R_ij; the exposure is that of the stored elements, so
the operator stays consistent. Design and measurements: docs/performance.md.

The product kernels are compiled C (``_sparse_kernels``, built when the package is installed);
their numba twins here (``_gather``, ``_scatter``, ``_scatter_rows``) compute the same sums and run
where the C module is missing, or after ``use_kernels("numba")``. The C module loads in a
millisecond, where the first numba kernel of a process costs about 0.3 s.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numba
import numpy as np
from numba import prange
from threadpoolctl import threadpool_info, threadpool_limits

from .._numba import njit
from ..errors import InvalidDataError, InvalidParameterError, UnknownChoiceError
from .operator import ResponseOperator, ResponseSubset

__all__ = ["SegmentedCSR", "SparseResponse", "SparseSubset", "build_rows", "index_dtype",
           "PSI_GROUPS", "psi_groups_for", "transpose", "forward_bounds",
           "kernel_threads", "set_kernel_threads", "row_splits", "use_kernels", "kernels_in_use"]

logger = logging.getLogger(__name__)

try:
    from . import _sparse_kernels as _c_kernels
except ImportError as exc:  # a source tree that was not built
    _c_kernels = None
    logger.debug("compiled sparse kernels unavailable (%s); using the numba kernels", exc)


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

@njit(fastmath=True, cache=True, nogil=True)
def _gather(start, end, idx, val, vec, stride, n_vec, q0, q1, out):  # pragma: no cover
    """out[k, r] = Σ_n val[n] · v_k[idx[n]] over n in start[k, r]:end[k, r], with
    v_k = vec[k·stride:][:n_vec], for the rows q0 ≤ q < q1 of the flattened (k, r) grid
    (q = k · n_rows + r); ``out`` zero-filled on entry, its dtype the accumulator's.

    Each row is a slice of ``idx`` and ``val``: indexing a slice with its own range (n ≥ 0 by
    construction) lets LLVM drop numba's negative-index wraparound and turn the loop into
    AVX gathers (``vgatherdps``) with fused multiply-adds, 5× the scalar loop it compiles to
    when the loop runs over absolute offsets read from an array. Serial and ``nogil``: the
    callers run one row range per thread (:func:`_run_rows`), which compiles in a third of the
    time of a ``parallel=True`` kernel."""
    n_rows = start.shape[1]
    if q1 <= q0:
        return
    for k in range(q0 // n_rows, (q1 - 1) // n_rows + 1):
        v = vec[k * stride:k * stride + n_vec]
        r0 = max(q0 - k * n_rows, 0)
        r1 = min(q1 - k * n_rows, n_rows)
        for r in range(r0, r1):
            s = start[k, r]
            e = end[k, r]
            ii = idx[s:e]
            vv = val[s:e]
            a = out[k, r]  # zero-filled on entry, typed like out (a literal 0 would promote float32)
            for n in range(vv.shape[0]):
                a += vv[n] * v[ii[n]]
            out[k, r] = a


@njit(cache=True, nogil=True)
def _scatter(start, end, idx, val, vec, q0, q1, out):  # pragma: no cover - compiled
    """out[idx[n]] += val[n] · vec[q] over n in start[q]:end[q], for the rows q0 ≤ q < q1 of
    the flattened (k, t) grid of ``start``/``end`` (n_seg, w), ``vec`` (n_seg · w,) in that
    order; rows with vec[q] = 0 are skipped. ``out`` (n_cols,) float64, this thread's own.

    The adjoint of a data subset from the forward orientation: the output (one row of the
    model space) stays in the L1 cache, and the rows read are whole rows of the forward
    orientation, so the bytes streamed are the subset's share, and fewer where its data are
    zero (OSEM's ratios X / ε vanish on the empty bins)."""
    w = start.shape[1]
    for q in range(q0, q1):
        c = vec[q]
        if c == 0:
            continue
        k = q // w
        t = q - k * w
        s = start[k, t]
        e = end[k, t]
        ii = idx[s:e]
        vv = val[s:e]
        for n in range(vv.shape[0]):
            out[ii[n]] += vv[n] * c


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


#: which kernels the products run: "c" where the C module was built, else "numba"
_KERNELS = "c" if _c_kernels is not None else "numba"


def use_kernels(name: str) -> None:
    """Run the sparse products with the compiled C kernels (``"c"``, the default where built) or
    their numba twins (``"numba"``).

    Raises
    ------
    UnknownChoiceError
        For another name, or ``"c"`` where the C module was not built.
    """
    global _KERNELS
    choices = ("c", "numba") if _c_kernels is not None else ("numba",)
    if name not in choices:
        raise UnknownChoiceError("sparse kernels", name, choices, "use_kernels")
    _KERNELS = name


def kernels_in_use() -> str:
    """``"c"`` or ``"numba"``: which kernels the sparse products run."""
    return _KERNELS


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
def _transpose_counts(ptr, idx, groups, counts):  # pragma: no cover - compiled
    """counts[(c mod groups) · n_seg + k, c // groups]: elements of column c in segment k."""
    n_seg = ptr.shape[0]
    n_rows = ptr.shape[1] - 1
    for k in prange(n_seg):
        for n in range(ptr[k, 0], ptr[k, n_rows]):
            c = idx[n]
            counts[(c % groups) * n_seg + k, c // groups] += 1


@njit(parallel=True, cache=True, nogil=True)
def _transpose_fill(ptr, idx, val, groups, tptr, tidx, tval):  # pragma: no cover - compiled
    n_seg = ptr.shape[0]
    n_rows = ptr.shape[1] - 1
    width = tptr.shape[1] - 1
    for k in prange(n_seg):
        nxt = np.empty((groups, width), dtype=np.int64)
        for h in range(groups):
            nxt[h] = tptr[h * n_seg + k, :width]
        for r in range(n_rows):
            for n in range(ptr[k, r], ptr[k, r + 1]):
                c = idx[n]
                h = c % groups
                t = c // groups
                o = nxt[h, t]
                tidx[o] = r
                tval[o] = val[n]
                nxt[h, t] = o + 1


def _ptr_from_counts(counts: np.ndarray) -> np.ndarray:
    """k-major absolute offsets (n_seg, n_rows + 1) from counts (n_seg, n_rows)."""
    n_seg, n_rows = counts.shape
    flat = np.zeros(n_seg * n_rows + 1, dtype=np.int64)
    np.cumsum(counts.reshape(-1), out=flat[1:])
    ptr = np.empty((n_seg, n_rows + 1), dtype=np.int64)
    ptr[:, :n_rows] = flat[:-1].reshape(n_seg, n_rows)
    ptr[:, n_rows] = flat[n_rows::n_rows][:n_seg]
    return ptr


#: The forward orientation holds the rows (k, p) grouped by PsiChi pixel p mod PSI_GROUPS
#: (where that divides the number of PsiChi pixels): the rows of a PsiChi subset of
#: n | PSI_GROUPS subsets are then n_subsets / PSI_GROUPS contiguous runs.
PSI_GROUPS = 48


def psi_groups_for(n_psi: int) -> int:
    """The grouping of the forward rows: :data:`PSI_GROUPS` if it divides ``n_psi``, else 1."""
    return PSI_GROUPS if n_psi % PSI_GROUPS == 0 else 1


def transpose(rows: SegmentedCSR, groups: int = 1) -> SegmentedCSR:
    """The per-segment transposes S_kᵀ, rows (k, p) grouped by p mod ``groups``: segment
    (p mod groups) · n_seg + k, row p // groups (``groups`` divides n_cols; row indices sorted
    within each row). With ``groups`` 1 the segments are the S_kᵀ themselves."""
    if groups < 1 or rows.n_cols % groups:
        raise InvalidParameterError(f"transpose: {groups} PsiChi groups, expected a divisor of "
                                    f"{rows.n_cols}")
    counts = np.zeros((groups * rows.n_seg, rows.n_cols // groups), dtype=np.int64)
    _transpose_counts(rows.ptr, rows.idx, groups, counts)
    tptr = _ptr_from_counts(counts)
    tidx = np.empty(rows.nnz, dtype=index_dtype(rows.n_rows))
    tval = np.empty(rows.nnz, dtype=rows.val.dtype)
    _transpose_fill(rows.ptr, rows.idx, rows.val, groups, tptr, tidx, tval)
    return SegmentedCSR(tptr, tidx, tval, rows.n_rows)


def forward_bounds(cols: SegmentedCSR, groups: int, n_seg: int, k: np.ndarray,
                   p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The kernel's row bounds for the forward rows (k[o], p[o]) (output element o), ordered as
    they lie in memory: ``start``, ``end`` (1, m) int64 views (the layout of ``ptr[:, :-1]``,
    one kernel signature) and ``pos`` (m,): row i computes output element pos[i] (None when
    the memory order is the output order)."""
    width = cols.n_rows
    srow = ((p % groups) * n_seg + k) * width + p // groups
    if srow.size == cols.n_seg * width:          # every row: a permutation
        order = np.empty_like(srow)
        order[srow] = np.arange(srow.size)
    else:
        order = np.argsort(srow, kind="stable")
    seg, r = np.divmod(srow[order], width)
    b = np.zeros((2, 1, srow.size + 1), dtype=np.int64)
    b[0, 0, :-1] = cols.ptr[seg, r]
    b[1, 0, :-1] = cols.ptr[seg, r + 1]
    pos = None if np.array_equal(order, np.arange(order.size)) else order
    return b[0, :, :-1], b[1, :, :-1], pos


_BLAS_LIMITED = False
_THREADS: int | None = None
_POOL: ThreadPoolExecutor | None = None


def kernel_threads() -> int:
    """Threads the sparse products run on: :func:`set_kernel_threads`, else numba's configured
    number (``$NUMBA_NUM_THREADS``, default the CPU count)."""
    return _THREADS if _THREADS is not None else int(numba.config.NUMBA_NUM_THREADS)


def set_kernel_threads(n: int | None) -> None:
    """Run the sparse products on ``n`` threads (None: the default of :func:`kernel_threads`)."""
    global _THREADS
    if n is not None and int(n) < 1:
        raise InvalidParameterError(f"sparse kernel threads: expected ≥ 1, found {n}")
    _THREADS = None if n is None else int(n)


def _pool(workers: int) -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None or _POOL._max_workers < workers:
        if _POOL is not None:
            _POOL.shutdown(wait=True)
        _POOL = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="comptonsky-sparse")
    return _POOL


def row_splits(start: np.ndarray, end: np.ndarray, n_parts: int) -> np.ndarray:
    """Boundaries (n_parts + 1,) of ``n_parts`` ranges of the flattened rows with about equal
    numbers of stored elements."""
    lengths = (end - start).reshape(-1)
    cum = np.cumsum(lengths)
    total = int(cum[-1]) if cum.size else 0
    # range i ends after the first row where the running count reaches i/n of the total
    cuts = np.searchsorted(cum, total * np.arange(1, n_parts) / n_parts, side="left") + 1
    cuts = np.minimum(cuts, lengths.size)
    return np.concatenate([[0], cuts, [lengths.size]]).astype(np.int64)


def _run_rows(splits: np.ndarray, start, end, idx, val, vec, stride, n_vec, out) -> None:
    """The gather over the row ranges ``splits`` (int64), one per thread: the C kernel runs them
    on its own worker threads; the numba kernel runs the first in this thread and the others on
    a Python thread pool (it releases the GIL)."""
    if _KERNELS == "c":
        _c_kernels.gather(start, end, idx, val, vec, stride, n_vec, splits, out)
        return
    n = len(splits) - 1
    futures = [_pool(n - 1).submit(_gather, start, end, idx, val, vec, stride, n_vec,
                                   int(splits[i]), int(splits[i + 1]), out)
               for i in range(1, n)]
    _gather(start, end, idx, val, vec, stride, n_vec, int(splits[0]), int(splits[1]), out)
    for f in futures:
        f.result()


def _run_scatter(splits: np.ndarray, start, end, idx, val, vec, n_out: int) -> np.ndarray:
    """The scatter over the row ranges ``splits``, one private output per range (on the C
    kernel's threads, or the first in this thread and the others on a Python thread pool for the
    numba kernel); their sum, (n_out,) float64."""
    n = len(splits) - 1
    out = np.zeros((n, n_out), dtype=np.float64)
    if _KERNELS == "c":
        _c_kernels.scatter(start, end, idx, val, vec, splits, out)
        return out[0] if n == 1 else out.sum(axis=0)
    futures = [_pool(n - 1).submit(_scatter, start, end, idx, val, vec, int(splits[i]),
                                   int(splits[i + 1]), out[i])
               for i in range(1, n)]
    _scatter(start, end, idx, val, vec, int(splits[0]), int(splits[1]), out[0])
    for f in futures:
        f.result()
    return out[0] if n == 1 else out.sum(axis=0)


def limit_blas_threads() -> bool:
    """Run BLAS single-threaded from now on in this process (once; logged); True if done.

    OpenBLAS workers busy-wait after each threaded call, and in an RL iteration the vector
    operations right before the sparse kernels leave them spinning on the kernel threads' cores
    (docs/performance.md). Undo with ``threadpoolctl.threadpool_limits(n, user_api="blas")``.
    """
    global _BLAS_LIMITED
    if _BLAS_LIMITED or kernel_threads() < 2:
        return False
    _BLAS_LIMITED = True
    if not any(i.get("user_api") == "blas" and i.get("num_threads", 1) > 1
               for i in threadpool_info()):
        return False
    threadpool_limits(1, user_api="blas")
    logger.info("sparse response: BLAS limited to 1 thread so that its spinning worker threads "
                "do not take cores from the %d sparse kernel threads", kernel_threads())
    return True


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
    """Products through the forward orientation ``_fwd`` (kernel rows ``_fstart``,
    ``_fend`` (1, m) in memory order, row i giving output element ``_fpos[i]``, or i when
    ``_fpos`` is None; :func:`forward_bounds`) and the adjoint orientation ``_adj`` (segments
    ``_adj_ptr`` of ``_width`` columns). The kernel gets the row bounds as views of the layout
    of ``ptr[:, :-1]``, so every operator calls it with one signature per dtype."""

    _fpos: np.ndarray | None = None

    def _splits(self, which: str, start, end) -> np.ndarray:
        n = kernel_threads()
        cache = self.__dict__.setdefault("_split_cache", {})
        if (which, n) not in cache:
            cache[(which, n)] = row_splits(start, end, n)
        return cache[(which, n)]

    def _matvec(self, x):
        out = np.zeros(self._fstart.shape, dtype=self.dtype)
        _run_rows(self._splits("fwd", self._fstart, self._fend), self._fstart, self._fend,
                  self._fwd.idx, self._fwd.val, x.astype(self.dtype), 0, self.n_model, out)
        if self._fpos is None:
            return out.reshape(-1).astype(np.float64)
        res = np.empty(out.size, dtype=np.float64)
        res[self._fpos] = out.reshape(-1)
        return res

    def _rmatvec(self, y):
        ptr = self._adj_ptr
        start, end = ptr[:, :-1], ptr[:, 1:]
        out = np.zeros(start.shape, dtype=self.dtype)
        _run_rows(self._splits("adj", start, end), start, end, self._adj.idx, self._adj.val,
                  y.astype(self.dtype), self._width, self._width, out)
        return out.sum(axis=0, dtype=np.float64)

    def _matvec_rows(self, rows, coef):
        out = np.zeros((self._adj_ptr.shape[0], self._width), dtype=np.float64)
        scatter_rows = _c_kernels.scatter_rows if _KERNELS == "c" else _scatter_rows
        scatter_rows(self._adj_ptr, self._adj.idx, self._adj.val, rows.astype(np.int64),
                     np.asarray(coef, dtype=np.float64), out)
        return out.reshape(-1)


class SparseResponse(_SparseProducts, ResponseOperator):
    """Response held as segmented CSR in both orientations; parallel gather kernels.

    Parameters
    ----------
    rows, cols : SegmentedCSR
        The n_seg segments (n_model, n_psi) of the adjoint orientation and their transposes,
        grouped as :func:`transpose` does (computed from ``rows`` when None).
    model_axes, data_axes, pixel_solid_angle, unit, row_sums
        See :class:`~.operator.ResponseOperator`.
    threshold, dropped_flux_fraction, max_row_dropped_fraction : float
        The relative threshold the elements were kept with, and Σ of the dropped elements over
        Σ R (overall, and in the worst model element's row).
    psi_groups : int, optional
        The grouping of ``cols`` (:func:`transpose`); default :func:`psi_groups_for` when
        ``cols`` is None, else read from its shape.
    """

    storage = "sparse"

    def __init__(self, rows: SegmentedCSR, cols: SegmentedCSR | None, model_axes, data_axes,
                 pixel_solid_angle, unit, threshold: float = 0.0,
                 dropped_flux_fraction: float = 0.0, max_row_dropped_fraction: float = 0.0,
                 row_sums: np.ndarray | None = None, psi_groups: int | None = None):
        super().__init__(model_axes, data_axes, pixel_solid_angle, unit, row_sums=row_sums,
                         dtype=rows.val.dtype)
        self.rows, self.n_seg, self.n_psi = rows, rows.n_seg, rows.n_cols
        if rows.n_rows != self.n_model or self.n_seg * self.n_psi != self.n_data:
            raise InvalidDataError(
                f"sparse response has {rows.n_rows} rows × {self.n_seg} segments × "
                f"{self.n_psi} columns, expected {self.n_model} rows and {self.n_data} data "
                "elements")
        if cols is None:
            self.psi_groups = psi_groups_for(self.n_psi) if psi_groups is None else psi_groups
            cols = transpose(rows, self.psi_groups)
        else:
            self.psi_groups = cols.n_seg // max(self.n_seg, 1) if psi_groups is None \
                else psi_groups
        if (self.psi_groups < 1 or self.n_psi % self.psi_groups
                or cols.n_seg != self.psi_groups * self.n_seg
                or cols.n_rows != self.n_psi // self.psi_groups or cols.n_cols != self.n_model):
            raise InvalidDataError(
                f"sparse response: forward orientation of {cols.n_seg} segments × "
                f"{cols.n_rows} rows × {cols.n_cols} columns, expected "
                f"{self.psi_groups * self.n_seg} × {self.n_psi // max(self.psi_groups, 1)} × "
                f"{self.n_model} ({self.psi_groups} PsiChi groups)")
        self.cols = cols
        self.threshold = float(threshold)
        self.dropped_flux_fraction = float(dropped_flux_fraction)
        self.max_row_dropped_fraction = float(max_row_dropped_fraction)
        self._fwd = self.cols
        self._fstart, self._fend, self._fpos = self.forward_rows(
            np.arange(self.n_data) // self.n_psi, np.arange(self.n_data) % self.n_psi)
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

    def forward_rows(self, k: np.ndarray, p: np.ndarray):
        """:func:`forward_bounds` of the forward rows (k, p) of this response."""
        return forward_bounds(self.cols, self.psi_groups, self.n_seg, k, p)

    def _subset(self, k, n_subsets, axis, indices):
        return SparseSubset(self, k, n_subsets, axis, indices)


class SparseSubset(_SparseProducts, ResponseSubset):
    """A sparse response restricted to an interleaved data subset, with no copy of the response.

    The forward product gathers over the subset's rows (k, p) of the parent's forward
    orientation, in the order they lie in memory (:func:`forward_bounds`): for PsiChi subsets
    of n | ``psi_groups`` subsets, ``psi_groups / n`` contiguous runs, so a subset product
    streams its share of the bytes. The adjoint: Phi subsets (``mode='segments'``) gather from
    the parent's (Em, φ) segments of the adjoint orientation; PsiChi subsets (``mode='rows'``)
    scatter the same forward rows into a private model-space vector per thread
    (:func:`_scatter`, skipping zero data).
    """

    def __init__(self, parent: SparseResponse, k: int, n_subsets: int, axis: str,
                 indices: np.ndarray):
        super().__init__(parent, indices)
        self._fwd, n_psi = parent.cols, parent.n_psi
        self._fstart, self._fend, self._fpos = parent.forward_rows(self.data_indices // n_psi,
                                                                   self.data_indices % n_psi)
        if axis == "Phi":
            self.mode = "segments"
            self._adj_ptr = parent.rows.ptr[parent._phi_segments(k, n_subsets)]
            self._adj, self._width = parent.rows, n_psi
        else:
            self.mode = "rows"

    def _rmatvec(self, y):
        if self.mode != "rows":
            return super()._rmatvec(y)
        vec = (y if self._fpos is None else y[self._fpos]).astype(self.dtype)
        return _run_scatter(self._splits("fwd", self._fstart, self._fend), self._fstart,
                            self._fend, self._fwd.idx, self._fwd.val, vec, self.n_model)

    def _matvec_rows(self, rows, coef):
        if self.mode != "rows":
            return super()._matvec_rows(rows, coef)
        return self.parent._matvec_rows(rows, coef)[self.data_indices]
