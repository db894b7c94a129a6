"""The response: the linear operator from sky intensities to expected counts.

Model space: sky pixel × energy band, flattened in C order from axes ``(lb, Ei)``, values in
cm⁻² s⁻¹ sr⁻¹. Data space: ``(Em, Phi, PsiChi)`` bins in C order, values in counts. The pixel solid
angle ΔΩ_j is folded in::

    forward(λ)_i = Σ_j R_ij ΔΩ_j λ_j            (expected counts)
    adjoint(y)_j = ΔΩ_j Σ_i R_ij y_i
    exposure_j   = adjoint(1)_j = ΔΩ_j Σ_i R_ij  (cm² s sr)

with R in cm² s, held by a backend (:mod:`.dense`, :mod:`.sparse`, :mod:`.outofcore`, :mod:`.gpu`).
A response restricted to an interleaved subset of its data bins (OSEM) is a
:class:`ResponseSubset`; its ``mode`` says how its products run (``fallback``, any backend: a full
product, then the subset's bins; the backends add cheaper modes).
"""

from __future__ import annotations

import weakref
from abc import abstractmethod

import numpy as np
from astropy import units as u
from histpy import Axes

from ..errors import InvalidParameterError, UnknownChoiceError
from .linear import LinearOperator

__all__ = ["ResponseOperator", "ResponseSubset", "RestrictedResponse", "subset_indices",
           "SUBSET_AXES"]

#: Data axes along which :meth:`ResponseOperator.subset` interleaves subsets.
SUBSET_AXES = ("Phi", "PsiChi")


def subset_indices(data_shape: tuple[int, int, int], k: int, n_subsets: int,
                   axis: str) -> np.ndarray:
    """Flat data indices (ascending) of the bins whose ``axis`` index is ≡ k (mod n_subsets).

    Raises
    ------
    UnknownChoiceError, InvalidParameterError
        For an unknown axis, or more subsets than bins along it.
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
    n_em, n_phi, n_psi = (int(n) for n in data_shape)
    em = np.arange(n_em, dtype=np.int64)[:, None, None] * (n_phi * n_psi)
    if axis == "Phi":  # only the subset's indices are made (not a grid of every data bin)
        rest = np.arange(k, n_phi, n_subsets, dtype=np.int64)[None, :, None] * n_psi \
            + np.arange(n_psi, dtype=np.int64)[None, None, :]
    else:
        rest = np.arange(n_phi, dtype=np.int64)[None, :, None] * n_psi \
            + np.arange(k, n_psi, n_subsets, dtype=np.int64)[None, None, :]
    return (em + rest).reshape(-1)


class ResponseOperator(LinearOperator):
    """The response: ``forward``, ``adjoint``, ``exposure`` with the pixel solid angle folded in.

    Backends implement ``_matvec`` (Σ_j R_ij x_j, shape (n_data,)) and ``_rmatvec``
    (Σ_i R_ij y_i, shape (n_model,)) on flat float64 arrays, returning float64, and may override
    ``_matvec_rows(rows, coef)`` (Σ_{j ∈ rows} R_j coef_j) and ``_subset`` (:meth:`subset`).

    Parameters
    ----------
    model_axes, data_axes : histpy.Axes
        ``(lb, Ei)`` (HEALPix, true energy) and ``(Em, Phi, PsiChi)``; ``data_axes`` None for a
        restriction to some data bins, whose ``data_shape`` is then given.
    pixel_solid_angle : array_like, shape (n_model,) or scalar
        ΔΩ_j in sr.
    unit : astropy.units.Unit
        Unit of R (normally cm² s).
    row_sums : ndarray, shape (n_model,), optional
        Σ_i R_ij in float64 when the loader knows it (else the exposure costs one adjoint).
    dtype : numpy dtype
        Precision R is held in.
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

    def __getstate__(self) -> dict:
        # copies derived from this operator (OSEM's permuted matrix) are not sent along
        state = dict(self.__dict__)
        state["_shared"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._shared = weakref.WeakValueDictionary()

    @abstractmethod
    def _matvec(self, x: np.ndarray) -> np.ndarray: ...

    @abstractmethod
    def _rmatvec(self, y: np.ndarray) -> np.ndarray: ...

    def _matvec_rows(self, rows: np.ndarray, coef: np.ndarray) -> np.ndarray:
        x = np.zeros(self.n_model)
        x[rows] = coef
        return self._matvec(x)

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

    def subset(self, k: int, n_subsets: int, axis: str = "Phi") -> ResponseOperator:
        """The response restricted to the data bins :func:`subset_indices` gives (its
        ``data_indices``), as a :class:`ResponseSubset`.

        Raises
        ------
        UnknownChoiceError, InvalidParameterError
            Without (Em, Phi, PsiChi) data axes, and as :func:`subset_indices`.
        """
        if self.data_axes is None or len(self.data_shape) != 3:
            raise InvalidParameterError(
                f"subset: needs a response with data axes (Em, Phi, PsiChi), found data shape "
                f"{self.data_shape}")
        indices = subset_indices(self.data_shape, int(k), int(n_subsets), axis)
        return self._subset(int(k), int(n_subsets), axis, indices)

    def _subset(self, k: int, n_subsets: int, axis: str, indices: np.ndarray
                ) -> ResponseOperator:
        return RestrictedResponse(self, indices)

    def _phi_segments(self, k: int, n_subsets: int) -> np.ndarray:
        """Flat (Em, Phi) indices of Phi subset k: each is a run of n_PsiChi data bins."""
        n_em, n_phi, _ = self.data_shape
        return np.arange(n_em * n_phi).reshape(n_em, n_phi)[:, k::n_subsets].reshape(-1)

    def _shared_copy(self, key, make):
        """An object derived from this operator, made once and kept while anyone holds it."""
        found = self._shared.get(key)
        if found is None:
            found = self._shared[key] = make()
        return found


class ResponseSubset(ResponseOperator):
    """Base of the restricted responses: ``parent``'s model space, its data bins
    ``data_indices`` (m,) as data space."""

    mode = "abstract"

    def __init__(self, parent: ResponseOperator, data_indices: np.ndarray):
        super().__init__(parent.model_axes, None, parent.pixel_solid_angle, parent.unit,
                         dtype=parent.dtype, data_shape=(len(data_indices),))
        self.parent = parent
        self.data_indices = np.asarray(data_indices, dtype=np.int64)
        self.storage = parent.storage
        #: bytes held for this subset besides the parent (a shared permuted copy, ...)
        self.extra_bytes = 0

    @property
    def pass_fraction(self) -> float:
        """Passes over the parent's response that one product costs (its share of the bins)."""
        return self.n_data / self.parent.n_data

    @property
    def bytes_per_product(self) -> int:
        return int(round(self.pass_fraction * self.parent.bytes_per_product))


class RestrictedResponse(ResponseSubset):
    """Any response restricted to some data bins through full products (``mode='fallback'``)."""

    mode = "fallback"
    pass_fraction = 1.0

    def _matvec(self, x):
        return self.parent._matvec(x)[self.data_indices]

    def _rmatvec(self, y):
        full = np.zeros(self.parent.n_data)
        full[self.data_indices] = y
        return self.parent._rmatvec(full)

    def _matvec_rows(self, rows, coef):
        return self.parent._matvec_rows(rows, coef)[self.data_indices]
