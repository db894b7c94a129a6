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


# Why an event is not binned: counters filled by _partial_index (the first failing axis decides),
# and by Accumulator.add for directions healpy rejects.
OUT_T, NAN_T, NAN_E, NEG_E, OUT_E, NAN_PHI, BAD_PHI, OUT_PHI, OFF_SPHERE = range(9)
N_REASONS = 9


@njit(nogil=True, cache=True)
def _partial_index(t, e, phi_deg, t_edges, e_edges, phi_edges, inv, out, reasons,
                   trange):  # pragma: no cover - compiled
    """Flat (Time, Em, Phi) index per event into ``out`` (-1 if outside); returns the count
    inside. ``inv`` holds each axis' inverse bin width (0 if not equally spaced); ``reasons``
    (int64, N_REASONS) counts why events are left out; ``trange`` holds [min t, max t] seen."""
    ne = e_edges.shape[0] - 1
    nphi = phi_edges.shape[0] - 1
    nin = 0
    tlo = trange[0]
    thi = trange[1]
    for k in range(t.shape[0]):
        tk = t[k]
        if tk < tlo:
            tlo = tk
        if tk > thi:
            thi = tk
        it = _find_bin(t_edges, tk, inv[0])
        if it < 0:
            reasons[OUT_T if np.isfinite(tk) else NAN_T] += 1
            out[k] = -1
            continue
        ek = e[k]
        ie = _find_bin(e_edges, ek, inv[1])
        if ie < 0:
            reasons[NAN_E if not np.isfinite(ek) else (NEG_E if ek < 0.0 else OUT_E)] += 1
            out[k] = -1
            continue
        pk = phi_deg[k]
        ip = _find_bin(phi_edges, pk, inv[2])
        if ip < 0:
            if not np.isfinite(pk):
                reasons[NAN_PHI] += 1
            elif pk < 0.0 or pk > 180.0:
                reasons[BAD_PHI] += 1
            else:
                reasons[OUT_PHI] += 1
            out[k] = -1
            continue
        out[k] = (it * ne + ie) * nphi + ip
        nin += 1
    trange[0] = tlo
    trange[1] = thi
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
        reasons = stats.reasons(b)
        if b.first_axis is None:
            t, seen = chunk["TimeTags"], stats.t_seen
        else:
            t, seen = b.first_axis.positions(chunk), np.array([np.inf, -np.inf])
        _partial_index(t, chunk["Energies"], phi_deg, b.time_edges,
                       b.energy_edges, b.phi_edges, self._inv, partial, reasons, seen)
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
        reasons[OFF_SPHERE] += int(skipped)
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


def _span(edges: np.ndarray) -> str:
    return f"[{float(edges[0])!r}, {float(edges[-1])!r})"


@dataclass
class FileStats:
    """What was seen in one input while binning: events read, the range of times, and per
    binning the events left out by reason (counters indexed by the reason constants)."""

    name: str
    scope: str = ""
    n_read: int = 0
    t_seen: np.ndarray = field(default_factory=lambda: np.array([np.inf, -np.inf]))
    _reasons: dict = field(default_factory=dict)

    def reasons(self, binning: CDSBinning) -> np.ndarray:
        """The (mutable) reason counters of ``binning``."""
        return self._reasons.setdefault(id(binning), np.zeros(N_REASONS, dtype=np.int64))

    def _labels(self, b: CDSBinning) -> list[tuple[int, str, bool]]:
        """(reason, text, whether it means invalid data rather than a selection)."""
        span = (f"the file's events span {float(self.t_seen[0])!r} to "
                f"{float(self.t_seen[1])!r} s")
        if b.first_axis is None:
            out_t = f"outside the requested time range {_span(b.time_edges)} s ({span})"
            nan_t = "with non-finite TimeTags"
        else:
            out_t, nan_t = b.first_axis.out_text(), b.first_axis.nan_text
        return [
            (OUT_T, out_t, True),
            (NAN_T, nan_t, True),
            (NAN_E, "with non-finite Energies", True),
            (NEG_E, "with negative Energies", True),
            (OUT_E, f"outside the Em range {_span(b.energy_edges)} keV", False),
            (NAN_PHI, "with non-finite Phi (no Compton angle)", True),
            (BAD_PHI, "with Phi outside [0, 180] deg", True),
            (OUT_PHI, f"outside the Phi range {_span(b.phi_edges)} deg", False),
            (OFF_SPHERE, "with a direction off the sphere", True),
        ]

    def check(self, binnings: Sequence[CDSBinning]) -> None:
        """Raise if no event of the file falls in a binning's time range; otherwise log, per
        binning, how many events were binned and why the others were not (a warning when
        events were invalid, outside the time range, or none was binned)."""
        if self.n_read == 0:
            logger.warning("%s: no events read%s", self.name, self.scope)
            return
        for b in binnings:
            counts = self.reasons(b)
            if b.first_axis is not None:
                if counts[OUT_T] + counts[NAN_T] >= self.n_read:
                    raise InvalidDataError(
                        f"{self.name}: none of the {self.n_read} events{self.scope} can be "
                        f"binned by {b.first_axis.label}: {counts[OUT_T]} "
                        f"{b.first_axis.out_text()}, {counts[NAN_T]} {b.first_axis.nan_text}")
            elif counts[NAN_T] >= self.n_read:
                raise InvalidDataError(f"{self.name}: all {self.n_read} events have non-finite "
                                       "TimeTags")
            elif counts[OUT_T] + counts[NAN_T] >= self.n_read:
                raise InvalidDataError(
                    f"{self.name}: all {self.n_read} events are outside the requested time "
                    f"range {_span(b.time_edges)} s; the file's events span "
                    f"{float(self.t_seen[0])!r} to {float(self.t_seen[1])!r} s. Check "
                    "tmin/tmax/time_bins.")
            left_out = int(counts.sum())
            n_binned = self.n_read - left_out
            head = (f"{self.name}: {n_binned} of {self.n_read} events{self.scope} binned into "
                    f"{b.psichi_binning} PsiChi")
            if not left_out:
                logger.info("%s", head)
                continue
            parts = [f"{counts[r]} {text}" for r, text, _ in self._labels(b) if counts[r]]
            invalid = any(counts[r] for r, _, bad in self._labels(b) if bad)
            text = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
            level = logging.WARNING if invalid or n_binned == 0 else logging.INFO
            logger.log(level, "%s; %s were not binned", head, text)
