"""Linear operators between a model space and a data space, and their algebra.

A :class:`LinearOperator` maps a flat float64 model vector (``n_model`` elements, ``model_shape``)
to a flat float64 data vector (``n_data`` elements, ``data_shape``) with ``forward`` and back with
``adjoint``; both are pure. Operators compose (products ``A @ B``, diagonal scalings, stacked
blocks, explicit matrices) and can be wrapped (:class:`OperatorWrapper`), so a response that is not
one stored matrix is still one operator for the algorithms. For example a detector-frame dataset
over attitude bins t, with C_t the conversion from the sky to the detector frame of bin t,

    BlockStack([R_det @ DiagonalOperator(Δt_t) @ C_t for t in bins])

predicts the counts of every bin from one sky map; its adjoint sums the bins' back-projections.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import AxisMismatchError, InvalidDataError

__all__ = ["LinearOperator", "OperatorWrapper", "MatrixOperator", "ProductOperator",
           "DiagonalOperator", "BlockStack", "adjointness_test"]


def adjointness_test(op: LinearOperator, seed: int = 0) -> float:
    """|⟨A x, y⟩ − ⟨x, Aᵀ y⟩| / |⟨A x, y⟩| for random positive x, y (seeded): 0 up to rounding
    for a consistent forward/adjoint pair."""
    rng = np.random.default_rng(seed)
    x, y = rng.random(op.n_model), rng.random(op.n_data)
    lhs, rhs = float(np.dot(op.forward(x), y)), float(np.dot(x, op.adjoint(y)))
    return abs(lhs - rhs) / max(abs(lhs), np.finfo(float).tiny)


class LinearOperator(ABC):
    """A linear map from model space (``model_shape``) to data space (``data_shape``), held in
    precision ``dtype`` (products are always float64).

    Subclasses implement ``_forward`` (A x) and ``_adjoint`` (Aᵀ y) on flat float64 vectors,
    returning float64, and may override :meth:`forward_partial`. ``info`` (also ``load_info``)
    records how the operator was made (storage, dtype, source, cache hit, load time, ...).
    """

    #: How the operator is held ('dense', 'sparse', 'out-of-core', 'composite', ...).
    storage = "abstract"

    def __init__(self, model_shape, data_shape, dtype=np.float64):
        self.model_shape = tuple(int(n) for n in model_shape)
        self.data_shape = tuple(int(n) for n in data_shape)
        self.n_model = int(np.prod(self.model_shape))
        self.n_data = int(np.prod(self.data_shape))
        self.dtype = np.dtype(dtype)
        self.info: dict[str, Any] = {}
        self._exposure: np.ndarray | None = None

    @abstractmethod
    def _forward(self, x: np.ndarray) -> np.ndarray: ...

    @abstractmethod
    def _adjoint(self, y: np.ndarray) -> np.ndarray: ...

    def forward(self, model: np.ndarray) -> np.ndarray:
        """A x for ``model`` of shape (n_model,) or model_shape; returns (n_data,) float64."""
        return self._forward(np.asarray(model, dtype=np.float64).reshape(self.n_model))

    def adjoint(self, data: np.ndarray) -> np.ndarray:
        """Aᵀ y for ``data`` of shape (n_data,) or data_shape; returns (n_model,) float64."""
        return self._adjoint(np.asarray(data, dtype=np.float64).reshape(self.n_data))

    def forward_partial(self, indices: np.ndarray, values: np.ndarray) -> np.ndarray:
        """A x for x equal to ``values`` (m,) at the distinct ``indices`` (m,), zero elsewhere;
        returns (n_data,) float64. Backends make the cost proportional to m."""
        x = np.zeros(self.n_model)
        x[np.asarray(indices, dtype=np.int64)] = values
        return self._forward(x)

    @property
    def exposure(self) -> np.ndarray:
        """Aᵀ 1, shape (n_model,), computed once (for a response: ΔΩ_j Σ_i R_ij in cm² s sr)."""
        if self._exposure is None:
            self._exposure = self._compute_exposure()
        return self._exposure

    def _compute_exposure(self) -> np.ndarray:
        return self._adjoint(np.ones(self.n_data))

    @property
    def shape(self) -> tuple[int, int]:
        """(n_model, n_data)."""
        return (self.n_model, self.n_data)

    @property
    def nbytes(self) -> int:
        """Bytes of operator held in memory."""
        return 0

    @property
    def bytes_per_product(self) -> int:
        """Bytes streamed by one forward or adjoint product."""
        return self.nbytes

    @property
    def backend(self) -> str:
        """Name of the class holding the values (a wrapper reports the wrapped one's)."""
        return type(self).__name__

    @property
    def load_info(self) -> dict[str, Any]:
        return self.info

    def check_adjointness(self, seed: int = 0) -> float:
        """See :func:`adjointness_test`."""
        return adjointness_test(self, seed)

    def __matmul__(self, other: LinearOperator) -> LinearOperator:
        if not isinstance(other, LinearOperator):
            return NotImplemented
        return ProductOperator(self, other)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(model_shape={self.model_shape}, "
                f"data_shape={self.data_shape}, dtype={self.dtype}, storage={self.storage!r})")


def _from_inner(name: str) -> property:
    return property(lambda self: getattr(self.inner, name))


class OperatorWrapper(LinearOperator):
    """An operator that forwards everything to ``inner`` (subclasses change some products).

    Attributes not defined here (``matrix``, ``nnz``, ``model_axes``, ...) are looked up on the
    wrapped operator, so a wrapper can stand wherever the operator itself stood.
    """

    def __init__(self, inner: LinearOperator):
        super().__init__(inner.model_shape, inner.data_shape, inner.dtype)
        self.inner = inner
        self.info = inner.info

    def __getattr__(self, name: str):
        if name == "inner":           # not set yet (copy, unpickling): avoid recursion
            raise AttributeError(name)
        return getattr(self.inner, name)

    def _forward(self, x):
        return self.inner.forward(x)

    def _adjoint(self, y):
        return self.inner.adjoint(y)

    def forward_partial(self, indices, values):
        return self.inner.forward_partial(indices, values)

    exposure = _from_inner("exposure")
    storage = _from_inner("storage")  # type: ignore[assignment]
    backend = _from_inner("backend")
    nbytes = _from_inner("nbytes")
    bytes_per_product = _from_inner("bytes_per_product")


class MatrixOperator(LinearOperator):
    """A matrix ``M`` of shape (n_model, n_data), held as given: forward(x) = x M, adjoint(y) = M y.

    ``model_shape`` and ``data_shape`` default to (n_model,) and (n_data,).
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
    """``A @ B @ ...``: the factors applied right to left (the data space of each is the model
    space of the one before it)."""

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
        super().__init__(flat[-1].model_shape, flat[0].data_shape,
                         np.result_type(*[f.dtype for f in flat]))
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
    """Element-wise scaling by ``diagonal`` (n,): forward(x) = adjoint(x) = d · x, on one space
    of ``shape`` (default (n,))."""

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

    _adjoint = _forward

    def forward_partial(self, indices, values):
        out = np.zeros(self.n_data)
        idx = np.asarray(indices, dtype=np.int64)
        out[idx] = np.asarray(values, dtype=np.float64) * self.diagonal[idx]
        return out

    @property
    def nbytes(self) -> int:
        return int(self.diagonal.nbytes)


class BlockStack(LinearOperator):
    """Blocks sharing one model space (all the same ``n_model``), their data spaces concatenated:
    forward(x) = [B_0 x, B_1 x, ...], adjoint([y_0, y_1, ...]) = Σ_b B_bᵀ y_b."""

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
