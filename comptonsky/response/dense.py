"""The response held as one dense matrix (in memory or memory-mapped), BLAS products.

Phi subsets (``mode='views'``): each (Em, φ) pair is a contiguous run of n_PsiChi data bins, so
every piece is a strided view of the matrix that BLAS multiplies directly (no copy). PsiChi subsets
(``mode='permuted'``): the matrix is copied once, column-permuted so that each subset is a
contiguous block; the copy is shared by the subsets of one partition while any of them is alive.
"""

from __future__ import annotations

import logging

import numpy as np
from histpy import Axes

from ..errors import InvalidDataError
from .operator import ResponseOperator, ResponseSubset, subset_indices

__all__ = ["DenseResponse", "DenseColumnBlocks"]

logger = logging.getLogger(__name__)


class DenseResponse(ResponseOperator):
    """Response held as one C-contiguous (n_model, n_data) float32 or float64 ``matrix``, used
    as given (a view of a histogram's contents or a memory-mapped file: no copy); BLAS products.
    Other parameters: :class:`~.operator.ResponseOperator`."""

    storage = "dense"

    def __init__(self, matrix: np.ndarray, model_axes: Axes, data_axes: Axes,
                 pixel_solid_angle, unit, row_sums: np.ndarray | None = None):
        if matrix.dtype not in (np.float32, np.float64):
            matrix = matrix.astype(np.float64)
        super().__init__(model_axes, data_axes, pixel_solid_angle, unit, row_sums=row_sums,
                         dtype=matrix.dtype)
        if matrix.shape != (self.n_model, self.n_data):
            raise InvalidDataError(
                f"response matrix has shape {matrix.shape}, expected (n_model, n_data) = "
                f"{(self.n_model, self.n_data)} from the model axes {list(model_axes.labels)} "
                f"and data axes {list(data_axes.labels)}")
        self.matrix = np.ascontiguousarray(matrix)

    # where the matrix lives: host memory here (the GPU backend overrides these four)
    def _put(self, v: np.ndarray):
        return v.astype(self.dtype, copy=False)

    def _get(self, v) -> np.ndarray:
        return np.asarray(v, dtype=np.float64)

    def _index(self, rows: np.ndarray):
        return rows

    def _permuted(self, order: np.ndarray):
        """The matrix with its columns in ``order`` (a new array)."""
        out = np.empty_like(self.matrix)
        for s in range(0, self.n_model, 256):      # row blocks: small temporaries
            np.take(self.matrix[s:s + 256], order, axis=1, out=out[s:s + 256])
        return out

    def _matvec(self, x):
        return self._get(self._put(x) @ self.matrix)

    def _rmatvec(self, y):
        return self._get(self.matrix @ self._put(y))

    def _matvec_rows(self, rows, coef):
        return coef @ self.matrix[rows].astype(np.float64)

    def _subset(self, k, n_subsets, axis, indices):
        if axis == "Phi":
            view = self.matrix.reshape(self.n_model, -1, self.data_shape[2])
            blocks = [view[:, int(s), :] for s in self._phi_segments(k, n_subsets)]
            return DenseColumnBlocks(self, indices, blocks, "views")
        parts = [subset_indices(self.data_shape, q, n_subsets, axis) for q in range(n_subsets)]

        def make():
            permuted = _Holder(self._permuted(np.concatenate(parts)))
            logger.info("OSEM PsiChi subsets: holding a column-permuted copy of the response "
                        "(%.2f GB extra)", self.nbytes / 1e9)
            return permuted

        holder = self._shared_copy(("permuted", n_subsets), make)
        start = sum(len(p) for p in parts[:k])
        block = holder.array[:, start:start + len(parts[k])]
        return DenseColumnBlocks(self, indices, [block], "permuted", keep=holder)

    @property
    def nbytes(self) -> int:
        return self.n_model * self.n_data * self.dtype.itemsize


class _Holder:
    """A weakly referenceable box for an array (a shared permuted copy)."""

    def __init__(self, array):
        self.array = array


class DenseColumnBlocks(ResponseSubset):
    """A dense response restricted to column blocks: 2-D views (n_model, m_b) of its matrix (or
    of the shared copy ``keep``) whose columns, concatenated, are the subset's data bins."""

    def __init__(self, parent: DenseResponse, data_indices, blocks, mode, keep=None):
        super().__init__(parent, data_indices)
        self.blocks = blocks
        self.mode = mode
        self._keep = keep
        if keep is not None:
            self.extra_bytes = parent.nbytes

    def _matvec(self, x):
        xd = self.parent._put(x)
        return np.concatenate([self.parent._get(xd @ b) for b in self.blocks])

    def _rmatvec(self, y):
        yd = self.parent._put(y)
        ends = np.cumsum([b.shape[1] for b in self.blocks]).tolist()
        return self.parent._get(sum(b @ yd[e - b.shape[1]:e] for b, e in zip(self.blocks, ends)))

    def _matvec_rows(self, rows, coef):
        p = self.parent
        cd, rows = p._put(coef), p._index(rows)
        return np.concatenate([p._get(cd @ b[rows]) for b in self.blocks])
