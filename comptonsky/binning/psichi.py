"""PsiChi frames: which event columns give the scattered-photon direction, and its HEALPix pixel."""

from __future__ import annotations

import healpy as hp
import numpy as np

__all__ = ["PSICHI_COLUMNS", "PSICHI_FRAMES", "psichi_pixels"]

#: ``psichi_binning`` choices and the HEALPix ``coordsys`` each one writes.
PSICHI_FRAMES = {"galactic": "galactic", "local": "spacecraftframe"}

#: The two event columns (longitude or azimuth, latitude or polar angle) giving the PsiChi
#: direction in each frame.
PSICHI_COLUMNS = {"galactic": ("Chi galactic", "Psi galactic"), "local": ("Chi local", "Psi local")}


def psichi_pixels(frame: str, nside: int, nest: bool, lon_or_chi: np.ndarray,
                  lat_or_psi: np.ndarray) -> np.ndarray:
    """HEALPix pixel (int64, shape (N,)) per event as healpy computes it; -1 where healpy would
    reject the angle. ``lon_or_chi``, ``lat_or_psi``: the frame's :data:`PSICHI_COLUMNS`,
    (l, b) in deg for ``"galactic"`` (``ang2pix(..., lonlat=True)``), (Chi, Psi) in rad for
    ``"local"`` (``ang2pix(nside, psi, chi)``)."""
    if frame == "galactic":
        # what healpy.ang2pix(..., lonlat=True) does internally
        theta = np.pi / 2.0 - np.radians(lat_or_psi)
        phi = np.radians(lon_or_chi)
    else:
        theta, phi = lat_or_psi, lon_or_chi
    ok = (theta >= 0.0) & (theta <= np.pi + 1e-5) & np.isfinite(phi)
    if ok.all():
        return hp.ang2pix(nside, theta, phi, nest=nest).astype(np.int64, copy=False)
    pix = np.full(theta.shape, -1, dtype=np.int64)
    if ok.any():
        pix[ok] = hp.ang2pix(nside, theta[ok], phi[ok], nest=nest)
    return pix
