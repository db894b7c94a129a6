"""The detector-frame response R_det[ν, Ei, Em, Phi, PsiChi] (cm²), held sparsely per ν.

:class:`DetectorResponse` is built from a dense array, a histpy histogram, a COSI full
detector response file (``DRM`` HDF5 layout, :meth:`DetectorResponse.from_drm_file`) or the
simulator's instrument model; :mod:`.galactic` carries it over an attitude history.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import astropy.units as u
import healpy as hp
import numpy as np
from histpy import Axes

from .._numba import njit
from ..errors import AxisMismatchError, FileFormatError, InvalidParameterError
from ..io.hdf5 import open_hdf5

__all__ = ["DetectorResponse"]

#: Axes of a detector-frame response, in order.
AXES = ("NuLambda", "Ei", "Em", "Phi", "PsiChi")


def _release_free_memory() -> None:
    """Hand freed heap back to the system (glibc keeps freed blocks below its mmap threshold)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # pragma: no cover - not glibc
        pass


def _sparse_row(row: np.ndarray, threshold: float) -> tuple[np.ndarray, ...]:
    """(col_p, col_k, val) of the entries > threshold × max of a row (Ei, Em, Phi, PsiChi)."""
    r = row.reshape(-1, row.shape[-1]).T  # (P, K): p-major
    vmax = r.max() if r.size else 0.0
    p, k = np.nonzero(r > threshold * vmax) if vmax > 0 else (np.array([], int),) * 2
    return p, k, r[p, k]


@dataclass
class DetectorResponse:
    """A detector-frame response R_det[ν, Ei, Em, Phi, PsiChi] (cm²) stored sparsely per ν.

    Row ν holds entries ``val[q]`` (float32) at PsiChi pixel ``col_p[q]`` and flattened
    (Ei, Em, Phi) index ``col_k[q]`` (int32) for ``q`` in ``indptr[ν]:indptr[ν + 1]`` (int64);
    ``nside_nu`` and ``nside_psichi`` are the HEALPix (RING) resolutions of the ν and PsiChi axes,
    ``shape_k`` is (n_Ei, n_Em, n_Phi).
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
            _release_free_memory()
        blocks.clear()
        return cls(int(nside_nu), int(nside_psichi), tuple(int(s) for s in shape_k), indptr,
                   *joined)

    @classmethod
    def _from_rows(cls, rows: Iterable[np.ndarray], nside_nu: int, nside_psichi: int,
                   shape_k, threshold: float) -> DetectorResponse:
        """From dense ν rows (n_Ei, n_Em, n_Phi, N_PsiChi), keeping entries > threshold × the
        row maximum."""
        parts = [_sparse_row(r, threshold) for r in rows]
        counts = np.array([len(p[2]) for p in parts], dtype=np.int64)
        block = (counts, *(np.concatenate([p[j] for p in parts]) for j in range(3)))
        return cls.from_row_blocks([block], nside_nu, nside_psichi, shape_k)

    @classmethod
    def from_dense(cls, array: np.ndarray, threshold: float = 0.0) -> DetectorResponse:
        """Build from a dense array (N_ν, n_Ei, n_Em, n_Phi, N_PsiChi) in cm² (HEALPix RING axes),
        dropping entries ≤ ``threshold`` × the row maximum."""
        a = np.asarray(array)
        if a.ndim != 5:
            raise AxisMismatchError(f"detector response must be 5-D (NuLambda, Ei, Em, Phi, "
                                    f"PsiChi), got shape {a.shape}")
        return cls._from_rows(a, hp.npix2nside(a.shape[0]), hp.npix2nside(a.shape[4]),
                              a.shape[1:4], threshold)

    @classmethod
    def from_histogram(cls, hist, threshold: float = 0.0) -> DetectorResponse:
        """Build from a histpy Histogram with axes NuLambda, Ei, Em, Phi, PsiChi (detector frame).

        The contents are converted to cm² if the histogram has a unit; dense and sparse contents
        are accepted (sparse ones are densified one ν row at a time).
        """
        labels = list(hist.axes.labels)
        if labels != list(AXES):
            raise AxisMismatchError(f"detector response axes must be {list(AXES)}, got {labels}")
        factor = 1.0
        if hist.unit is not None and str(hist.unit) not in ("", "dimensionless"):
            factor = float(hist.unit.to(u.cm**2))
        contents = hist.contents
        if hasattr(contents, "todense") and not isinstance(contents, np.ndarray):
            rows = (np.asarray(contents[i].todense()) * factor for i in range(contents.shape[0]))
        else:
            rows = np.asarray(getattr(contents, "value", contents)) * factor
        return cls._from_rows(rows, hist.axes["NuLambda"].nside, hist.axes["PsiChi"].nside,
                              contents.shape[1:4], threshold)

    @classmethod
    def from_drm_file(cls, path: str | os.PathLike, threshold: float = 0.0,
                      name: str = "DRM") -> DetectorResponse:
        """Read a COSI full detector response (``DRM`` HDF5 layout, version 2).

        The layout: group ``name`` with attribute ``UNIT``, a histpy ``AXES`` group whose first
        axis is ``NuLambda``, a ``COUNTS`` dataset over all axes and ``EFF_AREA`` (one value per
        ``Ei`` bin); the response is ``COUNTS × EFF_AREA`` broadcast along ``Ei``. Axes other than
        NuLambda, Ei, Em, Phi and PsiChi (for example ``SigmaTau`` or ``Dist``) are summed over.
        Rows are read one ν pixel at a time, so memory stays at one row plus the sparse result.
        Entries ≤ ``threshold`` × the row maximum are dropped.

        Raises
        ------
        FileFormatError
            If the file lacks the group or one of the required axes.
        """
        path = Path(path)
        with open_hdf5(path) as f:
            if name not in f:
                raise FileFormatError(f"{path}: no {name!r} group (found {sorted(f.keys())})")
            g = f[name]
            axes = Axes.open(g["AXES"])
            labels = list(axes.labels)
            missing = [a for a in AXES if a not in labels]
            if missing or labels[0] != "NuLambda":
                raise FileFormatError(f"{path}: detector response axes {labels}; need "
                                      f"{list(AXES)} with NuLambda first (missing {missing})")
            factor = float(u.Unit(g.attrs.get("UNIT", "cm2")).to(u.cm**2))
            eff = np.asarray(g["EFF_AREA"], dtype=np.float64) * factor
            counts = g["COUNTS"]
            rest = labels[1:]
            keep = [rest.index(a) for a in AXES[1:]]
            drop = tuple(i for i in range(len(rest)) if i not in keep)
            order = [sorted(keep).index(k) for k in keep]
            shape_e = [1] * len(rest)
            shape_e[rest.index("Ei")] = -1

            def rows():
                for i in range(counts.shape[0]):
                    r = np.asarray(counts[i], dtype=np.float64) * eff.reshape(shape_e)
                    yield np.transpose(r.sum(axis=drop) if drop else r, order)

            return cls._from_rows(rows(), axes["NuLambda"].nside, axes["PsiChi"].nside,
                                  tuple(axes[a].nbins for a in AXES[1:4]), threshold)

    @classmethod
    def from_full_detector_response(cls, fdr, threshold: float = 0.0,
                                    block: int = 16) -> DetectorResponse:
        """Read a :class:`~comptonsky.io.drm.FullDetectorResponse` (the team's sparse or dense
        ``DRM`` files) ``block`` NuLambda pixels at a time, into cm².

        Memory stays at one block of dense rows plus the sparse result. Entries ≤
        ``threshold`` × the row maximum are dropped.

        Raises
        ------
        InvalidParameterError
            For a polarization response (a ``Pol`` axis) or HEALPix axes in NESTED order.
        """
        labels = list(fdr.axes.labels)
        if "Pol" in labels:
            raise InvalidParameterError(
                f"{fdr.filename}: the response has a polarization axis 'Pol'; Galactic "
                "responses are made for unpolarised emission only (axes NuLambda, Ei, Em, Phi, "
                "PsiChi)")
        for lab in ("NuLambda", "PsiChi"):
            if str(fdr.axes[lab].scheme).lower() != "ring":
                raise InvalidParameterError(f"{fdr.filename}: DRM axis {lab!r} is in "
                                            f"{fdr.axes[lab].scheme} order; expected RING")
        factor = float(u.Unit(fdr.unit).to(u.cm**2))
        blocks = []
        for b0 in range(0, fdr.npix, int(block)):
            rows = fdr.read_rows(np.arange(b0, min(fdr.npix, b0 + int(block))),
                                 dtype=np.float64)
            if factor != 1.0:
                rows *= factor
            parts = [_sparse_row(r, threshold) for r in rows]
            blocks.append((np.array([len(p[2]) for p in parts], dtype=np.int64),
                           *(np.concatenate([p[j] for p in parts]).astype(dt, copy=False)
                             for j, dt in ((0, np.int32), (1, np.int32), (2, np.float32)))))
        return cls.from_row_blocks(blocks, fdr.nside, int(fdr.axes["PsiChi"].nside),
                                   tuple(int(fdr.axes[a].nbins) for a in AXES[1:4]))

    def row(self, i: int) -> np.ndarray:
        """Dense row ν = i, shape (n_Ei, n_Em, n_Phi, N_PsiChi), cm²."""
        return self.weighted_row_sum(np.eye(1, self.n_nu, i)[0]).reshape(
            self.shape_k + (self.n_psichi,))

    def to_dense(self) -> np.ndarray:
        """Dense array (N_ν, n_Ei, n_Em, n_Phi, N_PsiChi); only for small responses."""
        return np.stack([self.row(i) for i in range(self.n_nu)])

    def weighted_row_sum(self, weights: np.ndarray) -> np.ndarray:
        """Σ_ν w_ν R_det[ν]: the response to a source distribution ``weights`` (N_ν,) over ν (for
        example intensity × solid angle, cm⁻² s⁻¹); shape (n_k, N_PsiChi), float64, cm² × the
        unit of ``weights``."""
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


@njit(cache=True)
def _row_sums(out, indptr, val):
    for i in range(out.shape[0]):
        acc = 0.0
        for q in range(indptr[i], indptr[i + 1]):
            acc += val[q]
        out[i] = acc


@njit(cache=True)
def _weighted_rows(out, w, indptr, col_p, col_k, val):
    for i in range(w.shape[0]):
        wi = w[i]
        if wi == 0.0:
            continue
        for q in range(indptr[i], indptr[i + 1]):
            out[col_k[q], col_p[q]] += wi * val[q]
