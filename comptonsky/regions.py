"""Named sky regions and fluxes in them (for comparing reconstructions with the truth)."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import healpy as hp
import numpy as np
from histpy import Histogram

__all__ = ["REGIONS", "region_mask", "region_fluxes"]


def _angular_distance_deg(lon, lat, lon0=0.0, lat0=0.0):
    v = hp.ang2vec(lon, lat, lonlat=True)
    v0 = hp.ang2vec(lon0, lat0, lonlat=True)
    return np.degrees(np.arccos(np.clip(v @ v0, -1, 1)))


def _wrap(lon):
    return np.where(lon > 180.0, lon - 360.0, lon)


#: Region name → predicate on (l, b) in degrees (l in [0, 360)).
REGIONS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "bulge": lambda lon, lat: _angular_distance_deg(lon, lat) <= 10.0,
    "disk": lambda lon, lat: (np.abs(lat) <= 10.0) & (_angular_distance_deg(lon, lat) > 10.0),
    "inner_galaxy": lambda lon, lat: (np.abs(_wrap(lon)) <= 30.0) & (np.abs(lat) <= 10.0),
    "all_sky": lambda lon, lat: np.ones_like(lon, dtype=bool),
}


def region_mask(name: str, nside: int, nest: bool = False) -> np.ndarray:
    """Boolean pixel mask, shape (12 nside²,), of the region ``name`` (pixel centres inside)."""
    from .errors import UnknownChoiceError

    if name not in REGIONS:
        raise UnknownChoiceError("region", name, REGIONS)
    lon, lat = hp.pix2ang(nside, np.arange(hp.nside2npix(nside)), nest=nest, lonlat=True)
    return REGIONS[name](lon, lat)


def region_fluxes(image: Histogram, regions: Mapping[str, np.ndarray] | None = None,
                  energy_index: int = 0) -> dict[str, float]:
    """Flux Σ_j λ_j ΔΩ_j inside each region, for one energy band (cm⁻² s⁻¹ for intensities).

    Parameters
    ----------
    image : histpy.Histogram
        Map with axes ``(lb, Ei)``.
    regions : dict of name → bool mask (npix,), optional
        Default: all of :data:`REGIONS`.
    energy_index : int
        The energy band.
    """
    axis = image.axes[0]
    nest = str(axis.scheme).lower() == "nested"
    if regions is None:
        regions = {name: region_mask(name, axis.nside, nest) for name in REGIONS}
    values = np.asarray(getattr(image.contents, "value", image.contents))[:, energy_index]
    pixarea = hp.nside2pixarea(axis.nside)
    return {name: float(values[mask].sum() * pixarea) for name, mask in regions.items()}
