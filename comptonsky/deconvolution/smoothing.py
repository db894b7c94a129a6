"""Gaussian smoothing of HEALPix maps (per energy band) used to damp noise in the delta map.

``smoothing:method`` chooses :class:`HealpySmoothing` (``healpy``, the published behaviour) or
:class:`PixelSmoothing` (``pixel``, no ringing). A smoother is called on maps of shape
(npix, n_energy) and returns a new array of that shape.
"""

from __future__ import annotations

import logging

import healpy as hp
import numpy as np
import scipy.sparse as sp
from astropy import units as u

from ..errors import UnknownChoiceError

__all__ = ["HealpySmoothing", "PixelSmoothing", "make_smoother", "SMOOTHING_METHODS"]

logger = logging.getLogger(__name__)


class _Smoothing:
    """Gaussian smoothing of full width at half maximum ``fwhm`` (an angle Quantity) of maps at
    HEALPix ``nside``, in NESTED order if ``nested``."""

    def __init__(self, fwhm: u.Quantity, nside: int, nested: bool = False):
        self.fwhm_rad = float(u.Quantity(fwhm).to_value(u.rad))
        self.nside = int(nside)
        self.nested = bool(nested)


class HealpySmoothing(_Smoothing):
    """Spherical-harmonic Gaussian beam (``healpy.smoothing``) on each energy band, in RING order.

    Band-limiting (ℓ ≤ 3 nside − 1) makes it ring around sharp, bright features such as the
    Galactic Centre.
    """

    def __call__(self, maps: np.ndarray) -> np.ndarray:
        out = np.empty_like(maps, dtype=np.float64)
        for k in range(maps.shape[1]):
            band = np.asarray(maps[:, k], dtype=np.float64)
            if self.nested:
                band = hp.reorder(band, n2r=True)
            smoothed = hp.smoothing(band, fwhm=self.fwhm_rad)
            if self.nested:
                smoothed = hp.reorder(smoothed, r2n=True)
            out[:, k] = smoothed
        return out


class PixelSmoothing(_Smoothing):
    """Gaussian smoothing by an exact, sparse pixel-space kernel (no ringing).

    The weight between pixels p and q is w_pq = exp(−θ_pq² / 2σ²) for θ_pq ≤ ``truncation``·σ
    (θ: angle between pixel centres, σ = FWHM / √(8 ln 2)). W is symmetric; it is balanced as
    K = D W D with a positive diagonal D (symmetric Sinkhorn–Knopp) so that K is symmetric with
    unit row and column sums (a flat map stays flat, totals are preserved). A kernel narrower
    than a pixel reduces to the identity.

    Parameters
    ----------
    truncation : float
        Kernel support in units of σ (``fwhm``, ``nside``, ``nested`` as for every smoother).

    Attributes
    ----------
    kernel : scipy.sparse.csr_matrix, shape (npix, npix)
    """

    def __init__(self, fwhm: u.Quantity, nside: int, nested: bool = False,
                 truncation: float = 4.0):
        super().__init__(fwhm, nside, nested)
        self.truncation = float(truncation)
        self.kernel = self._build()

    def _build(self) -> sp.csr_matrix:
        npix = hp.nside2npix(self.nside)
        sigma = self.fwhm_rad / np.sqrt(8.0 * np.log(2.0))
        if sigma <= 0:
            return sp.identity(npix, format="csr")
        radius = min(self.truncation * sigma, np.pi)
        vec = np.array(hp.pix2vec(self.nside, np.arange(npix), nest=self.nested)).T
        rows, cols, vals = [], [], []
        for p in range(npix):
            near = hp.query_disc(self.nside, vec[p], radius, inclusive=False, nest=self.nested)
            if p not in near:
                near = np.append(near, p)
            angle = np.arccos(np.clip(vec[near] @ vec[p], -1.0, 1.0))
            rows.append(np.full(near.size, p))
            cols.append(near)
            vals.append(np.exp(-0.5 * (angle / sigma) ** 2))
        weights = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows),
                                                        np.concatenate(cols))),
                                shape=(npix, npix))
        weights = 0.5 * (weights + weights.T)  # exact symmetry (query_disc edge cases)
        scale = np.ones(npix)
        for _ in range(1000):  # symmetric Sinkhorn-Knopp: d <- sqrt(d / (W d))
            sums = scale * (weights @ scale)
            if np.max(np.abs(sums - 1.0)) < 1e-13:
                break
            scale = scale / np.sqrt(sums)
        else:
            logger.warning("pixel smoothing kernel balanced to %.2g only",
                           float(np.max(np.abs(sums - 1.0))))
        kernel = sp.diags(scale) @ weights @ sp.diags(scale)
        kernel = sp.csr_matrix(0.5 * (kernel + kernel.T))
        logger.info("pixel smoothing kernel: FWHM %.3g deg, %d pixels, %.1f entries per row",
                    np.degrees(self.fwhm_rad), npix, kernel.nnz / npix)
        return kernel

    def __call__(self, maps: np.ndarray) -> np.ndarray:
        return np.asarray(self.kernel @ np.asarray(maps, dtype=np.float64))


#: ``smoothing:method`` (the names of :data:`.registry.SMOOTHING_METHODS`) → class.
SMOOTHING_METHODS = {"healpy": HealpySmoothing, "pixel": PixelSmoothing}


def make_smoother(method: str, fwhm: u.Quantity, nside: int, nested: bool = False):
    """The smoother for ``smoothing:method`` (``'healpy'`` or ``'pixel'``)."""
    if method not in SMOOTHING_METHODS:
        raise UnknownChoiceError("smoothing method", method, SMOOTHING_METHODS,
                                 "deconvolution:parameter:smoothing:method")
    return SMOOTHING_METHODS[method](fwhm, nside, nested=nested)
