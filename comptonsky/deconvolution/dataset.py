"""Datasets: binned events, background templates and a response, checked against each other.

``DataIF_COSI_DC2`` is the tutorial's name for one data partition: an event histogram in the
Compton data space ``(Em, Phi, PsiChi)``, background templates on the same axes, and the
Galactic response. It validates everything before any work starts and exposes the numbers the
algorithms need as flat float64 arrays (``counts``, ``background(name)``) plus the response
operator (``response.forward/adjoint/exposure``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

import numpy as np
from astropy import units as u
from histpy import Axes, HealpixAxis, Histogram

from ..errors import AxisMismatchError, InvalidDataError, InvalidParameterError
from ..response.linear import LinearOperator
from ..response.load import LazyResponse
from ..response.options import ResponseOptions
from .model import AllSkyImageModel

__all__ = ["DataIF_COSI_DC2", "Dataset", "ALMOST_ZERO"]

logger = logging.getLogger(__name__)

#: Offset added to the expected counts so that log ε and X/ε stay finite.
ALMOST_ZERO = 1e-12

DATA_LABELS = ("Em", "Phi", "PsiChi")


def _dense_values(hist: Histogram) -> np.ndarray:
    contents = hist.contents
    if hasattr(contents, "todense"):
        contents = contents.todense()
    return np.asarray(getattr(contents, "value", contents), dtype=np.float64)


def _data_histogram(hist: Histogram, what: str) -> Histogram:
    """Accept ``(Em, Phi, PsiChi)`` or ``(Time, Em, Phi, PsiChi)`` (Time summed)."""
    if not isinstance(hist, Histogram):
        raise InvalidDataError(f"{what}: expected a histpy Histogram, found "
                               f"{type(hist).__name__}")
    labels = tuple(str(lab) for lab in hist.axes.labels)
    if labels == DATA_LABELS:
        return hist
    if set(labels) == set(DATA_LABELS) | {"Time"} or set(labels) == set(DATA_LABELS):
        logger.info("%s: projecting axes %s onto %s", what, list(labels), list(DATA_LABELS))
        return hist.project(list(DATA_LABELS))
    raise AxisMismatchError(f"{what}: axes are {list(labels)}, expected {list(DATA_LABELS)} "
                            f"(optionally with a 'Time' axis, which is summed)")


def _edges(axis) -> np.ndarray:
    edges = axis.edges
    if isinstance(axis, HealpixAxis):
        return np.asarray(edges)
    if axis.unit is not None and isinstance(edges, u.Quantity):
        return edges
    return np.asarray(edges)


def check_same_axis(a, b, name: str, what_a: str, what_b: str) -> None:
    """Raise :class:`AxisMismatchError` showing both edge sets unless the axes agree."""
    if isinstance(a, HealpixAxis) != isinstance(b, HealpixAxis):
        raise AxisMismatchError(f"axis {name!r}: {what_a} has {type(a).__name__}, {what_b} "
                                f"has {type(b).__name__}")
    if isinstance(a, HealpixAxis):
        fa = getattr(a.coordsys, "name", a.coordsys)
        fb = getattr(b.coordsys, "name", b.coordsys)
        if a.nside != b.nside or a.scheme != b.scheme or (fa and fb and fa != fb):
            raise AxisMismatchError(
                f"axis {name!r}: {what_a} is HEALPix nside={a.nside} {a.scheme} {fa}, {what_b} "
                f"is nside={b.nside} {b.scheme} {fb}")
        return
    ea, eb = _edges(a), _edges(b)
    try:
        if isinstance(ea, u.Quantity) and isinstance(eb, u.Quantity):
            eb = eb.to(ea.unit)
        same = np.shape(ea) == np.shape(eb) and np.allclose(u.Quantity(ea).value,
                                                            u.Quantity(eb).value, rtol=1e-9)
    except u.UnitConversionError:
        same = False
    if not same:
        raise AxisMismatchError(f"axis {name!r} differs: {what_a} has edges {ea}, {what_b} has "
                                f"edges {eb}")


def _check_counts(values: np.ndarray, what: str) -> None:
    """Raise :class:`InvalidDataError` on NaN/inf or negative bins, naming the first one.

    ``values`` has shape (n_Em, n_Phi, n_PsiChi).
    """
    for bad, problem in ((~np.isfinite(values), "NaN or infinite"), (values < 0, "negative")):
        if bad.any():
            idx = tuple(int(i) for i in np.unravel_index(np.flatnonzero(bad)[0], values.shape))
            where = ", ".join(f"{label} {i}" for label, i in zip(DATA_LABELS, idx))
            raise InvalidDataError(
                f"{what}: {int(bad.sum())} bins are {problem}; first at index {idx} "
                f"({where}) with value {values[idx]!r}; counts must be finite and ≥ 0")


class DataIF_COSI_DC2:  # noqa: N801  (the tutorial's name)
    """One data partition: events, named background templates, response.

    Build it with :meth:`load`. All checks run at construction, before any iteration; a
    response given as a Histogram or file is loaded when first needed (:attr:`response`), with
    the options known by then (:meth:`set_response_options`).

    Attributes
    ----------
    name : str
    event : histpy.Histogram
        Observed counts, axes ``(Em, Phi, PsiChi)``.
    counts : ndarray, shape (n_data,)
        ``event`` flattened, float64.
    """

    def __init__(self, name: str, event: Histogram, backgrounds: Mapping[str, Histogram],
                 response: LinearOperator | Histogram | str | os.PathLike,
                 options: ResponseOptions | None = None):
        self.name = str(name)
        self._response: LinearOperator | None = None
        self._pending: LazyResponse | None = None
        options = options or ResponseOptions()
        #: the fit reuses forward products along lines
        #: (:class:`~comptonsky.response.reuse.ReusedProducts`) unless this is False
        self.reuse_products = bool(options.reuse_products)
        if isinstance(response, LinearOperator):
            self._response = response
        else:
            self._pending = LazyResponse(response, options)
        self._data_axes: Axes = (self._pending or self._response).data_axes
        self._event = _data_histogram(event, f"dataset {name!r}: event")
        for label in DATA_LABELS:
            check_same_axis(self._event.axes[label], self._data_axes[label], label,
                            f"dataset {name!r} event", "response")
        counts = _dense_values(self._event)
        _check_counts(counts, f"dataset {name!r}: event counts")
        self.counts = counts.reshape(-1)
        self._bkg_hists: dict[str, Histogram] = {}
        self._bkg_values: dict[str, np.ndarray] = {}
        for key, hist in backgrounds.items():
            what = f"dataset {name!r}: background {key!r}"
            hist = _data_histogram(hist, what)
            for label in DATA_LABELS:
                check_same_axis(hist.axes[label], self._data_axes[label], label, what,
                                "response")
            values = _dense_values(hist)
            _check_counts(values, what)
            values = values.reshape(-1)
            if not values.sum() > 0:
                raise InvalidDataError(f"{what}: the template is all zero")
            self._bkg_hists[str(key)] = hist
            self._bkg_values[str(key)] = values
        if self.counts.sum() == 0:
            logger.warning("dataset %r has no events", name)

    @classmethod
    def load(cls, name: str, event_binned_data: Histogram,
             dict_bkg_binned_data: Mapping[str, Histogram] | None = None,
             rsp: Histogram | str | os.PathLike | LinearOperator | None = None,
             coordsys_conv_matrix=None, dtype: str | None = None, storage: str | None = None,
             **response_options) -> DataIF_COSI_DC2:
        """Build a dataset (the tutorial's entry point).

        Parameters
        ----------
        name : str
            Dataset name (used in results and logs).
        event_binned_data : histpy.Histogram
            Counts with axes ``(Em, Phi, PsiChi)`` (a ``Time`` axis is summed).
        dict_bkg_binned_data : dict of str to histpy.Histogram
            Background templates (expected counts) on the same axes, by name.
        rsp : histpy.Histogram, path or ResponseOperator
            Galactic response ``(NuLambda, Ei, Em, Phi, PsiChi)`` in cm² s, or its HDF5 file.
        coordsys_conv_matrix : None
            Only Galactic-CDS responses are supported; must be None.
        dtype, storage, **response_options
            How the response is held
            (:class:`~comptonsky.response.options.ResponseOptions`).
        """
        if coordsys_conv_matrix is not None:
            raise InvalidParameterError(
                "coordsys_conv_matrix: only Galactic-CDS responses (coordsys_conv_matrix=None) "
                "are supported; bin the events with psichi_binning='galactic'")
        if rsp is None:
            raise InvalidParameterError("rsp: a response histogram or file is required")
        options = ResponseOptions.from_mapping(
            {"dtype": dtype, "storage": storage, **response_options}, "DataIF_COSI_DC2.load")
        return cls(name, event_binned_data, dict(dict_bkg_binned_data or {}), rsp, options)

    @property
    def response(self) -> LinearOperator:
        """The response operator (pure; loaded on first use with the options set by then)."""
        if self._response is None or (self._pending is not None and not self._pending.loaded):
            self.reuse_products = bool(self._pending.options.reuse_products)
            self._response = self._pending.operator()
        return self._response

    @property
    def response_options(self) -> ResponseOptions | None:
        """The options the response is (or will be) loaded with; None for a given operator."""
        return None if self._pending is None else self._pending.options

    def set_response_options(self, options: Mapping, where: str = "response options") -> None:
        """Set options of the response (a parameter file's ``response:`` section) before use.

        A response already loaded with other options is loaded again on next use.

        Raises
        ------
        InvalidParameterError
            If the response was given as an operator (its storage cannot change), or for an
            invalid option.
        """
        if not {k: v for k, v in dict(options).items() if v is not None}:
            return
        if self._pending is None:
            raise InvalidParameterError(
                f"dataset {self.name!r}: its response was given as an operator, so the "
                f"{where} cannot be applied; load it from a Histogram or file instead")
        self._pending.configure(options, where)
        self.reuse_products = bool(self._pending.options.reuse_products)

    # --- tutorial-style accessors ---------------------------------------------------------
    @property
    def event(self) -> Histogram:
        return self._event

    @property
    def data_axes(self) -> Axes:
        return self._data_axes

    @property
    def model_axes(self) -> Axes:
        return (self._pending or self.response).model_axes

    def keys_bkg_models(self) -> list[str]:
        return list(self._bkg_values)

    def bkg_model(self, key: str) -> Histogram:
        return self._bkg_hists[key]

    def background(self, key: str) -> np.ndarray:
        """Template ``key`` as a flat float64 array, shape (n_data,)."""
        return self._bkg_values[key]

    @property
    def exposure_map(self) -> AllSkyImageModel:
        """Σ_i R_ij ΔΩ_j as a map in cm² s sr."""
        return AllSkyImageModel.from_axes(
            self.model_axes, unit=self.response.unit * u.sr,
            contents=self.response.exposure.reshape(self.response.model_shape))

    # --- numerics (flat arrays) -----------------------------------------------------------
    def source_expectation(self, model: np.ndarray) -> np.ndarray:
        """s = R·(λΔΩ) + 1e-12, shape (n_data,): the sky's expected counts."""
        eps = self.response.forward(model)
        eps += ALMOST_ZERO
        return eps

    def add_background(self, source: np.ndarray,
                       bkg_norm: Mapping[str, float] | None = None) -> np.ndarray:
        """ε = s + Σ_b n_b B_b as a new array (backgrounds not in ``bkg_norm`` at norm 1)."""
        eps = source.copy()
        for key, values in self._bkg_values.items():
            norm = 1.0 if bkg_norm is None else float(bkg_norm.get(key, 1.0))
            eps += values * norm
        return eps

    def expectation(self, model: np.ndarray,
                    bkg_norm: Mapping[str, float] | None = None) -> np.ndarray:
        """ε = R·(λΔΩ) + 1e-12 + Σ_b n_b B_b, shape (n_data,)."""
        return self.add_background(self.source_expectation(model), bkg_norm)

    def log_likelihood(self, expectation: np.ndarray) -> float:
        """Poisson log-likelihood Σ X log ε − Σ ε (without the log X! term)."""
        return float(np.dot(self.counts, np.log(expectation)) - expectation.sum())

    # --- histogram-returning versions (tutorial/cosipy names) -----------------------------
    def calc_expectation(self, model: Histogram, dict_bkg_norm=None) -> Histogram:
        values = np.asarray(getattr(model.contents, "value", model.contents))
        eps = self.expectation(values, dict_bkg_norm)
        return Histogram(self._data_axes, contents=eps.reshape(self.response.data_shape))

    def calc_T_product(self, dataIn: Histogram) -> AllSkyImageModel:  # noqa: N802, N803
        values = _dense_values(dataIn) if isinstance(dataIn, Histogram) else np.asarray(dataIn)
        back = self.response.adjoint(values.reshape(-1))
        return AllSkyImageModel.from_axes(self.model_axes, unit=self.response.unit * u.sr,
                                          contents=back.reshape(self.response.model_shape))

    def calc_log_likelihood(self, expectation: Histogram) -> float:
        return self.log_likelihood(_dense_values(expectation).reshape(-1))

    def __repr__(self) -> str:
        return (f"DataIF_COSI_DC2(name={self.name!r}, events={self.counts.sum():.0f}, "
                f"backgrounds={self.keys_bkg_models()}, response={self.response.shape})")


Dataset = DataIF_COSI_DC2
