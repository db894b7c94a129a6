"""Detector-frame (ScAtt / time-binned) responses: a spacecraft-frame response carried to the sky
per attitude or time bin by a conversion matrix (docs/design.md §8).

For attitude (or time) bins s, sky pixels j, spacecraft-frame directions ν and data columns
k = (Em, Phi, PsiChi)::

    ε[s, k] = ΔΩ Σ_{ν, e} (Σ_j C[s, j, ν] λ[j, e]) R[ν, e, k]          (forward)
    T[j, e] = ΔΩ Σ_{s, ν} C[s, j, ν] Σ_k y[s, k] R[ν, e, k]            (adjoint)

with R the detector response (cm², polarization and SigmaTau/Dist summed) held once in memory as
a (k, ν·e) matrix, and C the conversion matrix (s). :class:`DetectorFrameResponse` is the
operator on every data bin (S, Em, Phi, PsiChi); its products are two sparse products with C and
one BLAS matrix product with R. :class:`OccupiedBinsResponse` restricts it to the bins holding
counts plus one *rest* bin per data column (the sum over the column's empty attitude bins), so
that a forward product costs in proportion to the occupied bins while the log-likelihood, the
exposure and every EM update stay those of the full data space: the rest bins hold no counts and
carry Σ_{empty} ε exactly.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
import scipy.sparse as sp
from astropy import units as u
from histpy import Axes, HealpixAxis

from ..errors import AxisMismatchError, InvalidParameterError
from .operator import ResponseOperator, ResponseSubset, RestrictedResponse, subset_indices

__all__ = ["DetectorFrameResponse", "OccupiedBinsResponse", "OccupiedColumns",
           "detector_frame_response", "response_columns",
           "check_nulambda", "check_detector_frame_axes"]

logger = logging.getLogger(__name__)


def _conversion_matrix(ccm) -> tuple:
    """(s, j, ν, value) of the non-zeros of a conversion matrix (Histogram or array (S, J, Nν)),
    values in s."""
    contents = getattr(ccm, "contents", ccm)
    factor = 1.0
    unit = getattr(ccm, "unit", None)
    if unit is not None and unit != u.dimensionless_unscaled:
        factor = float(u.Unit(unit).to(u.s))
    if hasattr(contents, "coords") and hasattr(contents, "data"):  # sparse.COO
        s, j, nu = (np.asarray(c, dtype=np.int64) for c in contents.coords)
        vals = np.asarray(contents.data, dtype=np.float64)
    else:
        dense = np.asarray(getattr(contents, "value", contents), dtype=np.float64)
        s, j, nu = np.nonzero(dense)
        vals = dense[s, j, nu]
    return s, j, nu, vals * factor, tuple(int(n) for n in contents.shape)


def check_nulambda(fdr, ccm) -> None:
    """Raise :class:`AxisMismatchError` unless the matrix was built for the response's NuLambda
    axis (nside and scheme)."""
    local, nu = fdr.axes["NuLambda"], ccm.axes["NuLambda"]
    if (local.nside, str(local.scheme).lower()) != (nu.nside, str(nu.scheme).lower()):
        raise AxisMismatchError(
            f"axis 'NuLambda': the conversion matrix was built for a response of nside "
            f"{nu.nside} {nu.scheme}, the response has nside {local.nside} {local.scheme}")


def detector_frame_response(full_detector_response, coordsys_conv_matrix, dtype=np.float32
                            ) -> DetectorFrameResponse:
    """The detector-frame response of a ``FullDetectorResponse`` and a conversion matrix.

    Parameters
    ----------
    full_detector_response : FullDetectorResponse
        Axes NuLambda, Ei, [Pol], Em, Phi, PsiChi (spacecraft frame); read once with
        ``read_rows`` (a ``Pol`` axis is summed).
    coordsys_conv_matrix : CoordsysConversionMatrix
        Axes ScAtt or Time, lb, NuLambda (unit s).
    dtype : numpy dtype
        Precision R is held in (float32 or float64).

    Raises
    ------
    AxisMismatchError
        If the matrix's NuLambda axis is not the response's (nside or scheme).
    """
    fdr, ccm = full_detector_response, coordsys_conv_matrix
    check_nulambda(fdr, ccm)
    columns, row_sums = response_columns(fdr, dtype)
    lb = ccm.axes["lb"]
    model_axes = Axes([lb, fdr.axes["Ei"]])
    data_axes = Axes([ccm.axes[0], fdr.axes["Em"], fdr.axes["Phi"], fdr.axes["PsiChi"]])
    return DetectorFrameResponse(None, _conversion_matrix(ccm), model_axes, data_axes,
                                 dtype=dtype, columns=columns, row_sums=row_sums)


def response_columns(fdr, dtype=np.float32, block: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """The response as a (data column, NuLambda · Ei) matrix, read block by block.

    Each block of NuLambda pixels is read, summed over ``Pol``, converted to cm² and written
    transposed into place, so memory is the matrix plus one block (not the file's layout and
    its transpose).

    Parameters
    ----------
    fdr : FullDetectorResponse
    dtype : numpy dtype
    block : int
        NuLambda pixels per read.

    Returns
    -------
    columns : ndarray, shape (n_Em · n_Phi · n_PsiChi, Nν · n_Ei), C-contiguous, ``dtype``
        R[k, ν·e] in cm².
    row_sums : ndarray, shape (Nν, n_Ei), float64
        Σ_k R[ν, e, k].
    """
    dtype = np.dtype(dtype)
    shape = tuple(int(n) for n in fdr.axes.nbins)
    n_nu, n_e = shape[0], shape[1]
    labels = [str(lab) for lab in fdr.axes.labels]
    n_cols = int(np.prod([n for n, lab in zip(shape, labels) if lab in ("Em", "Phi", "PsiChi")]))
    factor = float(u.Unit(fdr.unit).to(u.cm ** 2))
    step = getattr(fdr, "row_chunk", 1)
    block = max(step, (int(block) // step) * step)  # whole stored chunks per read
    columns = np.empty((n_cols, n_nu * n_e), dtype=dtype)
    row_sums = np.empty((n_nu, n_e))
    starts = list(range(0, n_nu, block))

    def read(p0: int) -> np.ndarray:
        return fdr.read_rows(np.arange(p0, min(n_nu, p0 + block)), dtype=dtype)

    # the next block is read (inflated on every core) while this one is transposed into place
    with ThreadPoolExecutor(1) as prefetch:
        pending = prefetch.submit(read, starts[0])
        for i, p0 in enumerate(starts):
            p1 = min(n_nu, p0 + block)
            rows = pending.result()
            if i + 1 < len(starts):
                pending = prefetch.submit(read, starts[i + 1])
            if fdr.has_polarization:
                rows = rows.sum(axis=2, dtype=rows.dtype)
            if factor != 1.0:
                rows *= factor
            rows = rows.reshape((p1 - p0) * n_e, n_cols)
            row_sums[p0:p1] = rows.sum(axis=1, dtype=np.float64).reshape(p1 - p0, n_e)
            columns[:, p0 * n_e: p1 * n_e] = rows.T
    return columns, row_sums


class DetectorFrameResponse(ResponseOperator):
    """The response of a detector-frame dataset on every data bin (S, Em, Phi, PsiChi).

    Parameters
    ----------
    rows : ndarray, shape (Nν, n_Ei, n_Em, n_Phi, n_PsiChi), or None
        The detector response R in cm² (copied into the column layout).
    conversion : tuple (s, j, ν, value, shape)
        The non-zeros of the conversion matrix C (s), shape (S, J, Nν).
    model_axes : histpy.Axes
        (lb, Ei); ΔΩ = 4π / J.
    data_axes : histpy.Axes
        (ScAtt or Time, Em, Phi, PsiChi).
    dtype : numpy dtype
        Precision of R (products are float64).
    columns : ndarray, shape (n_Em · n_Phi · n_PsiChi, Nν · n_Ei), optional
        Instead of ``rows``: R already in the column layout (:func:`response_columns`), used
        without a copy when C-contiguous in ``dtype``.
    row_sums : ndarray, shape (Nν, n_Ei), optional
        With ``columns``: Σ_k R[ν, e, k].
    """

    storage = "dense"

    def __init__(self, rows: np.ndarray | None, conversion, model_axes: Axes, data_axes: Axes,
                 dtype=np.float32, *, columns: np.ndarray | None = None,
                 row_sums: np.ndarray | None = None):
        s, j, nu, vals, shape = conversion
        n_s, n_sky, n_nu = shape
        n_e = int(model_axes.nbins[1])
        n_columns = int(np.prod([int(n) for n in data_axes.nbins[1:]]))
        if rows is not None:
            if rows.shape[0] != n_nu or tuple(rows.shape[1:]) != (
                    n_e,) + tuple(int(n) for n in data_axes.nbins[1:]):
                raise AxisMismatchError(f"detector response shape {rows.shape} does not match "
                                        f"the conversion matrix ({n_nu} NuLambda pixels) and "
                                        "the axes")
            #: R as (k, ν·e), C-contiguous: row k is what one data column sees
            columns = np.ascontiguousarray(rows.reshape(n_nu * n_e, n_columns).T,
                                           dtype=np.dtype(dtype))
            row_sums = rows.reshape(n_nu, n_e, -1).sum(axis=2, dtype=np.float64)
        elif columns is None or row_sums is None:
            raise InvalidParameterError("DetectorFrameResponse needs rows, or columns and "
                                        "row_sums")
        elif columns.shape != (n_columns, n_nu * n_e) or row_sums.shape != (n_nu, n_e):
            raise AxisMismatchError(f"detector response columns {columns.shape} do not match "
                                    f"the conversion matrix ({n_nu} NuLambda pixels) and the "
                                    "axes")
        if (n_s, n_sky) != (int(data_axes.nbins[0]), int(model_axes.nbins[0])):
            raise AxisMismatchError(f"conversion matrix shape {shape} does not match the axes")
        self.n_bins, self.n_sky, self.n_nu, self.n_e = n_s, n_sky, n_nu, n_e
        self.n_columns = n_columns
        self.columns = np.ascontiguousarray(columns, dtype=np.dtype(dtype))
        #: C as (s·Nν, j) and its transpose, float64
        self.conversion = sp.csr_matrix((vals, (s * n_nu + nu, j)), shape=(n_s * n_nu, n_sky))
        self.conversion_t = self.conversion.T.tocsr()
        summed = sp.csr_matrix((vals, (j, nu)), shape=(n_sky, n_nu))  # Σ_s C, (j, ν)
        self.summed_conversion_t = summed
        known = np.asarray(summed @ np.asarray(row_sums, dtype=np.float64)).reshape(-1)
        lb = model_axes[0]
        solid = 4 * np.pi / lb.nbins if isinstance(lb, HealpixAxis) else 1.0
        solid = np.repeat(np.full(n_sky, solid), n_e)
        super().__init__(model_axes, data_axes, solid, u.cm ** 2 * u.s, row_sums=known,
                         dtype=dtype)
        self.info.update(storage="dense", dtype=str(self.dtype), detector_frame=True,
                         binning_method=str(data_axes.labels[0]))

    @property
    def nbytes(self) -> int:
        return int(self.columns.nbytes + self.conversion.data.nbytes * 3)

    @property
    def bytes_per_product(self) -> int:
        return int(self.columns.nbytes)

    def rotated(self, x: np.ndarray) -> np.ndarray:
        """M[s, ν·e] = Σ_j C[s, j, ν] x[j, e] for x (J·E,) (ΔΩ folded in); shape (S, Nν·E)."""
        m = self.conversion @ x.reshape(self.n_sky, self.n_e)
        return np.asarray(m).reshape(self.n_bins, self.n_nu * self.n_e)

    def back_rotated(self, z: np.ndarray) -> np.ndarray:
        """Σ_{s, ν} C[s, j, ν] z[s, ν·e] for z (S, Nν·E); shape (J·E,)."""
        t = self.conversion_t @ z.reshape(self.n_bins * self.n_nu, self.n_e)
        return np.asarray(t).reshape(-1)

    def _matvec(self, x):
        m = self.rotated(x).astype(self.dtype, copy=False)
        return np.asarray(m @ self.columns.T, dtype=np.float64).reshape(-1)

    def _rmatvec(self, y):
        yy = y.reshape(self.n_bins, self.n_columns).astype(self.dtype, copy=False)
        return self.back_rotated(np.asarray(yy @ self.columns, dtype=np.float64))

    def subset(self, k: int, n_subsets: int, axis: str = "Phi") -> ResponseOperator:
        """The response on the bins whose ``axis`` index is ≡ k (mod n_subsets), every
        attitude bin (full products, ``mode='fallback'``)."""
        cols = subset_indices(self.data_shape[1:], int(k), int(n_subsets), axis)
        grid = np.arange(self.n_data).reshape(self.n_bins, self.n_columns)
        return RestrictedResponse(self, grid[:, cols].reshape(-1))

    def occupied(self, counts: np.ndarray) -> OccupiedBinsResponse:
        """This response restricted to the bins where ``counts`` (n_data,) > 0 plus the rest
        bins (:class:`OccupiedBinsResponse`)."""
        return OccupiedBinsResponse(self, np.asarray(counts).reshape(-1) > 0)


class OccupiedBinsResponse(ResponseOperator):
    """A :class:`DetectorFrameResponse` on its occupied bins and one rest bin per column.

    Data space: the occupied bins (flat full-space indices :attr:`occupied`, ascending), then one
    bin per data column k with at least one empty attitude bin (:attr:`rest_columns`, ascending)
    holding Σ_{s empty at k} ε[s, k]. Forward: the column sums Σ_s ε[s, k] = R_k · Σ_s M_s (one
    product with R) and the occupied bins R_k · M_s; the rest bin is their difference. The
    adjoint is the exact transpose, so :attr:`exposure` (Aᵀ 1) is the full-space exposure and
    log L with zero counts in the rest bins is the full-space log L.

    Parameters
    ----------
    parent : DetectorFrameResponse
    mask : ndarray of bool, shape (n_data,)
        Occupied full-space bins.
    """

    storage = "dense"

    def __init__(self, parent: DetectorFrameResponse, mask: np.ndarray):
        mask = np.asarray(mask, dtype=bool).reshape(parent.n_bins, parent.n_columns)
        occupied = np.flatnonzero(mask)
        n_empty = parent.n_bins - mask.sum(axis=0)
        rest_columns = np.flatnonzero(n_empty > 0)
        super().__init__(parent.model_axes, None, parent.pixel_solid_angle, parent.unit,
                         row_sums=parent._known_row_sums, dtype=parent.dtype,
                         data_shape=(len(occupied) + len(rest_columns),))
        self.parent = parent
        self.occupied = occupied
        self.rest_columns = rest_columns
        #: empty attitude bins summed in each rest bin
        self.rest_sizes = n_empty[rest_columns].astype(np.int64)
        self.n_occupied = len(occupied)
        s_of, k_of = np.divmod(occupied, parent.n_columns)
        slot = np.full(parent.n_columns, -1, dtype=np.int64)
        slot[rest_columns] = self.n_occupied + np.arange(len(rest_columns))
        self._plan = _column_plan(s_of, k_of, np.arange(parent.n_columns), slot)
        self.info = dict(parent.info, occupied_bins=self.n_occupied,
                         rest_bins=len(rest_columns), full_bins=parent.n_data)

    @property
    def nbytes(self) -> int:
        return self.parent.nbytes

    @property
    def bytes_per_product(self) -> int:
        return self.parent.bytes_per_product

    def expand(self, values: np.ndarray, fill: float = 0.0) -> np.ndarray:
        """Occupied-bin values (n_data,) placed in the full data space (parent.n_data,); empty
        bins hold ``fill``."""
        full = np.full(self.parent.n_data, float(fill))
        full[self.occupied] = np.asarray(values)[: self.n_occupied]
        return full

    def restrict(self, full: np.ndarray) -> np.ndarray:
        """Full-space values (parent.n_data,) on this data space: the occupied bins, then the
        sum over each rest column's empty bins."""
        full = np.asarray(full, dtype=np.float64).reshape(self.parent.n_bins, -1)
        empty = np.ones(full.shape, dtype=bool)
        empty.reshape(-1)[self.occupied] = False
        rest = np.where(empty, full, 0.0).sum(axis=0)[self.rest_columns]
        return np.concatenate([full.reshape(-1)[self.occupied], rest])

    def _matvec(self, x):
        return _plan_forward(self.parent, self._plan, x, self.n_data)

    def _rmatvec(self, y):
        return _plan_adjoint(self.parent, self._plan, y)

    def subset(self, k: int, n_subsets: int, axis: str = "Phi") -> ResponseOperator:
        """The bins (occupied and rest) of the data columns whose ``axis`` index is ≡ k
        (mod n_subsets), with products over those columns only (``mode='columns'``)."""
        cols = subset_indices(self.parent.data_shape[1:], int(k), int(n_subsets), axis)
        return OccupiedColumns(self, np.sort(cols))


class OccupiedColumns(ResponseSubset):
    """An :class:`OccupiedBinsResponse` on the bins of some data columns (an OSEM subset):
    data indices ascending, products reading only those columns of R (``mode='columns'``)."""

    mode = "columns"

    def __init__(self, parent: OccupiedBinsResponse, columns: np.ndarray):
        n_cols = parent.parent.n_columns
        inside = np.zeros(n_cols, dtype=bool)
        inside[columns] = True
        s_of, k_of = np.divmod(parent.occupied, n_cols)
        occ = np.flatnonzero(inside[k_of])
        rest = np.flatnonzero(inside[parent.rest_columns])
        super().__init__(parent, np.concatenate([occ, parent.n_occupied + rest]))
        slot = np.full(n_cols, -1, dtype=np.int64)
        slot[parent.rest_columns[rest]] = len(occ) + np.arange(len(rest))
        self._plan = _column_plan(s_of[occ], k_of[occ], np.asarray(columns, np.int64),
                                  slot[columns])
        self._share = len(columns) / n_cols

    @property
    def pass_fraction(self) -> float:
        return self._share

    def _matvec(self, x):
        return _plan_forward(self.parent.parent, self._plan, x, self.n_data)

    def _rmatvec(self, y):
        return _plan_adjoint(self.parent.parent, self._plan, y)


def _column_plan(s_of, k_of, columns, rest_slot):
    """The work of a product over data ``columns`` (ascending): occupied bins (s_of, k_of)
    written at output positions 0, 1, ... (all in ``columns``), and ``rest_slot`` (one per
    column, -1 for none) where each column's rest bin goes."""
    order = np.argsort(k_of, kind="stable")
    ks = k_of[order]
    ptr = np.append(np.searchsorted(ks, columns), len(ks)).astype(np.int64)
    return (np.asarray(columns, np.int64), ptr, s_of[order].astype(np.int64),
            order.astype(np.int64), np.asarray(rest_slot, np.int64))


def _plan_forward(p: DetectorFrameResponse, plan, x, n_out):
    m = p.rotated(x)
    out = np.zeros(n_out)
    # M in R's precision (float32 halves the bytes each occupied bin reads); sums stay float64
    _sampled_products(p.columns, m.astype(p.columns.dtype), m.sum(axis=0).astype(p.columns.dtype),
                      *plan, out)
    return out


def _plan_adjoint(p: DetectorFrameResponse, plan, y):
    n_chunks = max(1, min(numba.get_num_threads(), len(plan[0])))
    z = np.zeros((n_chunks, p.n_bins, p.n_nu * p.n_e))
    zc = np.zeros((n_chunks, p.n_nu * p.n_e))
    _sampled_adjoint(p.columns, np.ascontiguousarray(y), *plan, z, zc)
    back = p.back_rotated(z.sum(axis=0))
    back += np.asarray(p.summed_conversion_t @ zc.sum(axis=0).reshape(p.n_nu, p.n_e)
                       ).reshape(-1)
    return back


@numba.njit(parallel=True, cache=True, fastmath=True)
def _sampled_products(columns, m, m_sum, cols, ptr, col_s, col_pos, rest_slot, out):
    """out[pos] = R_k · M_s for the occupied (s, k) of the planned columns; a column's rest bin
    gets R_k · Σ_s M_s minus them."""
    n_inner = columns.shape[1]
    for i in numba.prange(cols.shape[0]):
        k = cols[i]
        total = 0.0
        if rest_slot[i] >= 0:
            for n in range(n_inner):
                total += columns[k, n] * m_sum[n]
        for q in range(ptr[i], ptr[i + 1]):
            s = col_s[q]
            acc = 0.0
            for n in range(n_inner):
                acc += columns[k, n] * m[s, n]
            out[col_pos[q]] = acc
            total -= acc
        if rest_slot[i] >= 0:
            out[rest_slot[i]] = total


@numba.njit(parallel=True, cache=True, fastmath=True)
def _sampled_adjoint(columns, y, cols, ptr, col_s, col_pos, rest_slot, z, zc):
    """z[c, s] += (y[s, k] − y_rest[k]) R_k over the occupied (s, k), zc[c] += y_rest[k] R_k,
    the planned columns split in chunks c."""
    n_chunks = z.shape[0]
    n_cols, n_inner = cols.shape[0], columns.shape[1]
    step = (n_cols + n_chunks - 1) // n_chunks
    for c in numba.prange(n_chunks):
        for i in range(c * step, min(n_cols, (c + 1) * step)):
            k = cols[i]
            y_rest = y[rest_slot[i]] if rest_slot[i] >= 0 else 0.0
            if y_rest != 0.0:
                for n in range(n_inner):
                    zc[c, n] += y_rest * columns[k, n]
            for q in range(ptr[i], ptr[i + 1]):
                w = y[col_pos[q]] - y_rest
                if w != 0.0:
                    s = col_s[q]
                    for n in range(n_inner):
                        z[c, s, n] += w * columns[k, n]


def check_detector_frame_axes(event_axes: Axes, response: DetectorFrameResponse,
                              what: str) -> None:
    """Raise :class:`AxisMismatchError` unless a (ScAtt | Time, Em, Phi, PsiChi) histogram's
    first axis and PsiChi frame fit a detector-frame response."""
    labels = [str(lab) for lab in event_axes.labels]
    first = str(response.data_axes.labels[0])
    if len(labels) != 4 or labels[1:] != ["Em", "Phi", "PsiChi"] or labels[0] not in (
            "ScAtt", "Time"):
        raise AxisMismatchError(f"{what}: axes are {labels}, expected [{first!r}, 'Em', 'Phi', "
                                f"'PsiChi'] for a detector-frame dataset")
    if labels[0] != first:
        raise AxisMismatchError(f"{what}: first axis is {labels[0]!r}, the conversion matrix "
                                f"bins by {first!r}")
    n_data, n_ccm = int(event_axes[0].nbins), int(response.data_axes[0].nbins)
    if n_data != n_ccm:
        raise AxisMismatchError(f"{what}: {n_data} {first} bins, the conversion matrix has "
                                f"{n_ccm}")
    psi = event_axes["PsiChi"]
    frame = getattr(getattr(psi, "coordsys", None), "name", None)
    if frame is not None and frame != "spacecraftframe":
        raise AxisMismatchError(
            f"{what}: PsiChi is in the {frame!r} frame; a detector-frame dataset needs a "
            "'spacecraftframe' (local) PsiChi axis (bin with psichi_binning='local')")
    if not isinstance(psi, HealpixAxis):
        raise InvalidParameterError(f"{what}: PsiChi must be a HEALPix axis")
