"""Datasets: binned events, background templates and a response, checked against each other.

``DataIF_COSI_DC2`` is the tutorial's name for one data partition: an event histogram in the
Compton data space ``(Em, Phi, PsiChi)``, background templates on the same axes, and the
Galactic response. It validates everything before any work starts and exposes the numbers the
algorithms need as flat float64 arrays (``counts``, ``background(name)``) plus the response
operator (``response.forward/adjoint/exposure``).

With a conversion matrix (``coordsys_conv_matrix``), ``load`` makes a
:class:`DetectorFrameDataset` instead: events binned in the spacecraft frame per ScAtt or Time
bin, the COSI team's ``FullDetectorResponse`` (docs/design.md §8). The fit sees its occupied bins
only (:class:`~comptonsky.response.detector_frame.OccupiedBinsResponse`): ``counts`` and the
backgrounds hold the occupied bins, then one rest bin per data column with the sum over its empty
bins, so products cost in proportion to the counts while log L, the exposure and the EM updates
equal those of the full data space. Its cosipy methods (``calc_expectation``, ...) take and
return full-space histograms.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

import numpy as np
from astropy import units as u
from histpy import Axes, HealpixAxis, Histogram

from ..errors import AxisMismatchError, InvalidDataError, InvalidParameterError
from ..io.drm import FullDetectorResponse
from ..response.detector_frame import (
    DetectorFrameResponse,
    check_detector_frame_axes,
    check_nulambda,
    detector_frame_response,
)
from ..response.linear import LinearOperator
from ..response.load import LazyResponse
from ..response.options import ResponseOptions
from .model import AllSkyImageModel

__all__ = ["DataIF_COSI_DC2", "Dataset", "DetectorFrameDataset", "ALMOST_ZERO"]

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
    if "ScAtt" in labels:
        raise AxisMismatchError(
            f"{what}: axes are {list(labels)}, binned per ScAtt bin in the detector frame; "
            "a Galactic response expects ['Em', 'Phi', 'PsiChi'] (optionally with 'Time'): give "
            "the FullDetectorResponse with coordsys_conv_matrix (comptonsky deconvolve --ccm)")
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
             coordsys_conv_matrix=None, is_miniDC2_format: bool = False,  # noqa: N803
             dtype: str | None = None, storage: str | None = None,
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
        coordsys_conv_matrix : CoordsysConversionMatrix or path, optional
            For events binned in the spacecraft frame per ScAtt or Time bin: ``rsp`` is then
            the ``FullDetectorResponse`` (or its file) and the dataset a
            :class:`DetectorFrameDataset`.
        is_miniDC2_format : bool
            cosipy's flag for the sparse mini-DC2 response layout, whose SigmaTau and Dist
            axes it then sums. comptonsky reads either layout by what the file holds, so
            True and False give the same dataset.
        dtype, storage, **response_options
            How the response is held
            (:class:`~comptonsky.response.options.ResponseOptions`; a detector-frame
            response takes ``dtype`` and ``occupied_only``).
        """
        if not isinstance(is_miniDC2_format, (bool, np.bool_)):
            raise InvalidParameterError(
                f"is_miniDC2_format: expected True or False, found {is_miniDC2_format!r}")
        if is_miniDC2_format:
            logger.info("is_miniDC2_format=True: the response is read by its file's layout "
                        "(a sparse file's SigmaTau and Dist summed, as cosipy does for this "
                        "flag); nothing else changes")
        if coordsys_conv_matrix is not None:
            return load_detector_frame(name, event_binned_data, dict_bkg_binned_data, rsp,
                                       coordsys_conv_matrix, dtype=dtype, storage=storage,
                                       **response_options)
        if rsp is None:
            raise InvalidParameterError("rsp: a response histogram or file is required")
        if isinstance(rsp, (str, os.PathLike)) and _is_drm_file(rsp):
            raise InvalidParameterError(
                f"rsp: {rsp} is a FullDetectorResponse (spacecraft frame); give "
                "coordsys_conv_matrix too (comptonsky deconvolve --ccm), or a Galactic response "
                "for Galactic-CDS events")
        if isinstance(rsp, FullDetectorResponse):
            raise InvalidParameterError(
                "rsp: a FullDetectorResponse is in the spacecraft frame; give "
                "coordsys_conv_matrix too, or a Galactic response for Galactic-CDS events")
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


# --- detector-frame datasets (docs/design.md §8) ---------------------------------------------
_COLUMNS = ("Em", "Phi", "PsiChi")


def _detector_values(hist: Histogram, what: str) -> np.ndarray:
    values = _dense_values(hist)
    bad = ~np.isfinite(values) | (values < 0)
    if bad.any():
        idx = tuple(int(i) for i in np.unravel_index(np.flatnonzero(bad)[0], values.shape))
        raise InvalidDataError(f"{what}: {int(bad.sum())} bins are NaN, infinite or negative; "
                               f"first at index {idx}; counts must be finite and ≥ 0")
    return values.reshape(-1)


class DetectorFrameDataset(DataIF_COSI_DC2):
    """A detector-frame data partition (built by :func:`load_detector_frame`).

    Attributes
    ----------
    full_response : DetectorFrameResponse
        The response on every data bin (S, Em, Phi, PsiChi).
    response : OccupiedBinsResponse or DetectorFrameResponse
        What the fit multiplies with (the occupied bins unless ``occupied_only`` is False).
    counts : ndarray, shape (n_data,)
        Counts on the response's data space (zero in the rest bins).
    """

    def __init__(self, name: str, event: Histogram, backgrounds: Mapping[str, Histogram],
                 response: DetectorFrameResponse, occupied_only: bool = True,
                 reuse_products: bool = True):
        self.name = str(name)
        self._pending = None
        self.reuse_products = bool(reuse_products)
        self.full_response = response
        self._data_axes = response.data_axes
        what = f"dataset {name!r}: event"
        check_detector_frame_axes(event.axes, response, what)
        for label in _COLUMNS:
            check_same_axis(event.axes[label], self._data_axes[label], label, what, "response")
        self._event = event
        full_counts = _detector_values(event, what + " counts")
        self._full_bkg: dict[str, np.ndarray] = {}
        self._bkg_hists: dict[str, Histogram] = {}
        for key, hist in backgrounds.items():
            bwhat = f"dataset {name!r}: background {key!r}"
            check_detector_frame_axes(hist.axes, response, bwhat)
            for label in _COLUMNS:
                check_same_axis(hist.axes[label], self._data_axes[label], label, bwhat,
                                "response")
            values = _detector_values(hist, bwhat)
            if not values.sum() > 0:
                raise InvalidDataError(f"{bwhat}: the template is all zero")
            self._bkg_hists[str(key)] = hist
            self._full_bkg[str(key)] = values
        self._full_counts = full_counts
        if occupied_only:
            self._response = response.occupied(full_counts)
            restrict = self._response.restrict
            extra = np.zeros(self._response.n_data)
            extra[self._response.n_occupied:] = (self._response.rest_sizes - 1) * ALMOST_ZERO
            self._offset = extra
        else:
            self._response = response

            def restrict(v):
                return v
            self._offset = None
        self.counts = restrict(full_counts)
        self._bkg_values = {key: restrict(v) for key, v in self._full_bkg.items()}
        if full_counts.sum() == 0:
            logger.warning("dataset %r has no events", name)
        logger.info("dataset %r: detector frame, %d of %d bins occupied, %d data bins in the "
                    "fit", name, int((full_counts > 0).sum()), full_counts.size,
                    self._response.n_data)

    @property
    def response(self):
        return self._response

    def set_response_options(self, options: Mapping, where: str = "response options") -> None:
        if {k: v for k, v in dict(options).items() if v is not None}:
            raise InvalidParameterError(
                f"dataset {self.name!r}: a detector-frame response is held in memory as loaded; "
                f"the {where} cannot change it (give dtype to DataIF_COSI_DC2.load)")

    @property
    def model_axes(self):
        return self.full_response.model_axes

    def with_counts(self, counts: np.ndarray, background_scale: float = 1.0
                    ) -> DetectorFrameDataset:
        """A copy with other ``counts`` on the fit's data space (zero in the rest bins) and the
        backgrounds scaled, sharing the responses (cross-validation, bootstrap)."""
        counts = np.asarray(counts, dtype=np.float64).reshape(-1)
        if counts.shape != self.counts.shape:
            raise InvalidDataError(f"dataset {self.name!r}: {counts.size} counts for "
                                   f"{self.counts.size} data bins")
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        new.counts = counts
        rsp = self._response
        new._full_counts = rsp.expand(counts) if self._offset is not None else counts
        new._bkg_values = {k: v * background_scale for k, v in self._bkg_values.items()}
        new._full_bkg = {k: v * background_scale for k, v in self._full_bkg.items()}
        return new

    # --- numerics on the fit's data space ---------------------------------------------------
    def add_background(self, source, bkg_norm=None):
        """ε = s + Σ_b n_b B_b; a rest bin also gets the 1e-12 offset of each empty bin it sums."""
        eps = super().add_background(source, bkg_norm)
        if self._offset is not None:
            eps += self._offset
        return eps

    def log_likelihood(self, expectation: np.ndarray) -> float:
        """Σ X log ε − Σ ε (the log of bins without counts is not taken)."""
        nz = self.counts > 0
        return float(np.dot(self.counts[nz], np.log(expectation[nz])) - expectation.sum())

    # --- cosipy methods on full-space histograms --------------------------------------------
    def _full_expectation(self, model, dict_bkg_norm=None) -> np.ndarray:
        values = np.asarray(getattr(model, "contents", model))
        values = np.asarray(getattr(values, "value", values), dtype=np.float64).reshape(-1)
        eps = self.full_response.forward(values) + ALMOST_ZERO
        for key, b in self._full_bkg.items():
            norm = 1.0 if dict_bkg_norm is None else float(dict_bkg_norm.get(key, 1.0))
            eps += norm * b
        return eps

    def calc_expectation(self, model, dict_bkg_norm=None, almost_zero=ALMOST_ZERO) -> Histogram:
        """Expected counts on (ScAtt | Time, Em, Phi, PsiChi) for a model map."""
        eps = self._full_expectation(model, dict_bkg_norm) + (almost_zero - ALMOST_ZERO)
        return Histogram(self._data_axes, contents=eps.reshape(self.full_response.data_shape))

    def calc_log_likelihood(self, expectation) -> float:
        """Σ X log ε − Σ ε over the full data space of ``expectation`` (Histogram or array)."""
        eps = (_dense_values(expectation) if isinstance(expectation, Histogram)
               else np.asarray(expectation, dtype=np.float64)).reshape(-1)
        x = self._full_counts
        nz = x > 0
        return float(np.dot(x[nz], np.log(eps[nz])) - eps.sum())

    calc_loglikelihood = calc_log_likelihood

    def calc_T_product(self, dataIn) -> AllSkyImageModel:  # noqa: N802, N803
        """Rᵀ applied to a full-space histogram: a map in cm² s sr × its unit."""
        values = _dense_values(dataIn) if isinstance(dataIn, Histogram) else np.asarray(dataIn)
        back = self.full_response.adjoint(values.reshape(-1))
        return AllSkyImageModel.from_axes(self.model_axes, unit=u.cm ** 2 * u.s * u.sr,
                                          contents=back.reshape(self.full_response.model_shape))

    def calc_bkg_model_product(self, key: str, dataspace_histogram) -> float:
        """Σ_i H_i B_i over the full data space."""
        h = dataspace_histogram
        values = _dense_values(h) if isinstance(h, Histogram) else np.asarray(h, np.float64)
        return float(np.dot(values.reshape(-1), self._full_bkg[key]))

    def __repr__(self) -> str:
        return (f"DetectorFrameDataset(name={self.name!r}, events={self.counts.sum():.0f}, "
                f"backgrounds={self.keys_bkg_models()}, bins={self.response.n_data} of "
                f"{self.full_response.n_data})")


def load_detector_frame(name: str, event_binned_data: Histogram,
                        dict_bkg_binned_data: Mapping[str, Histogram] | None,
                        rsp, coordsys_conv_matrix, dtype: str | None = None,
                        storage: str | None = None, occupied_only: bool = True,
                        **options) -> DetectorFrameDataset:
    """A detector-frame dataset; every axis is checked before the response is read.

    Parameters
    ----------
    rsp : FullDetectorResponse or path
        The spacecraft-frame response (NuLambda, Ei, [Pol], Em, Phi, PsiChi).
    coordsys_conv_matrix : CoordsysConversionMatrix or path
        Axes (ScAtt | Time, lb, NuLambda).
    dtype : {'float32', 'float64'}, optional
        Precision R is held in (default float32).
    storage : {'dense'}, optional
        The response is held dense in memory.
    occupied_only : bool
        Fit on the occupied bins (default) or on every bin.
    **options
        Other response options: only ``reuse_products`` applies.

    Raises
    ------
    InvalidParameterError, AxisMismatchError, InvalidDataError
        For an unsupported option or input, and before any work for axes that disagree: nside
        between response, matrix and data; the number of attitude or time bins; a Galactic
        PsiChi axis; a matrix made for another response.
    """
    reuse = bool(options.pop("reuse_products", True))
    unknown = [k for k, v in options.items() if v is not None]
    if unknown or storage not in (None, "dense"):
        bad = unknown[0] if unknown else f"storage={storage!r}"
        raise InvalidParameterError(f"{bad}: not an option of a detector-frame response "
                                    "(it takes dtype, occupied_only and reuse_products)")
    from ..attitude import CoordsysConversionMatrix

    ccm = coordsys_conv_matrix
    if isinstance(ccm, (str, os.PathLike)):
        ccm = CoordsysConversionMatrix.open(ccm)
    if not isinstance(ccm, Histogram):
        raise InvalidParameterError(
            f"coordsys_conv_matrix: expected a CoordsysConversionMatrix or its file, found "
            f"{type(ccm).__name__}")
    if isinstance(rsp, (str, os.PathLike)):
        if not _is_drm_file(rsp) and os.path.exists(rsp):
            raise InvalidParameterError(
                f"rsp: {rsp} is not a FullDetectorResponse (no 'DRM' group): a detector-frame "
                "dataset (coordsys_conv_matrix given) needs the spacecraft-frame response; a "
                "Galactic response goes without coordsys_conv_matrix")
        rsp = FullDetectorResponse.open(rsp)
    if not isinstance(rsp, FullDetectorResponse):
        raise InvalidParameterError(
            f"rsp: a detector-frame dataset needs a FullDetectorResponse or its file, found "
            f"{type(rsp).__name__}")
    labels = [str(lab) for lab in ccm.axes.labels]
    if len(labels) != 3 or labels[1:] != ["lb", "NuLambda"]:
        raise InvalidParameterError(f"coordsys_conv_matrix: axes {labels}, expected (ScAtt or "
                                    "Time, lb, NuLambda)")
    dtype = np.dtype(dtype or "float32")
    if dtype not in (np.float32, np.float64):
        raise InvalidParameterError(f"dtype: expected float32 or float64, found {dtype}")
    # cheap axis checks first (the response's rows are read only after them)
    probe = _AxesProbe(rsp, ccm)
    for what, hist in [(f"dataset {name!r}: event", event_binned_data)] + [
            (f"dataset {name!r}: background {k!r}", h)
            for k, h in (dict_bkg_binned_data or {}).items()]:
        if not isinstance(hist, Histogram):
            raise InvalidDataError(f"{what}: expected a histpy Histogram, found "
                                   f"{type(hist).__name__}")
        check_detector_frame_axes(hist.axes, probe, what)
        if str(hist.axes.labels[0]) == "Time":
            _check_time_edges(hist.axes[0], ccm.axes[0], what)
        for label in _COLUMNS:
            check_same_axis(hist.axes[label], rsp.axes[label], label, what, "response")
    response = detector_frame_response(rsp, ccm, dtype=dtype)
    return DetectorFrameDataset(name, event_binned_data, dict(dict_bkg_binned_data or {}),
                                response, occupied_only=occupied_only, reuse_products=reuse)


def _check_time_edges(data_axis, ccm_axis, what: str) -> None:
    """Raise :class:`AxisMismatchError` unless the Time edges agree to 1e-6 of the narrowest
    bin (absolute times are ~1e9 s, so a relative tolerance would accept seconds)."""
    def seconds(axis):
        edges = axis.edges
        if isinstance(edges, u.Quantity):
            try:
                return edges.to_value(u.s), True
            except u.UnitConversionError:
                return np.asarray(edges.value, dtype=float), False
        return np.asarray(edges, dtype=float), False

    a, a_s = seconds(data_axis)
    b, b_s = seconds(ccm_axis)
    same = a.shape == b.shape and a_s == b_s
    if same:
        tol = 1e-6 * float(np.min(np.diff(b))) if b.size > 1 else 0.0
        same = bool(np.all(np.abs(a - b) <= tol))
    if not same:
        def show(edges, in_s):
            text = np.array2string(edges, precision=3, threshold=6, floatmode="fixed")
            return text + (" s" if in_s else " (interval numbers, no unit)")
        raise AxisMismatchError(f"axis 'Time' differs: {what} has edges {show(a, a_s)}, the "
                                f"conversion matrix has edges {show(b, b_s)}")


def _is_drm_file(path) -> bool:
    """Whether ``path`` is an HDF5 file with a ``DRM`` group (a FullDetectorResponse)."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return "DRM" in f and "hist" not in f
    except (OSError, ValueError):
        return False


class _AxesProbe:
    """The data axes a detector-frame response of ``fdr`` and ``ccm`` will have."""

    def __init__(self, fdr, ccm):
        check_nulambda(fdr, ccm)
        self.data_axes = Axes([ccm.axes[0], fdr.axes["Em"], fdr.axes["Phi"],
                               fdr.axes["PsiChi"]])
