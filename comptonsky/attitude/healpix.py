"""Compiled HEALPix kernels: pixel of a direction and bilinear interpolation weights.

Numba versions of HEALPix's ``vec2pix`` and ``get_interpol`` (the algorithms behind healpy's
``vec2pix`` and ``get_interp_weights``), callable inside other compiled loops and
multi-threaded over arrays. Ring geometry is tabulated once per nside; nested pixels come from a
ring → nested lookup table.
"""

from __future__ import annotations

import math
from functools import lru_cache

import healpy as hp
import numba
import numpy as np

from .._numba import njit

__all__ = ["ring_tables", "vec2pix", "interp_weights"]

_TWOTHIRD = 2.0 / 3.0


@lru_cache(maxsize=8)
def ring_tables(nside: int, nest: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray,
                                                 np.ndarray]:
    """Per-ring geometry and the pixel relabelling for ``nside``.

    Returns
    -------
    theta : ndarray, shape (4 nside,)
        Colatitude (rad) of ring r (index 0 unused).
    start, npix_ring : ndarray of int64, shape (4 nside,)
        First RING pixel and number of pixels of ring r.
    shifted : ndarray of int64, shape (4 nside,)
        1 if the ring's pixel centres are offset by half a pixel in longitude.
    relabel : ndarray of int64, shape (npix,)
        RING → output pixel number (identity, or RING → NESTED when ``nest``).
    """
    nside = int(nside)
    npix = 12 * nside * nside
    nr = 4 * nside
    theta = np.zeros(nr)
    start = np.zeros(nr, dtype=np.int64)
    npr = np.zeros(nr, dtype=np.int64)
    shifted = np.zeros(nr, dtype=np.int64)
    fact2 = 4.0 / npix
    fact1 = 2 * nside * fact2
    ncap = 2 * nside * (nside - 1)
    for ring in range(1, nr):
        north = nr - ring if ring > 2 * nside else ring
        if north < nside:
            tmp = north * north * fact2
            th = math.atan2(math.sqrt(tmp * (2 - tmp)), 1 - tmp)
            rp = 4 * north
            sh = 1
            sp = 2 * north * (north - 1)
        else:
            th = math.acos((2 * nside - north) * fact1)
            rp = 4 * nside
            sh = 1 if ((north - nside) & 1) == 0 else 0
            sp = ncap + (north - nside) * rp
        if north != ring:
            th = math.pi - th
            sp = npix - sp - rp
        theta[ring], start[ring], npr[ring], shifted[ring] = th, sp, rp, sh
    relabel = hp.ring2nest(nside, np.arange(npix)).astype(np.int64) if nest \
        else np.arange(npix, dtype=np.int64)
    return theta, start, npr, shifted, relabel


@njit(cache=True, inline="always")
def _ring_above(nside, z):
    az = abs(z)
    if az <= _TWOTHIRD:
        return int(nside * (2.0 - 1.5 * z))
    iring = int(nside * math.sqrt(3.0 * (1.0 - az)))
    return iring if z > 0 else 4 * nside - iring - 1


@njit(cache=True, inline="always")
def _ring_pair(phi, sp, nr, sh):
    dphi = 2.0 * math.pi / nr
    tmp = phi / dphi - 0.5 * sh
    i1 = int(tmp) - 1 if tmp < 0 else int(tmp)
    w1 = (phi - (i1 + 0.5 * sh) * dphi) / dphi
    i2 = i1 + 1
    if i1 < 0:
        i1 += nr
    if i2 >= nr:
        i2 -= nr
    return sp + i1, sp + i2, 1.0 - w1, w1


@njit(cache=True, inline="always")
def interp4(nside, theta_r, start, npr, shifted, x, y, z, pix, wgt):
    """Bilinear HEALPix interpolation (RING pixels) of the direction (x, y, z), |v| > 0.

    Writes 4 pixels and weights into ``pix`` and ``wgt`` (healpy ``get_interp_weights``).
    """
    r = math.sqrt(x * x + y * y + z * z)
    cz = z / r
    theta = math.atan2(math.sqrt(x * x + y * y), z)
    phi = math.atan2(y, x)
    if phi < 0.0:
        phi += 2.0 * math.pi
    npix = 12 * nside * nside
    ir1 = _ring_above(nside, cz)
    ir2 = ir1 + 1
    theta1 = 0.0
    theta2 = 0.0
    if ir1 > 0:
        theta1 = theta_r[ir1]
        pix[0], pix[1], wgt[0], wgt[1] = _ring_pair(phi, start[ir1], npr[ir1], shifted[ir1])
    if ir2 < 4 * nside:
        theta2 = theta_r[ir2]
        pix[2], pix[3], wgt[2], wgt[3] = _ring_pair(phi, start[ir2], npr[ir2], shifted[ir2])
    if ir1 == 0:
        wtheta = theta / theta2
        wgt[2] *= wtheta
        wgt[3] *= wtheta
        fac = (1.0 - wtheta) * 0.25
        wgt[0] = fac
        wgt[1] = fac
        wgt[2] += fac
        wgt[3] += fac
        pix[0] = (pix[2] + 2) & 3
        pix[1] = (pix[3] + 2) & 3
    elif ir2 == 4 * nside:
        wtheta = (theta - theta1) / (math.pi - theta1)
        wgt[0] *= 1.0 - wtheta
        wgt[1] *= 1.0 - wtheta
        fac = wtheta * 0.25
        wgt[0] += fac
        wgt[1] += fac
        wgt[2] = fac
        wgt[3] = fac
        pix[2] = ((pix[0] + 2) & 3) + npix - 4
        pix[3] = ((pix[1] + 2) & 3) + npix - 4
    else:
        wtheta = (theta - theta1) / (theta2 - theta1)
        wgt[0] *= 1.0 - wtheta
        wgt[1] *= 1.0 - wtheta
        wgt[2] *= wtheta
        wgt[3] *= wtheta


@njit(cache=True, inline="always")
def pix_ring(nside, x, y, z):
    """RING pixel of the direction (x, y, z), |v| > 0 (HEALPix ``vec2pix``)."""
    r = math.sqrt(x * x + y * y + z * z)
    cz = z / r
    za = abs(cz)
    tt = math.atan2(y, x) * (2.0 / math.pi)
    if tt < 0.0:
        tt += 4.0
    if tt >= 4.0:
        tt -= 4.0
    nl4 = 4 * nside
    if za <= _TWOTHIRD:
        temp1 = nside * (0.5 + tt)
        temp2 = nside * cz * 0.75
        jp = int(temp1 - temp2)
        jm = int(temp1 + temp2)
        ir = nside + 1 + jp - jm
        kshift = 1 - (ir & 1)
        ip = (jp + jm - nside + kshift + 1) // 2
        ip = ip % nl4
        return 2 * nside * (nside - 1) + (ir - 1) * nl4 + ip
    tp = tt - int(tt)
    if za < 0.99:
        tmp = nside * math.sqrt(3.0 * (1.0 - za))
    else:  # near the poles, from sin(theta) for accuracy
        sth = math.sqrt(x * x + y * y) / r
        tmp = nside * sth / math.sqrt((1.0 + za) / 3.0)
    jp = int(tp * tmp)
    jm = int((1.0 - tp) * tmp)
    ir = jp + jm + 1
    ip = int(tt * ir)
    ip = ip % (4 * ir)
    if cz > 0:
        return 2 * ir * (ir - 1) + ip
    return 12 * nside * nside - 2 * ir * (ir + 1) + ip


@njit(parallel=True, cache=True, nogil=True)
def _vec2pix_many(nside, v, relabel, out):
    for i in numba.prange(v.shape[0]):
        out[i] = relabel[pix_ring(nside, v[i, 0], v[i, 1], v[i, 2])]


@njit(parallel=True, cache=True, nogil=True)
def _interp_many(nside, v, theta_r, start, npr, shifted, relabel, pix, wgt):
    for i in numba.prange(v.shape[0]):
        p = np.empty(4, dtype=np.int64)
        w = np.empty(4)
        interp4(nside, theta_r, start, npr, shifted, v[i, 0], v[i, 1], v[i, 2], p, w)
        for k in range(4):
            pix[i, k] = relabel[p[k]]
            wgt[i, k] = w[k]


def vec2pix(nside: int, vec: np.ndarray, nest: bool = False) -> np.ndarray:
    """HEALPix pixel of each direction (multi-threaded ``healpy.vec2pix``).

    Parameters
    ----------
    nside : int
    vec : ndarray, shape (n, 3)
        Directions (need not be normalised, must be non-zero).
    nest : bool
        NESTED numbering instead of RING.

    Returns
    -------
    ndarray of int64, shape (n,)
    """
    v = np.ascontiguousarray(vec, dtype=np.float64).reshape(-1, 3)
    out = np.empty(len(v), dtype=np.int64)
    _vec2pix_many(int(nside), v, ring_tables(int(nside), bool(nest))[4], out)
    return out


def interp_weights(nside: int, vec: np.ndarray, nest: bool = False) -> tuple[np.ndarray,
                                                                             np.ndarray]:
    """Bilinear interpolation pixels and weights of each direction (``get_interp_weights``).

    Parameters
    ----------
    nside : int
    vec : ndarray, shape (n, 3)
        Non-zero directions.
    nest : bool

    Returns
    -------
    pix : ndarray of int64, shape (n, 4)
    wgt : ndarray, shape (n, 4)
        Weights summing to 1.
    """
    v = np.ascontiguousarray(vec, dtype=np.float64).reshape(-1, 3)
    th, st, npr, sh, rel = ring_tables(int(nside), bool(nest))
    pix = np.empty((len(v), 4), dtype=np.int64)
    wgt = np.empty((len(v), 4))
    _interp_many(int(nside), v, th, st, npr, sh, rel, pix, wgt)
    return pix, wgt
