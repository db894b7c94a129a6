"""Binning of the Compton data space: the tutorial's parameter files and :class:`CDSBinning`."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import yaml
from histpy import Axis, HealpixAxis

from ..errors import FileFormatError, InvalidParameterError, UnknownChoiceError
from ..frames import register_spacecraft_frame
from ..io.yamlfile import UniqueKeyLoader, yaml_problem
from .psichi import PSICHI_COLUMNS, PSICHI_FRAMES

__all__ = ["BINNING_KEYS", "CDSBinning", "phi_bin_edges", "read_binning_parameters",
           "time_bin_edges"]

logger = logging.getLogger(__name__)

#: Keys accepted in a binning parameter file (the tutorial's ``inputs_*.yaml``).
BINNING_KEYS = (
    "data_file", "ori_file", "unbinned_output", "time_bins", "tmin", "tmax", "energy_bins",
    "phi_pix_size", "nside", "scheme",
)


#: Most time bins a binning may have (the edges alone take 8 bytes each).
MAX_TIME_BINS = 10**8
#: Largest HEALPix nside (the HEALPix limit, 2**29).
MAX_NSIDE = 1 << 29
#: Most cells (Time × Em × Phi × PsiChi) of a binning: flat cell indices must fit in int64.
MAX_CELLS = 1 << 62


def _is_number(value) -> bool:
    return not isinstance(value, (bool, np.bool_)) and isinstance(value, (int, float, np.number))


def _float(value) -> float:
    """``float(value)``, infinite for an integer too large for a float."""
    try:
        return float(value)
    except OverflowError:
        return float("inf") if value > 0 else float("-inf")


def _number(value, key: str, where: str, unit: str) -> float:
    """A finite number, else :class:`InvalidParameterError` naming ``key``."""
    if not _is_number(value) or not np.isfinite(_float(value)):
        raise InvalidParameterError(
            f"{where}: {key} must be a finite number of {unit}, found {value!r}")
    return _float(value)


def _short(value) -> str:
    """A value for a message: arrays of more than 8 values abbreviated, text cut at 80."""
    if isinstance(value, (list, tuple, np.ndarray)) and np.size(value) > 8:
        flat = np.asarray(value, dtype=object).ravel()
        head = ", ".join(repr(v) for v in flat[:3])
        return f"[{head}, ..., {flat[-1]!r}] ({flat.size} values)"
    text = str(np.asarray(value).tolist()) if isinstance(value, np.ndarray) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _edge_list(values, key: str, where: str, unit: str) -> np.ndarray:
    """Strictly increasing finite edges (float64, at least two) from a list or array."""
    if isinstance(values, np.ndarray) and values.dtype.kind in "iuf":
        edges = values.astype(np.float64)
    elif isinstance(values, (list, tuple, np.ndarray)) and all(_is_number(v) for v in values):
        edges = np.array([_float(v) for v in values], dtype=np.float64)
    else:
        raise InvalidParameterError(
            f"{where}: {key} must be a list of bin edges in {unit}, found {_short(values)}")
    _check_edges(edges, key, where)
    return edges


def time_bin_edges(time_bins: float | Sequence[float], tmin: float | None = None,
                   tmax: float | None = None, where: str = "binning parameters") -> np.ndarray:
    """Time-bin edges (s) from a bin size or an explicit list of edges.

    Parameters
    ----------
    time_bins : float or sequence of float
        A bin size in seconds, or the bin edges in seconds.
    tmin, tmax : float, optional
        Start and end of the binned interval (s); required with a bin size. A size that does
        not divide ``tmax - tmin`` is rounded to the nearest size that does (logged).
    where : str
        Source of the parameters, for error messages.

    Returns
    -------
    ndarray, shape (n + 1,)
        Strictly increasing edges in seconds.

    Raises
    ------
    InvalidParameterError
        On a size that is not a positive number, edges that are not strictly increasing finite
        numbers, missing or non-finite ``tmin``/``tmax``, or more than :data:`MAX_TIME_BINS`
        bins.
    """
    if isinstance(time_bins, (list, tuple, np.ndarray)):
        edges = _edge_list(time_bins, "time_bins", where, "s")
        if edges.size - 1 > MAX_TIME_BINS:
            raise InvalidParameterError(
                f"{where}: time_bins has {edges.size - 1} bins, at most {MAX_TIME_BINS} allowed")
        return edges
    if not _is_number(time_bins):
        raise InvalidParameterError(
            f"{where}: time_bins must be a bin size in seconds or a list of edges, "
            f"got {_short(time_bins)}")
    size = _float(time_bins)
    if not np.isfinite(size) or size <= 0:
        raise InvalidParameterError(f"{where}: time_bins must be > 0 s, got {time_bins!r}")
    if tmin is None or tmax is None:
        raise InvalidParameterError(f"{where}: a time bin size needs tmin and tmax")
    tmin, tmax = _number(tmin, "tmin", where, "s"), _number(tmax, "tmax", where, "s")
    if not tmax > tmin:
        raise InvalidParameterError(f"{where}: tmax ({tmax}) must be greater than tmin ({tmin})")
    ratio = (tmax - tmin) / size
    if not ratio <= MAX_TIME_BINS:
        raise InvalidParameterError(
            f"{where}: time_bins {size:g} s makes {ratio:.3g} bins over [tmin, tmax], at most "
            f"{MAX_TIME_BINS} allowed")
    nbins = max(1, int(round(ratio)))
    if not np.isclose(nbins * size, tmax - tmin, rtol=1e-12, atol=0):
        logger.info("%s: time bin size %g s does not divide [%r, %r]; using %d bins of %g s",
                    where, size, tmin, tmax, nbins, (tmax - tmin) / nbins)
    return np.linspace(tmin, tmax, nbins + 1)


def phi_bin_edges(phi_pix_size: float, where: str = "binning parameters") -> np.ndarray:
    """Compton-angle edges (deg) from 0 to 180 in steps of ``phi_pix_size`` (which must divide 180).

    Returns
    -------
    ndarray, shape (180 / phi_pix_size + 1,)
        Edges in degrees.
    """
    if not _is_number(phi_pix_size):
        raise InvalidParameterError(
            f"{where}: phi_pix_size must be a number of degrees, got {_short(phi_pix_size)}")
    size = _float(phi_pix_size)
    if not np.isfinite(size) or size <= 0 or size > 180:
        raise InvalidParameterError(f"{where}: phi_pix_size must be in (0, 180] deg, got {size}")
    nbins = int(round(180.0 / size))
    if not np.isclose(nbins * size, 180.0, rtol=1e-9):
        raise InvalidParameterError(
            f"{where}: phi_pix_size {size} deg does not divide 180 deg; "
            f"try {180.0 / nbins:g} or {180.0 / (nbins + 1):g}")
    edges = np.arange(nbins + 1, dtype=np.float64) * size
    edges[-1] = 180.0
    return edges


def _check_edges(edges: np.ndarray, name: str, where: str) -> None:
    if edges.ndim != 1 or edges.size < 2:
        raise InvalidParameterError(
            f"{where}: {name} needs at least two edges, got {_short(edges)}")
    if not np.all(np.isfinite(edges)):
        raise InvalidParameterError(f"{where}: {name} has non-finite edges: {_short(edges)}")
    if not np.all(np.diff(edges) > 0):
        raise InvalidParameterError(
            f"{where}: {name} edges must increase strictly: {_short(edges)}")


def load_yaml_mapping(path: str | os.PathLike, what: str) -> dict:
    """The top-level mapping of a YAML file.

    Raises
    ------
    FileFormatError
        If the file is missing or unreadable, is not UTF-8 text, is not valid YAML or does not
        hold a mapping; the one-line message names the file and ``what`` was expected.
    """
    path = Path(path)
    if not path.exists():
        raise FileFormatError(f"{path}: no such {what}")
    try:
        with open(path, encoding="utf-8") as fh:
            pars = yaml.load(fh, Loader=UniqueKeyLoader)  # noqa: S506 (safe loader subclass)
    except UnicodeDecodeError as exc:
        raise FileFormatError(
            f"{path}: not a text file (byte {exc.start} is not UTF-8); expected a {what} in "
            "YAML") from exc
    except yaml.YAMLError as exc:
        raise FileFormatError(f"{path}: not valid YAML ({yaml_problem(exc)})") from exc
    except RecursionError as exc:
        raise FileFormatError(f"{path}: YAML nested too deeply") from exc
    except OSError as exc:
        raise FileFormatError(
            f"{path}: cannot be read ({os.strerror(exc.errno) if exc.errno else exc})") from exc
    if pars is None:
        return {}
    if not isinstance(pars, dict):
        raise FileFormatError(
            f"{path}: expected a mapping of {what} keys, found a YAML {type(pars).__name__}")
    return pars


def read_binning_parameters(input_yaml: str | os.PathLike) -> dict:
    """Read and check a binning parameter file (the tutorial's ``inputs_*.yaml``).

    Raises
    ------
    FileFormatError
        If the file is missing, unreadable, not YAML text or not a mapping.
    UnknownChoiceError
        On a key that is not a binning parameter (naming the nearest valid key).
    """
    path = Path(input_yaml)
    pars = load_yaml_mapping(path, "binning parameter file")
    for key in pars:
        if key not in BINNING_KEYS:
            raise UnknownChoiceError("binning parameter", key, BINNING_KEYS, where=str(path))
    return pars


@dataclass(frozen=True)
class CDSBinning:
    """One binning of the Compton data space.

    Attributes
    ----------
    time_edges : ndarray, shape (nt + 1,)
        Time edges (s).
    energy_edges : ndarray, shape (ne + 1,)
        Measured-energy edges (keV).
    phi_edges : ndarray, shape (nphi + 1,)
        Compton-angle edges (deg).
    nside : int
        HEALPix nside of the PsiChi axis.
    scheme : {"ring", "nested"}
        HEALPix scheme.
    psichi_binning : {"galactic", "local"}
        Frame of the scattered-photon direction.
    first_axis : ScAttAxis or IntervalAxis, optional
        Bin events by ScAtt bin or time interval instead of on ``time_edges``
        (:mod:`comptonsky.binning.first_axis`); ``time_edges`` are then its bin numbers 0..N.
    """

    time_edges: np.ndarray
    energy_edges: np.ndarray
    phi_edges: np.ndarray
    nside: int
    scheme: str = "ring"
    psichi_binning: str = "galactic"
    where: str = field(default="binning parameters", compare=False)
    first_axis: object | None = None

    def __post_init__(self):
        w = self.where
        if self.first_axis is not None:
            object.__setattr__(self, "time_edges", self.first_axis.edges())
        for name, unit in (("time_edges", "s"), ("energy_edges", "keV"), ("phi_edges", "deg")):
            object.__setattr__(self, name, _edge_list(getattr(self, name), name, w, unit))
        if self.energy_edges[0] < 0:
            raise InvalidParameterError(
                f"{w}: energy edges must be >= 0 keV, found {_short(self.energy_edges)}")
        if self.psichi_binning not in PSICHI_FRAMES:
            raise UnknownChoiceError("psichi_binning", self.psichi_binning, PSICHI_FRAMES,
                                     where=w)
        scheme = str(self.scheme).lower()
        scheme = {"nest": "nested"}.get(scheme, scheme)
        if scheme not in ("ring", "nested"):
            raise UnknownChoiceError("HEALPix scheme", self.scheme, ("ring", "nested"), where=w)
        object.__setattr__(self, "scheme", scheme)
        nside = self.nside
        if isinstance(nside, bool) or not isinstance(nside, (int, np.integer)) or nside < 1:
            raise InvalidParameterError(f"{w}: nside must be a positive integer, got {nside!r}")
        if nside & (nside - 1):
            raise InvalidParameterError(f"{w}: nside must be a power of 2, got {nside}")
        if nside > MAX_NSIDE:
            raise InvalidParameterError(
                f"{w}: nside must be at most 2**29 (the HEALPix limit), got {nside}")
        object.__setattr__(self, "nside", int(nside))
        cells = 1
        for n in self.shape:
            cells *= n
        if cells > MAX_CELLS:
            raise InvalidParameterError(
                f"{w}: the binning has {cells:.3g} cells (shape {self.shape}), more than a "
                "histogram can index; use fewer or wider bins")

    @classmethod
    def from_parameters(cls, pars: Mapping, psichi_binning: str = "galactic",
                        where: str = "binning parameters") -> CDSBinning:
        """Build from the tutorial's parameters (``time_bins``, ``tmin``, ``tmax``,
        ``energy_bins``, ``phi_pix_size``, ``nside``, ``scheme``)."""
        missing = [k for k in ("time_bins", "energy_bins", "phi_pix_size", "nside")
                   if pars.get(k) is None]
        if missing:
            raise InvalidParameterError(f"{where}: missing binning parameter(s) {missing}")
        return cls(
            time_edges=time_bin_edges(pars["time_bins"], pars.get("tmin"), pars.get("tmax"),
                                      where),
            energy_edges=_edge_list(pars["energy_bins"], "energy_bins", where, "keV"),
            phi_edges=phi_bin_edges(pars["phi_pix_size"], where),
            nside=pars["nside"],
            scheme=pars.get("scheme") or "ring",
            psichi_binning=psichi_binning,
            where=where,
        )

    @property
    def npix(self) -> int:
        """Number of HEALPix pixels of the PsiChi axis."""
        return 12 * self.nside**2

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(nt, ne, nphi, npix)."""
        return (self.time_edges.size - 1, self.energy_edges.size - 1, self.phi_edges.size - 1,
                self.npix)

    @property
    def direction_columns(self) -> tuple[str, str]:
        """The two event columns giving the PsiChi direction."""
        return PSICHI_COLUMNS[self.psichi_binning]

    def with_first_axis(self, first_axis) -> CDSBinning:
        """The same Em, Phi and PsiChi binning with ``first_axis`` (ScAtt bins or time
        intervals) instead of the time bins."""
        return replace(self, first_axis=first_axis, time_edges=first_axis.edges())

    @property
    def first_label(self) -> str:
        """Label of the first axis: Time, or ScAtt."""
        return "Time" if self.first_axis is None else self.first_axis.label

    def axes(self) -> list:
        """histpy axes Time (s) (or the first axis's), Em (keV), Phi (deg), PsiChi (HEALPix)."""
        register_spacecraft_frame()
        first = (Axis(self.time_edges, label="Time", unit="s") if self.first_axis is None
                 else self.first_axis.axis())
        return [
            first,
            Axis(self.energy_edges, label="Em", unit="keV"),
            Axis(self.phi_edges, label="Phi", unit="deg"),
            HealpixAxis(nside=self.nside, scheme=self.scheme,
                        coordsys=PSICHI_FRAMES[self.psichi_binning], label="PsiChi"),
        ]
