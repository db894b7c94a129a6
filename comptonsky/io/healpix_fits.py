"""All-sky maps as HEALPix FITS files, the layout healpy, ds9, Aladin and the FITS tools read.

One binary table (extension 1, ``EXTNAME = 'SKYMAP'``) with one row per pixel
(``INDXSCHM = 'IMPLICIT'``) and one column per energy band. The header carries the HEALPix
keywords (``PIXTYPE``, ``ORDERING``, ``COORDSYS``, ``NSIDE``, ``FIRSTPIX``, ``LASTPIX``), the
map's unit (``BUNIT`` and ``TUNITn``) and each band's energy range (``E_MINn``, ``E_MAXn`` in
keV for column n). ``healpy.read_map(path, field=k)`` returns band k.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from astropy import units as u
from astropy.io import fits
from histpy import HealpixAxis, Histogram

from ..errors import InvalidDataError
from .atomic import atomic_path

__all__ = ["write_healpix_fits", "COORDSYS_CODES"]

#: astropy frame name → HEALPix ``COORDSYS`` code.
COORDSYS_CODES = {"galactic": "G", "icrs": "C", "fk5": "C", "barycentrictrueecliptic": "E"}
#: Spellings of the usual map units, in the order the COSI parameter files write them.
_UNIT_SPELLINGS = ("cm-2 s-1 sr-1", "cm-2 s-1", "cm2 s")


def _coordsys(axis: HealpixAxis) -> str:
    frame = axis.coordsys
    name = getattr(frame, "name", None) if frame is not None else None
    if name not in COORDSYS_CODES:
        raise InvalidDataError(f"healpix map axis {axis.label!r}: coordinate frame {name!r} has "
                               f"no HEALPix COORDSYS code (expected one of "
                               f"{', '.join(COORDSYS_CODES)})")
    return COORDSYS_CODES[name]


def _unit_text(unit: u.UnitBase | None) -> str:
    if unit is None or unit == u.dimensionless_unscaled:
        return ""
    for text in _UNIT_SPELLINGS:
        if unit == u.Unit(text):
            return text
    try:
        return unit.to_string("fits")
    except ValueError:
        return unit.to_string()


def write_healpix_fits(image: Histogram, path: str | os.PathLike,
                       cards: Iterable[tuple[str, Any, str]] = (),
                       overwrite: bool = True) -> Path:
    """Write an all-sky map as a HEALPix FITS file, atomically.

    Parameters
    ----------
    image : histpy.Histogram
        Map with axes ``(lb, Ei)``: a :class:`histpy.HealpixAxis` and an energy axis,
        contents of shape (npix, n_energy) in the image's unit.
    path : path-like
        The ``.fits`` file to write.
    cards : iterable of (keyword, value, comment)
        Further header cards for the map's table (provenance, run settings).
    overwrite : bool
        Replace an existing file (else raise :class:`FileExistsError`).

    Returns
    -------
    pathlib.Path
        The path written.

    Raises
    ------
    InvalidDataError
        If the image is not a (HEALPix, energy) map or its frame has no HEALPix code.
    """
    axes = image.axes
    if len(axes) != 2 or not isinstance(axes[0], HealpixAxis):
        raise InvalidDataError(f"{path}: expected a map with axes (HEALPix, Ei), found "
                               f"{[str(a) for a in axes.labels]}")
    lb, energy = axes[0], axes[1]
    values = np.asarray(getattr(image.contents, "value", image.contents), dtype=np.float64)
    if hasattr(values, "todense"):
        values = values.todense()
    unit = _unit_text(image.unit)
    edges = u.Quantity(energy.edges).to_value(u.keV)
    columns = [fits.Column(name=f"BAND{k + 1}", format="D", unit=unit or None,
                           array=values[:, k]) for k in range(energy.nbins)]
    hdu = fits.BinTableHDU.from_columns(columns, name="SKYMAP")
    header = hdu.header
    for k in range(energy.nbins):
        header.comments[f"TTYPE{k + 1}"] = f"{edges[k]:g}-{edges[k + 1]:g} keV"
    npix = values.shape[0]
    for key, value, comment in (
            ("PIXTYPE", "HEALPIX", "HEALPix pixelisation"),
            ("ORDERING", "NESTED" if str(lb.scheme).lower() == "nested" else "RING",
             "pixel ordering scheme"),
            ("COORDSYS", _coordsys(lb), "G = Galactic, C = equatorial, E = ecliptic"),
            ("NSIDE", int(lb.nside), "HEALPix resolution parameter"),
            ("FIRSTPIX", 0, "first pixel index (0-based)"),
            ("LASTPIX", npix - 1, "last pixel index (0-based)"),
            ("INDXSCHM", "IMPLICIT", "one row per pixel, in order"),
            ("OBJECT", "FULLSKY", "the map covers the whole sky"),
            ("BUNIT", unit, "unit of the map values" if unit else "dimensionless"),
            ("NBANDS", energy.nbins, "energy bands, one column each"),
            ("EUNIT", "keV", "unit of E_MINn and E_MAXn")):
        header[key] = (value, comment)
    for k in range(energy.nbins):
        header[f"E_MIN{k + 1}"] = (float(edges[k]), f"lower energy of column {k + 1} (keV)")
        header[f"E_MAX{k + 1}"] = (float(edges[k + 1]), f"upper energy of column {k + 1} (keV)")
    for key, value, comment in cards:
        header[key] = (value, comment)
    path = Path(path)
    with atomic_path(path, overwrite=overwrite) as tmp:
        fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(tmp)
    return path
