"""Attitude samples: the intervals of an orientation history that exposure tables and
conversion matrices sum over.

A sample is one interval between consecutive time stamps with the attitude it is assigned, its
live time, zenith and altitude. ScAtt tables use the midpoint of each interval (the mean of its
end-point unit vectors, as cosipy's tables do); time bins use the attitude at the interval start
and cut intervals at the bin edges, interpolating the attitude there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numba
import numpy as np

from .._numba import njit
from ..errors import InvalidParameterError
from ..geometry import horizon_angle_deg
from ..io.orientation import Orientation

__all__ = ["Samples", "pair_midpoints", "split_by_intervals", "group_order", "lonlat_deg",
           "cos_horizon", "nearest_rotations", "unit_vectors"]


@dataclass
class Samples:
    """Attitude samples (one per interval).

    Attributes
    ----------
    time : ndarray, shape (n,)
        Start of each interval (s).
    livetime : ndarray, shape (n,)
        Live time (s).
    x, z : ndarray, shape (n, 3)
        Galactic unit vectors of the spacecraft x and z axes.
    zenith : ndarray, shape (n, 3)
        Galactic unit vector of the local zenith.
    altitude : ndarray, shape (n,)
        Altitude (km).
    bin : ndarray of int64, shape (n,) or None
        Bin of each sample (time binning), -1 outside every bin.
    """

    time: np.ndarray
    livetime: np.ndarray
    x: np.ndarray
    z: np.ndarray
    zenith: np.ndarray
    altitude: np.ndarray
    bin: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.time)

    def take(self, index) -> Samples:
        """The samples at ``index`` (array of indices or boolean mask)."""
        return Samples(self.time[index], self.livetime[index], self.x[index], self.z[index],
                       self.zenith[index], self.altitude[index],
                       None if self.bin is None else self.bin[index])


def _normalise(v: np.ndarray) -> np.ndarray:
    n = np.sqrt(np.einsum("ij,ij->i", v, v))
    return v / np.where(n > 0, n, 1.0)[:, None]


@njit(cache=True, inline="always")
def _mid(a, b, i, out):
    """out[i] = normalised a[i] + a[i + 1] (b: fallback rows where a is zero)."""
    s0, s1, s2 = 0.0, 0.0, 0.0
    for k in range(i, i + 2):
        v0, v1, v2 = a[k, 0], a[k, 1], a[k, 2]
        n = math.sqrt(v0 * v0 + v1 * v1 + v2 * v2)
        if n == 0.0:
            v0, v1, v2 = b[k, 0], b[k, 1], b[k, 2]
            n = math.sqrt(v0 * v0 + v1 * v1 + v2 * v2)
        s0 += v0 / n
        s1 += v1 / n
        s2 += v2 / n
    n = math.sqrt(s0 * s0 + s1 * s1 + s2 * s2)
    if n == 0.0:
        n = 1.0
    out[i, 0] = s0 / n
    out[i, 1] = s1 / n
    out[i, 2] = s2 / n


@njit(parallel=True, cache=True, nogil=True)
def _midpoints(x, z, ez, alt, xm, zm, em, am):
    for i in numba.prange(x.shape[0] - 1):
        _mid(x, x, i, xm)
        _mid(z, z, i, zm)
        _mid(ez, z, i, em)  # unknown zenith (zero row): the z axis stands in
        am[i] = 0.5 * (alt[i] + alt[i + 1])


def pair_midpoints(o: Orientation) -> Samples:
    """One sample per interval of ``o``, at the interval midpoint (normalised vector mean)."""
    if len(o) < 2:
        raise InvalidParameterError(f"an attitude history needs at least 2 time stamps, found "
                                    f"{len(o)}")
    n = len(o) - 1
    xm, zm, em = np.empty((n, 3)), np.empty((n, 3)), np.empty((n, 3))
    am = np.empty(n)
    c = np.ascontiguousarray
    _midpoints(c(o.x_axis), c(o.z_axis), c(o.earth_zenith), c(o.altitude), xm, zm, em, am)
    return Samples(time=o.time[:-1], livetime=o.livetime[:-1], x=xm, z=zm, zenith=em,
                   altitude=am)


def split_by_intervals(o: Orientation, tstart: np.ndarray, tstop: np.ndarray) -> Samples:
    """Interval-start samples of ``o`` cut at the bin boundaries ``tstart``/``tstop``.

    Every boundary that falls between two time stamps gets an interpolated sample (unit vectors
    linearly, renormalised; altitude linearly), so that each sample lies in one bin. A cut
    interval keeps the live-time fraction of its length. Bins must be sorted and disjoint.

    Parameters
    ----------
    o : Orientation
    tstart, tstop : ndarray, shape (nbins,)
        Bin boundaries (s).

    Returns
    -------
    Samples
        With :attr:`Samples.bin` set (-1 for samples outside every bin).
    """
    tstart = np.asarray(tstart, dtype=np.float64).reshape(-1)
    tstop = np.asarray(tstop, dtype=np.float64).reshape(-1)
    if len(tstart) != len(tstop) or not len(tstart):
        raise InvalidParameterError(f"need as many bin starts as stops (≥ 1), found "
                                    f"{len(tstart)} and {len(tstop)}")
    if np.any(tstop <= tstart) or np.any(tstart[1:] < tstop[:-1]):
        raise InvalidParameterError("time bins must have start < stop, sorted and disjoint")
    t = o.time
    cuts = np.unique(np.concatenate([tstart, tstop]))
    cuts = cuts[(cuts > t[0]) & (cuts < t[-1])]
    cuts = cuts[~np.isin(cuts, t)]
    i = np.searchsorted(t, cuts, side="right") - 1
    f = ((cuts - t[i]) / (t[i + 1] - t[i]))[:, None]
    zen = o.zenith
    times = np.concatenate([t, cuts])
    order = np.argsort(times, kind="stable")
    times = times[order]

    def merged(a, interp):
        return np.concatenate([a, interp])[order]

    x = merged(o.x_axis, _normalise((1 - f) * o.x_axis[i] + f * o.x_axis[i + 1]))
    z = merged(o.z_axis, _normalise((1 - f) * o.z_axis[i] + f * o.z_axis[i + 1]))
    ze = merged(zen, _normalise((1 - f) * zen[i] + f * zen[i + 1]))
    alt = merged(o.altitude, (1 - f[:, 0]) * o.altitude[i] + f[:, 0] * o.altitude[i + 1])
    parent = np.searchsorted(t, times[:-1], side="right") - 1
    dt = np.diff(t)
    live = o.livetime[parent] * (np.diff(times) / dt[parent])
    start = times[:-1]
    b = np.searchsorted(tstart, start, side="right") - 1
    inside = (b >= 0) & (start < tstop[np.maximum(b, 0)])
    b = np.where(inside, b, -1)
    return Samples(time=start, livetime=live, x=x[:-1], z=z[:-1], zenith=ze[:-1],
                   altitude=alt[:-1], bin=b.astype(np.int64))


@njit(cache=True, nogil=True)
def _counting_order(codes, nbins):
    counts = np.zeros(nbins + 1, dtype=np.int64)
    for c in codes:
        counts[c + 1] += 1
    offsets = np.cumsum(counts)
    fill = offsets[:-1].copy()
    order = np.empty(len(codes), dtype=np.int64)
    for i in range(len(codes)):
        c = codes[i]
        order[fill[c]] = i
        fill[c] += 1
    return order, offsets


def group_order(codes: np.ndarray, nbins: int) -> tuple[np.ndarray, np.ndarray]:
    """Stable grouping of samples by bin (counting sort).

    Parameters
    ----------
    codes : ndarray of int, shape (n,)
        Bin of each sample, 0 ≤ code < nbins.
    nbins : int

    Returns
    -------
    order : ndarray of int64, shape (n,)
        Sample indices, bin by bin, in their original order within a bin.
    offsets : ndarray of int64, shape (nbins + 1,)
        Bin k holds ``order[offsets[k]:offsets[k + 1]]``.
    """
    return _counting_order(np.asarray(codes, dtype=np.int64), int(nbins))


@njit(parallel=True, cache=True, nogil=True)
def _lonlat(v, order, out):
    r2d = 180.0 / math.pi
    for i in numba.prange(order.shape[0]):
        j = order[i]
        r = math.sqrt(v[j, 0] ** 2 + v[j, 1] ** 2 + v[j, 2] ** 2)
        out[i, 1] = math.asin(min(1.0, max(-1.0, v[j, 2] / r))) * r2d
        a = math.atan2(v[j, 1], v[j, 0]) * r2d
        a = a + 360.0 if a < 0.0 else a
        out[i, 0] = a - 360.0 if a >= 360.0 else a


def lonlat_deg(v: np.ndarray, order: np.ndarray | None = None) -> np.ndarray:
    """Longitude in [0, 360) and latitude (deg) of ``v[order]``, shape (n, 2) (multi-threaded)."""
    v = np.ascontiguousarray(v, dtype=np.float64).reshape(-1, 3)
    order = np.arange(len(v)) if order is None else np.ascontiguousarray(order, dtype=np.int64)
    out = np.empty((len(order), 2))
    _lonlat(v, order, out)
    return out


@njit(parallel=True, cache=True, nogil=True)
def _unit(lonlat, out):
    d2r = math.pi / 180.0
    for i in numba.prange(lonlat.shape[0]):
        b = lonlat[i, 1] * d2r
        lon = lonlat[i, 0] * d2r
        cb = math.cos(b)
        out[i, 0] = cb * math.cos(lon)
        out[i, 1] = cb * math.sin(lon)
        out[i, 2] = math.sin(b)


def unit_vectors(lonlat: np.ndarray) -> np.ndarray:
    """Unit vectors of (l, b) pairs in degrees, shape (n, 3) (multi-threaded)."""
    lonlat = np.ascontiguousarray(lonlat, dtype=np.float64).reshape(-1, 2)
    out = np.empty((len(lonlat), 3))
    _unit(lonlat, out)
    return out


def cos_horizon(altitude: np.ndarray) -> np.ndarray:
    """Cosine of the Earth-limb angle from the zenith at each altitude (km)."""
    alt = np.asarray(altitude, dtype=np.float64)
    if alt.size and alt.min() == alt.max():  # one altitude (the usual case): one evaluation
        return np.full(alt.shape, math.cos(math.radians(horizon_angle_deg(alt.flat[0]))))
    uniq, inv = np.unique(alt, return_inverse=True)
    return np.cos(np.radians([horizon_angle_deg(a) for a in uniq]))[inv.reshape(alt.shape)]


@njit(parallel=True, cache=True, nogil=True)
def _polar(x, z, out):
    for i in numba.prange(x.shape[0]):
        m = np.empty((3, 3))
        for r in range(3):
            m[r, 0] = x[i, r]
            m[r, 2] = z[i, r]
        m[0, 1] = z[i, 1] * x[i, 2] - z[i, 2] * x[i, 1]
        m[1, 1] = z[i, 2] * x[i, 0] - z[i, 0] * x[i, 2]
        m[2, 1] = z[i, 0] * x[i, 1] - z[i, 1] * x[i, 0]
        for _ in range(50):  # Newton iteration M <- (M + M^-T) / 2 towards the polar factor
            c = np.empty((3, 3))  # cofactor matrix: M^-T = C / det M
            c[0, 0] = m[1, 1] * m[2, 2] - m[1, 2] * m[2, 1]
            c[0, 1] = m[1, 2] * m[2, 0] - m[1, 0] * m[2, 2]
            c[0, 2] = m[1, 0] * m[2, 1] - m[1, 1] * m[2, 0]
            c[1, 0] = m[0, 2] * m[2, 1] - m[0, 1] * m[2, 2]
            c[1, 1] = m[0, 0] * m[2, 2] - m[0, 2] * m[2, 0]
            c[1, 2] = m[0, 1] * m[2, 0] - m[0, 0] * m[2, 1]
            c[2, 0] = m[0, 1] * m[1, 2] - m[0, 2] * m[1, 1]
            c[2, 1] = m[0, 2] * m[1, 0] - m[0, 0] * m[1, 2]
            c[2, 2] = m[0, 0] * m[1, 1] - m[0, 1] * m[1, 0]
            det = m[0, 0] * c[0, 0] + m[0, 1] * c[0, 1] + m[0, 2] * c[0, 2]
            change = 0.0
            for r in range(3):
                for k in range(3):
                    v = 0.5 * (m[r, k] + c[r, k] / det)
                    change = max(change, abs(v - m[r, k]))
                    m[r, k] = v
            if change < 1e-15:
                break
        for r in range(3):
            for k in range(3):
                out[i, r, k] = m[r, k]


def nearest_rotations(x: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Rotations nearest to the matrices with columns (x, z × x, z) (polar decomposition).

    Averaged or interpolated x and z axes are not exactly orthogonal; the attitude used for
    them is the orthogonal matrix closest (Frobenius norm) to (x, z × x, z), as cosipy obtains
    through ``scoords.Attitude.from_axes`` with scipy ≥ 1.15. For orthonormal x, z it is
    :func:`comptonsky.geometry.attitude_matrices`.

    Parameters
    ----------
    x, z : ndarray, shape (n, 3)
        Unit vectors of the spacecraft x and z axes (Galactic).

    Returns
    -------
    ndarray, shape (n, 3, 3)
        Detector → Galactic rotations (columns: x, y, z axes).
    """
    x = np.ascontiguousarray(x, dtype=np.float64).reshape(-1, 3)
    z = np.ascontiguousarray(z, dtype=np.float64).reshape(-1, 3)
    out = np.empty((len(x), 3, 3))
    _polar(x, z, out)
    return out
