"""Galactic (extended-source) responses from the team's detector response and an orientation.

cosipy's ``FullDetectorResponse.get_extended_source_response(orientation, coordsys='galactic',
nside_image=None, nside_scatt_map=None, Earth_occ=True)`` under the same name, on the engine of
:mod:`.galactic`, plus a writer that streams the result to a histpy HDF5 file in blocks of sky
pixels (:func:`write_extended_source_response`, the command ``comptonsky response galactic``).

Two ways of discretising the attitude history (``method``):

``"scatt_map"`` (default, cosipy's)
    Samples are grouped by the HEALPix pixels (at ``nside_scatt_map``) holding their x and y
    axes; each group's attitude is the rotation nearest to those two pixel centres. A sky
    pixel's Earth occultation is decided per sample at its centre; the source direction takes
    the nearest NuLambda pixel and each Galactic PsiChi pixel the detector pixel holding its
    centre (``interpolation="pull"``).
``"binned"``
    :func:`~.attitude.bin_attitudes` clusters the attitudes to ``resolution_deg`` (default the
    pixel size at ``nside_scatt_map`` if given, else 1°), detector pixels are shared among the
    Galactic pixels they overlap and occultation is the visible fraction of each sky pixel at
    the bin's zenith: more accurate attitudes and far fewer bins for long histories.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import astropy.units as u
import healpy as hp
import numpy as np
from histpy import Axes, Axis, HealpixAxis, Histogram

from ..errors import InvalidParameterError
from ..io.drm import FullDetectorResponse
from ..io.orientation import Orientation
from ..io.spacecraft import SpacecraftFile
from .attitude import AttitudeBins, bin_attitudes
from .detector import DetectorResponse
from .galactic import _check_nside, galactic_response_block, push_tables, write_galactic_response

__all__ = ["FullDetectorResponse", "scatt_map_bins", "galactic_inputs", "extended_response_axes",
           "get_extended_source_response", "write_extended_source_response", "METHODS",
           "EARTH_RADIUS_COSIPY_KM"]

logger = logging.getLogger(__name__)

METHODS = ("scatt_map", "binned")
#: Earth radius cosipy's scatt maps use for the horizon (km).
EARTH_RADIUS_COSIPY_KM = 6378.0


def _orientation(obj) -> Orientation:
    if isinstance(obj, SpacecraftFile):
        return obj.orientation
    if isinstance(obj, Orientation):
        return obj
    raise InvalidParameterError(f"orientation must be a SpacecraftFile or an Orientation, "
                                f"found {type(obj).__name__}")


def _nearest_rotation(m: np.ndarray) -> np.ndarray:
    """The rotation matrices nearest (Frobenius) to ``m`` (n, 3, 3): U Vᵀ of the SVD."""
    uu, _, vt = np.linalg.svd(m)
    r = uu @ vt
    neg = np.linalg.det(r) < 0
    if np.any(neg):
        uu[neg, :, -1] *= -1
        r[neg] = uu[neg] @ vt[neg]
    return r


def scatt_map_bins(orientation, nside: int, earth_occ: bool = True,
                   r_earth_km: float = EARTH_RADIUS_COSIPY_KM) -> AttitudeBins:
    """Attitude bins as cosipy's scatt map: one per pair of HEALPix pixels of (x, y) axes.

    Parameters
    ----------
    orientation : SpacecraftFile or Orientation
        Each sample's live time belongs to its attitude (the last sample has none).
    nside : int
        Resolution of the x and y pixels (RING, Galactic).
    earth_occ : bool
        Keep the samples, so that occultation is decided per sample and sky direction: a
        direction is hidden while its angle from the zenith is at least
        ``180° − arcsin(R / (R + altitude))``.
    r_earth_km : float
        Earth radius R of the horizon (cosipy: 6378 km, no atmosphere).

    Returns
    -------
    AttitudeBins
        Bins in order of increasing (x pixel, y pixel); rotation columns: nearest rotation
        to (x centre, y centre, x centre × y centre).
    """
    nside = _check_nside("nside_scatt_map", nside)
    o = _orientation(orientation)
    keep = o.livetime > 0
    if not np.any(keep):
        raise InvalidParameterError("the attitude history has no live time")
    rot = o.rotations[keep]
    live = o.livetime[keep]
    x, y = rot[:, :, 0], rot[:, :, 1]
    xp = hp.vec2pix(nside, x[:, 0], x[:, 1], x[:, 2]).astype(np.int64)
    yp = hp.vec2pix(nside, y[:, 0], y[:, 1], y[:, 2]).astype(np.int64)
    npix = hp.nside2npix(nside)
    cells, inv = np.unique(xp * npix + yp, return_inverse=True)
    inv = inv.ravel()
    xc = np.stack(hp.pix2vec(nside, cells // npix), axis=-1)
    yc = np.stack(hp.pix2vec(nside, cells % npix), axis=-1)
    rotations = _nearest_rotation(np.stack([xc, yc, np.cross(xc, yc)], axis=-1))
    w = np.bincount(inv, weights=live, minlength=len(cells))
    zen = o.zenith[keep]
    zs = np.stack([np.bincount(inv, weights=live * zen[:, c], minlength=len(cells))
                   for c in range(3)], axis=1)
    zs /= np.maximum(np.linalg.norm(zs, axis=1, keepdims=True), 1e-300)
    ratio = r_earth_km / (r_earth_km + o.altitude[keep])
    hor = 180.0 - np.degrees(np.arcsin(np.clip(ratio, -1.0, 1.0)))
    hor_bin = np.bincount(inv, weights=live * hor, minlength=len(cells)) / w
    bins = AttitudeBins(rotations, zs, hor_bin, w)
    if earth_occ:
        bins.sample_bin = inv.astype(np.int64)
        bins.sample_zenith = np.ascontiguousarray(zen)
        bins.sample_horizon_deg = hor
        bins.sample_livetime = live
    logger.info("scatt map at nside %d: %d samples -> %d attitude bins", nside, len(live),
                len(cells))
    return bins


def galactic_inputs(fdr, orientation, nside_image: int | None = None,
                    nside_scatt_map: int | None = None, Earth_occ: bool = True,  # noqa: N803
                    method: str = "scatt_map", resolution_deg: float | None = None,
                    interpolation: str | None = None, threshold: float = 0.0,
                    ) -> tuple[DetectorResponse, AttitudeBins, dict]:
    """Check everything, then read the detector response and bin the attitudes.

    Returns
    -------
    det : DetectorResponse
    bins : AttitudeBins
    options : dict
        ``nside``, ``nside_psichi``, ``occultation``, ``interpolation`` for
        :func:`~.galactic.galactic_response_block` and its callers.

    Raises
    ------
    InvalidParameterError
        Unknown method, non-power-of-2 nside, polarization or NESTED responses.
    """
    if method not in METHODS:
        raise InvalidParameterError(f"unknown method {method!r}; expected one of "
                                    f"{', '.join(METHODS)}")
    if not isinstance(fdr, (FullDetectorResponse, DetectorResponse)):
        raise InvalidParameterError(f"need a FullDetectorResponse or DetectorResponse, found "
                                    f"{type(fdr).__name__}")
    o = _orientation(orientation)
    nside_drm = fdr.nside if isinstance(fdr, FullDetectorResponse) else fdr.nside_nu
    nside = _check_nside("nside_image", nside_image or nside_drm)
    if nside_scatt_map is not None:
        nside_scatt_map = _check_nside("nside_scatt_map", nside_scatt_map)
    if isinstance(fdr, FullDetectorResponse):
        det = DetectorResponse.from_full_detector_response(fdr, threshold=threshold)
    else:
        det = fdr
    if method == "scatt_map":
        bins = scatt_map_bins(o, nside_scatt_map or nside_drm, earth_occ=Earth_occ)
        interp = interpolation or "pull"
    else:
        res = resolution_deg
        if res is None:
            res = (np.degrees(hp.nside2resol(nside_scatt_map)) if nside_scatt_map else 1.0)
        bins = bin_attitudes(o, resolution_deg=float(res))
        interp = interpolation or "overlap"
    return det, bins, dict(nside=nside, nside_psichi=det.nside_psichi,
                           occultation=bool(Earth_occ), interpolation=interp)


def extended_response_axes(fdr: FullDetectorResponse, nside: int) -> Axes:
    """Axes of the Galactic response made from ``fdr`` at sky resolution ``nside``:
    NuLambda (galactic, RING), the response's Ei, Em and Phi, PsiChi (galactic, the response's
    nside)."""
    if isinstance(fdr, FullDetectorResponse):
        mid = [Axis(fdr.axes[a].edges, label=a, scale=fdr.axes[a].axis_scale)
               for a in ("Ei", "Em", "Phi")]
        nside_psichi = int(fdr.axes["PsiChi"].nside)
    else:
        raise InvalidParameterError("the output axes need a FullDetectorResponse")
    return Axes([HealpixAxis(nside=nside, coordsys="galactic", label="NuLambda"), *mid,
                 HealpixAxis(nside=nside_psichi, coordsys="galactic", label="PsiChi")])


def get_extended_source_response(fdr: FullDetectorResponse, orientation,
                                 coordsys: str = "galactic", nside_image: int | None = None,
                                 nside_scatt_map: int | None = None,
                                 Earth_occ: bool = True,  # noqa: N803
                                 method: str = "scatt_map", resolution_deg: float | None = None,
                                 interpolation: str | None = None, block: int = 64,
                                 dtype: str = "float64", progress: bool = True) -> Histogram:
    """The Galactic response of every sky pixel, in memory (cosipy's name and arguments).

    Parameters
    ----------
    fdr : FullDetectorResponse
        Detector-frame response (cm²), axes NuLambda, Ei, Em, Phi, PsiChi.
    orientation : SpacecraftFile or Orientation
    coordsys : {"galactic"}
    nside_image : int, optional
        Resolution of the sky axis NuLambda; default the response's. The PsiChi axis keeps
        the response's resolution (as cosipy).
    nside_scatt_map : int, optional
        ``method="scatt_map"``: resolution of the attitude pixels (default the response's);
        ``"binned"``: sets the attitude resolution to that pixel size.
    Earth_occ : bool
        Zero each sky pixel while the Earth hides it.
    method, resolution_deg, interpolation
        See the module docstring.
    block : int
        Sky pixels per block.
    dtype : {"float64", "float32"}
    progress : bool

    Returns
    -------
    histpy.Histogram
        Axes NuLambda (galactic), Ei, Em, Phi, PsiChi (galactic); unit cm² s; shape
        (N_sky, n_Ei, n_Em, n_Phi, N_PsiChi). Use :func:`write_extended_source_response` when it
        does not fit in memory.
    """
    if coordsys != "galactic":
        raise InvalidParameterError(f"coordsys {coordsys!r} is not supported; expected "
                                    "'galactic'")
    det, bins, opt = galactic_inputs(fdr, orientation, nside_image, nside_scatt_map, Earth_occ,
                                     method, resolution_deg, interpolation)
    from tqdm.auto import tqdm

    push = push_tables(bins.rotations, det.nside_psichi, opt["nside_psichi"],
                       opt["interpolation"])
    npix = hp.nside2npix(opt["nside"])
    out = np.empty((npix,) + tuple(det.shape_k) + (hp.nside2npix(opt["nside_psichi"]),),
                   dtype=dtype)
    with tqdm(total=npix, desc="Galactic response", unit="pix", disable=not progress) as bar:
        for b0 in range(0, npix, int(block)):
            pix = np.arange(b0, min(npix, b0 + int(block)))
            out[pix] = galactic_response_block(det, bins, pix, dtype=dtype, push=push, **opt)
            bar.update(len(pix))
    return Histogram(extended_response_axes(fdr, opt["nside"]), contents=out, unit=u.cm**2 * u.s,
                     copy_contents=False)


def write_extended_source_response(path: str | os.PathLike, fdr: FullDetectorResponse,
                                   orientation, nside_image: int | None = None,
                                   nside_scatt_map: int | None = None,
                                   Earth_occ: bool = True,  # noqa: N803
                                   method: str = "scatt_map",
                                   resolution_deg: float | None = None,
                                   interpolation: str | None = None, block: int = 64,
                                   dtype: str = "float32", overwrite: bool = True,
                                   progress: bool = True) -> Path:
    """Stream the Galactic response into a histpy HDF5 file (the layout of
    ``psr_gal_511_DC2.h5``), one block of sky pixels at a time, atomically.

    Parameters as in :func:`get_extended_source_response`; ``dtype`` is the stored (and
    accumulated) precision. Memory: the detector response held sparsely plus about two blocks
    (block × n_Ei × n_Em × n_Phi × N_PsiChi × itemsize each).

    Returns
    -------
    pathlib.Path
    """
    det, bins, opt = galactic_inputs(fdr, orientation, nside_image, nside_scatt_map, Earth_occ,
                                     method, resolution_deg, interpolation)
    axes = extended_response_axes(fdr, opt["nside"])
    return write_galactic_response(path, det, bins, axes[1], axes[2], axes[3],
                                   nside=opt["nside"], nside_psichi=opt["nside_psichi"],
                                   occultation=opt["occultation"],
                                   interpolation=opt["interpolation"], block=block, dtype=dtype,
                                   overwrite=overwrite, progress=progress)


def _method(self, orientation, coordsys="galactic", nside_image=None, nside_scatt_map=None,
            Earth_occ=True, **kwargs):  # noqa: N803
    return get_extended_source_response(self, orientation, coordsys, nside_image,
                                        nside_scatt_map, Earth_occ, **kwargs)


_method.__doc__ = get_extended_source_response.__doc__
_method.__name__ = "get_extended_source_response"
FullDetectorResponse.get_extended_source_response = _method
