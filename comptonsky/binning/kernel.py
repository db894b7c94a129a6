"""The binning kernel: compiled bin search and counting, accumulated over event chunks."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import sparse
from histpy import Histogram

from .._numba import njit
from ..errors import InvalidDataError
from .psichi import psichi_pixels
from .spec import CDSBinning

__all__ = ["DENSE_LIMIT", "Accumulator", "FileStats"]

logger = logging.getLogger(__name__)

#: Largest histogram (number of cells) accumulated as a dense array (2**22 int64 cells = 32 MiB;
#: its conversion to the sparse result needs at most 5 times that); bigger ones accumulate sorted
#: (index, count) pairs, so memory follows the number of filled cells.
DENSE_LIMIT = 1 << 22


def _uniform_inverse_width(edges: np.ndarray) -> float:
    """1 / bin width if the edges are equally spaced (to 1e-9 relative), else 0."""
    widths = np.diff(edges)
    if widths.size and np.all(np.abs(widths - widths.mean()) <= 1e-9 * np.abs(widths.mean())):
        return float(widths.size / (edges[-1] - edges[0]))
    return 0.0


@njit(nogil=True, cache=True)
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


@njit(nogil=True, cache=True)
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


@njit(nogil=True, cache=True)
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


class Accumulator:
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
        pix = psichi_pixels(b.psichi_binning, b.nside, b.scheme == "nested", chunk[lon][sel],
                            chunk[lat][sel])
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
