"""``CoordsysConversionMatrix``: Galactic sky pixels → spacecraft-frame response pixels per bin.

For each attitude (ScAtt) or time bin s, Galactic model pixel j and spacecraft-frame pixel ν of
the response's NuLambda axis (docs/design.md §8):

    C[s, j, ν] = Σ_{t ∈ s} Δt_t · w_ν(A_tᵀ n_j) · occ_t(n_j)          [s]

with Δt_t the live time of sample t, w_ν the HEALPix bilinear interpolation weights of the
direction n_j seen in the spacecraft frame, and occ_t = 0 for directions beyond the Earth's limb
(more than ``horizon_angle_deg(altitude)`` from the zenith), 1 otherwise. ``earth_occ=False``
leaves occ_t = 1, which is what cosipy 0.3 computes. With averaged pointing the bin's mean
attitude replaces the per-sample attitudes: C[s, j, ν] = w_ν(Āᵀ n_j) · Σ_{t ∈ s} Δt_t occ_t(n_j).

The matrix is a histpy ``Histogram`` (sparse, unit s) on the axes ScAtt (edges 0..N) or Time
(s), ``lb`` (Galactic HEALPix model pixels) and ``NuLambda``; files are histpy HDF5 (coo).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import astropy.units as u
import healpy as hp
import numpy as np
import sparse
from histpy import Axes, Axis, HealpixAxis, Histogram

from ..errors import FileFormatError, InvalidParameterError
from ..io.histogram import open_histogram
from ..io.spacecraft import as_orientation
from . import ccm_kernels as K
from .exposure_table import (
    SpacecraftAttitudeExposureTable,
    TimeBinnedExposureTable,
    _AttitudeTable,
    _scheme,
    _seconds,
)
from .healpix import interp_weights, ring_tables
from .samples import Samples, cos_horizon, group_order, nearest_rotations, split_by_intervals

__all__ = ["CoordsysConversionMatrix"]

logger = logging.getLogger(__name__)


def _model_axis(nside_model: int, scheme: str) -> HealpixAxis:
    nside_model = int(nside_model)
    if nside_model < 1 or nside_model & (nside_model - 1):
        raise InvalidParameterError(f"nside_model must be a power of 2, found {nside_model}")
    return HealpixAxis(nside=nside_model, scheme=scheme, coordsys="galactic", label="lb")


def _sky_vectors(axis: HealpixAxis) -> np.ndarray:
    nest = str(axis.scheme).lower().startswith("nest")
    return np.ascontiguousarray(np.array(hp.pix2vec(axis.nside, np.arange(axis.nbins),
                                                    nest=nest)).T)


def _local_axis(fdr) -> HealpixAxis:
    axis = fdr.axes["NuLambda"]
    if not isinstance(axis, HealpixAxis):
        raise InvalidParameterError("the response's NuLambda axis must be a HealpixAxis")
    return axis


#: Default ``attitude_nside`` of the per-interval matrix: intervals whose x and z axes fall in
#: the same pixels of this grid (0.43 arcmin) are summed before the interpolation.
ATTITUDE_NSIDE = 8192
_MAX_ATTITUDE_NSIDE = 8192  # (z pixel, x pixel) pair codes fit in int64


def _check_attitude_nside(attitude_nside) -> int | None:
    if attitude_nside is None:
        return None
    n = int(attitude_nside)
    if n < 1 or n & (n - 1) or n > _MAX_ATTITUDE_NSIDE:
        raise InvalidParameterError(f"attitude_nside must be None or a power of 2 up to "
                                    f"{_MAX_ATTITUDE_NSIDE}, found {attitude_nside}")
    return n


def attitude_groups(s: Samples, offsets: np.ndarray, attitude_nside: int | None
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Group the samples of each bin by attitude.

    Parameters
    ----------
    s : Samples
        Sorted by bin; bin b holds ``offsets[b]:offsets[b + 1]``.
    offsets : ndarray of int64, shape (nbins + 1,)
    attitude_nside : int or None
        None: a group holds intervals with bit-for-bit identical x and z axes (exact).
        Otherwise intervals whose x and z axes lie in the same HEALPix pixels (RING) at this
        nside.

    Returns
    -------
    order : ndarray of int64, shape (n,)
        Sample indices, group by group (time order within a group).
    gstart : ndarray of int64, shape (ngroups + 1,)
        Group g holds ``order[gstart[g]:gstart[g + 1]]``.
    goffsets : ndarray of int64, shape (nbins + 1,)
        Bin b holds groups ``goffsets[b]:goffsets[b + 1]``.
    """
    x, z = np.ascontiguousarray(s.x), np.ascontiguousarray(s.z)
    n = len(x)
    if attitude_nside is None:
        keys = np.empty(n, dtype=np.int64)
        K.attitude_hash(x.view(np.uint64), z.view(np.uint64), keys)
    else:  # no pixel tables at this nside: pixels straight from the ring geometry
        keys = np.empty(n, dtype=np.int64)
        K.pixel_pair_keys(int(attitude_nside), x, z, keys)
    order = np.empty(n, dtype=np.int64)
    first = np.zeros(n, dtype=np.uint8)
    K.sort_within_bins(keys, x, z, attitude_nside is None, offsets, order, first)
    gstart = np.append(np.flatnonzero(first), n).astype(np.int64)
    goffsets = np.searchsorted(gstart[:-1], offsets).astype(np.int64)
    return order, gstart, goffsets


def _per_sample(s: Samples, codes: np.ndarray, nbins: int, sky: np.ndarray,
                local: HealpixAxis, earth_occ: bool,
                attitude_nside: int | None = ATTITUDE_NSIDE) -> sparse.COO:
    """Sum over samples, bin by bin (``codes``: bin of each sample, -1 = none).

    Samples of a bin are grouped by attitude (:func:`attitude_groups`) and each group's
    rotation is applied once, with the group's live time (visible part, interval by interval,
    with ``earth_occ``) as the weight.
    """
    keep = (codes >= 0) & (s.livetime != 0.0)  # zero live time adds nothing
    if not np.all(keep):
        s, codes = s.take(keep), codes[keep]
    s, offsets = _grouped(s, codes, nbins)
    order, gstart, goffsets = attitude_groups(s, offsets, attitude_nside)
    ng = len(gstart) - 1
    logger.debug("per-interval matrix: %d intervals in %d attitude groups", len(s), ng)
    cosh = _cos_horizon(s) if earth_occ else np.full(len(s), -2.0)
    zen = np.ascontiguousarray(s.zenith)
    live = np.ascontiguousarray(s.livetime, dtype=np.float64)
    gx, gz = np.empty((ng, 3)), np.empty((ng, 3))
    gtotal, gcen = np.empty(ng), np.zeros((ng, 3))
    gin, gout = np.full(ng, 2.0), np.full(ng, -2.0)
    K.group_summaries(order, gstart, live, np.ascontiguousarray(s.x), np.ascontiguousarray(s.z),
                      zen, cosh, bool(earth_occ), gx, gz, gtotal, gcen, gin, gout)
    rot = nearest_rotations(gx, gz)
    npm, npl = len(sky), int(local.nbins)
    nest = str(local.scheme).lower().startswith("nest")
    th, st, npr, sh, rel = ring_tables(int(local.nside), nest)
    buf = np.zeros((npm, npl))
    mark = np.zeros((npm, npl), dtype=np.uint8)
    touched = np.zeros((npm, npl), dtype=np.int32)
    ntouch = np.zeros(npm, dtype=np.int64)
    parts = []
    for b in range(nbins):
        g0, g1 = int(goffsets[b]), int(goffsets[b + 1])
        if g1 == g0:
            continue
        K.grouped_bin(rot, gtotal, gcen, gin, gout, gstart, order, live, zen, cosh, g0, g1, sky,
                      bool(earth_occ), int(local.nside), th, st, npr, sh, rel, buf, mark,
                      touched, ntouch)
        row_off = np.concatenate([[0], np.cumsum(ntouch)]).astype(np.int64)
        rows = np.repeat(np.arange(npm, dtype=np.int64), ntouch)
        cols = np.empty(row_off[-1], dtype=np.int64)
        vals = np.empty(row_off[-1])
        K.extract_rows(buf, mark, touched, ntouch, row_off, cols, vals)
        nz = vals != 0.0
        parts.append((np.full(nz.sum(), b, dtype=np.int64), rows[nz], cols[nz], vals[nz]))
    return _coo(parts, (nbins, npm, npl))


def _cos_horizon(s: Samples) -> np.ndarray:
    """cos of the limb angle of each sample; warns about samples without orbit information."""
    unknown = int(np.count_nonzero(s.altitude <= 0))
    if unknown:
        logger.warning("%d of %d intervals have altitude 0 (no orbit information): the Earth is "
                       "taken to fill the hemisphere below their zenith (the z axis where the "
                       "file gives none); pass earth_occ=False for such files", unknown, len(s))
    return cos_horizon(s.altitude)


def _grouped(s: Samples, codes: np.ndarray, nbins: int) -> tuple[Samples, np.ndarray]:
    """Samples sorted by bin (stable) and the bin offsets."""
    if len(codes) < 2 or np.all(codes[1:] >= codes[:-1]):
        return s, np.searchsorted(codes, np.arange(nbins + 1)).astype(np.int64)
    order, offsets = group_order(codes, nbins)
    return s.take(order), offsets


def _coo(parts, shape) -> sparse.COO:
    if parts:
        coords = np.stack([np.concatenate([p[k] for p in parts]) for k in range(3)])
        data = np.concatenate([p[3] for p in parts])
    else:
        coords, data = np.zeros((3, 0), dtype=np.int64), np.zeros(0)
    return sparse.COO(coords, data, shape=shape, has_duplicates=False, sorted=True)


def _averaged(avg: Samples, exposure: np.ndarray, sky: np.ndarray,
              local: HealpixAxis) -> sparse.COO:
    """C[s, j, ν] = w_ν(Ā_sᵀ n_j) · exposure[s, j]."""
    nb, npm = exposure.shape
    rot = nearest_rotations(avg.x, avg.z)  # (nb, 3, 3)
    d = np.einsum("sik,ji->sjk", rot, sky)  # detector-frame directions (nb, npm, 3)
    nest = str(local.scheme).lower().startswith("nest")
    pix, w = interp_weights(int(local.nside), d.reshape(-1, 3), nest)
    data = (w * exposure.reshape(-1, 1)).reshape(-1)
    sidx = np.repeat(np.arange(nb), npm * 4)
    jidx = np.tile(np.repeat(np.arange(npm), 4), nb)
    ok = data != 0.0
    coo = sparse.COO(np.stack([sidx[ok], jidx[ok], pix.reshape(-1)[ok]]), data[ok],
                     shape=(nb, npm, int(local.nbins)))  # sums repeated pixels
    return coo


class CoordsysConversionMatrix(Histogram):
    """Sky → detector conversion matrix (histpy ``Histogram``, unit s).

    Axes: ``ScAtt`` or ``Time``, ``lb`` (Galactic model pixels), ``NuLambda`` (the response's
    spacecraft-frame pixels). :attr:`binning_method` is the first axis label.
    """

    def __init__(self, edges, *args, binning_method: str | None = None, **kwargs):
        super().__init__(edges, *args, **kwargs)
        self.binning_method = binning_method or str(self.axes.labels[0])

    # --- builders ----------------------------------------------------------------------------
    @classmethod
    def spacecraft_attitude_binning_ccm(cls, full_detector_response,
                                        exposure_table: SpacecraftAttitudeExposureTable,
                                        nside_model: int | None = None,
                                        use_averaged_pointing: bool = False,
                                        earth_occ: bool = True,
                                        scheme_model: str | None = None,
                                        attitude_nside: int | None = ATTITUDE_NSIDE
                                        ) -> CoordsysConversionMatrix:
        """Conversion matrix of a ScAtt exposure table.

        Parameters
        ----------
        full_detector_response : FullDetectorResponse
            Provides the NuLambda axis (nside, scheme).
        exposure_table : SpacecraftAttitudeExposureTable
        nside_model : int, optional
            nside of the Galactic model map (default: the response's).
        use_averaged_pointing : bool
            One mean attitude per bin (fast) instead of every interval's attitude (exact).
        earth_occ : bool
            Remove directions behind the Earth, sample by sample (needs the table's
            ``earth_zenith`` and ``altitude`` columns). False gives cosipy 0.3's matrix.
        scheme_model : {'ring', 'nested'}, optional
            Scheme of the model map (default: the table's scheme).
        attitude_nside : int or None
            Per-interval matrix only: intervals of a bin whose x and z axes fall in the same
            HEALPix pixels at this nside (default 8192, 0.43 arcmin) are summed first and take
            their live-time-weighted mean attitude (intervals that share an attitude exactly
            keep it, so repeated attitudes are always exact). None groups only bit-for-bit
            identical attitudes: the interval-by-interval sum, exact but one interpolation per
            interval and sky pixel. Occultation is decided interval by interval either way.

        Returns
        -------
        CoordsysConversionMatrix
            Axes ScAtt (edges 0..N), lb, NuLambda.
        """
        if not isinstance(exposure_table, SpacecraftAttitudeExposureTable):
            raise InvalidParameterError(
                "exposure_table must be a SpacecraftAttitudeExposureTable, found "
                f"{type(exposure_table).__name__}")
        scheme = _scheme(scheme_model or exposure_table.scheme or "ring")
        return cls.from_exposure_table(exposure_table, full_detector_response, nside_model,
                                       scheme, use_averaged_pointing, earth_occ, attitude_nside)

    @classmethod
    def from_exposure_table(cls, exposure_table: _AttitudeTable, full_detector_response,
                            nside_model: int | None = None, scheme_model: str = "ring",
                            use_averaged_pointing: bool = False,
                            earth_occ: bool = True,
                            attitude_nside: int | None = ATTITUDE_NSIDE
                            ) -> CoordsysConversionMatrix:
        """Conversion matrix of a ScAtt or time-binned exposure table (cosipy 0.4 name).

        Parameters as :meth:`spacecraft_attitude_binning_ccm`.
        """
        attitude_nside = _check_attitude_nside(attitude_nside)
        local = _local_axis(full_detector_response)
        axis_lb = _model_axis(nside_model or local.nside, _scheme(scheme_model))
        sky = _sky_vectors(axis_lb)
        nb = len(exposure_table)
        if isinstance(exposure_table, TimeBinnedExposureTable):
            t0, t1 = exposure_table.time_edges()
            if len(t0) > 1 and np.any(t0[1:] != t1[:-1]):
                raise InvalidParameterError("a Time axis needs contiguous bins (tstop = next "
                                            "tstart); use time_binning_ccm for gaps")
            first = Axis(np.append(t0, t1[-1:]) * u.s, label="Time")
        else:
            first = Axis(np.arange(nb + 1), label=exposure_table.binning_method)
        if use_averaged_pointing:
            if earth_occ:
                samples, rows = exposure_table._samples(need_earth=True, need_attitude=False)
                s, offsets = _grouped(samples, rows, nb)
                exposure = np.zeros((nb, len(sky)))
                K.occulted_exposure(np.ascontiguousarray(s.livetime),
                                    np.ascontiguousarray(s.zenith), _cos_horizon(s),
                                    offsets, sky, exposure)
            else:
                exposure = np.repeat(np.asarray(exposure_table["exposure"], float)[:, None],
                                     len(sky), axis=1)
            contents = _averaged(exposure_table.averaged_samples(), exposure, sky,
                                 local)
        else:
            samples, rows = exposure_table._samples(need_earth=earth_occ)
            contents = _per_sample(samples, rows, nb, sky, local, earth_occ, attitude_nside)
        return cls._build(first, axis_lb, local, contents)

    @classmethod
    def time_binning_ccm(cls, full_detector_response, orientation, time_intervals,
                         nside_model: int | None = None, is_nest_model: bool = False,
                         earth_occ: bool = True,
                         attitude_nside: int | None = ATTITUDE_NSIDE
                         ) -> CoordsysConversionMatrix:
        """Conversion matrix for time bins, summing every interval of the history.

        Parameters
        ----------
        full_detector_response : FullDetectorResponse
        orientation : SpacecraftFile or Orientation
        time_intervals : Quantity, astropy Time or float array
            Bin edges (s), shape (N + 1,) (cosipy: ``binned_data.axes['Time'].edges``).
        nside_model : int, optional
            Default: the response's nside.
        is_nest_model : bool
            NESTED model map.
        earth_occ : bool
            Remove directions behind the Earth (False: cosipy 0.3's matrix).
        attitude_nside : int or None
            Grouping of the intervals' attitudes, as in :meth:`spacecraft_attitude_binning_ccm`.

        Returns
        -------
        CoordsysConversionMatrix
            Axes Time, lb, NuLambda.
        """
        attitude_nside = _check_attitude_nside(attitude_nside)
        o = as_orientation(orientation)
        edges = _seconds(time_intervals)
        if edges.ndim != 1 or len(edges) < 2 or np.any(np.diff(edges) <= 0):
            raise InvalidParameterError("time_intervals must be ≥ 2 increasing bin edges (s)")
        local = _local_axis(full_detector_response)
        axis_lb = _model_axis(nside_model or local.nside, "nested" if is_nest_model else "ring")
        s = split_by_intervals(o, edges[:-1], edges[1:])
        contents = _per_sample(s, s.bin, len(edges) - 1, _sky_vectors(axis_lb), local,
                               earth_occ, attitude_nside)
        return cls._build(Axis(edges * u.s, label="Time"), axis_lb, local, contents)

    @classmethod
    def _build(cls, first: Axis, lb: HealpixAxis, local: HealpixAxis,
               contents: sparse.COO) -> CoordsysConversionMatrix:
        new = cls(Axes([first, lb, local]), contents=contents, unit=u.s, copy_contents=False)
        logger.info("conversion matrix %s: %d bins × %d sky × %d local pixels, %d non-zeros",
                    new.binning_method, first.nbins, lb.nbins, local.nbins, contents.nnz)
        return new

    # --- files -------------------------------------------------------------------------------
    def write(self, filename: str | os.PathLike, name: str = "hist",
              overwrite: bool = False, **kwargs) -> Path:
        """Write as a histpy HDF5 histogram (coo), atomically."""
        from ..io.atomic import atomic_path

        path = Path(filename)
        with atomic_path(path, overwrite=overwrite) as tmp:
            Histogram.write(self, tmp, name=name, overwrite=True, **kwargs)
        return path

    @classmethod
    def open(cls, filename: str | os.PathLike, name: str = "hist") -> CoordsysConversionMatrix:
        """Read a matrix written by :meth:`write` or by cosipy.

        Raises
        ------
        FileFormatError
            Missing or non-HDF5 file, no histogram, or axes other than (ScAtt | Time, lb,
            NuLambda).
        """
        h = open_histogram(filename, name=name)
        labels = list(h.axes.labels)
        if len(labels) != 3 or labels[0] not in ("ScAtt", "Time") or labels[1:] != ["lb",
                                                                                   "NuLambda"]:
            raise FileFormatError(f"{filename}: a conversion matrix has axes (ScAtt or Time, lb, "
                                  f"NuLambda), found {tuple(labels)}")
        new = cls.__new__(cls)
        new.__dict__.update(h.__dict__)
        new.binning_method = labels[0]
        return new
