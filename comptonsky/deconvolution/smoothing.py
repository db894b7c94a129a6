"""Gaussian smoothing of HEALPix maps (per energy band) used to damp noise in the delta map.

Two methods (``smoothing:method``):

* ``healpy`` — :class:`HealpySmoothing`, spherical-harmonic Gaussian beam (``healpy.smoothing``),
  the published behaviour. Band-limiting (ℓ ≤ 3 nside − 1) makes it ring around sharp, bright
  features such as the Galactic Centre.
* ``pixel`` — :class:`PixelSmoothing`, an exact Gaussian kernel in angular distance between pixel
  centres, truncated at ``truncation`` σ, held as a sparse matrix built once. The kernel is
  non-negative (no ringing), symmetric and balanced so that every row and column sums to 1:
  a flat map stays flat and the total of any map is preserved.
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


class HealpySmoothing:
    """Spherical-harmonic Gaussian smoothing (``healpy.smoothing``) of each energy band.

    Parameters
    ----------
    fwhm : astropy.units.Quantity
        Full width at half maximum of the Gaussian beam (angle).
    nside : int
        HEALPix NSIDE of the maps.
    nested : bool
        Whether the maps are in NESTED order (they are reordered to RING and back).
    """

    def __init__(self, fwhm: u.Quantity, nside: int, nested: bool = False):
        self.fwhm_rad = float(u.Quantity(fwhm).to_value(u.rad))
        self.nside = int(nside)
        self.nested = bool(nested)

    def __call__(self, maps: np.ndarray) -> np.ndarray:
        """Smooth ``maps`` of shape (npix, n_energy); returns a new array of the same shape."""
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


class PixelSmoothing:
    """Gaussian smoothing by an exact, sparse pixel-space kernel (no ringing).

    The weight between pixels p and q is w_pq = exp(−θ_pq² / 2σ²) for θ_pq ≤ ``truncation``·σ
    (θ: angle between pixel centres, σ = FWHM / √(8 ln 2)). W is symmetric; it is balanced as
    K = D W D with a positive diagonal D (symmetric Sinkhorn–Knopp) so that K is symmetric with
    unit row and column sums. A kernel narrower than a pixel reduces to the identity.

    Parameters
    ----------
    fwhm : astropy.units.Quantity
        Full width at half maximum (angle).
    nside : int
        HEALPix NSIDE.
    nested : bool
        Pixel ordering of the maps.
    truncation : float
        Kernel support in units of σ.

    Attributes
    ----------
    kernel : scipy.sparse.csr_matrix, shape (npix, npix)
    """

    def __init__(self, fwhm: u.Quantity, nside: int, nested: bool = False,
                 truncation: float = 4.0):
        self.fwhm_rad = float(u.Quantity(fwhm).to_value(u.rad))
        self.nside = int(nside)
        self.nested = bool(nested)
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
        """Smooth ``maps`` of shape (npix, n_energy); returns a new array of the same shape."""
        return np.asarray(self.kernel @ np.asarray(maps, dtype=np.float64))


#: ``smoothing:method`` (the names of :data:`.registry.SMOOTHING_METHODS`) → class.
SMOOTHING_METHODS = {"healpy": HealpySmoothing, "pixel": PixelSmoothing}


def make_smoother(method: str, fwhm: u.Quantity, nside: int, nested: bool = False):
    """The smoother for ``smoothing:method`` (``'healpy'`` or ``'pixel'``)."""
    if method not in SMOOTHING_METHODS:
        raise UnknownChoiceError("smoothing method", method, SMOOTHING_METHODS,
                                 "deconvolution:parameter:smoothing:method")
    return SMOOTHING_METHODS[method](fwhm, nside, nested=nested)
