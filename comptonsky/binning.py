"""Unbinned events → Compton-data-space histograms (Time, Em, Phi, PsiChi), streamed in chunks.

The tutorial's entry point is :class:`BinnedData`::

    binned = BinnedData(input_yaml="inputs_511keV_DC2.yaml")
    binned.get_binned_data(unbinned_data="511_thin_disk_3months_unbinned_data.fits.gz",
                           psichi_binning="galactic")
    counts = binned.binned_data.to_dense()

Several files, or several binning configurations, are binned in one pass over the data with
:func:`bin_events`.

Binning rules (identical to ``numpy.histogramdd`` on the columns, except that the last upper
edge is excluded as well):

- every bin includes its lower edge and excludes its upper edge; events outside an axis' range,
  or with a NaN coordinate, are not counted;
- Time: ``TimeTags`` (s); Em: ``Energies`` (keV); Phi: ``numpy.rad2deg(Phi)`` (deg);
- PsiChi, local frame: ``healpy.ang2pix(nside, Psi local, Chi local)`` (Psi local is a polar angle);
  Galactic frame: ``healpy.ang2pix(nside, Chi galactic, Psi galactic, lonlat=True)`` ((l, b),
  deg).
  Events whose direction is not on the sphere (what healpy would reject) are skipped with a warning.

Events are read in chunks by a background thread (decompression releases the GIL) while the
main thread bins the previous chunk with a compiled kernel, so the rate approaches the rate at
which the file can be decompressed and memory stays bounded whatever the file size.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import healpy as hp
import numba
import numpy as np
import sparse
import yaml
from histpy import Axis, HealpixAxis, Histogram
from tqdm.auto import tqdm

from .errors import (
    FileFormatError,
    InvalidDataError,
    InvalidParameterError,
    UnknownChoiceError,
)
from .frames import register_spacecraft_frame
from .io.events import (
    DEFAULT_CHUNK_SIZE,
    EventSource,
    count_events,
    event_file_columns,
    event_file_format,
    iter_event_chunks,
    validate_events,
    write_events,
)
from .io.histogram import open_histogram, write_histogram

__all__ = [
    "BinnedData",
    "CDSBinning",
    "bin_events",
    "read_binning_parameters",
    "time_bin_edges",
    "phi_bin_edges",
    "BINNING_KEYS",
    "PSICHI_FRAMES",
]

logger = logging.getLogger(__name__)

#: ``psichi_binning`` choices and the HEALPix ``coordsys`` each one writes.
PSICHI_FRAMES = {"galactic": "galactic", "local": "spacecraftframe"}

#: Keys accepted in a binning parameter file (the tutorial's ``inputs_*.yaml``).
BINNING_KEYS = (
    "data_file", "ori_file", "unbinned_output", "time_bins", "tmin", "tmax", "energy_bins",
    "phi_pix_size", "nside", "scheme",
)

#: Largest histogram (number of cells) accumulated as a dense array (2**22 int64 cells = 32 MiB;
#: its conversion to the sparse result needs at most 5 times that); bigger ones accumulate sorted
#: (index, count) pairs, so memory follows the number of filled cells.
DENSE_LIMIT = 1 << 22


# --------------------------------------------------------------------------------------------
# binning parameters


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
    """
    if isinstance(time_bins, (list, tuple, np.ndarray)):
        edges = np.asarray(time_bins, dtype=np.float64)
        _check_edges(edges, "time_bins", where)
        return edges
    if isinstance(time_bins, bool) or not isinstance(time_bins, (int, float, np.number)):
        raise InvalidParameterError(
            f"{where}: time_bins must be a bin size in seconds or a list of edges, "
            f"got {time_bins!r}")
    size = float(time_bins)
    if not np.isfinite(size) or size <= 0:
        raise InvalidParameterError(f"{where}: time_bins must be > 0 s, got {time_bins!r}")
    if tmin is None or tmax is None:
        raise InvalidParameterError(f"{where}: a time bin size needs tmin and tmax")
    tmin, tmax = float(tmin), float(tmax)
    if not tmax > tmin:
        raise InvalidParameterError(f"{where}: tmax ({tmax}) must be greater than tmin ({tmin})")
    nbins = max(1, int(round((tmax - tmin) / size)))
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
    try:
        size = float(phi_pix_size)
    except (TypeError, ValueError):
        raise InvalidParameterError(
            f"{where}: phi_pix_size must be a number of degrees, got {phi_pix_size!r}") from None
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
        raise InvalidParameterError(f"{where}: {name} needs at least two edges, got {edges}")
    if not np.all(np.isfinite(edges)):
        raise InvalidParameterError(f"{where}: {name} has non-finite edges: {edges}")
    if not np.all(np.diff(edges) > 0):
        raise InvalidParameterError(f"{where}: {name} edges must increase strictly: {edges}")


def read_binning_parameters(input_yaml: str | os.PathLike) -> dict:
    """Read and check a binning parameter file (the tutorial's ``inputs_*.yaml``).

    Raises
    ------
    FileFormatError
        If the file is missing or not YAML.
    UnknownChoiceError
        On a key that is not a binning parameter (naming the nearest valid key).
    """
    path = Path(input_yaml)
    if not path.exists():
        raise FileFormatError(f"{path}: no such binning parameter file")
    try:
        with open(path) as fh:
            pars = yaml.safe_load(fh) or {}
    except yaml.YAMLError as exc:
        raise FileFormatError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(pars, dict):
        raise FileFormatError(f"{path}: expected a mapping of binning parameters")
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
    """

    time_edges: np.ndarray
    energy_edges: np.ndarray
    phi_edges: np.ndarray
    nside: int
    scheme: str = "ring"
    psichi_binning: str = "galactic"
    where: str = field(default="binning parameters", compare=False)

    def __post_init__(self):
        w = self.where
        for name in ("time_edges", "energy_edges", "phi_edges"):
            arr = np.asarray(getattr(self, name), dtype=np.float64)
            _check_edges(arr, name, w)
            object.__setattr__(self, name, arr)
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
        object.__setattr__(self, "nside", int(nside))

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
            energy_edges=np.asarray(pars["energy_bins"], dtype=np.float64),
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
        if self.psichi_binning == "galactic":
            return ("Chi galactic", "Psi galactic")
        return ("Chi local", "Psi local")

    def axes(self) -> list:
        """histpy axes Time (s), Em (keV), Phi (deg), PsiChi (HEALPix)."""
        register_spacecraft_frame()
        return [
            Axis(self.time_edges, label="Time", unit="s"),
            Axis(self.energy_edges, label="Em", unit="keV"),
            Axis(self.phi_edges, label="Phi", unit="deg"),
            HealpixAxis(nside=self.nside, scheme=self.scheme,
                        coordsys=PSICHI_FRAMES[self.psichi_binning], label="PsiChi"),
        ]


# --------------------------------------------------------------------------------------------
# compiled kernels


def _uniform_inverse_width(edges: np.ndarray) -> float:
    """1 / bin width if the edges are equally spaced (to 1e-9 relative), else 0."""
    widths = np.diff(edges)
    if widths.size and np.all(np.abs(widths - widths.mean()) <= 1e-9 * np.abs(widths.mean())):
        return float(widths.size / (edges[-1] - edges[0]))
    return 0.0


@numba.njit(nogil=True, cache=True)
def _find_bin(edges, x, inv):  # pragma: no cover - compiled
    """Index i with edges[i] <= x < edges[i+1]; -1 if outside or NaN (same as searchsorted).

    With ``inv`` > 0 (equally spaced edges) the index is first guessed arithmetically and then
    corrected by comparing with the actual edges, so the result is the same as a search."""
    n = edges.shape[0]
    if not (x >= edges[0]) or not (x < edges[n - 1]):
        return -1
    if inv > 0.0:
        i = int((x - edges[0]) * inv)
        if i > n - 2:
            i = n - 2
        while i > 0 and x < edges[i]:
            i -= 1
        while i < n - 2 and x >= edges[i + 1]:
            i += 1
        return i
    lo = 0
    hi = n - 1
    while hi - lo > 1:
        mid = (lo + hi) >> 1
        if x >= edges[mid]:
            lo = mid
        else:
            hi = mid
    return lo


@numba.njit(nogil=True, cache=True)
def _partial_index(t, e, phi_deg, t_edges, e_edges, phi_edges, inv, out,
                   tstats):  # pragma: no cover - compiled
    """Flat (Time, Em, Phi) index per event into ``out`` (-1 if outside); returns the count
    inside. ``inv`` holds each axis' inverse bin width (0 if not equally spaced); ``tstats``
    accumulates [events outside the time range, min t, max t]."""
    ne = e_edges.shape[0] - 1
    nphi = phi_edges.shape[0] - 1
    nin = 0
    nout_t = 0
    tlo = tstats[1]
    thi = tstats[2]
    for k in range(t.shape[0]):
        tk = t[k]
        if tk < tlo:
            tlo = tk
        if tk > thi:
            thi = tk
        it = _find_bin(t_edges, tk, inv[0])
        if it < 0:
            nout_t += 1
            out[k] = -1
            continue
        ie = _find_bin(e_edges, e[k], inv[1])
        ip = _find_bin(phi_edges, phi_deg[k], inv[2])
        if ie < 0 or ip < 0:
            out[k] = -1
            continue
        out[k] = (it * ne + ie) * nphi + ip
        nin += 1
    tstats[0] += nout_t
    tstats[1] = tlo
    tstats[2] = thi
    return nin


@numba.njit(nogil=True, cache=True)
def _accumulate(partial, pix, npix, counts):  # pragma: no cover - compiled
    """counts[partial * npix + pix] += 1 for every event with pix >= 0; returns skipped count."""
    skipped = 0
    for k in range(partial.shape[0]):
        p = pix[k]
        if p < 0:
            skipped += 1
            continue
        counts[partial[k] * npix + p] += 1
    return skipped


# --------------------------------------------------------------------------------------------
# accumulation


def _pixels(binning: CDSBinning, lon_or_chi: np.ndarray, lat_or_psi: np.ndarray) -> np.ndarray:
    """HEALPix pixel per event as healpy computes it; -1 where healpy would reject the angle."""
    if binning.psichi_binning == "galactic":
        # what healpy.ang2pix(..., lonlat=True) does internally
        theta = np.pi / 2.0 - np.radians(lat_or_psi)
        phi = np.radians(lon_or_chi)
    else:
        theta, phi = lat_or_psi, lon_or_chi
    ok = (theta >= 0.0) & (theta <= np.pi + 1e-5) & np.isfinite(phi)
    nest = binning.scheme == "nested"
    if ok.all():
        return hp.ang2pix(binning.nside, theta, phi, nest=nest).astype(np.int64, copy=False)
    pix = np.full(theta.shape, -1, dtype=np.int64)
    if ok.any():
        pix[ok] = hp.ang2pix(binning.nside, theta[ok], phi[ok], nest=nest)
    return pix


class _Accumulator:
    """Counts of one binning, dense (int64) or sparse (sorted flat indices and counts)."""

    def __init__(self, binning: CDSBinning):
        self.binning = binning
        self.size = int(np.prod(binning.shape, dtype=np.int64))
        self.dense = self.size <= DENSE_LIMIT
        self.counts = np.zeros(self.size, dtype=np.int64) if self.dense else None
        self._keys: list[np.ndarray] = []
        self._vals: list[np.ndarray] = []
        self._pending = 0  # (index, count) pairs stored since the last merge
        self._merged = 0  # pairs in the merged arrays
        self._partial = np.empty(0, dtype=np.int64)
        self._inv = np.array([_uniform_inverse_width(binning.time_edges),
                              _uniform_inverse_width(binning.energy_edges),
                              _uniform_inverse_width(binning.phi_edges)])
        self.n_binned = 0

    def add(self, chunk: Mapping[str, np.ndarray], phi_deg: np.ndarray,
            stats: FileStats) -> None:
        b = self.binning
        n = phi_deg.shape[0]
        if self._partial.shape[0] < n:
            self._partial = np.empty(n, dtype=np.int64)
        partial = self._partial[:n]
        tstats = np.array([0.0, np.inf, -np.inf])
        _partial_index(chunk["TimeTags"], chunk["Energies"], phi_deg, b.time_edges,
                       b.energy_edges, b.phi_edges, self._inv, partial, tstats)
        stats.update_time(b, int(tstats[0]), tstats[1], tstats[2])
        sel = np.flatnonzero(partial >= 0)
        if sel.size == 0:
            return
        lon, lat = b.direction_columns
        pix = _pixels(b, chunk[lon][sel], chunk[lat][sel])
        part = partial[sel]
        if self.dense:
            skipped = _accumulate(part, pix, b.npix, self.counts)
        else:
            good = pix >= 0
            skipped = int(sel.size - good.sum())
            flat = part[good] * b.npix + pix[good]
            keys, vals = np.unique(flat, return_counts=True)
            self._keys.append(keys)
            self._vals.append(vals.astype(np.int64))
            self._pending += keys.size
            # merge when the unmerged pairs outgrow the merged ones (amortised linear cost)
            if self._pending > max(1 << 22, 2 * self._merged):
                self._merge()
        stats.n_bad_direction += int(skipped)
        self.n_binned += int(sel.size - skipped)

    def _merge(self) -> None:
        if len(self._keys) > 1:
            keys = np.concatenate(self._keys)
            vals = np.concatenate(self._vals)
            uniq, inv = np.unique(keys, return_inverse=True)
            self._keys = [uniq]
            self._vals = [np.bincount(inv, weights=vals, minlength=uniq.size).astype(np.int64)]
        self._merged = self._keys[0].size if self._keys else 0
        self._pending = 0

    def histogram(self) -> Histogram:
        """The counts as a histpy Histogram with sparse (COO) float64 contents."""
        shape = self.binning.shape
        if self.dense:
            flat = np.flatnonzero(self.counts)
            data = self.counts[flat].astype(np.float64)
        else:
            self._merge()
            flat = self._keys[0] if self._keys else np.empty(0, dtype=np.int64)
            data = (self._vals[0] if self._vals else np.empty(0)).astype(np.float64)
        coords = np.stack(np.unravel_index(flat, shape)) if flat.size else np.empty(
            (len(shape), 0), dtype=np.int64)
        contents = sparse.COO(coords, data, shape=shape, sorted=True, has_duplicates=False)
        return Histogram(self.binning.axes(), contents=contents)


@dataclass
class FileStats:
    """What was seen in one input while binning (for messages)."""

    name: str
    n_read: int = 0
    n_bad_direction: int = 0
    t_seen_min: float = np.inf
    t_seen_max: float = -np.inf
    n_outside_time: dict = field(default_factory=dict)

    def update_time(self, binning: CDSBinning, nout: int, tlo: float, thi: float) -> None:
        key = id(binning)
        self.n_outside_time[key] = self.n_outside_time.get(key, 0) + nout
        self.t_seen_min = min(self.t_seen_min, tlo)
        self.t_seen_max = max(self.t_seen_max, thi)

    def check(self, binnings: Sequence[CDSBinning]) -> None:
        """Raise if no event of the file falls in a binning's time range; warn if some don't."""
        if self.n_bad_direction:
            logger.warning("%s: %d events with a direction off the sphere were not binned",
                           self.name, self.n_bad_direction)
        if self.n_read == 0:
            logger.warning("%s: no events", self.name)
            return
        reported = set()
        for b in binnings:
            nout = self.n_outside_time.get(id(b), 0)
            key = (float(b.time_edges[0]), float(b.time_edges[-1]))
            if nout == 0 or key in reported:
                continue
            reported.add(key)
            span = (f"the file's events span {float(self.t_seen_min)!r} to "
                    f"{float(self.t_seen_max)!r} s")
            rng = f"[{float(b.time_edges[0])!r}, {float(b.time_edges[-1])!r}) s"
            if nout >= self.n_read:
                raise InvalidDataError(
                    f"{self.name}: all {self.n_read} events are outside the requested time range "
                    f"{rng}; {span}. Check tmin/tmax/time_bins.")
            logger.warning("%s: %d of %d events are outside the requested time range %s and were "
                           "not binned (%s)", self.name, nout, self.n_read, rng, span)


# --------------------------------------------------------------------------------------------
# driver

_BASE_COLUMNS = ("TimeTags", "Energies", "Phi")


def _as_inputs(unbinned_data: EventSource) -> list:
    if unbinned_data is None:
        raise InvalidParameterError("no unbinned data given (a file, a list of files, or a "
                                    "mapping of event columns)")
    if isinstance(unbinned_data, Mapping):
        return [unbinned_data]
    if isinstance(unbinned_data, (str, os.PathLike)):
        return [unbinned_data]
    items = list(unbinned_data)
    if not items:
        raise InvalidParameterError("an empty list of unbinned data files was given")
    return items


def _iter_mapping(events: Mapping[str, np.ndarray], columns, chunk_size, event_range, callback):
    n = validate_events(events, where="in-memory events", required=columns)
    start, stop = (0, n) if event_range is None else (event_range[0], event_range[1])
    stop = n if stop is None else min(stop, n)
    for a in range(max(0, start), stop, chunk_size):
        b = min(stop, a + chunk_size)
        chunk = {c: np.ascontiguousarray(np.asarray(
            getattr(events[c], "value", events[c]), dtype=np.float64)[a:b]) for c in columns}
        if callback is not None:
            callback(b - a)
        yield chunk


def bin_events(unbinned_data: EventSource, binnings: CDSBinning | Sequence[CDSBinning], *,
               event_range: tuple[int, int | None] | None = None,
               chunk_size: int = DEFAULT_CHUNK_SIZE, progress: bool = True,
               format: str | None = None) -> list[Histogram]:
    """Bin event files (or in-memory columns) into one or several CDS histograms in one pass.

    Parameters
    ----------
    unbinned_data : path-like, sequence of path-like, or mapping of str to ndarray
        DC2 FITS/HDF5 files, MEGAlib ``.tra`` files, or event columns in canonical units
        (:data:`comptonsky.io.events.DC2_COLUMNS`). Several inputs are added together.
    binnings : CDSBinning or sequence of CDSBinning
        Each gets its own histogram; the data are read only once.
    event_range : (int, int or None), optional
        Bin only events ``start <= index < stop`` of each input.
    chunk_size : int
        Events read and binned at a time (memory per chunk is about 100 bytes per event).
    progress : bool
        Show a progress bar over events.
    format : {"fits", "hdf5", "tra"}, optional
        Input format (default: from each file name).

    Returns
    -------
    list of histpy.Histogram
        One per binning, axes (Time, Em, Phi, PsiChi), sparse float64 counts.

    Raises
    ------
    FileFormatError
        On a missing, unreadable, corrupt or truncated file, a missing column or a column in a
        unit that cannot be converted (naming the file).
    InvalidDataError
        If all events of an input are outside a binning's time range.
    """
    single = isinstance(binnings, CDSBinning)
    blist = [binnings] if single else list(binnings)
    if not blist:
        raise InvalidParameterError("no binning given")
    inputs = _as_inputs(unbinned_data)
    columns = list(_BASE_COLUMNS)
    for b in blist:
        for c in b.direction_columns:
            if c not in columns:
                columns.append(c)
    accs = [_Accumulator(b) for b in blist]
    totals = []
    for item in inputs:
        if isinstance(item, Mapping):
            totals.append(validate_events(item, where="in-memory events", required=columns))
        else:
            event_file_format(item, format)  # reject unknown names before any work
            if not Path(item).exists():
                raise FileFormatError(f"{item}: no such file")
            # fail fast, before binning earlier files, on a file that lacks a column
            have = event_file_columns(item, format)
            missing = [c for c in columns if c not in have]
            if missing:
                raise FileFormatError(f"{item}: missing column(s) {missing}; the file has {have}")
            totals.append(count_events(item, format))
    if event_range is not None:
        start, stop = event_range
        totals = [None if t is None else max(0, (t if stop is None else min(stop, t)) - start)
                  for t in totals]
    total = None if any(t is None for t in totals) else int(sum(totals))
    bar = tqdm(total=total, unit="ev", unit_scale=True, desc="binning events",
               disable=not progress, dynamic_ncols=True)
    try:
        for item in inputs:
            name = "in-memory events" if isinstance(item, Mapping) else str(item)
            stats = FileStats(name)
            if isinstance(item, Mapping):
                chunks: Iterator = _iter_mapping(item, columns, chunk_size, event_range,
                                                 bar.update)
            else:
                logger.info("binning %s", item)
                chunks = iter_event_chunks(item, columns=columns, chunk_size=chunk_size,
                                           format=format, event_range=event_range,
                                           callback=bar.update)
            for chunk in chunks:
                with np.errstate(over="ignore", invalid="ignore"):
                    phi_deg = np.rad2deg(chunk["Phi"])
                stats.n_read += phi_deg.shape[0]
                for acc in accs:
                    acc.add(chunk, phi_deg, stats)
            stats.check(blist)
            logger.info("%s: %d events read", name, stats.n_read)
    finally:
        bar.close()
    for acc in accs:
        logger.info("%d events binned into %s PsiChi, shape %s", acc.n_binned,
                    acc.binning.psichi_binning, acc.binning.shape)
    return [acc.histogram() for acc in accs]


def _hdf5_name(output_name: str | os.PathLike) -> Path:
    p = Path(output_name)
    return p if p.suffix.lower() in (".hdf5", ".h5") else p.with_name(p.name + ".hdf5")


class BinnedData:
    """Bin unbinned COSI events into the Compton data space (the tutorial's API).

    Parameters
    ----------
    input_yaml : path-like, optional
        Binning parameter file with ``time_bins`` (size in s or list of edges), ``tmin``,
        ``tmax`` (s), ``energy_bins`` (keV edges), ``phi_pix_size`` (deg), ``nside``, ``scheme``
        and optionally ``data_file``, ``ori_file``, ``unbinned_output`` ("fits" or "hdf5").
    **parameters
        Binning parameters given directly (override the file's).

    Attributes
    ----------
    binned_data : histpy.Histogram or None
        The result of :meth:`get_binned_data` or :meth:`load_binned_data_from_hdf5`.
    cosi_dataset : dict of str to ndarray or None
        Events read by :meth:`read_tra` or selected by :meth:`select_data` (in memory).
    """

    def __init__(self, input_yaml: str | os.PathLike | None = None, **parameters):
        pars = read_binning_parameters(input_yaml) if input_yaml is not None else {}
        for key in parameters:
            if key not in BINNING_KEYS:
                raise UnknownChoiceError("binning parameter", key, BINNING_KEYS)
        pars.update(parameters)
        self.input_yaml = None if input_yaml is None else str(input_yaml)
        self.parameters = pars
        for key in BINNING_KEYS:
            setattr(self, key, pars.get(key))
        if self.unbinned_output is None:
            self.unbinned_output = "fits"
        if str(self.unbinned_output).lower() not in ("fits", "hdf5"):
            raise UnknownChoiceError("unbinned_output", self.unbinned_output, ("fits", "hdf5"),
                                     where=self.input_yaml)
        self.binned_data: Histogram | None = None
        self.cosi_dataset: dict[str, np.ndarray] | None = None

    def _data_file_path(self) -> str | None:
        """``data_file`` as given, or relative to the parameter file's folder when it is not
        found relative to the working directory."""
        if not self.data_file:
            return None
        path = Path(self.data_file)
        if not path.is_absolute() and not path.exists() and self.input_yaml is not None:
            beside = Path(self.input_yaml).parent / path
            if beside.exists():
                return str(beside)
        return str(path)

    @property
    def _where(self) -> str:
        return self.input_yaml or "binning parameters"

    def binning(self, psichi_binning: str = "galactic") -> CDSBinning:
        """The :class:`CDSBinning` these parameters define, for the given PsiChi frame."""
        current = {k: getattr(self, k) for k in BINNING_KEYS}
        return CDSBinning.from_parameters(current, psichi_binning=psichi_binning,
                                          where=self._where)

    # ---------------------------------------------------------------- binning
    def get_binned_data(self, unbinned_data: EventSource | None = None,
                        output_name: str | os.PathLike | None = None,
                        make_binning_plots: bool = False, show_plots: bool = False,
                        psichi_binning: str = "galactic",
                        event_range: tuple[int, int | None] | None = None,
                        chunk_size: int = DEFAULT_CHUNK_SIZE, progress: bool = True
                        ) -> Histogram:
        """Bin events into a (Time, Em, Phi, PsiChi) histogram, stored in ``binned_data``.

        Parameters
        ----------
        unbinned_data : path-like, sequence of path-like, or mapping, optional
            Event file(s) (DC2 FITS/HDF5, MEGAlib .tra), added together; default: the events in
            ``cosi_dataset`` if any, else ``data_file`` from the parameters.
        output_name : path-like, optional
            Also write the histogram to ``output_name`` (``.hdf5`` appended if missing), only
            after binning succeeded, atomically.
        make_binning_plots, show_plots : bool
            Plot the projections (see :meth:`plot_binned_data`).
        psichi_binning : {"galactic", "local"}
            Frame of the PsiChi axis.
        event_range : (int, int or None), optional
            Bin only events ``start <= index < stop`` of each file.
        chunk_size : int
            Events per chunk.
        progress : bool
            Show a progress bar.

        Returns
        -------
        histpy.Histogram
            Counts with axes Time (s), Em (keV), Phi (deg), PsiChi; sparse contents.
        """
        binning = self.binning(psichi_binning)
        if unbinned_data is None:
            if self.cosi_dataset is not None:
                unbinned_data = self.cosi_dataset
            elif self.data_file:
                unbinned_data = self._data_file_path()
            else:
                raise InvalidParameterError(
                    "get_binned_data: no unbinned_data given and no data_file in the parameters")
        (hist,) = bin_events(unbinned_data, [binning], event_range=event_range,
                             chunk_size=chunk_size, progress=progress)
        self.binned_data = hist
        if output_name is not None:
            path = write_histogram(hist, _hdf5_name(output_name))
            logger.info("binned data written to %s", path)
        if make_binning_plots:
            self.plot_binned_data(show=show_plots,
                                  output_name=None if output_name is None else str(output_name))
        return hist

    def load_binned_data_from_hdf5(self, binned_data: str | os.PathLike) -> Histogram:
        """Open a binned-data HDF5 file (histpy format) into ``binned_data``."""
        self.binned_data = open_histogram(binned_data)
        return self.binned_data

    def _hist(self, binned_data) -> Histogram:
        if binned_data is not None:
            if isinstance(binned_data, Histogram):
                return binned_data
            return self.load_binned_data_from_hdf5(binned_data)
        if self.binned_data is None:
            raise InvalidParameterError(
                "no binned data: call get_binned_data or load_binned_data_from_hdf5 first")
        return self.binned_data

    def get_binning_info(self, binned_data: Histogram | str | os.PathLike | None = None
                         ) -> dict:
        """Describe each axis of the binned data (and log it).

        Returns
        -------
        dict
            ``{label: {"nbins", "edges", "unit", ...}}``, plus ``"total_counts"``.
        """
        hist = self._hist(binned_data)
        info: dict = {}
        for ax in hist.axes:
            entry = {"nbins": int(ax.nbins), "unit": None if ax.unit is None else str(ax.unit)}
            if isinstance(ax, HealpixAxis):
                entry.update(nside=int(ax.nside), scheme=str(ax.scheme),
                             coordsys=None if ax.coordsys is None else ax.coordsys.name)
            else:
                edges = ax.edges
                entry["edges"] = np.asarray(getattr(edges, "value", edges))
            info[str(ax.label)] = entry
            logger.info("axis %s: %s", ax.label, entry)
        contents = hist.contents
        info["total_counts"] = float(contents.sum())
        return info

    def plot_binned_data(self, binned_data: Histogram | str | os.PathLike | None = None,
                         output_name: str | None = None,
                         show: bool = False) -> dict:
        """Plot each projection of the binned data: counts versus Time, Em, Phi, and a
        Mollweide map of the PsiChi projection.

        Parameters
        ----------
        binned_data : Histogram or path-like, optional
            Default: ``self.binned_data``.
        output_name : str, optional
            Save figures as ``{output_name}_{axis}.png``.
        show : bool
            Call ``matplotlib.pyplot.show()``.

        Returns
        -------
        dict of str to matplotlib.figure.Figure
            One figure per axis label.
        """
        import matplotlib.pyplot as plt

        hist = self._hist(binned_data)
        figs = {}
        for ax in hist.axes:
            label = str(ax.label)
            proj = hist.project(label)
            values = proj.contents
            values = np.asarray(values.todense() if hasattr(values, "todense") else values)
            if isinstance(ax, HealpixAxis):
                nest = str(ax.scheme).upper() == "NESTED"
                frame = "" if ax.coordsys is None else f" ({ax.coordsys.name})"
                hp.mollview(values, nest=nest, title=f"PsiChi{frame}", unit="counts")
                fig = plt.gcf()
            else:
                fig, pax = plt.subplots(figsize=(7, 4))
                edges = np.asarray(getattr(ax.edges, "value", ax.edges))
                pax.stairs(values, edges)
                unit = "" if ax.unit is None else f" [{ax.unit}]"
                pax.set_xlabel(f"{label}{unit}")
                pax.set_ylabel("counts")
            figs[label] = fig
            if output_name is not None:
                fig.savefig(f"{output_name}_{label}.png", dpi=100)
        if show:
            plt.show()
        return figs

    # ---------------------------------------------------------------- unbinned data
    def _output_path(self, output_name: str | os.PathLike) -> Path:
        ext = ".fits.gz" if str(self.unbinned_output).lower() == "fits" else ".hdf5"
        p = Path(output_name)
        name = p.name.lower()
        if name.endswith((".fits", ".fits.gz", ".hdf5", ".h5")):
            return p
        return p.with_name(p.name + ext)

    def read_tra(self, output_name: str | os.PathLike | None = None,
                 data_file: str | os.PathLike | None = None) -> dict[str, np.ndarray]:
        """Read the Compton events of a MEGAlib ``.tra`` file (default ``data_file``) into
        ``cosi_dataset``; optionally write them as FITS or HDF5 (``unbinned_output``)."""
        from .io.events import read_tra

        src = data_file or self._data_file_path()
        if not src:
            raise InvalidParameterError("read_tra: no data_file given")
        self.cosi_dataset = read_tra(src)
        if output_name is not None:
            write_events(self._output_path(output_name), self.cosi_dataset)
        return self.cosi_dataset

    def select_data(self, unbinned_data: EventSource | None = None,
                    output_name: str | os.PathLike | None = None,
                    tmin: float | None = None, tmax: float | None = None,
                    emin: float | None = None, emax: float | None = None
                    ) -> dict[str, np.ndarray] | Path:
        """Select events by time (default ``tmin``/``tmax``) and energy (keV, ``emin <= E <
        emax``).

        With ``output_name`` the selection is streamed to a file (FITS or HDF5 per
        ``unbinned_output``) and its path returned; otherwise it is kept in ``cosi_dataset``.
        """
        from .io.events import select_events

        src = unbinned_data if unbinned_data is not None else (self.cosi_dataset
                                                              or self._data_file_path())
        tmin = self.tmin if tmin is None else tmin
        tmax = self.tmax if tmax is None else tmax
        out = None if output_name is None else self._output_path(output_name)
        result = select_events(src, out, tmin=tmin, tmax=tmax, emin=emin, emax=emax)
        if out is None:
            self.cosi_dataset = result
        return result

    def combine_unbinned_data(self, input_files: Iterable[str | os.PathLike],
                              output_name: str | os.PathLike | None = None
                              ) -> dict[str, np.ndarray] | Path:
        """Concatenate several event files (streamed when written to ``output_name``)."""
        from .io.events import select_events

        out = None if output_name is None else self._output_path(output_name)
        result = select_events(list(input_files), out)
        if out is None:
            self.cosi_dataset = result
        return result
