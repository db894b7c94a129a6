"""The response restricted to a subset of the data bins (the interleaved subsets of OSEM).

:meth:`ResponseOperator.subset` returns one of these; each is a response operator whose data
space is the subset's bins (``data_indices``, ascending). How the products run depends on the
storage (``mode``):

``views`` (dense, Phi subsets)
    In the C-ordered (Em, Phi, PsiChi) data vector each (Em, φ) pair is a contiguous run of
    n_PsiChi bins, so every piece is a strided view of the matrix (row stride n_data) that BLAS
    multiplies directly: no copy, and a cycle over the subsets streams the matrix once.
``permuted`` (dense, PsiChi subsets)
    The subset's columns are scattered, so the matrix is copied once, column-permuted so that
    each subset is a contiguous block: one extra response in memory, shared by the subsets
    of one partition while any of them is alive.
``fallback``
    A full product, then the subset's bins are selected (or scattered): correct, but every
    product streams the whole response.

The sparse and out-of-core backends add their own modes (:mod:`.sparse`, :mod:`.outofcore`).
"""

from __future__ import annotations

import logging

import numpy as np

from .operator import ResponseOperator, ResponseSubset, subset_indices

__all__ = ["DenseColumnBlocks", "dense_subset"]

logger = logging.getLogger(__name__)


class _Holder:
    """A weakly referenceable box for an array (a shared permuted copy)."""

    def __init__(self, array):
        self.array = array


class _HostArrays:
    """Vector transfers for matrices held in host memory (the GPU backend has its own)."""

    @staticmethod
    def put(v: np.ndarray, dtype) -> np.ndarray:
        return v.astype(dtype, copy=False)

    @staticmethod
    def get(v) -> np.ndarray:
        return np.asarray(v, dtype=np.float64)

    @staticmethod
    def index(rows: np.ndarray) -> np.ndarray:
        return rows

    @staticmethod
    def permute_columns(matrix: np.ndarray, order: np.ndarray) -> np.ndarray:
        out = np.empty_like(matrix)
        for start in range(0, matrix.shape[0], 256):      # row blocks: small temporaries
            np.take(matrix[start:start + 256], order, axis=1, out=out[start:start + 256])
        return out


class DenseColumnBlocks(ResponseSubset):
    """A dense response restricted to column blocks, each a strided 2-D view (no copy).

    Parameters
    ----------
    parent : ResponseOperator
    data_indices : ndarray of int
    blocks : list of 2-D arrays, shape (n_model, m_b)
        Views whose columns, concatenated, are the subset's data bins in order.
    mode : str
    arrays : object
        ``put(vector, dtype)``, ``get(array)`` and ``index(rows)`` moving vectors and indices to
        and from where the blocks live (host memory by default).
    keep : object, optional
        The shared copy the blocks are views of (held while this subset lives).
    """

    def __init__(self, parent, data_indices, blocks, mode, arrays=_HostArrays, keep=None):
        super().__init__(parent, data_indices)
        self.blocks = blocks
        self.mode = mode
        self._arrays = arrays
        self._keep = keep      # the shared copy the blocks are views of, if any
        if keep is not None:
            self.extra_bytes = int(keep.array.nbytes)

    def _matvec(self, x):
        xd = self._arrays.put(x, self.dtype)
        return np.concatenate([self._arrays.get(xd @ b) for b in self.blocks])

    def _rmatvec(self, y):
        yd = self._arrays.put(y, self.dtype)
        back, start = None, 0
        for b in self.blocks:
            part = b @ yd[start:start + b.shape[1]]
            back = part if back is None else back + part
            start += b.shape[1]
        return self._arrays.get(back)

    def _matvec_rows(self, rows, coef):
        cd = self._arrays.put(coef, self.dtype)
        return np.concatenate([self._arrays.get(cd @ b[self._arrays.index(rows)]) for b in self.blocks])


def dense_subset(parent: ResponseOperator, matrix, k: int, n_subsets: int, axis: str,
                 indices: np.ndarray, arrays=_HostArrays) -> DenseColumnBlocks:
    """Subset ``k`` of a dense ``matrix`` (n_model, n_data) (host or device array).

    Phi subsets are views of ``matrix``; PsiChi subsets are blocks of one column-permuted
    copy shared (weakly, through ``parent``) by the subsets made with the same ``n_subsets``.
    """
    n_em, n_phi, n_psi = parent.data_shape
    if axis == "Phi":
        view = matrix.reshape(parent.n_model, n_em * n_phi, n_psi)
        rows = np.arange(n_em * n_phi).reshape(n_em, n_phi)[:, k::n_subsets].reshape(-1)
        return DenseColumnBlocks(parent, indices, [view[:, int(r), :] for r in rows], "views",
                                 arrays)
    parts = [subset_indices(parent.data_shape, q, n_subsets, axis) for q in range(n_subsets)]

    def make():
        permuted = arrays.permute_columns(matrix, np.concatenate(parts))
        logger.info("OSEM PsiChi subsets: holding a column-permuted copy of the response "
                    "(%.2f GB extra)", permuted.nbytes / 1e9)
        return _Holder(permuted)

    holder = parent._shared_copy(("permuted", n_subsets), make)
    start = sum(len(p) for p in parts[:k])
    block = holder.array[:, start:start + len(parts[k])]
    return DenseColumnBlocks(parent, indices, [block], "permuted", arrays, keep=holder)
