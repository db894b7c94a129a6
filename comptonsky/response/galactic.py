"""Carry a detector-frame response over an attitude history into a Galactic response.

The one engine of docs/design.md §6::

    R_gal[j, e, m, φ, p] = Σ_t Δt_t · occ_t(n_j) · R_det[A_t⁻¹ n_j, e, m, φ, rot_t(p)]

``n_j`` is the Galactic direction of sky pixel j, ``A_t`` the attitude (detector → Galactic
rotation) of attitude bin t (:mod:`.attitude`) with live time ``Δt_t``, ``occ_t`` the fraction
of pixel j above the Earth's limb, and ``rot_t`` the map between detector-frame and Galactic
PsiChi pixels. The source direction is looked up in the :class:`~.detector.DetectorResponse` at
the nearest ν pixel. The result (cm² s) is made in blocks of sky pixels, so memory stays bounded.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import astropy.units as u
import h5py
import healpy as hp
import numba
import numpy as np
from histpy import Axes, Axis, HealpixAxis
from tqdm.auto import tqdm

from .._numba import njit
from ..errors import AxisMismatchError, InvalidParameterError
from ..io.atomic import atomic_path
from .attitude import AttitudeBins, bin_attitudes
from .detector import DetectorResponse

__all__ = [
    "DetectorResponse",
    "AttitudeBins",
    "bin_attitudes",
    "iter_galactic_response",
    "galactic_response_block",
    "write_response_blocks",
    "push_tables",
    "INTERPOLATIONS",
    "galactic_response",
    "write_galactic_response",
    "carry_local_cds",
    "galactic_exposure",
]

logger = logging.getLogger(__name__)


INTERPOLATIONS = ("overlap", "bilinear", "nearest", "pull")


def push_tables(rotations: np.ndarray, nside_local: int, nside_gal: int,
                interpolation: str = "overlap") -> tuple[np.ndarray, np.ndarray]:
    """Galactic target pixels and weights of each detector-frame PsiChi pixel per attitude.

    Parameters
    ----------
    rotations : ndarray, shape (T, 3, 3)
        Detector → Galactic rotations of the attitude bins.
    nside_local, nside_gal : int
        HEALPix (RING) resolutions of the detector-frame and Galactic PsiChi axes.
    interpolation : {"overlap", "bilinear", "nearest", "pull"}
        See :func:`iter_galactic_response`.

    Returns
    -------
    pix : ndarray, shape (T, P_local, n) int32
    w : ndarray, shape (T, P_local, n) float32
        Targets are packed first; zero weights pad the end. n = 1 (nearest), 4 (bilinear),
        the most Galactic pixels one detector pixel overlaps (overlap) or the most Galactic
        pixels whose centre falls in one detector pixel (pull).
    """
    rotations = np.asarray(rotations, dtype=np.float64).reshape(-1, 3, 3)
    if interpolation not in INTERPOLATIONS:
        raise InvalidParameterError(
            f"unknown PsiChi interpolation {interpolation!r}; expected one of "
            f"{', '.join(INTERPOLATIONS)}")
    if interpolation == "pull":
        return _pull_push(rotations, nside_local, nside_gal)
    v = np.stack(hp.pix2vec(nside_local, np.arange(hp.nside2npix(nside_local))), axis=-1)
    g = np.einsum("tij,pj->tpi", rotations, v).reshape(-1, 3)
    if interpolation == "nearest":
        pix = hp.vec2pix(nside_gal, g[:, 0], g[:, 1], g[:, 2])[:, None]
        w = np.ones_like(pix, dtype=np.float32)
    elif interpolation == "overlap":
        return _overlap_push(rotations, v, nside_local, nside_gal)
    elif interpolation == "bilinear":
        theta, phi = hp.vec2ang(g)
        p4, w4 = hp.get_interp_weights(nside_gal, theta, phi)
        order = np.argsort(-w4.T, axis=1, kind="stable")  # non-zero weights first
        pix = np.take_along_axis(p4.T, order, axis=1)
        w = np.take_along_axis(w4.T, order, axis=1)
    shape = (len(rotations), v.shape[0], pix.shape[1])
    return (np.ascontiguousarray(pix.reshape(shape), dtype=np.int32),
            np.ascontiguousarray(w.reshape(shape), dtype=np.float32))


_push_tables = push_tables


def _pull_push(rotations: np.ndarray, nside_local: int,
               nside_gal: int) -> tuple[np.ndarray, np.ndarray]:
    """Each Galactic PsiChi pixel takes the detector pixel holding its centre (weight 1),
    written as push tables: each detector pixel lists the Galactic pixels that pull from it."""
    npix_gal, npix_loc = hp.nside2npix(nside_gal), hp.nside2npix(nside_local)
    g = np.stack(hp.pix2vec(nside_gal, np.arange(npix_gal)), axis=-1)
    loc = np.einsum("tji,pj->tpi", rotations, g)  # R^T n: detector frame
    src = hp.vec2pix(nside_local, loc[..., 0], loc[..., 1], loc[..., 2]).reshape(len(rotations),
                                                                              npix_gal)
    counts = np.zeros((len(rotations), npix_loc), dtype=np.int64)
    for t in range(len(rotations)):
        counts[t] = np.bincount(src[t], minlength=npix_loc)
    width = max(1, int(counts.max()))
    pix = np.zeros((len(rotations), npix_loc, width), dtype=np.int32)
    w = np.zeros((len(rotations), npix_loc, width), dtype=np.float32)
    for t in range(len(rotations)):
        order = np.argsort(src[t], kind="stable")
        s_sorted = src[t][order]
        start = np.concatenate([[0], np.cumsum(counts[t])[:-1]])
        slot = np.arange(npix_gal) - start[s_sorted]
        pix[t, s_sorted, slot] = order
        w[t, s_sorted, slot] = 1.0
    return pix, w


def _subpixels(nside: int, pixels: np.ndarray, level: int) -> np.ndarray:
    """Unit vectors of the 4^level sub-pixels of each RING pixel, shape (n, 4^level, 3)."""
    c = 4 ** level
    nest = hp.ring2nest(nside, np.asarray(pixels, dtype=np.int64))
    vec = hp.pix2vec(nside * 2 ** level, (nest[:, None] * c + np.arange(c)).ravel(), nest=True)
    return np.stack(vec, axis=-1).reshape(len(nest), c, 3)


def _overlap_push(rotations: np.ndarray, v: np.ndarray, nside_local: int,
                  nside_gal: int) -> tuple[np.ndarray, np.ndarray]:
    """Share of each rotated detector pixel in each Galactic pixel, from 16 sub-pixels each."""
    npix = v.shape[0]
    sub = _subpixels(nside_local, np.arange(npix), 2)
    tgts, wts = [], []
    step = max(1, 2_000_000 // (npix * 16))
    for t0 in range(0, len(rotations), step):
        gs = np.einsum("tij,psj->tpsi", rotations[t0:t0 + step], sub)
        pix = np.sort(hp.vec2pix(nside_gal, gs[..., 0], gs[..., 1], gs[..., 2]), axis=-1)
        first = np.ones(pix.shape, dtype=bool)
        first[..., 1:] = pix[..., 1:] != pix[..., :-1]
        run = np.cumsum(first, axis=-1) - 1  # which distinct target each sub-pixel belongs to
        ti, pi, _ = np.indices(pix.shape, sparse=True)
        cnt = np.zeros(pix.shape, dtype=np.float32)
        np.add.at(cnt, (ti, pi, run), np.float32(1.0 / 16.0))
        tgt = np.zeros(pix.shape, dtype=np.int32)
        tgt[ti, pi, run] = pix
        tgts.append(tgt)
        wts.append(cnt)
    tgt = np.concatenate(tgts)
    cnt = np.concatenate(wts)
    width = int(np.max(np.sum(cnt > 0, axis=-1)))
    return np.ascontiguousarray(tgt[..., :width]), np.ascontiguousarray(cnt[..., :width])


def _sky_lookup(bins: AttitudeBins, nside_sky: int, pixels: np.ndarray, nside_nu: int,
                occultation: bool, sky_oversample: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """ν pixels seen by each (attitude bin, sky pixel) and their live time × visible fraction.

    With ``sky_oversample`` = L > 0 the sky pixel is represented by its 4^L sub-pixels (a
    uniform source over the pixel) instead of its centre; sub-pixels falling in the same ν
    pixel are merged. Every value depends on its own sky pixel only (never on the others in
    ``pixels``), so blocks of any size give the same numbers.

    Returns
    -------
    nu_idx : ndarray, shape (T, J, C) int32
    weight : ndarray, shape (T, J, C) float64 (s); 0 for merged duplicates
    """
    pixels = np.asarray(pixels, dtype=np.int64)
    if sky_oversample > 0:
        pts = _subpixels(nside_sky, pixels, sky_oversample)
    else:
        pts = np.stack(hp.pix2vec(nside_sky, pixels), axis=-1)[:, None, :]
    c = pts.shape[1]
    loc = np.einsum("tji,pcj->tpci", bins.rotations, pts)  # R^T n
    nu_idx = hp.vec2pix(nside_nu, loc[..., 0], loc[..., 1], loc[..., 2]).astype(np.int32)
    weight = np.broadcast_to(bins.livetime[:, None, None] / c, nu_idx.shape).astype(np.float64)
    if occultation and bins.sample_bin is not None:
        # per sample: the live time of the samples of bin t from which point (j, c) is seen
        seen = np.zeros(nu_idx.shape, dtype=np.float64)
        cos_h = np.cos(np.radians(np.asarray(bins.sample_horizon_deg, np.float64)))
        _visible_time(seen, np.ascontiguousarray(pts.reshape(-1, 3)),
                      np.asarray(bins.sample_bin, np.int64),
                      np.ascontiguousarray(bins.sample_zenith, dtype=np.float64), cos_h,
                      np.asarray(bins.sample_livetime, np.float64))
        weight = seen / c
    elif occultation:
        ch = _subpixels(nside_sky, pixels, max(1, sky_oversample))
        cos_h = np.cos(np.radians(bins.horizon_deg))[:, None, None]
        vis = np.einsum("ti,pci->tpc", bins.zenith, ch) >= cos_h
        if sky_oversample > 0:
            weight = weight * vis
        else:
            weight = weight * vis.mean(axis=2)[:, :, None]
    if c > 1:  # merge sub-pixels that look up the same ν row
        order = np.argsort(nu_idx, axis=2, kind="stable")
        nu_idx = np.take_along_axis(nu_idx, order, axis=2)
        weight = np.take_along_axis(weight, order, axis=2)
        csum = np.cumsum(weight, axis=2)
        last = np.ones(nu_idx.shape, dtype=bool)
        last[..., :-1] = nu_idx[..., 1:] != nu_idx[..., :-1]
        # the weight of a run of equal ν goes to its last element (csum is non-decreasing)
        at_last = np.maximum.accumulate(np.where(last, csum, 0.0), axis=2)
        prev = np.concatenate([np.zeros(csum.shape[:2] + (1,)), at_last[..., :-1]], axis=2)
        weight = np.where(last, csum - prev, 0.0)
    return np.ascontiguousarray(nu_idx), np.ascontiguousarray(weight)


@njit(parallel=True, cache=True)
def _visible_time(seen, pts, sample_bin, zenith, cos_h, live):
    """seen[t, j, c] += live[s] for each sample s of bin t whose horizon hides not pts[j·C + c]
    (the source is visible while its angle from the zenith is below the horizon angle)."""
    nc = seen.shape[2]
    npts = pts.shape[0]
    for q in numba.prange(npts):
        j = q // nc
        c = q - j * nc
        x, y, z = pts[q, 0], pts[q, 1], pts[q, 2]
        for s in range(sample_bin.shape[0]):
            if live[s] <= 0.0:
                continue
            if x * zenith[s, 0] + y * zenith[s, 1] + z * zenith[s, 2] > cos_h[s]:
                seen[sample_bin[s], j, c] += live[s]


@njit(parallel=True, cache=True)
def _accumulate(out, nu_idx, weight, push_pix, push_w, indptr, col_p, col_k, val):
    nj = out.shape[0]
    nt = nu_idx.shape[0]
    nc = nu_idx.shape[2]
    nint = push_pix.shape[2]
    for jj in numba.prange(nj):
        row = out[jj]
        for t in range(nt):
            for c in range(nc):
                f = weight[t, jj, c]
                if f <= 0.0:
                    continue
                nu = nu_idx[t, jj, c]
                for q in range(indptr[nu], indptr[nu + 1]):
                    p = col_p[q]
                    k = col_k[q]
                    v = val[q] * f
                    for a in range(nint):
                        w = push_w[t, p, a]
                        if w <= 0.0:  # targets are packed first; zeros only pad the end
                            break
                        row[push_pix[t, p, a], k] += v * w


def _check_nside(name: str, nside) -> int:
    n = int(nside)
    if n != nside or n < 1 or n & (n - 1):
        raise InvalidParameterError(f"{name} must be a power of 2 (HEALPix nside), got {nside!r}")
    return n


def galactic_response_block(drm: DetectorResponse, attitude_bins: AttitudeBins,
                            pix_block: np.ndarray, nside: int | None = None,
                            nside_psichi: int | None = None, occultation: bool = True,
                            interpolation: str = "overlap", sky_oversample: int = 0,
                            dtype: str | np.dtype = "float64",
                            push: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """The Galactic response of one block of sky pixels: a pure function of its arguments.

    Each sky pixel's values are computed from that pixel alone, in a fixed order, so any
    partition of the sky into blocks (in one process or spread over workers) gives the same
    numbers bit for bit; the blocks can be computed in any order and anywhere.

    Parameters
    ----------
    drm : DetectorResponse
        Detector-frame response (cm²).
    attitude_bins : AttitudeBins
        Attitudes and live times (s).
    pix_block : array_like of int, shape (J_b,)
        Galactic sky (NuLambda) pixels, HEALPix RING at ``nside``.
    nside : int, optional
        Resolution of the sky axis; default ``drm.nside_psichi``.
    nside_psichi : int, optional
        Resolution of the Galactic PsiChi axis; default ``nside``.
    occultation, interpolation, sky_oversample
        See :func:`iter_galactic_response`.
    dtype : {"float64", "float32"}
        Precision of the accumulation and of the result.
    push : (pix, w), optional
        ``push_tables(attitude_bins.rotations, drm.nside_psichi, nside_psichi, interpolation)``
        computed once and shared between blocks (they do not depend on the sky pixels).

    Returns
    -------
    ndarray, shape (J_b, n_Ei, n_Em, n_Phi, N_PsiChi), ``dtype``, cm² s
    """
    nside = _check_nside("nside", nside or drm.nside_psichi)
    nside_psichi = _check_nside("nside_psichi", nside_psichi or nside)
    dtype = np.dtype(dtype)
    if dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise InvalidParameterError(f"dtype must be float32 or float64, got {dtype}")
    pix = np.asarray(pix_block, dtype=np.int64).reshape(-1)
    npix_sky, npix = hp.nside2npix(nside), hp.nside2npix(nside_psichi)
    if len(pix) and (pix.min() < 0 or pix.max() >= npix_sky):
        raise InvalidParameterError(f"sky pixels must lie in 0..{npix_sky - 1} (nside {nside})")
    if push is None:
        push = push_tables(attitude_bins.rotations, drm.nside_psichi, nside_psichi,
                           interpolation)
    push_pix, push_w = push
    if push_pix.shape[:2] != (len(attitude_bins), drm.n_psichi):
        raise AxisMismatchError(f"push tables have shape {push_pix.shape[:2]}; expected "
                                f"(attitude bins, detector PsiChi) = "
                                f"{(len(attitude_bins), drm.n_psichi)}")
    nu_idx, weight = _sky_lookup(attitude_bins, nside, pix, drm.nside_nu, occultation,
                                 sky_oversample)
    out = np.zeros((len(pix), npix, drm.n_k), dtype=dtype)
    _accumulate(out, nu_idx, weight, push_pix, push_w, drm.indptr, drm.col_p, drm.col_k,
                drm.val)
    return np.ascontiguousarray(out.transpose(0, 2, 1)).reshape(
        (len(pix),) + tuple(drm.shape_k) + (npix,))


def iter_galactic_response(det: DetectorResponse, bins: AttitudeBins, nside: int | None = None,
                           block: int = 128, occultation: bool = True,
                           interpolation: str = "overlap", progress: bool = True,
                           sky_oversample: int = 0, nside_psichi: int | None = None,
                           dtype: str | np.dtype = "float32",
                           ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield the Galactic response in blocks of sky pixels.

    Parameters
    ----------
    det : DetectorResponse
    bins : AttitudeBins
    nside : int, optional
        Resolution of the Galactic sky axis (NuLambda); default ``det.nside_psichi``.
    block : int
        Sky pixels per block (memory: block × n_k × N_PsiChi × itemsize bytes, twice).
    occultation : bool
        Zero the response of sky pixels behind the Earth (fractionally at the limb, or per
        sample when ``bins`` carries its samples).
    interpolation : {"overlap", "bilinear", "nearest", "pull"}
        How a rotated detector-frame PsiChi pixel goes to the Galactic grid: shared among the
        pixels it overlaps (16 sub-pixels; the closest to binning the events directly), by
        HEALPix interpolation weights at its centre, all to the pixel of its centre, or
        (``pull``, cosipy's choice) each Galactic pixel takes the detector pixel holding its
        centre.
    sky_oversample : int
        0: sky pixel j responds as a point source at its centre (as COSI point-source
        responses); L > 0: as the mean over its 4^L sub-pixels (up to 4^L times the cost).
    nside_psichi : int, optional
        Resolution of the Galactic PsiChi axis; default ``nside``.
    dtype : {"float32", "float64"}
        Precision of the accumulation and of the yielded values.
    progress : bool
        Show a progress bar.

    Yields
    ------
    pixels : ndarray, shape (J_b,)
    values : ndarray, shape (J_b, n_Ei, n_Em, n_Phi, N_PsiChi), ``dtype``, cm² s
    """
    nside = _check_nside("nside", nside or det.nside_psichi)
    nside_psichi = _check_nside("nside_psichi", nside_psichi or nside)
    if int(block) < 1:
        raise InvalidParameterError(f"block must be at least 1 sky pixel, got {block}")
    pixels = np.arange(hp.nside2npix(nside))
    push = push_tables(bins.rotations, det.nside_psichi, nside_psichi, interpolation)
    bar = tqdm(total=len(pixels), desc="Galactic response", unit="pix", disable=not progress)
    try:
        for b0 in range(0, len(pixels), int(block)):
            pix = pixels[b0:b0 + int(block)]
            vals = galactic_response_block(det, bins, pix, nside, nside_psichi, occultation,
                                           interpolation, sky_oversample, dtype, push)
            bar.update(len(pix))
            yield pix, vals
    finally:
        bar.close()


def galactic_response(det: DetectorResponse, bins: AttitudeBins, nside: int | None = None,
                      **kwargs) -> np.ndarray:
    """The whole Galactic response in memory, shape (N_sky, n_Ei, n_Em, n_Phi, N_PsiChi), cm² s.

    See :func:`iter_galactic_response` for the parameters; use :func:`write_galactic_response`
    for large shapes.
    """
    return np.concatenate([v for _, v in iter_galactic_response(det, bins, nside, **kwargs)])


def _axis(e, unit, label: str) -> Axis:
    """A histpy Axis from edges (in ``unit``) or from an Axis (kept, relabelled)."""
    if isinstance(e, Axis):
        return Axis(e.edges, label=label, scale=e.axis_scale)
    return Axis(np.asarray(e, float) * unit, label=label, scale="linear")


def write_galactic_response(path: str | os.PathLike, det: DetectorResponse, bins: AttitudeBins,
                            ei_edges_kev, em_edges_kev, phi_edges_deg, nside: int | None = None,
                            dtype: str = "float32", overwrite: bool = True,
                            **kwargs) -> Path:
    """Stream the Galactic response into a histpy HDF5 file at ``path``, atomically.

    The layout of ``psr_gal_511_DC2.h5``: axes ``NuLambda`` (HEALPix, galactic, RING), ``Ei``
    and ``Em`` (keV edges ``ei_edges_kev``, ``em_edges_kev``), ``Phi`` (deg, ``phi_edges_deg``),
    ``PsiChi`` (HEALPix, galactic, RING); unit ``cm2 s``; dense ``dtype`` contents without
    under/overflow bins, stored contiguously (unchunked, unfiltered), so that a dense run of the
    same ``dtype`` memory-maps the file itself instead of keeping a converted copy. Blocks of
    sky pixels are computed and written one at a time: memory stays at about two blocks plus
    the detector response, whatever the sky resolution. ``det``, ``bins``, ``nside`` and
    ``kwargs`` (``block``, ``nside_psichi``, ``occultation``, ``interpolation``,
    ``sky_oversample``, ``progress``) as in :func:`iter_galactic_response`; the values are
    accumulated in ``dtype``.

    Parameters
    ----------
    ei_edges_kev, em_edges_kev, phi_edges_deg : array_like or histpy Axis
        Edges of the Ei, Em (keV) and Phi (deg) axes, or the axes themselves (their scale,
        for example ``log``, is kept).

    Raises
    ------
    AxisMismatchError
        If the edges do not match ``det.shape_k``.
    """
    nside = _check_nside("nside", nside or det.nside_psichi)
    nside_psichi = _check_nside("nside_psichi", kwargs.pop("nside_psichi", None) or nside)
    mid = [_axis(e, un, lab) for e, un, lab in zip((ei_edges_kev, em_edges_kev, phi_edges_deg),
                                                   (u.keV, u.keV, u.deg), ("Ei", "Em", "Phi"))]
    if tuple(a.nbins for a in mid) != tuple(det.shape_k):
        raise AxisMismatchError(f"edges give (Ei, Em, Phi) = {tuple(a.nbins for a in mid)}"
                                f" bins but the detector response has {det.shape_k}")
    axes = Axes([HealpixAxis(nside=nside, coordsys="galactic", label="NuLambda"), *mid,
                 HealpixAxis(nside=nside_psichi, coordsys="galactic", label="PsiChi")])
    blocks = iter_galactic_response(det, bins, nside, nside_psichi=nside_psichi, dtype=dtype,
                                    **kwargs)
    return write_response_blocks(path, axes, blocks, dtype=dtype, overwrite=overwrite)


def write_response_blocks(path: str | os.PathLike, axes: Axes, blocks,
                          dtype: str = "float32", overwrite: bool = True) -> Path:
    """Write blocks of sky pixels, as they come, into a dense histpy HDF5 file, atomically.

    Parameters
    ----------
    path : path-like
    axes : histpy Axes
        NuLambda, Ei, Em, Phi, PsiChi of the whole response.
    blocks : iterable of (pixels, values)
        ``pixels`` (J_b,) consecutive sky pixels, ``values`` (J_b, n_Ei, n_Em, n_Phi, N_PsiChi)
        in cm² s; any order of blocks; every sky pixel must come exactly once.
    dtype : str
        Stored precision.

    Raises
    ------
    InvalidParameterError
        If a block's pixels are not consecutive, or some sky pixels never came.
    """
    path = Path(path)
    shape = tuple(int(n) for n in axes.nbins)
    done = np.zeros(shape[0], dtype=bool)
    with atomic_path(path, overwrite=overwrite) as tmp, h5py.File(tmp, "w") as f:
        g = f.create_group("hist")
        g.attrs["format"] = "dense"
        g.attrs["unit"] = "cm2 s"
        axes.write(g.create_group("axes"))
        ds = g.create_dataset("contents", shape=shape, dtype=dtype, track_times=False)
        for pix, vals in blocks:
            pix = np.asarray(pix)
            lo, hi = int(pix[0]), int(pix[-1]) + 1
            if hi - lo != len(pix) or np.any(np.diff(pix) != 1):
                raise InvalidParameterError(f"block of sky pixels {lo}..{hi - 1} is not "
                                            "consecutive")
            ds[lo:hi] = vals
            done[lo:hi] = True
        if not done.all():
            raise InvalidParameterError(f"{int((~done).sum())} sky pixels were never written "
                                        f"(first {int(np.argmin(done))})")
    logger.info("wrote Galactic response %s to %s", shape, path)
    return path


def carry_local_cds(local_rate: np.ndarray | Callable[[int], np.ndarray], bins: AttitudeBins,
                    nside_local: int, nside: int,
                    interpolation: str = "overlap") -> np.ndarray:
    """Expected counts (n_k, N_PsiChi) in the Galactic CDS of emission fixed in the detector
    frame (Earth albedo for a zenith-pointed instrument):
    ``B_gal[k, p] = Σ_t Δt_t Σ_q B_loc,t[k, q] · push_t(q → p)``.

    Parameters
    ----------
    local_rate : ndarray or callable
        Rates (counts s⁻¹) of shape (n_k, N_PsiChi_local), or ``f(t)`` giving them for
        attitude bin ``t`` (when the Earth moves in the detector frame, as with rocking).
    bins : AttitudeBins
    nside_local, nside : int
        Resolutions of the detector-frame and Galactic PsiChi axes.
    interpolation : {"overlap", "bilinear", "nearest"}
        See :func:`iter_galactic_response`.
    """
    push_pix, push_w = _push_tables(bins.rotations, nside_local, nside, interpolation)
    npix = hp.nside2npix(nside)
    out = None
    for t in range(len(bins)):
        rate = np.asarray(local_rate(t) if callable(local_rate) else local_rate, np.float64)
        if out is None:
            out = np.zeros((rate.shape[0], npix))
        contrib = rate[:, :, None] * push_w[t][None, :, :] * bins.livetime[t]
        idx = np.broadcast_to(push_pix[t][None], contrib.shape)
        for k in range(rate.shape[0]):
            out[k] += np.bincount(idx[k].ravel(), weights=contrib[k].ravel(), minlength=npix)
    return out


def galactic_exposure(det: DetectorResponse, bins: AttitudeBins, nside: int,
                      occultation: bool = True, sky_oversample: int = 0) -> np.ndarray:
    """Exposure (cm² s) of the Galactic sky pixels, shape (N_sky,): R_gal summed over (Ei, Em,
    Phi, PsiChi), from the per-ν effective area only (cheap). Parameters as in
    :func:`iter_galactic_response`."""
    area = det.total()
    nu_idx, weight = _sky_lookup(bins, nside, np.arange(hp.nside2npix(nside)), det.nside_nu,
                                 occultation, sky_oversample)
    return np.sum(weight * area[nu_idx], axis=(0, 2))
