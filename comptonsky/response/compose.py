"""Operators built from other operators: products, diagonal scalings, stacked blocks.

With these a response that is not one stored matrix is still one operator for the algorithms;
for example a detector-frame dataset over attitude bins t,

    BlockStack([R_det @ DiagonalOperator(Δt_t) @ C_t for t in bins])

(C_t a conversion from the sky to the detector frame of bin t) predicts the counts of every bin
from one sky map, and its adjoint sums the back-projections of the bins.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import AxisMismatchError, InvalidDataError
from .operator import LinearOperator

__all__ = ["MatrixOperator", "ProductOperator", "DiagonalOperator", "BlockStack"]


class MatrixOperator(LinearOperator):
    """A plain matrix as an operator: forward(x) = x @ M, adjoint(y) = M @ y.

    Parameters
    ----------
    matrix : ndarray, shape (n_model, n_data)
        Stored as given (the same orientation as a response matrix).
    model_shape, data_shape : tuple of int, optional
        Default: (n_model,) and (n_data,).
    """

    storage = "dense"

    def __init__(self, matrix: np.ndarray, model_shape=None, data_shape=None):
        matrix = np.asarray(matrix)
        if matrix.ndim != 2:
            raise InvalidDataError(f"MatrixOperator: expected a 2-D matrix, found shape "
                                   f"{matrix.shape}")
        if matrix.dtype not in (np.float32, np.float64):
            matrix = matrix.astype(np.float64)
        super().__init__(model_shape or matrix.shape[:1], data_shape or matrix.shape[1:],
                         matrix.dtype)
        if (self.n_model, self.n_data) != matrix.shape:
            raise InvalidDataError(f"MatrixOperator: shapes {self.model_shape} → "
                                   f"{self.data_shape} do not match the matrix {matrix.shape}")
        self.matrix = matrix

    def _forward(self, x):
        return np.asarray(x.astype(self.dtype, copy=False) @ self.matrix, dtype=np.float64)

    def _adjoint(self, y):
        return np.asarray(self.matrix @ y.astype(self.dtype, copy=False), dtype=np.float64)

    @property
    def nbytes(self) -> int:
        return int(self.matrix.nbytes)


class ProductOperator(LinearOperator):
    """``A @ B``: forward(x) = A.forward(B.forward(x)), adjoint(y) = B.adjoint(A.adjoint(y)).

    Parameters
    ----------
    *factors : LinearOperator
        Applied right to left; the data space of each is the model space of the one before.
    """

    storage = "composite"

    def __init__(self, *factors: LinearOperator):
        if not factors:
            raise InvalidDataError("ProductOperator: needs at least one operator")
        flat: list[LinearOperator] = []
        for f in factors:
            flat.extend(f.factors if isinstance(f, ProductOperator) else [f])
        for left, right in zip(flat[:-1], flat[1:]):
            if right.n_data != left.n_model:
                raise AxisMismatchError(
                    f"ProductOperator: {type(right).__name__} gives {right.n_data} data "
                    f"elements, {type(left).__name__} expects {left.n_model} model elements")
        dtype = np.result_type(*[f.dtype for f in flat])
        super().__init__(flat[-1].model_shape, flat[0].data_shape, dtype)
        self.factors = tuple(flat)

    def _forward(self, x):
        for f in reversed(self.factors):
            x = f.forward(x)
        return x

    def _adjoint(self, y):
        for f in self.factors:
            y = f.adjoint(y)
        return y

    def forward_partial(self, indices, values):
        y = self.factors[-1].forward_partial(indices, values)
        for f in reversed(self.factors[:-1]):
            y = f.forward(y)
        return y

    @property
    def nbytes(self) -> int:
        return sum(f.nbytes for f in self.factors)

    @property
    def bytes_per_product(self) -> int:
        return sum(f.bytes_per_product for f in self.factors)


class DiagonalOperator(LinearOperator):
    """Element-wise scaling: forward(x) = adjoint(x) = d · x.

    Parameters
    ----------
    diagonal : array_like, shape (n,)
    shape : tuple of int, optional
        Shape of the (single) space; default (n,).
    """

    storage = "diagonal"

    def __init__(self, diagonal, shape=None):
        d = np.ascontiguousarray(np.asarray(diagonal, dtype=np.float64).reshape(-1))
        shape = shape or d.shape
        super().__init__(shape, shape)
        if self.n_model != d.size:
            raise InvalidDataError(f"DiagonalOperator: shape {shape} for {d.size} elements")
        self.diagonal = d

    def _forward(self, x):
        return x * self.diagonal

    def _adjoint(self, y):
        return y * self.diagonal

    def forward_partial(self, indices, values):
        out = np.zeros(self.n_data)
        idx = np.asarray(indices, dtype=np.int64)
        out[idx] = np.asarray(values, dtype=np.float64) * self.diagonal[idx]
        return out

    @property
    def nbytes(self) -> int:
        return int(self.diagonal.nbytes)


class BlockStack(LinearOperator):
    """Blocks sharing one model space, their data spaces concatenated.

    forward(x) = [B_0 x, B_1 x, ...]; adjoint([y_0, y_1, ...]) = Σ_b B_bᵀ y_b.

    Parameters
    ----------
    blocks : sequence of LinearOperator
        All with the same ``n_model``.
    """

    storage = "composite"

    def __init__(self, blocks: Sequence[LinearOperator]):
        blocks = list(blocks)
        if not blocks:
            raise InvalidDataError("BlockStack: needs at least one block")
        for b in blocks[1:]:
            if b.n_model != blocks[0].n_model:
                raise AxisMismatchError(f"BlockStack: blocks have {blocks[0].n_model} and "
                                        f"{b.n_model} model elements")
        super().__init__(blocks[0].model_shape, (sum(b.n_data for b in blocks),),
                         np.result_type(*[b.dtype for b in blocks]))
        self.blocks = blocks
        self.offsets = np.cumsum([0] + [b.n_data for b in blocks])

    def _forward(self, x):
        return np.concatenate([b.forward(x) for b in self.blocks])

    def _adjoint(self, y):
        out = np.zeros(self.n_model)
        for b, s, e in zip(self.blocks, self.offsets[:-1], self.offsets[1:]):
            out += b.adjoint(y[s:e])
        return out

    def forward_partial(self, indices, values):
        return np.concatenate([b.forward_partial(indices, values) for b in self.blocks])

    @property
    def nbytes(self) -> int:
        return sum(b.nbytes for b in self.blocks)

    @property
    def bytes_per_product(self) -> int:
        return sum(b.bytes_per_product for b in self.blocks)
