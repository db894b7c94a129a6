"""The simulator's spacecraft-frame files: the detector response as a ``FullDetectorResponse``
file and the Earth-albedo template per attitude or time bin in the spacecraft frame.

The response file holds the instrument model's detector-frame response R[ν, Ei, Em, Phi, PsiChi]
(cm²) in the COSI team's dense ``DRM`` layout (:mod:`comptonsky.io.drm`), with PsiChi at the data
resolution: each PsiChi pixel is the sum of its sub-pixels of the finer tabulation, so binning
events with the spacecraft-frame scattered direction and this response agree exactly.

The albedo is fixed to the Earth, so its rate in the spacecraft frame depends only on where the
zenith lies in that frame: the template of an attitude bin is Σ_t Δt_t · rate(zenith_t) over
the bin's intervals (:func:`albedo_detector_model`), the same model the events are drawn from.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import astropy.units as u
import healpy as hp
import numpy as np
from histpy import Axes, Axis, HealpixAxis, Histogram

from ..attitude.samples import cos_horizon
from ..errors import FileFormatError, InvalidParameterError
from ..geometry import attitude_matrices
from ..io.drm import write_full_detector_response
from ..response.galactic import DetectorResponse, _subpixels
from .background import EarthFixedBackground
from .presets import get_preset

__all__ = ["detector_response_axes", "dense_rows", "write_detector_response",
           "albedo_detector_model", "simulated_albedo"]

logger = logging.getLogger(__name__)


def detector_response_axes(nside: int, phi_edges_deg: np.ndarray, em_edges_kev: np.ndarray,
                           ei_edges_kev: np.ndarray | None = None) -> Axes:
    """Axes NuLambda, Ei, Em, Phi, PsiChi of a spacecraft-frame response (cosipy's labels)."""
    ei = em_edges_kev if ei_edges_kev is None else ei_edges_kev
    return Axes([HealpixAxis(nside=nside, scheme="ring", coordsys="spacecraftframe",
                             label="NuLambda"),
                 Axis(np.asarray(ei, float) * u.keV, scale="log", label="Ei"),
                 Axis(np.asarray(em_edges_kev, float) * u.keV, scale="log", label="Em"),
                 Axis(np.asarray(phi_edges_deg, float) * u.deg, label="Phi"),
                 HealpixAxis(nside=nside, scheme="ring", coordsys="spacecraftframe",
                             label="PsiChi")])


def _parent_pixels(nside_from: int, nside_to: int) -> np.ndarray:
    """RING pixel at ``nside_to`` holding each RING pixel at ``nside_from`` (a multiple)."""
    if nside_from % nside_to or nside_from < nside_to:
        raise InvalidParameterError(f"PsiChi nside {nside_from} is not a multiple of the "
                                    f"output nside {nside_to}")
    level = int(round(np.log2(nside_from // nside_to)))
    nest = hp.ring2nest(nside_from, np.arange(hp.nside2npix(nside_from)))
    return hp.nest2ring(nside_to, nest >> (2 * level)).astype(np.int64)


def dense_rows(det: DetectorResponse, start: int, stop: int, nside_psichi: int | None = None
               ) -> np.ndarray:
    """Dense rows ν = start..stop-1 of a detector response, PsiChi summed to ``nside_psichi``.

    Parameters
    ----------
    det : DetectorResponse
    start, stop : int
        NuLambda pixel range.
    nside_psichi : int, optional
        PsiChi resolution of the result (a divisor of ``det.nside_psichi``; default the same).

    Returns
    -------
    ndarray, shape (stop - start, n_Ei, n_Em, n_Phi, N_PsiChi), float32
        cm².
    """
    nside_psichi = det.nside_psichi if nside_psichi is None else int(nside_psichi)
    parent = _parent_pixels(det.nside_psichi, nside_psichi)
    npix = hp.nside2npix(nside_psichi)
    lo, hi = int(det.indptr[start]), int(det.indptr[stop])
    counts = np.diff(det.indptr[start:stop + 1])
    row = np.repeat(np.arange(stop - start, dtype=np.int64), counts)
    flat = (row * det.n_k + det.col_k[lo:hi]) * npix + parent[det.col_p[lo:hi]]
    out = np.bincount(flat, weights=det.val[lo:hi], minlength=(stop - start) * det.n_k * npix)
    return out.astype(np.float32).reshape((stop - start,) + tuple(det.shape_k) + (npix,))


def write_detector_response(path: str | os.PathLike, det: DetectorResponse, nside: int,
                            phi_edges_deg: np.ndarray, em_edges_kev: np.ndarray) -> Path:
    """Write ``det`` as a dense ``FullDetectorResponse`` file with PsiChi at ``nside``.

    Parameters
    ----------
    path : path-like
        Output ``.h5`` file (written atomically).
    det : DetectorResponse
        ν at ``nside``; PsiChi at ``nside`` or a multiple of it.
    nside : int
        HEALPix resolution of NuLambda and PsiChi in the file.
    phi_edges_deg, em_edges_kev : array_like
        Compton-angle and energy bin edges (Ei = Em: one line).

    Returns
    -------
    pathlib.Path
    """
    if det.nside_nu != nside:
        raise InvalidParameterError(f"the response has NuLambda nside {det.nside_nu}, "
                                    f"expected {nside}")
    axes = detector_response_axes(nside, phi_edges_deg, em_edges_kev)
    return write_full_detector_response(
        path, axes, lambda a, b: dense_rows(det, a, b, nside), unit="cm2", dtype=np.float32,
        rows_per_block=max(1, int(2**24 // (det.n_k * hp.nside2npix(nside)))))


def simulated_albedo(manifest: str | os.PathLike) -> EarthFixedBackground:
    """The albedo photon field a simulation drew its events from (scaled as it was).

    Parameters
    ----------
    manifest : path-like
        ``simulation.json`` of a simulation, or its directory.

    Raises
    ------
    FileFormatError
        If the manifest is missing or lacks the preset or the albedo scale.
    """
    path = Path(manifest)
    if path.is_dir():
        path = path / "simulation.json"
    try:
        info = json.loads(path.read_text())
        preset = info["parameters"]["preset"]
        summary = info["summary"]
    except (OSError, ValueError, KeyError) as exc:
        raise FileFormatError(f"{path}: not a simulation manifest ({exc})") from exc
    albedo = get_preset(preset).backgrounds()[0]
    if "albedo_intensity_ph_cm2_s_sr" in summary:
        albedo.intensity = float(summary["albedo_intensity_ph_cm2_s_sr"])
    elif "albedo_scale_over_line_flux" in summary:
        albedo.intensity *= float(summary["albedo_scale_over_line_flux"])
    return albedo


def _interval_columns(table) -> tuple[np.ndarray, ...]:
    """(bin, x, z, zenith, cos horizon, live time) of every interval of an exposure table."""
    try:
        samples, rows = table._samples(need_earth=True)
    except AttributeError as exc:
        raise InvalidParameterError(f"expected an exposure table, found {type(table).__name__}"
                                    ) from exc
    return (rows, samples.x, samples.z, samples.zenith, cos_horizon(samples.altitude),
            samples.livetime)


def _zenith_classes(x, z, zen, cosh, max_classes: int, block: int = 1 << 20
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Distinct (spacecraft-frame zenith rounded to 1e-3, horizon rounded to 0.01°) of the
    intervals, sorted as ``np.unique(..., axis=0)`` sorts them, and each interval's class.

    Works ``block`` intervals at a time, so the 3 × 3 attitude matrices of a 3-month history
    at 1 s are never all in memory; stops collecting past ``max_classes`` distinct keys.
    """
    found: list[np.ndarray] = []
    local: list[np.ndarray] = []
    seen: set[tuple[float, ...]] = set()
    for lo in range(0, len(x), block):
        hi = min(len(x), lo + block)
        zl = np.einsum("nji,nj->ni", attitude_matrices(x[lo:hi], z[lo:hi]), zen[lo:hi])
        horizon = np.degrees(np.arccos(np.clip(cosh[lo:hi], -1.0, 1.0)))
        keys = np.column_stack([np.round(zl, 3), np.round(horizon, 2)])
        u_block, inv = np.unique(keys, axis=0, return_inverse=True)
        found.append(u_block)
        local.append(inv.reshape(-1))
        seen.update(map(tuple, u_block.tolist()))
        if len(seen) > max_classes:
            break
    uniq = np.unique(np.concatenate(found), axis=0)
    cls = np.concatenate([np.searchsorted(_row_view(uniq), _row_view(u_block))[inv]
                          for u_block, inv in zip(found, local)])
    return uniq, cls


def _row_view(a: np.ndarray) -> np.ndarray:
    """Rows of a 2-D array as structured items, ordered column by column (as ``np.unique``
    with ``axis=0`` orders them)."""
    a = np.ascontiguousarray(a)
    return a.view([(f"f{i}", a.dtype) for i in range(a.shape[1])]).reshape(-1)


def albedo_detector_model(fdr, table, first_axis: Axis, albedo: EarthFixedBackground,
                          max_classes: int = 64) -> Histogram:
    """Noise-free Earth-albedo counts per attitude or time bin, in the spacecraft frame.

    The intervals of each bin are grouped by the zenith direction in the spacecraft frame
    (rounded to 1e-3) and the horizon angle (0.01°); each group costs one pass over the
    response.

    Parameters
    ----------
    fdr : FullDetectorResponse
        The simulation's spacecraft-frame response (axes NuLambda, Ei, Em, Phi, PsiChi).
    table : SpacecraftAttitudeExposureTable or TimeBinnedExposureTable
        Built with ``from_orientation`` (it keeps each interval's zenith and altitude).
    first_axis : histpy Axis
        The first data axis (``ccm.axes[0]``: ScAtt or Time), one bin per table row.
    albedo : EarthFixedBackground
        The photon field (:func:`simulated_albedo`).
    max_classes : int
        Refuse histories with more distinct spacecraft-frame zeniths (their cost).

    Returns
    -------
    Histogram
        Axes (ScAtt | Time, Em, Phi, PsiChi) in the spacecraft frame; expected counts.
    """
    if first_axis.nbins != len(table):
        raise InvalidParameterError(f"first axis {first_axis.label!r} has {first_axis.nbins} "
                                    f"bins, the exposure table {len(table)} rows")
    b, x, z, zen, cosh, live = _interval_columns(table)
    uniq, cls = _zenith_classes(x, z, zen, cosh, max_classes)
    if len(uniq) > max_classes:
        raise InvalidParameterError(f"the history has {len(uniq)} distinct spacecraft-frame "
                                    f"zeniths (more than {max_classes}); the albedo template "
                                    "assumes a few attitude laws")
    nside = fdr.nside
    npix = hp.nside2npix(nside)
    sub = _subpixels(nside, np.arange(npix), 2)
    weights = np.empty((len(uniq), npix))
    for c, key in enumerate(uniq):
        frac = albedo.inside(sub, key[:3] / np.linalg.norm(key[:3]), key[3]).mean(axis=1)
        weights[c] = frac * hp.nside2pixarea(nside) * albedo.intensity
    rates = np.zeros((len(uniq),) + tuple(fdr.shape[2:]))  # (class, Em, Phi, PsiChi), s⁻¹
    factor = float(u.Unit(fdr.unit).to(u.cm ** 2))
    step = max(1, int(2**24 // max(1, np.prod(fdr.shape[1:]))))
    for lo in range(0, npix, step):
        rows = fdr.read_rows(np.arange(lo, min(npix, lo + step)), dtype=np.float64)
        rows = rows.sum(axis=1)  # Ei (one line)
        rates += factor * np.einsum("cn,nmpq->cmpq", weights[:, lo:lo + step], rows)
    live_per = np.zeros((len(table), len(uniq)))
    np.add.at(live_per, (b, cls), live)
    model = np.einsum("sc,cmpq->smpq", live_per, rates)
    logger.info("albedo template: %d bins, %d spacecraft-frame zeniths, %.4g counts",
                len(table), len(uniq), float(model.sum()))
    return Histogram([first_axis, fdr.axes["Em"], fdr.axes["Phi"], fdr.axes["PsiChi"]],
                     contents=model)
