"""Named sky regions and fluxes in them (for comparing reconstructions with the truth)."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import healpy as hp
import numpy as np
from histpy import Histogram

__all__ = ["REGIONS", "region_mask", "region_fluxes", "PROFILES", "profile_bin_width",
           "sky_profiles"]


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


#: Profiles: name → (the coordinate binned, the other coordinate's band, its default half-width
#: in degrees). ``longitude``: flux summed over |b| < 10° in bins of l; ``latitude``: flux summed
#: over |l| < 30° in bins of b.
PROFILES: dict[str, tuple[str, str, float]] = {"longitude": ("l", "b", 10.0),
                                               "latitude": ("b", "l", 30.0)}

_NICE_WIDTHS = (2.0, 5.0, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0)


def profile_bin_width(nside: int) -> float:
    """Default profile bin width in degrees: the smallest of 2, 5, 10, 15, 20, 30, 45, 60 that is
    at least 1.5 × the pixel size (30° at nside 4, 15° at nside 8, 10° at nside 16)."""
    resolution = float(np.degrees(hp.nside2resol(nside)))
    for width in _NICE_WIDTHS:
        if width >= 1.5 * resolution:
            return width
    return _NICE_WIDTHS[-1]


def sky_profiles(maps: np.ndarray, nside: int, nest: bool = False,
                 bin_deg: float | None = None, lat_band_deg: float | None = None,
                 lon_band_deg: float | None = None) -> dict[str, dict[str, np.ndarray | float]]:
    """Longitude and latitude flux profiles of one or several maps.

    Parameters
    ----------
    maps : ndarray, shape (npix, n_energy) or (n_maps, npix, n_energy)
        Intensities (e.g. cm⁻² s⁻¹ sr⁻¹) in HEALPix order ``nest``.
    nside : int
        HEALPix NSIDE of the maps.
    nest : bool
        Nested pixel order.
    bin_deg : float, optional
        Bin width in degrees (default :func:`profile_bin_width`).
    lat_band_deg, lon_band_deg : float, optional
        Half-widths of the bands: the longitude profile sums pixels with |b| < ``lat_band_deg``
        (default 10°), the latitude profile pixels with |l| < ``lon_band_deg`` (default 30°;
        l wrapped to (−180°, 180°]).

    Returns
    -------
    dict
        ``{"longitude": {...}, "latitude": {...}}``, each with ``centres`` (n_bins,) and
        ``edges`` (n_bins + 1,) in degrees: bins of the given width centred on multiples of it
        (l from −180° + width to 180°, the last bin wrapping round l = ±180°; b from −90° to 90°,
        the end bins cut at the poles); ``band_deg``
        and ``values``: Σ λ ΔΩ over the pixels whose centres fall in each bin, shape
        (n_bins, n_energy) — or (n_maps, n_bins, n_energy) for a stack of maps — in the maps'
        unit × sr (cm⁻² s⁻¹ for intensities).
    """
    maps = np.asarray(maps, dtype=float)
    stacked = maps.ndim == 3
    if not stacked:
        maps = maps[None]
    npix = hp.nside2npix(nside)
    if maps.ndim != 3 or maps.shape[1] != npix:
        from .errors import InvalidParameterError

        raise InvalidParameterError(f"sky_profiles: expected maps of shape ({npix}, n_energy) "
                                    f"or (n_maps, {npix}, n_energy), found {np.shape(maps)}")
    width = profile_bin_width(nside) if bin_deg is None else float(bin_deg)
    if not 0 < width <= 180 or abs(360.0 / width - round(360.0 / width)) > 1e-9:
        from .errors import InvalidParameterError

        raise InvalidParameterError(f"sky_profiles: bin_deg must divide 360°, found {bin_deg}")
    bands = {"longitude": PROFILES["longitude"][2] if lat_band_deg is None else lat_band_deg,
             "latitude": PROFILES["latitude"][2] if lon_band_deg is None else lon_band_deg}
    lon, lat = hp.pix2ang(nside, np.arange(npix), nest=nest, lonlat=True)
    lon = _wrap(lon)
    pixarea = hp.nside2pixarea(nside)
    out = {}
    for name, coordinate, other in (("longitude", lon, lat), ("latitude", lat, lon)):
        # bins centred on multiples of the width (the Galactic centre is a bin centre); a
        # pixel centre on a bin edge goes to the bin above
        nearest = np.floor(coordinate / width + 0.5 + 1e-9).astype(int)
        if name == "longitude":
            n_half = int(round(180.0 / width))
            nearest = np.where(nearest <= -n_half, nearest + 2 * n_half, nearest)
            low = -n_half + 1
            centres = np.arange(low, n_half + 1) * width
            edges = np.append(centres - width / 2, centres[-1] + width / 2)
        else:
            n_half = int(np.floor(90.0 / width + 1e-9))
            low = -n_half
            centres = np.arange(low, n_half + 1) * width
            edges = np.clip(np.append(centres - width / 2, centres[-1] + width / 2), -90, 90)
        index = nearest - low
        inside = np.abs(other) < bands[name]
        # (n_bins, npix) membership matrix: profile = M @ map × ΔΩ
        member = np.zeros((centres.size, npix))
        member[index[inside], np.flatnonzero(inside)] = 1.0
        values = np.einsum("bp,npe->nbe", member, maps) * pixarea
        out[name] = {"edges": edges, "centres": centres, "band_deg": float(bands[name]),
                     "values": values if stacked else values[0]}
    return out
