"""First axes other than wall-clock time bins: spacecraft-attitude (ScAtt) bins and time intervals.

A :class:`~comptonsky.binning.spec.CDSBinning` normally bins ``TimeTags`` on its time edges. With a
*first axis* it bins a position computed per event instead: ``k + 0.5`` for an event of bin ``k``,
-1 for an event in no bin, NaN for an event whose coordinate is not a number. The kernel then
counts on the edges ``0, 1, ..., N`` exactly as it counts times, so streaming, sparse
accumulation and the per-reason accounting are shared with ordinary binning.

Two rules, both cosipy's:

- **ScAtt** (:class:`ScAttAxis`): an event goes to the bin of the exposure table whose HEALPix
  pixel pair (z pixel, x pixel) is that of the event's own pointing columns ``Zpointings`` and
  ``Xpointings`` ((l, b) in rad), pixelised as ``healpy.ang2pix(nside, l·180/π, b·180/π,
  lonlat=True)`` at the table's nside and scheme. Events whose pixel pair is in no bin of the
  table are not counted. No time cut is applied unless one is given (cosipy applies none).
- **Time intervals** (:class:`IntervalAxis`): an event at time t goes to the last interval k with
  ``tstart[k] <= t <= tstop[k]`` (both ends included; where one interval ends and the next starts,
  the later one takes the event), as cosipy's time-binned table does.

For events without pointing columns, :class:`ScAttByTimeAxis` assigns ScAtt bins by time instead:
an event at t goes to the bin of the orientation interval ``[t_i, t_{i+1})`` holding it, the bin
the exposure table gave that interval (its midpoint attitude), so counts and exposure are grouped
by the same rule.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import astropy.units as u
import healpy as hp
import numpy as np
from histpy import Axis

from ..errors import InvalidParameterError

__all__ = ["IntervalAxis", "POINTING_ALIASES", "ScAttAxis", "ScAttByTimeAxis"]

#: cosipy's newer names of the pointing columns → the names the event readers give.
POINTING_ALIASES = {"Xpointings (glon,glat)": "Xpointings",
                    "Ypointings (glon,glat)": "Ypointings",
                    "Zpointings (glon,glat)": "Zpointings"}


def _pointing_pixels(nside: int, nest: bool, lonlat_rad: np.ndarray, ok: np.ndarray
                     ) -> np.ndarray:
    """HEALPix pixel of (l, b) in rad (shape (n, 2)) as cosipy computes it; -1 where not ok."""
    pix = np.full(lonlat_rad.shape[0], -1, dtype=np.int64)
    if ok.any():
        lon = lonlat_rad[ok, 0] * 180 / np.pi
        lat = lonlat_rad[ok, 1] * 180 / np.pi
        pix[ok] = hp.ang2pix(nside, lon, lat, nest=nest, lonlat=True)
    return pix


@dataclass(frozen=True, eq=False)
class ScAttAxis:
    """ScAtt bins of an exposure table, looked up from each event's pointing.

    Parameters
    ----------
    pixel_pairs : ndarray, shape (N, 2)
        (z pixel, x pixel) of bins 0..N-1 (the table's ``healpix_index``).
    nside : int
        HEALPix nside of the table's pixels.
    scheme : {"ring", "nested"}
    time_range : (float, float), optional
        Count only events with ``tmin <= TimeTags < tmax`` (s).
    """

    pixel_pairs: np.ndarray
    nside: int
    scheme: str = "ring"
    time_range: tuple[float, float] | None = None
    label: str = field(default="ScAtt", init=False)
    _keys: np.ndarray = field(init=False, repr=False)
    _codes: np.ndarray = field(init=False, repr=False)

    def __post_init__(self):
        pairs = np.asarray(self.pixel_pairs, dtype=np.int64).reshape(-1, 2)
        nside = int(self.nside)
        if nside < 1 or nside & (nside - 1):
            raise InvalidParameterError(f"ScAtt table: nside must be a power of 2, found {nside}")
        npix = 12 * nside * nside
        if pairs.size and (pairs.min() < 0 or pairs.max() >= npix):
            raise InvalidParameterError(
                f"ScAtt table: healpix_index values must be in [0, {npix}) for nside {nside}")
        keys = pairs[:, 0] * npix + pairs[:, 1]
        order = np.argsort(keys, kind="stable")
        skeys = keys[order]
        if skeys.size > 1 and np.any(skeys[1:] == skeys[:-1]):
            raise InvalidParameterError("ScAtt table: a (z, x) pixel pair appears in two bins")
        object.__setattr__(self, "pixel_pairs", pairs)
        object.__setattr__(self, "nside", nside)
        object.__setattr__(self, "_keys", skeys)
        object.__setattr__(self, "_codes", order.astype(np.int64))

    @property
    def nbins(self) -> int:
        return int(self.pixel_pairs.shape[0])

    @property
    def columns(self) -> tuple[str, ...]:
        """Event columns the lookup reads."""
        return ("Zpointings", "Xpointings")

    def edges(self) -> np.ndarray:
        return np.arange(self.nbins + 1, dtype=np.float64)

    def axis(self) -> Axis:
        """cosipy's ScAtt axis: edges 0..N, no unit."""
        return Axis(np.arange(self.nbins + 1), label="ScAtt")

    def positions(self, chunk) -> np.ndarray:
        """k + 0.5 for an event of bin k, -1 for no bin, NaN for a non-finite pointing."""
        z = np.asarray(chunk["Zpointings"], dtype=np.float64).reshape(-1, 2)
        x = np.asarray(chunk["Xpointings"], dtype=np.float64).reshape(-1, 2)
        finite = np.isfinite(z).all(axis=1) & np.isfinite(x).all(axis=1)
        on_sphere = (finite & (np.abs(z[:, 1]) <= np.pi / 2 + 1e-12)
                     & (np.abs(x[:, 1]) <= np.pi / 2 + 1e-12))
        nest = self.scheme == "nested"
        npix = 12 * self.nside * self.nside
        key = _pointing_pixels(self.nside, nest, z, on_sphere) * npix + _pointing_pixels(
            self.nside, nest, x, on_sphere)
        out = np.full(z.shape[0], -1.0)
        if self._keys.size:
            i = np.minimum(np.searchsorted(self._keys, key), self._keys.size - 1)
            hit = on_sphere & (self._keys[i] == key)
            out[hit] = self._codes[i[hit]] + 0.5
        out[~finite] = np.nan
        if self.time_range is not None:
            t = np.asarray(chunk["TimeTags"], dtype=np.float64)
            tmin, tmax = self.time_range
            out[~((t >= tmin) & (t < tmax))] = -1.0
        return out

    def out_text(self) -> str:
        text = "with a pointing in no ScAtt bin of the exposure table"
        if self.time_range is not None:
            t0, t1 = (float(t) for t in self.time_range)
            text += f" or a time outside [{t0!r}, {t1!r}) s"
        return text

    nan_text = "with non-finite pointings"


@dataclass(frozen=True, eq=False)
class IntervalAxis:
    """Time intervals [tstart_k, tstop_k] (s, sorted, not overlapping) as the first axis.

    The axis is ``Time`` with the edges in seconds when the intervals are contiguous
    (``tstop_k == tstart_{k+1}``), which is the axis of the conversion matrix built from the same
    table; otherwise its edges are the interval numbers 0..N, as cosipy writes them.
    """

    tstart: np.ndarray
    tstop: np.ndarray
    label: str = field(default="Time", init=False)

    def __post_init__(self):
        t0 = np.atleast_1d(np.asarray(self.tstart, dtype=np.float64))
        t1 = np.atleast_1d(np.asarray(self.tstop, dtype=np.float64))
        if t0.ndim != 1 or t0.shape != t1.shape or t0.size == 0:
            raise InvalidParameterError(
                f"time intervals: tstart and tstop must be 1-d of one length >= 1, found "
                f"{t0.shape} and {t1.shape}")
        if not (np.isfinite(t0).all() and np.isfinite(t1).all()):
            raise InvalidParameterError("time intervals: tstart/tstop must be finite")
        if np.any(t1 <= t0):
            k = int(np.flatnonzero(t1 <= t0)[0])
            raise InvalidParameterError(
                f"time intervals: interval {k} has tstop {t1[k]!r} <= tstart {t0[k]!r}")
        if np.any(t0[1:] < t1[:-1]):
            k = int(np.flatnonzero(t0[1:] < t1[:-1])[0])
            raise InvalidParameterError(
                f"time intervals must be sorted and not overlap: interval {k + 1} starts at "
                f"{t0[k + 1]!r} s, before interval {k} ends ({t1[k]!r} s)")
        object.__setattr__(self, "tstart", t0)
        object.__setattr__(self, "tstop", t1)

    @property
    def nbins(self) -> int:
        return int(self.tstart.size)

    @property
    def contiguous(self) -> bool:
        return bool(np.all(self.tstart[1:] == self.tstop[:-1]))

    @property
    def columns(self) -> tuple[str, ...]:
        return ("TimeTags",)

    def edges(self) -> np.ndarray:
        return np.arange(self.nbins + 1, dtype=np.float64)

    def axis(self) -> Axis:
        if self.contiguous:
            return Axis(np.append(self.tstart, self.tstop[-1:]) * u.s, label="Time")
        return Axis(np.arange(self.nbins + 1), label="Time")

    def positions(self, chunk) -> np.ndarray:
        t = np.asarray(chunk["TimeTags"], dtype=np.float64)
        k = np.searchsorted(self.tstart, t, side="right") - 1
        kk = np.clip(k, 0, self.nbins - 1)
        inside = (k >= 0) & (t <= self.tstop[kk])
        out = np.where(inside, kk + 0.5, -1.0)
        out[~np.isfinite(t)] = np.nan
        return out

    def out_text(self) -> str:
        return (f"outside the {self.nbins} time interval(s) in [{float(self.tstart[0])!r}, "
                f"{float(self.tstop[-1])!r}] s")

    nan_text = "with non-finite TimeTags"


@dataclass(frozen=True, eq=False)
class ScAttByTimeAxis:
    """ScAtt bins looked up by event time: interval k = [starts[k], stops[k]) is in bin
    ``codes[k]`` (-1: in no bin).

    Parameters
    ----------
    starts, stops : ndarray, shape (K,)
        Orientation intervals (s), sorted.
    codes : ndarray of int, shape (K,)
        ScAtt bin of each interval, -1 for none.
    nbins : int
        Number of ScAtt bins of the table.
    """

    starts: np.ndarray
    stops: np.ndarray
    codes: np.ndarray
    nbins: int
    label: str = field(default="ScAtt", init=False)

    def __post_init__(self):
        for name in ("starts", "stops"):
            object.__setattr__(self, name, np.asarray(getattr(self, name), dtype=np.float64))
        object.__setattr__(self, "codes", np.asarray(self.codes, dtype=np.int64))
        if not (self.starts.shape == self.stops.shape == self.codes.shape):
            raise InvalidParameterError("ScAtt by time: starts, stops and codes differ in length")
        if self.starts.size > 1 and np.any(np.diff(self.starts) < 0):
            raise InvalidParameterError("ScAtt by time: the orientation times must increase")

    columns = ("TimeTags",)

    def edges(self) -> np.ndarray:
        return np.arange(self.nbins + 1, dtype=np.float64)

    def axis(self) -> Axis:
        return Axis(np.arange(self.nbins + 1), label="ScAtt")

    def positions(self, chunk) -> np.ndarray:
        t = np.asarray(chunk["TimeTags"], dtype=np.float64)
        k = np.searchsorted(self.starts, t, side="right") - 1
        kk = np.clip(k, 0, max(self.starts.size - 1, 0))
        out = np.full(t.shape, -1.0)
        if self.starts.size:
            ok = (k >= 0) & (t < self.stops[kk]) & (self.codes[kk] >= 0)
            out[ok] = self.codes[kk[ok]] + 0.5
        out[~np.isfinite(t)] = np.nan
        return out

    def out_text(self) -> str:
        return "at a time in no ScAtt bin of the exposure table (outside the orientation or in a dropped bin)"

    nan_text = "with non-finite TimeTags"
