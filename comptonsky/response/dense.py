"""The response held as one dense matrix in memory (or memory-mapped), BLAS products."""

from __future__ import annotations

import numpy as np
from histpy import Axes

from ..errors import InvalidDataError
from .operator import ResponseOperator
from .subset import dense_subset

__all__ = ["DenseResponse"]


class DenseResponse(ResponseOperator):
    """Response held as one C-contiguous (n_model, n_data) matrix; BLAS matrix-vector products.

    Parameters
    ----------
    matrix : ndarray, shape (n_model, n_data)
        float32 or float64, C-contiguous. It is used as given (a view of a histogram's contents
        or a memory-mapped file is fine): no copy is made, so the response is held once.
    model_axes, data_axes, pixel_solid_angle, unit, row_sums
        See :class:`ResponseOperator`.
    """

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

    def _matvec(self, x):
        return np.asarray(x.astype(self.dtype, copy=False) @ self.matrix, dtype=np.float64)

    def _rmatvec(self, y):
        return np.asarray(self.matrix @ y.astype(self.dtype, copy=False), dtype=np.float64)

    def _matvec_rows(self, rows, coef):
        return coef @ self.matrix[rows].astype(np.float64)

    def _subset(self, k, n_subsets, axis, indices):
        return dense_subset(self, self.matrix, k, n_subsets, axis, indices)

    @property
    def nbytes(self) -> int:
        return int(self.matrix.nbytes)
