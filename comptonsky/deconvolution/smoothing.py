"""Gaussian smoothing of HEALPix maps (per energy band) used to damp noise in the delta map."""

from __future__ import annotations

import logging

import healpy as hp
import numpy as np
from astropy import units as u

__all__ = ["HealpySmoothing"]

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
