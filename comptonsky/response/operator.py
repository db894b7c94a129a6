"""The response as a linear operator between model space and the Compton data space.

Model space: sky pixel × energy band, flattened in C order from axes ``(lb, Ei)``; values are
intensities in cm⁻² s⁻¹ sr⁻¹. Data space: ``(Em, Phi, PsiChi)`` bins, flattened in C order;
values are counts. The operator folds in the pixel solid angle ΔΩ_j, so

    forward(λ)_i = Σ_j R_ij ΔΩ_j λ_j            (expected counts)
    adjoint(y)_j = ΔΩ_j Σ_i R_ij y_i
    exposure_j   = ΔΩ_j Σ_i R_ij                (cm² s sr)

with R in cm² s. The deconvolution algorithms see nothing else: how R is stored (dense, sparse,
out of core, float32 or float64, CPU or GPU) is the business of the backend classes here.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod

import numpy as np
from astropy import units as u
from histpy import Axes

from ..errors import InvalidDataError

__all__ = ["ResponseOperator", "DenseResponse"]

logger = logging.getLogger(__name__)


class ResponseOperator(ABC):
    """Abstract response: ``forward``, ``adjoint`` and ``exposure`` on flat float64 arrays.

    Parameters
    ----------
    model_axes : histpy.Axes
        Model axes, ``(lb, Ei)``: a HEALPix axis and the true-energy axis.
    data_axes : histpy.Axes
        Data axes, ``(Em, Phi, PsiChi)``.
    pixel_solid_angle : array_like, shape (n_model,) or scalar
        ΔΩ_j in sr for each model element.
    unit : astropy.units.Unit
        Unit of R (normally cm² s).
    """

    #: How the matrix is held ('dense', 'sparse', 'out-of-core', ...).
    storage = "abstract"

    def __init__(self, model_axes: Axes, data_axes: Axes, pixel_solid_angle, unit):
        self.model_axes = model_axes
        self.data_axes = data_axes
        self.unit = u.Unit(unit)
        self.n_model = int(np.prod(model_axes.nbins))
        self.n_data = int(np.prod(data_axes.nbins))
        solid = np.broadcast_to(np.asarray(pixel_solid_angle, dtype=np.float64),
                                (self.n_model,))
        self.pixel_solid_angle = np.ascontiguousarray(solid)
        self._exposure: np.ndarray | None = None
        #: Compute a forward product from the last two when the model lies on their line
        #: (see :meth:`_forward_from_history`); False always streams the response.
        self.reuse_products = True
        self.products_computed = 0
        self.products_reused = 0
        self._history: list[tuple[np.ndarray, np.ndarray]] = []

    # --- the three operations -------------------------------------------------------------
    @abstractmethod
    def _matvec(self, x: np.ndarray) -> np.ndarray:
        """Return Σ_j R_ij x_j, shape (n_data,), float64."""

    @abstractmethod
    def _rmatvec(self, y: np.ndarray) -> np.ndarray:
        """Return Σ_i R_ij y_i, shape (n_model,), float64."""

    @abstractmethod
    def _row_sums(self) -> np.ndarray:
        """Return Σ_i R_ij, shape (n_model,), float64."""

    def forward(self, model: np.ndarray) -> np.ndarray:
        """Expected counts from a model map.

        Parameters
        ----------
        model : ndarray, shape (n_model,) or model_axes.nbins
            Intensity λ_j in cm⁻² s⁻¹ sr⁻¹.

        Returns
        -------
        ndarray, shape (n_data,), float64
            Σ_j R_ij ΔΩ_j λ_j in counts.
        """
        x = np.asarray(model, dtype=np.float64).reshape(self.n_model)
        if not self.reuse_products:
            self.products_computed += 1
            return self._matvec(x * self.pixel_solid_angle)
        if self._history and np.array_equal(x, self._history[-1][0]):
            self.products_reused += 1
            return self._history[-1][1].copy()
        y = self._forward_from_history(x)
        if y is None:
            y = self._matvec(x * self.pixel_solid_angle)
            self.products_computed += 1
        else:
            self.products_reused += 1
        self._history = self._history[-1:] + [(x.copy(), y.copy())]
        return y

    # --- reuse of earlier forward products (linearity) ------------------------------------
    #: Residuals below this fraction of max|x| are left out of the correction (float64 rounding).
    REUSE_TOLERANCE = 1e-12

    def _forward_from_history(self, x: np.ndarray) -> np.ndarray | None:
        """R·x from the last two forward products when x lies on (or next to) their line.

        If x = x0 + α (x1 − x0) + d with d non-zero on a few elements J only (an RL step of
        length α along the trial direction, then clipping at the minimum flux), then
        R x = y0 + α (y1 − y0) + R_J d_J, which costs |J| rows of R instead of all of them.
        Returns None when that does not apply (then a full product is made).
        """
        hist = self._history
        if len(hist) < 2:
            return None
        (x0, y0), (x1, y1) = hist
        step = x1 - x0
        big = np.abs(step) > 1e-6 * float(np.abs(step).max())
        if not big.any():
            return None
        dx = x - x0
        alpha = float(np.median(dx[big] / step[big]))        # robust to clipped elements
        tol = self.REUSE_TOLERANCE * max(float(np.abs(x).max()), np.finfo(float).tiny)
        inl = np.abs(dx - alpha * step) <= 1e3 * tol
        if inl.sum() < self.n_model - max(8, self.n_model // 64):
            return None
        alpha = float(np.dot(dx[inl], step[inl]) / max(np.dot(step[inl], step[inl]),
                                                       np.finfo(float).tiny))
        resid = dx - alpha * step
        rows = np.flatnonzero(np.abs(resid) > tol)
        if rows.size > max(8, self.n_model // 64):
            return None
        y = y0 + alpha * (y1 - y0)
        if rows.size:
            y += self._matvec_rows(rows, resid[rows] * self.pixel_solid_angle[rows])
        return y

    def _matvec_rows(self, rows: np.ndarray, coef: np.ndarray) -> np.ndarray:
        """Σ_{j ∈ rows} R_j coef_j, shape (n_data,), float64 (backends override with a cheap
        version; this default makes a full product of a vector that is zero elsewhere)."""
        x = np.zeros(self.n_model)
        x[rows] = coef
        return self._matvec(x)

    def adjoint(self, data: np.ndarray) -> np.ndarray:
        """Back-projection of a data-space array.

        Parameters
        ----------
        data : ndarray, shape (n_data,) or data_axes.nbins

        Returns
        -------
        ndarray, shape (n_model,), float64
            ΔΩ_j Σ_i R_ij y_i.
        """
        y = np.asarray(data, dtype=np.float64).reshape(self.n_data)
        return self._rmatvec(y) * self.pixel_solid_angle

    @property
    def exposure(self) -> np.ndarray:
        """ΔΩ_j Σ_i R_ij, shape (n_model,), in cm² s sr (computed once)."""
        if self._exposure is None:
            self._exposure = self._row_sums() * self.pixel_solid_angle
        return self._exposure

    # --- conveniences ---------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        """(n_model, n_data)."""
        return (self.n_model, self.n_data)

    @property
    def model_shape(self) -> tuple[int, ...]:
        return tuple(int(n) for n in self.model_axes.nbins)

    @property
    def data_shape(self) -> tuple[int, ...]:
        return tuple(int(n) for n in self.data_axes.nbins)

    def check_adjointness(self, seed: int = 0) -> float:
        """Relative mismatch |⟨R x, y⟩ − ⟨x, Rᵀ y⟩| / |⟨R x, y⟩| for random positive x, y."""
        rng = np.random.default_rng(seed)
        x = rng.random(self.n_model)
        y = rng.random(self.n_data)
        lhs = float(np.dot(self.forward(x), y))
        rhs = float(np.dot(x, self.adjoint(y)))
        return abs(lhs - rhs) / max(abs(lhs), np.finfo(float).tiny)


class DenseResponse(ResponseOperator):
    """Response held as one C-contiguous (n_model, n_data) matrix; BLAS matrix-vector products.

    Parameters
    ----------
    matrix : ndarray, shape (n_model, n_data)
        float32 or float64, C-contiguous. It is used as given (a view of a histogram's contents
        is fine): no copy is made, so the response is held once.
    model_axes, data_axes, pixel_solid_angle, unit
        See :class:`ResponseOperator`.
    row_sums : ndarray, shape (n_model,), optional
        Σ_i R_ij in float64 if already known (a loader computes it while reading); else the
        exposure costs one pass over the matrix.
    """

    storage = "dense"

    def __init__(self, matrix: np.ndarray, model_axes: Axes, data_axes: Axes,
                 pixel_solid_angle, unit, row_sums: np.ndarray | None = None):
        super().__init__(model_axes, data_axes, pixel_solid_angle, unit)
        if matrix.shape != (self.n_model, self.n_data):
            raise InvalidDataError(
                f"response matrix has shape {matrix.shape}, expected (n_model, n_data) = "
                f"{(self.n_model, self.n_data)} from the model axes {list(model_axes.labels)} "
                f"and data axes {list(data_axes.labels)}"
            )
        if matrix.dtype not in (np.float32, np.float64):
            matrix = matrix.astype(np.float64)
        self.matrix = np.ascontiguousarray(matrix)
        self.dtype = self.matrix.dtype
        self._known_row_sums = None if row_sums is None else np.asarray(row_sums, np.float64)

    def _matvec(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x.astype(self.dtype, copy=False) @ self.matrix, dtype=np.float64)

    def _rmatvec(self, y: np.ndarray) -> np.ndarray:
        return np.asarray(self.matrix @ y.astype(self.dtype, copy=False), dtype=np.float64)

    def _matvec_rows(self, rows: np.ndarray, coef: np.ndarray) -> np.ndarray:
        return coef @ self.matrix[rows].astype(np.float64)

    def _row_sums(self) -> np.ndarray:
        if self._known_row_sums is not None:
            return self._known_row_sums
        return self.matrix.sum(axis=1, dtype=np.float64)

    @property
    def nbytes(self) -> int:
        """Bytes of response held."""
        return int(self.matrix.nbytes)

    @property
    def bytes_per_product(self) -> int:
        """Bytes streamed by one forward or adjoint product."""
        return int(self.matrix.nbytes)
