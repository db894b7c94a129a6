"""Carry a detector-frame response over an attitude history into a Galactic response.

The one engine of DESIGN §6::

    R_gal[j, e, m, φ, p] = Σ_t Δt_t · occ_t(n_j) · R_det[A_t⁻¹ n_j, e, m, φ, rot_t(p)]

``n_j`` is the Galactic direction of sky pixel j, ``A_t`` the attitude (detector → Galactic
rotation) of attitude bin t with live time ``Δt_t``, ``occ_t`` the fraction of pixel j above the
Earth's limb, and ``rot_t`` the map between detector-frame and Galactic PsiChi pixels. The source
direction is looked up in the detector-frame response at the nearest ν pixel; each detector-frame
PsiChi pixel is pushed to the Galactic PsiChi grid after rotation, shared among the Galactic
pixels it overlaps (or by bilinear weights, or to the nearest pixel).

Inputs are a :class:`DetectorResponse` (a compressed per-ν sparse form of the
``(NuLambda, Ei, Em, Phi, PsiChi)`` array in cm², built from a dense array, a histpy histogram such
as a COSI ``DRM`` file, or the simulator's instrument model) and :class:`AttitudeBins` (groups of
time with one attitude, from :func:`bin_attitudes`). The result, in cm² s, is produced in blocks
of sky pixels so memory stays bounded; :func:`write_galactic_response` streams it into a histpy
HDF5 file with the axes of ``psr_gal_511_DC2.h5``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import h5py
import healpy as hp
import numba
import numpy as np
from tqdm.auto import tqdm

from ..errors import AxisMismatchError, InvalidParameterError
from ..io.atomic import atomic_path
from ..io.hdf5 import open_hdf5
from ..io.orientation import Orientation

__all__ = [
    "DetectorResponse",
    "AttitudeBins",
    "bin_attitudes",
    "iter_galactic_response",
    "galactic_response",
    "write_galactic_response",
    "carry_local_cds",
    "galactic_exposure",
]

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------
# detector-frame response container


@dataclass
class DetectorResponse:
    """A detector-frame response R_det[ν, Ei, Em, Phi, PsiChi] (cm²) stored sparsely per ν.

    Row ν holds entries ``val[q]`` at PsiChi pixel ``col_p[q]`` and flattened (Ei, Em, Phi)
    index ``col_k[q]`` for ``q`` in ``indptr[ν]:indptr[ν + 1]``.

    Attributes
    ----------
    nside_nu, nside_psichi : int
        HEALPix resolutions (RING) of the ν and PsiChi axes (detector frame).
    shape_k : tuple of int
        (n_Ei, n_Em, n_Phi).
    indptr : ndarray, shape (N_ν + 1,), int64
    col_p, col_k : ndarray, shape (nnz,), int32
    val : ndarray, shape (nnz,), float32
    """

    nside_nu: int
    nside_psichi: int
    shape_k: tuple[int, int, int]
    indptr: np.ndarray
    col_p: np.ndarray
    col_k: np.ndarray
    val: np.ndarray

    @property
    def n_nu(self) -> int:
        """Number of ν pixels."""
        return hp.nside2npix(self.nside_nu)

    @property
    def n_psichi(self) -> int:
        """Number of PsiChi pixels."""
        return hp.nside2npix(self.nside_psichi)

    @property
    def n_k(self) -> int:
        """n_Ei × n_Em × n_Phi."""
        return int(np.prod(self.shape_k))

    @property
    def nnz(self) -> int:
        """Stored entries."""
        return len(self.val)

    @classmethod
    def from_parts(cls, parts: list, nside_nu: int, nside_psichi: int,
                   shape_k: tuple[int, int, int]) -> DetectorResponse:
        """Assemble from a list (chunks) of lists (rows) of ``(col_p, col_k, val)`` arrays."""
        blocks = []
        for chunk in parts:
            counts = np.array([len(r[2]) for r in chunk], dtype=np.int64)
            if len(chunk):
                blocks.append((counts, *(np.concatenate([r[j] for r in chunk])
                                         for j in range(3))))
        return cls.from_row_blocks(blocks, nside_nu, nside_psichi, shape_k)

    @classmethod
    def from_row_blocks(cls, blocks: list, nside_nu: int, nside_psichi: int,
                        shape_k: tuple[int, int, int]) -> DetectorResponse:
        """Assemble from consecutive blocks of rows, each ``(counts, col_p, col_k, val)``.

        ``counts`` (R,) gives the entries of each of the block's R ν rows, and the three arrays
        hold those entries row after row. The list is emptied while the arrays are joined, so
        the peak memory is the response plus one of its arrays.
        """
        counts = np.concatenate([b[0] for b in blocks]) if blocks else np.zeros(0, np.int64)
        if len(counts) != hp.nside2npix(nside_nu):
            raise InvalidParameterError(
                f"expected {hp.nside2npix(nside_nu)} ν rows, got {len(counts)}")
        indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        joined = []
        for j, dtype in ((1, np.int32), (2, np.int32), (3, np.float32)):
            joined.append(np.concatenate([np.asarray(b[j], dtype=dtype) for b in blocks]))
            blocks[:] = [tuple(None if i == j else x for i, x in enumerate(b)) for b in blocks]
            release_free_memory()
        blocks.clear()
        return cls(int(nside_nu), int(nside_psichi), tuple(int(s) for s in shape_k), indptr,
                   *joined)

    @classmethod
    def from_dense(cls, array: np.ndarray, nside_nu: int | None = None,
                   nside_psichi: int | None = None, threshold: float = 0.0) -> DetectorResponse:
        """Build from a dense array of shape (N_ν, n_Ei, n_Em, n_Phi, N_PsiChi) in cm².

        Parameters
        ----------
        array : array_like, shape (N_ν, n_Ei, n_Em, n_Phi, N_PsiChi)
        nside_nu, nside_psichi : int, optional
            Default: inferred from the axis lengths.
        threshold : float
            Entries ≤ threshold × the row maximum are dropped.
        """
        a = np.asarray(array)
        if a.ndim != 5:
            raise AxisMismatchError(f"detector response must be 5-D (NuLambda, Ei, Em, Phi, "
                                    f"PsiChi), got shape {a.shape}")
        nside_nu = nside_nu or hp.npix2nside(a.shape[0])
        nside_psichi = nside_psichi or hp.npix2nside(a.shape[4])
        rows = []
        for i in range(a.shape[0]):
            r = a[i].reshape(-1, a.shape[4]).T  # (P, K): p-major
            vmax = r.max() if r.size else 0.0
            p, k = np.nonzero(r > threshold * vmax) if vmax > 0 else (np.array([], int),) * 2
            rows.append((p, k, r[p, k]))
        return cls.from_parts([rows], nside_nu, nside_psichi, a.shape[1:4])

    @classmethod
    def from_histogram(cls, hist, threshold: float = 0.0) -> DetectorResponse:
        """Build from a histpy Histogram with axes NuLambda, Ei, Em, Phi, PsiChi (detector frame).

        The contents are converted to cm² if the histogram has a unit; dense and sparse contents
        are accepted (sparse ones are densified one ν row at a time).
        """
        labels = list(hist.axes.labels)
        want = ["NuLambda", "Ei", "Em", "Phi", "PsiChi"]
        if labels != want:
            raise AxisMismatchError(f"detector response axes must be {want}, got {labels}")
        factor = 1.0
        if hist.unit is not None and str(hist.unit) not in ("", "dimensionless"):
            import astropy.units as u
            factor = float(hist.unit.to(u.cm**2))
        contents = hist.contents
        if hasattr(contents, "todense") and not isinstance(contents, np.ndarray):
            rows = []
            for i in range(contents.shape[0]):
                r = np.asarray(contents[i].todense()) * factor
                r = r.reshape(-1, r.shape[-1]).T
                vmax = r.max() if r.size else 0.0
                p, k = np.nonzero(r > threshold * vmax) if vmax > 0 else (np.array([], int),) * 2
                rows.append((p, k, r[p, k]))
            return cls.from_parts([rows], hist.axes["NuLambda"].nside,
                                  hist.axes["PsiChi"].nside, contents.shape[1:4])
        arr = np.asarray(getattr(contents, "value", contents)) * factor
        return cls.from_dense(arr, hist.axes["NuLambda"].nside, hist.axes["PsiChi"].nside,
                              threshold)

    @classmethod
    def from_drm_file(cls, path: str | os.PathLike, threshold: float = 0.0,
                      name: str = "DRM") -> DetectorResponse:
        """Read a COSI full detector response (``DRM`` HDF5 layout, version 2).

        The layout: group ``DRM`` with attribute ``UNIT``, a histpy ``AXES`` group whose first
        axis is ``NuLambda``, a ``COUNTS`` dataset over all axes and ``EFF_AREA`` (one value per
        ``Ei`` bin); the response is ``COUNTS × EFF_AREA`` broadcast along ``Ei``. Axes other than
        NuLambda, Ei, Em, Phi and PsiChi (for example ``SigmaTau`` or ``Dist``) are summed over.
        Rows are read one ν pixel at a time, so memory stays at one row plus the sparse result.

        Parameters
        ----------
        path : path-like
            The ``.h5`` file.
        threshold : float
            Entries ≤ threshold × the row maximum are dropped.
        name : str
            Group holding the response.

        Raises
        ------
        FileFormatError
            If the file lacks the group or one of the required axes.
        """
        import astropy.units as u
        from histpy import Axes

        from ..errors import FileFormatError

        path = Path(path)
        with open_hdf5(path) as f:
            if name not in f:
                raise FileFormatError(f"{path}: no {name!r} group (found {sorted(f.keys())})")
            g = f[name]
            axes = Axes.open(g["AXES"])
            labels = list(axes.labels)
            want = ["NuLambda", "Ei", "Em", "Phi", "PsiChi"]
            missing = [a for a in want if a not in labels]
            if missing or labels[0] != "NuLambda":
                raise FileFormatError(f"{path}: detector response axes {labels}; need "
                                      f"{want} with NuLambda first (missing {missing})")
            unit = u.Unit(g.attrs.get("UNIT", "cm2"))
            factor = float(unit.to(u.cm**2))
            eff = np.asarray(g["EFF_AREA"], dtype=np.float64) * factor
            counts = g["COUNTS"]
            rest = labels[1:]
            keep = [rest.index(a) for a in want[1:]]
            drop = tuple(i for i in range(len(rest)) if i not in keep)
            ei_axis = rest.index("Ei")
            shape_e = [1] * len(rest)
            shape_e[ei_axis] = -1
            rows = []
            for i in range(counts.shape[0]):
                r = np.asarray(counts[i], dtype=np.float64) * eff.reshape(shape_e)
                if drop:
                    r = r.sum(axis=drop)
                order = [sorted(keep).index(k) for k in keep]
                r = np.transpose(r, order)  # (Ei, Em, Phi, PsiChi)
                r2 = r.reshape(-1, r.shape[-1]).T
                vmax = r2.max() if r2.size else 0.0
                p, k = (np.nonzero(r2 > threshold * vmax) if vmax > 0
                        else (np.array([], int),) * 2)
                rows.append((p, k, r2[p, k]))
            shape_k = tuple(axes[a].nbins for a in want[1:4])
            return cls.from_parts([rows], axes["NuLambda"].nside, axes["PsiChi"].nside, shape_k)

    def row(self, i: int) -> np.ndarray:
        """Dense row ν = i, shape (n_Ei, n_Em, n_Phi, N_PsiChi), cm²."""
        out = np.zeros((self.n_k, self.n_psichi))
        s = slice(self.indptr[i], self.indptr[i + 1])
        np.add.at(out, (self.col_k[s], self.col_p[s]), self.val[s])
        return out.reshape(self.shape_k + (self.n_psichi,))

    def to_dense(self) -> np.ndarray:
        """Dense array (N_ν, n_Ei, n_Em, n_Phi, N_PsiChi); only for small responses."""
        return np.stack([self.row(i) for i in range(self.n_nu)])

    def weighted_row_sum(self, weights: np.ndarray) -> np.ndarray:
        """Σ_ν w_ν R_det[ν]: the response to a source distribution over ν.

        Parameters
        ----------
        weights : array_like, shape (N_ν,)
            Weight of each ν row (for example intensity × solid angle, cm⁻² s⁻¹).

        Returns
        -------
        ndarray, shape (n_Ei × n_Em × n_Phi, N_PsiChi)
            float64; cm² × the unit of ``weights``.
        """
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != (self.n_nu,):
            raise InvalidParameterError(f"weights must have shape ({self.n_nu},) (one per ν "
                                        f"pixel), got {w.shape}")
        out = np.zeros((self.n_k, self.n_psichi))
        _weighted_rows(out, w, self.indptr, self.col_p, self.col_k, self.val)
        return out

    def total(self) -> np.ndarray:
        """Sum over (Ei, Em, Phi, PsiChi) per ν: the effective area (cm²), shape (N_ν,)."""
        out = np.zeros(self.n_nu)
        _row_sums(out, self.indptr, self.val)
        return out


@numba.njit(cache=True)
def _row_sums(out, indptr, val):
    for i in range(out.shape[0]):
        acc = 0.0
        for q in range(indptr[i], indptr[i + 1]):
            acc += val[q]
        out[i] = acc


@numba.njit(cache=True)
def _weighted_rows(out, w, indptr, col_p, col_k, val):
    for i in range(w.shape[0]):
        wi = w[i]
        if wi == 0.0:
            continue
        for q in range(indptr[i], indptr[i + 1]):
            out[col_k[q], col_p[q]] += wi * val[q]


def release_free_memory() -> None:
    """Return freed heap memory to the operating system where the C library allows it.

    Building a large sparse response in blocks leaves hundreds of MB of freed blocks in the
    C heap (glibc keeps allocations below its mmap threshold); ``malloc_trim`` hands them back.
    A no-op on other platforms.
    """
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # pragma: no cover - not glibc
        pass


# ------------------------------------------------------------------------------------------------
# attitude bins


@dataclass
class AttitudeBins:
    """Groups of time sharing one attitude.

    Attributes
    ----------
    rotations : ndarray, shape (T, 3, 3)
        Detector → Galactic rotation of each bin.
    zenith : ndarray, shape (T, 3)
        Galactic zenith unit vector of each bin.
    horizon_deg : ndarray, shape (T,)
        Angle from the zenith beyond which the Earth blocks the sky (deg).
    livetime : ndarray, shape (T,)
        Live time (s) in each bin.
    """

    rotations: np.ndarray
    zenith: np.ndarray
    horizon_deg: np.ndarray
    livetime: np.ndarray

    def __len__(self) -> int:
        return len(self.livetime)

    @property
    def total_livetime(self) -> float:
        """Sum of live times (s)."""
        return float(self.livetime.sum())


def _quantize_attitudes(x, z, zen, cell_deg):
    """Integer cell index of each attitude: z-axis pixel, roll of x about z, zenith pixel."""
    nside_q = 1
    while hp.nside2resol(nside_q, arcmin=True) / 60.0 > cell_deg and nside_q < 8192:
        nside_q *= 2
    zpix = hp.vec2pix(nside_q, z[:, 0], z[:, 1], z[:, 2]).astype(np.int64)
    # roll: angle of x about z, measured from the projection of the Galactic pole (or x axis)
    ref = np.where(np.abs(z[:, 2:3]) < 0.99, np.array([0.0, 0.0, 1.0]), np.array([1.0, 0, 0]))
    e1 = ref - np.sum(ref * z, axis=1, keepdims=True) * z
    e1 /= np.linalg.norm(e1, axis=1, keepdims=True)
    e2 = np.cross(z, e1)
    roll = np.arctan2(np.sum(x * e2, axis=1), np.sum(x * e1, axis=1))
    rbin = np.floor((roll + np.pi) / np.radians(cell_deg)).astype(np.int64)
    rot = np.stack([x, np.cross(z, x), z], axis=-1)
    zen_loc = np.einsum("nji,nj->ni", rot, zen)
    zlpix = hp.vec2pix(nside_q, zen_loc[:, 0], zen_loc[:, 1], zen_loc[:, 2]).astype(np.int64)
    _, inv = np.unique(np.stack([zpix, rbin, zlpix], axis=1), axis=0, return_inverse=True)
    return inv.ravel(), zen_loc


def _weighted_unit_mean(inv, w, v, n):
    s = np.stack([np.bincount(inv, weights=w * v[:, c], minlength=n) for c in range(3)], axis=1)
    return s / np.linalg.norm(s, axis=1, keepdims=True)


def _leader_clusters(rot9, zl, weight, radius_rad):
    """Greedy clustering: each cell joins the nearest leader within ``radius_rad`` (rotation
    angle and zenith direction), else becomes a leader. Heaviest cells lead first."""
    order = np.argsort(-weight, kind="stable")
    cos_rot = 1.0 + 2.0 * np.cos(radius_rad)  # trace of R1^T R2 at the radius
    cos_zen = np.cos(radius_rad)
    lead_rot = np.empty((len(order), 9))
    lead_zl = np.empty((len(order), 3))
    nlead = 0
    label = np.empty(len(order), dtype=np.int64)
    for i in order:
        if nlead:
            tr = lead_rot[:nlead] @ rot9[i]
            ok = (tr >= cos_rot) & (lead_zl[:nlead] @ zl[i] >= cos_zen)
            if ok.any():
                label[i] = int(np.argmax(np.where(ok, tr, -np.inf)))
                continue
        lead_rot[nlead] = rot9[i]
        lead_zl[nlead] = zl[i]
        label[i] = nlead
        nlead += 1
    return label, nlead


def bin_attitudes(orientation: Orientation, resolution_deg: float = 1.0,
                  horizon_deg: float | None = None, tmin: float | None = None,
                  tmax: float | None = None) -> AttitudeBins:
    """Group an attitude history into attitude bins about ``resolution_deg`` across.

    Time stamps are first gathered into fine cells (z-axis pixel, roll of x about z, zenith
    pixel in the detector frame, a third of the resolution wide); the cells are then clustered
    greedily so that every cell lies within half the resolution (rotation angle, and zenith
    direction) of its cluster's leader. A rotation about a fixed axis (the DC2 attitude) thus
    needs about 2 × 360°/resolution bins. Each bin's attitude is the live-time-weighted mean of
    its members (re-orthonormalised).

    Parameters
    ----------
    orientation : Orientation
        Sampled history; each row's live time belongs to that row's attitude.
    resolution_deg : float
        Target angular size of a bin (deg).
    horizon_deg : float, optional
        Earth-limb angle from the zenith (deg). Default: from each row's altitude
        (113° at 550 km); rows with unknown altitude use 550 km.
    tmin, tmax : float, optional
        Restrict to this time range first.

    Returns
    -------
    AttitudeBins
    """
    from ..simulate.orbit import horizon_angle_deg

    if not resolution_deg > 0:
        raise InvalidParameterError(f"attitude resolution must be positive, got {resolution_deg}")
    o = orientation
    if tmin is not None or tmax is not None:
        o = o.select(-np.inf if tmin is None else tmin, np.inf if tmax is None else tmax)
    live = o.livetime
    keep = live > 0
    if not np.any(keep):
        raise InvalidParameterError("the attitude history has no live time in the range")
    x, z, zen, alt, live = (o.x_axis[keep], o.z_axis[keep], o.zenith[keep], o.altitude[keep],
                            live[keep])
    fine, zen_loc = _quantize_attitudes(x, z, zen, resolution_deg / 3.0)
    nf = int(fine.max()) + 1
    wf = np.bincount(fine, weights=live, minlength=nf)
    zf, xf = _weighted_unit_mean(fine, live, z, nf), _weighted_unit_mean(fine, live, x, nf)
    xf = xf - np.sum(xf * zf, axis=1, keepdims=True) * zf
    xf /= np.linalg.norm(xf, axis=1, keepdims=True)
    rotf = np.stack([xf, np.cross(zf, xf), zf], axis=-1).reshape(nf, 9)
    zlf = _weighted_unit_mean(fine, live, zen_loc, nf)
    label, nb = _leader_clusters(rotf, zlf, wf, np.radians(resolution_deg) / 2.0)
    inv = label[fine]
    w = np.bincount(inv, weights=live, minlength=nb)
    zb, xb, zenb = (_weighted_unit_mean(inv, live, v, nb) for v in (z, x, zen))
    xb = xb - np.sum(xb * zb, axis=1, keepdims=True) * zb
    xb /= np.linalg.norm(xb, axis=1, keepdims=True)
    rotb = np.stack([xb, np.cross(zb, xb), zb], axis=-1)
    if horizon_deg is None:
        altb = np.bincount(inv, weights=live * np.where(alt > 0, alt, 550.0), minlength=nb) / w
        hor = np.array([horizon_angle_deg(a) for a in altb])
    else:
        hor = np.full(nb, float(horizon_deg))
    logger.info("attitude binning: %d samples -> %d bins (%.2f deg), live time %.6g s",
                len(live), nb, resolution_deg, w.sum())
    return AttitudeBins(rotations=rotb, zenith=zenb, horizon_deg=hor, livetime=w)


# ------------------------------------------------------------------------------------------------
# the engine


def _push_tables(rotations: np.ndarray, nside_local: int, nside_gal: int,
                 interpolation: str) -> tuple[np.ndarray, np.ndarray]:
    """Galactic target pixels and weights of each detector-frame PsiChi pixel per attitude.

    Returns
    -------
    pix : ndarray, shape (T, P_local, n) int32
    w : ndarray, shape (T, P_local, n) float32
        n = 1 (nearest), 4 (bilinear) or the most Galactic pixels one detector pixel overlaps.
    """
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
    else:
        raise InvalidParameterError(
            f"unknown PsiChi interpolation {interpolation!r}; expected 'nearest', 'bilinear' "
            "or 'overlap'")
    shape = (len(rotations), v.shape[0], pix.shape[1])
    return (np.ascontiguousarray(pix.reshape(shape), dtype=np.int32),
            np.ascontiguousarray(w.reshape(shape), dtype=np.float32))


def _overlap_push(rotations: np.ndarray, v: np.ndarray, nside_local: int,
                  nside_gal: int) -> tuple[np.ndarray, np.ndarray]:
    """Share of each rotated detector pixel in each Galactic pixel, from 16 sub-pixels each."""
    npix = v.shape[0]
    nest = hp.ring2nest(nside_local, np.arange(npix))
    sub = np.stack(hp.pix2vec(4 * nside_local, (nest[:, None] * 16 + np.arange(16)).ravel(),
                              nest=True), axis=-1).reshape(npix, 16, 3)
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
    pixel are merged.

    Returns
    -------
    nu_idx : ndarray, shape (T, J, C) int32
    weight : ndarray, shape (T, J, C) float64 (s); 0 for merged duplicates
    """
    pixels = np.asarray(pixels, dtype=np.int64)
    nest = hp.ring2nest(nside_sky, pixels)
    if sky_oversample > 0:
        c = 4**sky_oversample
        pts = np.stack(hp.pix2vec(nside_sky * 2**sky_oversample,
                                  (nest[:, None] * c + np.arange(c)).ravel(), nest=True),
                       axis=-1).reshape(len(pixels), c, 3)
    else:
        pts = np.stack(hp.pix2vec(nside_sky, pixels), axis=-1)[:, None, :]
    c = pts.shape[1]
    loc = np.einsum("tji,pcj->tpci", bins.rotations, pts)  # R^T n
    nu_idx = hp.vec2pix(nside_nu, loc[..., 0], loc[..., 1], loc[..., 2]).astype(np.int32)
    weight = np.broadcast_to(bins.livetime[:, None, None] / c, nu_idx.shape).astype(np.float64)
    if occultation:
        level = max(1, sky_oversample)
        cc = 4**level
        ch = np.stack(hp.pix2vec(nside_sky * 2**level, (nest[:, None] * cc + np.arange(cc)).ravel(),
                                 nest=True), axis=-1).reshape(len(pixels), cc, 3)
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


@numba.njit(parallel=True, cache=True)
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


def iter_galactic_response(det: DetectorResponse, bins: AttitudeBins, nside: int | None = None,
                           block: int = 128, occultation: bool = True,
                           interpolation: str = "overlap", progress: bool = True,
                           pixels: np.ndarray | None = None, sky_oversample: int = 0,
                           ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield the Galactic response in blocks of sky pixels.

    Parameters
    ----------
    det : DetectorResponse
        Detector-frame response (cm²).
    bins : AttitudeBins
        Attitude bins with live times (s).
    nside : int, optional
        Resolution of both Galactic axes (NuLambda and PsiChi); default the detector response's
        PsiChi resolution.
    block : int
        Sky pixels per block (memory: block × n_k × N_PsiChi × 4 bytes).
    occultation : bool
        Zero the response of sky pixels behind the Earth (fractionally at the limb).
    interpolation : {"overlap", "bilinear", "nearest"}
        How detector-frame PsiChi pixels are pushed to the Galactic grid: "overlap" shares each
        rotated detector pixel among the Galactic pixels it overlaps (from 16 sub-pixels; the
        closest to binning the events directly), "bilinear" uses HEALPix interpolation weights
        at its rotated centre, "nearest" gives it all to the pixel containing the centre.
    sky_oversample : int
        0: the response of sky pixel j is that of a point source at its centre (as in COSI
        point-source responses). L > 0: the average over its 4^L sub-pixels (a source uniform
        over the pixel); costs up to 4^L times more.
    progress : bool
        Show a tqdm bar.
    pixels : array_like, optional
        Only these sky pixels (RING), in this order; default all.

    Yields
    ------
    pixels : ndarray, shape (J_b,)
        The sky pixels of the block.
    values : ndarray, shape (J_b, n_Ei, n_Em, n_Phi, N_PsiChi), float32
        Response in cm² s.
    """
    nside = int(nside or det.nside_psichi)
    npix = hp.nside2npix(nside)
    if pixels is None:
        pixels = np.arange(npix)
    pixels = np.asarray(pixels, dtype=np.int64)
    push_pix, push_w = _push_tables(bins.rotations, det.nside_psichi, nside, interpolation)
    bar = tqdm(total=len(pixels), desc="Galactic response", unit="pix", disable=not progress)
    try:
        for b0 in range(0, len(pixels), block):
            pix = pixels[b0:b0 + block]
            nu_idx, weight = _sky_lookup(bins, nside, pix, det.nside_nu, occultation,
                                         sky_oversample)
            out = np.zeros((len(pix), npix, det.n_k), dtype=np.float32)
            _accumulate(out, nu_idx, weight, push_pix, push_w, det.indptr, det.col_p,
                        det.col_k, det.val)
            vals = np.ascontiguousarray(out.transpose(0, 2, 1)).reshape(
                (len(pix),) + det.shape_k + (npix,))
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
    parts = [v for _, v in iter_galactic_response(det, bins, nside, **kwargs)]
    return np.concatenate(parts, axis=0)


def write_galactic_response(path: str | os.PathLike, det: DetectorResponse, bins: AttitudeBins,
                            ei_edges_kev: np.ndarray, em_edges_kev: np.ndarray,
                            phi_edges_deg: np.ndarray, nside: int | None = None,
                            dtype: str = "float32", overwrite: bool = True,
                            **kwargs) -> Path:
    """Stream the Galactic response into a histpy HDF5 file, atomically.

    Axes: ``NuLambda`` (HealpixAxis, galactic, RING), ``Ei`` (keV), ``Em`` (keV), ``Phi`` (deg),
    ``PsiChi`` (HealpixAxis, galactic, RING); unit ``cm2 s``; dense contents without
    under/overflow bins — the layout of ``psr_gal_511_DC2.h5``, loadable with
    ``histpy.Histogram.open``.

    Parameters
    ----------
    path : path-like
        Output file.
    det, bins, nside, kwargs
        As in :func:`iter_galactic_response`.
    ei_edges_kev, em_edges_kev, phi_edges_deg : array_like
        Edges of the energy and Compton-angle axes (must match ``det.shape_k``).
    dtype : str
        Stored dtype ("float32" or "float64").

    Returns
    -------
    pathlib.Path
    """
    nside = int(nside or det.nside_psichi)
    ei, em, ph = (np.asarray(ei_edges_kev, float), np.asarray(em_edges_kev, float),
                  np.asarray(phi_edges_deg, float))
    if (len(ei) - 1, len(em) - 1, len(ph) - 1) != tuple(det.shape_k):
        raise AxisMismatchError(f"edges give (Ei, Em, Phi) = {(len(ei) - 1, len(em) - 1, len(ph) - 1)}"
                                f" bins but the detector response has {det.shape_k}")
    npix = hp.nside2npix(nside)
    shape = (npix,) + tuple(det.shape_k) + (npix,)
    path = Path(path)
    with atomic_path(path, overwrite=overwrite) as tmp:
        with h5py.File(tmp, "w") as f:
            g = write_histogram_header(f, [
                ("NuLambda", "healpix", nside), ("Ei", "keV", ei), ("Em", "keV", em),
                ("Phi", "deg", ph), ("PsiChi", "healpix", nside)], unit="cm2 s")
            chunks = (1,) + tuple(det.shape_k) + (npix,)
            ds = g.create_dataset("contents", shape=shape, dtype=dtype, chunks=chunks,
                                  track_times=False)
            for pix, vals in iter_galactic_response(det, bins, nside, **kwargs):
                ds[int(pix[0]):int(pix[-1]) + 1] = vals.astype(dtype, copy=False)
    logger.info("wrote Galactic response %s to %s", shape, path)
    return path


def write_histogram_header(f: h5py.File, axes: list, unit: str, name: str = "hist") -> h5py.Group:
    """Create a histpy ``hist`` group with its ``axes`` (dense format); return the group.

    Parameters
    ----------
    f : h5py.File
    axes : list of (label, unit or "healpix", edges or nside)
        HEALPix axes are Galactic, RING.
    unit : str
        Unit of the contents.
    """
    g = f.create_group(name)
    g.attrs["format"] = "dense"
    g.attrs["unit"] = unit
    ax = g.create_group("axes")
    for i, (label, aunit, spec) in enumerate(axes):
        if aunit == "healpix":
            nside = int(spec)
            d = ax.create_dataset(str(i), data=np.arange(hp.nside2npix(nside) + 1),
                                  track_times=False)
            d.attrs["__class__"] = np.array(["histpy.healpix_axis", "HealpixAxis"], dtype=object)
            d.attrs["nside"] = nside
            d.attrs["scheme"] = "RING"
            d.attrs["coordsys"] = "galactic"
        else:
            d = ax.create_dataset(str(i), data=np.asarray(spec, dtype=np.float64),
                                  track_times=False)
            d.attrs["__class__"] = np.array(["histpy.axis", "Axis"], dtype=object)
            d.attrs["unit"] = aunit
        d.attrs["label"] = label
        d.attrs["scale"] = "linear"
    return g


# ------------------------------------------------------------------------------------------------
# detector-fixed emission (albedo) and exposure


def carry_local_cds(local_rate: np.ndarray | Callable[[int], np.ndarray], bins: AttitudeBins,
                    nside_local: int, nside: int,
                    interpolation: str = "overlap") -> np.ndarray:
    """Carry detector-frame expected count rates into the Galactic CDS over the attitude bins.

    For emission fixed in the detector frame (Earth albedo for a zenith-pointed instrument),
    ``B_gal[k, p] = Σ_t Δt_t Σ_q B_loc,t[k, q] · push_t(q → p)``.

    Parameters
    ----------
    local_rate : ndarray or callable
        Rates (counts s⁻¹) of shape (n_k, N_PsiChi_local), or a callable ``f(t) -> array``
        giving them for attitude bin ``t`` (for example when the Earth moves in the detector
        frame, as with rocking).
    bins : AttitudeBins
    nside_local, nside : int
        Resolutions of the detector-frame and Galactic PsiChi axes.
    interpolation : {"overlap", "bilinear", "nearest"}
        See :func:`iter_galactic_response`.

    Returns
    -------
    ndarray, shape (n_k, N_PsiChi)
        Expected counts.
    """
    push_pix, push_w = _push_tables(bins.rotations, nside_local, nside, interpolation)
    npix = hp.nside2npix(nside)
    out = None
    for t in range(len(bins)):
        rate = local_rate(t) if callable(local_rate) else local_rate
        rate = np.asarray(rate, dtype=np.float64)
        if out is None:
            out = np.zeros((rate.shape[0], npix))
        contrib = rate[:, :, None] * push_w[t][None, :, :] * bins.livetime[t]
        idx = np.broadcast_to(push_pix[t][None], contrib.shape)
        for k in range(rate.shape[0]):
            out[k] += np.bincount(idx[k].ravel(), weights=contrib[k].ravel(), minlength=npix)
    return out


def galactic_exposure(det: DetectorResponse, bins: AttitudeBins, nside: int,
                      occultation: bool = True, pixels: np.ndarray | None = None,
                      sky_oversample: int = 0) -> np.ndarray:
    """Exposure (cm² s) of Galactic sky pixels: Σ over (Ei, Em, Phi, PsiChi) of R_gal.

    Cheap: it needs only the per-ν effective area, not the full response.

    Returns
    -------
    ndarray, shape (J,)
    """
    if pixels is None:
        pixels = np.arange(hp.nside2npix(nside))
    area = det.total()
    nu_idx, weight = _sky_lookup(bins, nside, np.asarray(pixels), det.nside_nu, occultation,
                                 sky_oversample)
    return np.sum(weight * area[nu_idx], axis=(0, 2))
