"""Linear operators between a model space and a data space, and the response built on them.

A :class:`LinearOperator` maps a flat float64 model vector x (``n_model`` elements, ``model_shape``)
to a flat float64 data vector (``n_data`` elements, ``data_shape``) with ``forward`` and back with
``adjoint``; both are pure (no state changes). Operators compose (:mod:`.compose`) and can be
wrapped (:class:`OperatorWrapper`, e.g. :class:`~comptonsky.response.reuse.ReusedProducts`).

The response is the operator from sky intensities to expected counts. Model space: sky pixel ×
energy band, flattened in C order from axes ``(lb, Ei)``, values in cm⁻² s⁻¹ sr⁻¹. Data space:
``(Em, Phi, PsiChi)`` bins in C order, values in counts. It folds in the pixel solid angle ΔΩ_j::

    forward(λ)_i = Σ_j R_ij ΔΩ_j λ_j            (expected counts)
    adjoint(y)_j = ΔΩ_j Σ_i R_ij y_i
    exposure_j   = adjoint(1)_j = ΔΩ_j Σ_i R_ij  (cm² s sr)

with R in cm² s. How R is held (dense, sparse, out of core, float32 or float64, CPU or GPU) is the
business of the backend classes; the deconvolution sees only the operator.
"""

from __future__ import annotations

import logging
import weakref
from abc import ABC, abstractmethod
from typing import Any

import numpy as np
from astropy import units as u
from histpy import Axes

from ..errors import InvalidDataError, InvalidParameterError, UnknownChoiceError

__all__ = ["LinearOperator", "OperatorWrapper", "ResponseOperator", "DenseResponse",
           "adjointness_test", "subset_indices", "SUBSET_AXES"]

logger = logging.getLogger(__name__)

#: Data axes along which :meth:`ResponseOperator.subset` interleaves subsets.
SUBSET_AXES = ("Phi", "PsiChi")


def adjointness_test(op: LinearOperator, seed: int = 0) -> float:
    """Relative mismatch |⟨A x, y⟩ − ⟨x, Aᵀ y⟩| / |⟨A x, y⟩| for random positive x, y.

    Parameters
    ----------
    op : LinearOperator
    seed : int
        Seed of the random vectors.

    Returns
    -------
    float
        0 up to rounding for a consistent forward/adjoint pair.
    """
    rng = np.random.default_rng(seed)
    x = rng.random(op.n_model)
    y = rng.random(op.n_data)
    lhs = float(np.dot(op.forward(x), y))
    rhs = float(np.dot(x, op.adjoint(y)))
    return abs(lhs - rhs) / max(abs(lhs), np.finfo(float).tiny)


class LinearOperator(ABC):
    """A linear map from model space (``model_shape``) to data space (``data_shape``).

    Parameters
    ----------
    model_shape, data_shape : tuple of int
        Shapes of the two spaces; vectors are passed flat (or in these shapes).
    dtype : numpy dtype
        Precision the operator is held in (products are always returned in float64).

    Attributes
    ----------
    info : dict
        How the operator was made (storage, dtype, source, cache hit, load time, ...).
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
    def _forward(self, x: np.ndarray) -> np.ndarray:
        """A x for flat float64 x of length n_model; returns float64 (n_data,)."""

    @abstractmethod
    def _adjoint(self, y: np.ndarray) -> np.ndarray:
        """Aᵀ y for flat float64 y of length n_data; returns float64 (n_model,)."""

    def forward(self, model: np.ndarray) -> np.ndarray:
        """A x.

        Parameters
        ----------
        model : ndarray, shape (n_model,) or model_shape

        Returns
        -------
        ndarray, shape (n_data,), float64
        """
        return self._forward(np.asarray(model, dtype=np.float64).reshape(self.n_model))

    def adjoint(self, data: np.ndarray) -> np.ndarray:
        """Aᵀ y.

        Parameters
        ----------
        data : ndarray, shape (n_data,) or data_shape

        Returns
        -------
        ndarray, shape (n_model,), float64
        """
        return self._adjoint(np.asarray(data, dtype=np.float64).reshape(self.n_data))

    def forward_partial(self, indices: np.ndarray, values: np.ndarray) -> np.ndarray:
        """A x for x equal to ``values`` at ``indices`` and zero elsewhere.

        Backends override this so that the cost is proportional to ``len(indices)``.

        Parameters
        ----------
        indices : array of int, shape (m,)
            Model elements (distinct).
        values : array_like, shape (m,)

        Returns
        -------
        ndarray, shape (n_data,), float64
        """
        x = np.zeros(self.n_model)
        x[np.asarray(indices, dtype=np.int64)] = values
        return self._forward(x)

    @property
    def exposure(self) -> np.ndarray:
        """Aᵀ 1, shape (n_model,) (computed once; for a response: ΔΩ_j Σ_i R_ij in cm² s sr)."""
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
        """Name of the class holding the values (wrappers report the wrapped one's)."""
        return type(self).__name__

    @property
    def load_info(self) -> dict[str, Any]:
        """The same dict as :attr:`info` (read-only name kept for existing callers)."""
        return self.info

    def check_adjointness(self, seed: int = 0) -> float:
        """See :func:`adjointness_test`."""
        return adjointness_test(self, seed)

    def __matmul__(self, other: LinearOperator) -> LinearOperator:
        from .compose import ProductOperator
        if not isinstance(other, LinearOperator):
            return NotImplemented
        return ProductOperator(self, other)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(model_shape={self.model_shape}, "
                f"data_shape={self.data_shape}, dtype={self.dtype}, storage={self.storage!r})")


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

    @property
    def exposure(self) -> np.ndarray:
        return self.inner.exposure

    @property
    def storage(self) -> str:  # type: ignore[override]
        return self.inner.storage

    @property
    def backend(self) -> str:
        return self.inner.backend

    @property
    def nbytes(self) -> int:
        return self.inner.nbytes

    @property
    def bytes_per_product(self) -> int:
        return self.inner.bytes_per_product


def subset_indices(data_shape: tuple[int, int, int], k: int, n_subsets: int,
                   axis: str) -> np.ndarray:
    """Flat data indices of interleaved subset ``k`` of ``n_subsets`` along ``axis``.

    Subset k holds the bins whose ``axis`` index is ≡ k (mod n_subsets), ascending.

    Raises
    ------
    UnknownChoiceError, InvalidParameterError
        For an unknown axis or more subsets than bins along it.
    """
    if axis not in SUBSET_AXES:
        raise UnknownChoiceError("subset axis", axis, SUBSET_AXES,
                                 "deconvolution:parameter:subset_axis")
    n_along = data_shape[1] if axis == "Phi" else data_shape[2]
    if not 1 <= n_subsets <= n_along:
        raise InvalidParameterError(
            f"deconvolution:parameter:n_subsets: {n_subsets} subsets along {axis}, which has "
            f"{n_along} bins; expected 1 ≤ n_subsets ≤ {n_along}")
    if not 0 <= k < n_subsets:
        raise InvalidParameterError(f"subset {k}: expected 0 ≤ k < {n_subsets}")
    grid = np.arange(int(np.prod(data_shape))).reshape(data_shape)
    sel = grid[:, k::n_subsets, :] if axis == "Phi" else grid[:, :, k::n_subsets]
    return sel.reshape(-1)


class ResponseOperator(LinearOperator):
    """The response: ``forward``, ``adjoint``, ``exposure`` with the pixel solid angle folded in.

    Backends implement ``_matvec`` (Σ_j R_ij x_j) and ``_rmatvec`` (Σ_i R_ij y_i) on flat float64
    arrays, and may override ``_matvec_rows`` (a product with a few model elements) and
    ``_subset`` (restricted products, :meth:`subset`).

    Parameters
    ----------
    model_axes : histpy.Axes
        Model axes, ``(lb, Ei)``: a HEALPix axis and the true-energy axis.
    data_axes : histpy.Axes or None
        Data axes, ``(Em, Phi, PsiChi)``; None for a restriction to some data bins, whose
        ``data_shape`` is then given.
    pixel_solid_angle : array_like, shape (n_model,) or scalar
        ΔΩ_j in sr for each model element.
    unit : astropy.units.Unit
        Unit of R (normally cm² s).
    row_sums : ndarray, shape (n_model,), optional
        Σ_i R_ij in float64 when the loader already knows it (else the exposure costs one
        adjoint product, once).
    dtype : numpy dtype
        Precision R is held in.
    data_shape : tuple of int, optional
        Only with ``data_axes=None``.
    """

    def __init__(self, model_axes: Axes, data_axes: Axes | None, pixel_solid_angle, unit, *,
                 row_sums: np.ndarray | None = None, dtype=np.float64,
                 data_shape: tuple[int, ...] | None = None):
        if data_axes is not None:
            data_shape = tuple(int(n) for n in data_axes.nbins)
        super().__init__(tuple(int(n) for n in model_axes.nbins), data_shape, dtype)
        self.model_axes = model_axes
        self.data_axes = data_axes
        self.unit = u.Unit(unit)
        solid = np.broadcast_to(np.asarray(pixel_solid_angle, dtype=np.float64),
                                (self.n_model,))
        self.pixel_solid_angle = np.ascontiguousarray(solid)
        self._known_row_sums = None if row_sums is None else np.asarray(row_sums, np.float64)
        self._shared: weakref.WeakValueDictionary = weakref.WeakValueDictionary()

    # --- what a backend provides ----------------------------------------------------------
    @abstractmethod
    def _matvec(self, x: np.ndarray) -> np.ndarray:
        """Return Σ_j R_ij x_j, shape (n_data,), float64."""

    @abstractmethod
    def _rmatvec(self, y: np.ndarray) -> np.ndarray:
        """Return Σ_i R_ij y_i, shape (n_model,), float64."""

    def _matvec_rows(self, rows: np.ndarray, coef: np.ndarray) -> np.ndarray:
        """Σ_{j ∈ rows} R_j coef_j, shape (n_data,), float64 (default: a full product)."""
        x = np.zeros(self.n_model)
        x[rows] = coef
        return self._matvec(x)

    # --- the operator ---------------------------------------------------------------------
    def _forward(self, x):
        return self._matvec(x * self.pixel_solid_angle)

    def _adjoint(self, y):
        return self._rmatvec(y) * self.pixel_solid_angle

    def forward_partial(self, indices, values):
        rows = np.asarray(indices, dtype=np.int64).reshape(-1)
        coef = np.asarray(values, dtype=np.float64).reshape(-1) * self.pixel_solid_angle[rows]
        return self._matvec_rows(rows, coef)

    def _compute_exposure(self) -> np.ndarray:
        if self._known_row_sums is not None:
            return self._known_row_sums * self.pixel_solid_angle
        return super()._compute_exposure()

    # --- restriction to data subsets (OSEM) -----------------------------------------------
    def subset(self, k: int, n_subsets: int, axis: str = "Phi") -> ResponseOperator:
        """The response restricted to interleaved data subset ``k`` of ``n_subsets``.

        Subset k holds the data bins whose ``axis`` (``'Phi'`` or ``'PsiChi'``) index is
        ≡ k (mod n_subsets). The returned operator has the same model space and the subset's
        bins as data space, in the order of its ``data_indices`` (ascending); its ``mode``
        says how its products run ('fallback': a full product, then selecting the bins).

        Raises
        ------
        UnknownChoiceError, InvalidParameterError
            If this response has no (Em, Phi, PsiChi) data axes, for an unknown axis, or for
            more subsets than bins along the axis.
        """
        if self.data_axes is None or len(self.data_shape) != 3:
            raise InvalidParameterError(
                f"subset: needs a response with data axes (Em, Phi, PsiChi), found data shape "
                f"{self.data_shape}")
        indices = subset_indices(self.data_shape, int(k), int(n_subsets), axis)
        return self._subset(int(k), int(n_subsets), axis, indices)

    def _subset(self, k: int, n_subsets: int, axis: str, indices: np.ndarray
                ) -> ResponseOperator:
        from .subset import RestrictedResponse
        return RestrictedResponse(self, indices)

    def _shared_copy(self, key, make):
        """An object derived from this operator, made once and kept while anyone holds it."""
        found = self._shared.get(key)
        if found is None:
            found = make()
            self._shared[key] = found
        return found


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
        from .subset import dense_subset
        return dense_subset(self, self.matrix, k, n_subsets, axis, indices)

    @property
    def nbytes(self) -> int:
        return int(self.matrix.nbytes)
