"""Compiled kernels of the coordinate conversion matrix (docs/design.md §8).

    C[s, j, ν] = Σ_{t ∈ s} Δt_t · w_ν(A_tᵀ n_j) · occ_t(n_j)

``per_sample_bin`` accumulates one bin sample by sample (threads split the sky pixels j, so
each row C[s, j, :] has one writer); ``occulted_exposure`` gives Σ_{t ∈ s} Δt_t · occ_t(n_j)
for the averaged-pointing matrix, testing individual samples only for sky pixels near the
Earth's limb of the bin. A direction n is visible at sample t when n · ζ_t ≥ cos h_t
(ζ: zenith, h: limb angle from the zenith).
"""

from __future__ import annotations

import math

import numba
import numpy as np

from .._numba import njit
from .healpix import interp4, pix_ring

__all__ = ["per_sample_bin", "extract_rows", "occulted_exposure", "sort_within_bins",
           "attitude_hash", "pixel_pair_keys", "group_summaries", "grouped_bin"]


@njit(cache=True, nogil=True, inline="always")
def _accumulate(r, nx, ny, nz, w, j, nside, theta_r, start, npr, shifted, relabel, pix, wgt,
                buf, mark, touched, ntouch):
    """Add weight ``w`` of sky direction n (row j) at its detector-frame direction rᵀn, spread
    over the 4 bilinear neighbours, and record newly touched columns of row j."""
    dx = r[0, 0] * nx + r[1, 0] * ny + r[2, 0] * nz
    dy = r[0, 1] * nx + r[1, 1] * ny + r[2, 1] * nz
    dz = r[0, 2] * nx + r[1, 2] * ny + r[2, 2] * nz
    interp4(nside, theta_r, start, npr, shifted, dx, dy, dz, pix, wgt)
    for k in range(4):
        q = relabel[pix[k]]
        if mark[j, q] == 0:
            mark[j, q] = 1
            touched[j, ntouch[j]] = q
            ntouch[j] += 1
        buf[j, q] += w * wgt[k]


@njit(parallel=True, cache=True, nogil=True)
def per_sample_bin(rot, live, zen, cosh, t0, t1, sky, occultation, nside, theta_r, start, npr,
                   shifted, relabel, buf, mark, touched, ntouch):
    """Add samples t0..t1-1 into ``buf`` (npix_model, npix_local).

    Parameters
    ----------
    rot : (n, 3, 3) detector → Galactic rotations (columns x, y, z axes)
    live, cosh : (n,) live time (s), cosine of the limb angle
    zen : (n, 3) zenith unit vectors
    sky : (npm, 3) Galactic unit vectors of the model pixels
    occultation : bool
    nside, theta_r, start, npr, shifted, relabel : HEALPix tables of the NuLambda axis
    buf, mark, touched, ntouch : accumulator, touched flags, touched column lists and counts
    """
    npm = sky.shape[0]
    for j in numba.prange(npm):
        nx, ny, nz = sky[j, 0], sky[j, 1], sky[j, 2]
        pix = np.empty(4, dtype=np.int64)
        wgt = np.empty(4)
        for t in range(t0, t1):
            w = live[t]
            if w == 0.0:
                continue
            if occultation and zen[t, 0] * nx + zen[t, 1] * ny + zen[t, 2] * nz < cosh[t]:
                continue
            _accumulate(rot[t], nx, ny, nz, w, j, nside, theta_r, start, npr, shifted,
                        relabel, pix, wgt, buf, mark, touched, ntouch)


@njit(parallel=True, cache=True, nogil=True)
def extract_rows(buf, mark, touched, ntouch, offsets, cols, vals):
    """Move the touched entries of each row (sorted by column) to cols/vals; reset the row."""
    for j in numba.prange(buf.shape[0]):
        n = ntouch[j]
        qs = touched[j]
        for k in range(1, n):  # insertion sort: a row touches few columns
            q = qs[k]
            i = k - 1
            while i >= 0 and qs[i] > q:
                qs[i + 1] = qs[i]
                i -= 1
            qs[i + 1] = q
        o = offsets[j]
        for k in range(n):
            q = qs[k]
            cols[o + k] = q
            vals[o + k] = buf[j, q]
            buf[j, q] = 0.0
            mark[j, q] = 0
        ntouch[j] = 0


@njit(parallel=True, cache=True, nogil=True)
def occulted_exposure(live, zen, cosh, offsets, sky, out):
    """out[s, j] = Σ_{t in bin s} live_t · [sky_j · zen_t ≥ cosh_t]; samples grouped by bin."""
    nb = len(offsets) - 1
    npm = sky.shape[0]
    for s in range(nb):
        t0, t1 = offsets[s], offsets[s + 1]
        if t1 == t0:
            continue
        cx = cy = cz = 0.0
        total = 0.0
        hmin, hmax = math.pi, 0.0
        for t in range(t0, t1):
            cx += zen[t, 0]
            cy += zen[t, 1]
            cz += zen[t, 2]
            total += live[t]
            h = math.acos(min(1.0, max(-1.0, cosh[t])))
            hmin = min(hmin, h)
            hmax = max(hmax, h)
        cn = math.sqrt(cx * cx + cy * cy + cz * cz)
        rad = math.pi
        if cn > 0:
            cx, cy, cz = cx / cn, cy / cn, cz / cn
            rad = 0.0
            for t in range(t0, t1):
                d = zen[t, 0] * cx + zen[t, 1] * cy + zen[t, 2] * cz
                rad = max(rad, math.acos(min(1.0, max(-1.0, d))))
        margin = 1e-9
        for j in numba.prange(npm):
            nx, ny, nz = sky[j, 0], sky[j, 1], sky[j, 2]
            th = math.acos(min(1.0, max(-1.0, nx * cx + ny * cy + nz * cz)))
            if th + rad < hmin - margin:  # inside every sample's visible cap
                out[s, j] = total
            elif th - rad > hmax + margin:  # outside every one
                out[s, j] = 0.0
            else:
                acc = 0.0
                for t in range(t0, t1):
                    if zen[t, 0] * nx + zen[t, 1] * ny + zen[t, 2] * nz >= cosh[t]:
                        acc += live[t]
                out[s, j] = acc


# --- grouped per-interval matrix ------------------------------------------------------------
#
# Intervals of one bin whose attitudes fall in the same (z pixel, x pixel) pair of a fine HEALPix
# grid (or are identical) are summed first: C[s, j, ν] = Σ_g w_ν(Ā_gᵀ n_j) E[g, j] with
# E[g, j] = Σ_{t ∈ g} Δt_t occ_t(n_j) (occultation still decided interval by interval) and Ā_g
# the group's live-time-weighted mean attitude, or the attitude itself when all of the group's
# intervals share it bit for bit (then the grouping is exact).


@njit(parallel=True, cache=True, nogil=True)
def sort_within_bins(keys, x, z, exact, offsets, order, first):
    """Order each bin's samples by key (stable); flag where a new group starts.

    ``first[k]`` is 1 when ``order[k]`` starts a group: its key, or (``exact``, where keys are
    hashes) its x or z axis, differs from the previous sample of the sorted bin.
    """
    nb = len(offsets) - 1
    for b in numba.prange(nb):
        t0, t1 = offsets[b], offsets[b + 1]
        if t1 == t0:
            continue
        o = np.argsort(keys[t0:t1], kind="mergesort")
        prev = -1
        for k in range(t1 - t0):
            t = t0 + o[k]
            order[t0 + k] = t
            new = 1
            if prev >= 0 and keys[t] == keys[prev]:
                new = 0
                for c in range(3 if exact else 0):
                    if x[t, c] != x[prev, c] or z[t, c] != z[prev, c]:
                        new = 1
            first[t0 + k] = new
            prev = t


@njit(parallel=True, cache=True, nogil=True)
def pixel_pair_keys(nside, x, z, out):
    """out[i] = RING pixel of z[i] × npix + RING pixel of x[i] at ``nside`` (≤ 8192)."""
    npix = 12 * nside * nside
    for i in numba.prange(x.shape[0]):
        out[i] = pix_ring(nside, z[i, 0], z[i, 1], z[i, 2]) * npix + \
            pix_ring(nside, x[i, 0], x[i, 1], x[i, 2])


@njit(cache=True, inline="always")
def _mix(h, v):
    h ^= v
    h *= np.uint64(0x100000001B3)
    h ^= h >> np.uint64(29)
    return h


@njit(parallel=True, cache=True, nogil=True)
def attitude_hash(xbits, zbits, out):
    """A 63-bit hash of each sample's (x, z) bit patterns (uint64 views, shape (n, 3))."""
    for i in numba.prange(xbits.shape[0]):
        h = np.uint64(0xCBF29CE484222325)
        for c in range(3):
            h = _mix(h, xbits[i, c])
            h = _mix(h, zbits[i, c])
        out[i] = np.int64(h >> np.uint64(1))


@njit(parallel=True, cache=True, nogil=True)
def group_summaries(order, gstart, live, x, z, zen, cosh, occultation, gx, gz, gtotal, gcen,
                    gin, gout):
    """Per group: attitude (x, z), live time, zenith cap tests.

    ``gx``, ``gz``: the common axes when every interval of the group has them bit for bit, else
    the live-time-weighted means (normalised). ``gtotal``: Σ Δt. A sky direction n with
    n · gcen > gin is visible in every interval of the group, with n · gcen < gout in none
    (bounds from the cap around the mean zenith that holds every interval's zenith).
    """
    ng = len(gstart) - 1
    margin = 1e-9
    for g in numba.prange(ng):
        k0, k1 = gstart[g], gstart[g + 1]
        t0 = order[k0]
        same = True
        sx = np.zeros(3)
        sz = np.zeros(3)
        total = 0.0
        for k in range(k0, k1):
            t = order[k]
            w = live[t]
            total += w
            for c in range(3):
                sx[c] += w * x[t, c]
                sz[c] += w * z[t, c]
                if x[t, c] != x[t0, c] or z[t, c] != z[t0, c]:
                    same = False
        gtotal[g] = total
        if same or total == 0.0:
            for c in range(3):
                gx[g, c] = x[t0, c]
                gz[g, c] = z[t0, c]
        else:
            nx = math.sqrt(sx[0] ** 2 + sx[1] ** 2 + sx[2] ** 2)
            nz = math.sqrt(sz[0] ** 2 + sz[1] ** 2 + sz[2] ** 2)
            for c in range(3):
                gx[g, c] = sx[c] / nx
                gz[g, c] = sz[c] / nz
        if not occultation:
            continue
        cx = cy = cz = 0.0
        hmin, hmax = math.pi, 0.0
        for k in range(k0, k1):
            t = order[k]
            cx += zen[t, 0]
            cy += zen[t, 1]
            cz += zen[t, 2]
            h = math.acos(min(1.0, max(-1.0, cosh[t])))
            hmin = min(hmin, h)
            hmax = max(hmax, h)
        cn = math.sqrt(cx * cx + cy * cy + cz * cz)
        gin[g] = 2.0  # never "all visible"
        gout[g] = -2.0  # never "all hidden"
        if cn == 0.0:
            gcen[g, 0], gcen[g, 1], gcen[g, 2] = 0.0, 0.0, 1.0
            continue
        cx, cy, cz = cx / cn, cy / cn, cz / cn
        gcen[g, 0], gcen[g, 1], gcen[g, 2] = cx, cy, cz
        rad = 0.0
        for k in range(k0, k1):
            t = order[k]
            d = zen[t, 0] * cx + zen[t, 1] * cy + zen[t, 2] * cz
            rad = max(rad, math.acos(min(1.0, max(-1.0, d))))
        a = hmin - rad - margin  # angle from the centre below which all intervals see n
        if a > 0.0:
            gin[g] = math.cos(a)
        a = hmax + rad + margin  # angle beyond which no interval sees n
        if a < math.pi:
            gout[g] = math.cos(a)


@njit(parallel=True, cache=True, nogil=True)
def grouped_bin(rot, gtotal, gcen, gin, gout, gstart, order, live, zen, cosh, g0, g1, sky,
                occultation, nside, theta_r, start, npr, shifted, relabel, buf, mark, touched,
                ntouch):
    """Add groups g0..g1-1 (one bin) into ``buf`` (npix_model, npix_local).

    Each group contributes w_ν(Ā_gᵀ n_j) · Σ_{t ∈ g} Δt_t occ_t(n_j); intervals are tested for
    occultation one by one only where the group's zenith cap straddles the limb.
    """
    npm = sky.shape[0]
    for j in numba.prange(npm):
        nx, ny, nz = sky[j, 0], sky[j, 1], sky[j, 2]
        pix = np.empty(4, dtype=np.int64)
        wgt = np.empty(4)
        for g in range(g0, g1):
            e = gtotal[g]
            if e == 0.0:
                continue
            if occultation:
                d = gcen[g, 0] * nx + gcen[g, 1] * ny + gcen[g, 2] * nz
                if d < gout[g]:
                    continue
                if d <= gin[g]:
                    e = 0.0
                    for k in range(gstart[g], gstart[g + 1]):
                        t = order[k]
                        if zen[t, 0] * nx + zen[t, 1] * ny + zen[t, 2] * nz >= cosh[t]:
                            e += live[t]
                    if e == 0.0:
                        continue
            _accumulate(rot[g], nx, ny, nz, e, j, nside, theta_r, start, npr, shifted,
                        relabel, pix, wgt, buf, mark, touched, ntouch)
