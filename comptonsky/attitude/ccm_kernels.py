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
from .healpix import interp4

__all__ = ["per_sample_bin", "extract_rows", "occulted_exposure"]


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
            dx = rot[t, 0, 0] * nx + rot[t, 1, 0] * ny + rot[t, 2, 0] * nz
            dy = rot[t, 0, 1] * nx + rot[t, 1, 1] * ny + rot[t, 2, 1] * nz
            dz = rot[t, 0, 2] * nx + rot[t, 1, 2] * ny + rot[t, 2, 2] * nz
            interp4(nside, theta_r, start, npr, shifted, dx, dy, dz, pix, wgt)
            for k in range(4):
                q = relabel[pix[k]]
                if mark[j, q] == 0:
                    mark[j, q] = 1
                    touched[j, ntouch[j]] = q
                    ntouch[j] += 1
                buf[j, q] += w * wgt[k]


@njit(parallel=True, cache=True, nogil=True)
def extract_rows(buf, mark, touched, ntouch, offsets, cols, vals):
    """Move the touched entries of each row (sorted by column) to cols/vals; reset the row."""
    for j in numba.prange(buf.shape[0]):
        n = ntouch[j]
        qs = np.sort(touched[j, :n])
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
