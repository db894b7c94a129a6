"""Checks of response values, units and sparse index arrays, before anything computes with them.

- :class:`ValueCheck`: every element finite and ≥ 0, block by block during the read pass (one
  ``min`` and one ``max`` reduction per block); the first bad element is named with its axis
  indices.
- :func:`unit_factor`: the factor that turns the response's unit into cm² s (``m2 s`` → 1e4),
  refusing a unit that is not an area × time.
- :func:`check_csr`: the pointer and index arrays of a segmented CSR are in range and monotone,
  so that a numba kernel can never read or write outside its arrays.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from astropy import units as u

from ..errors import FileFormatError, InvalidCacheError, InvalidDataError

__all__ = ["ValueCheck", "unit_factor", "check_csr", "RESPONSE_UNIT"]

#: The unit responses are held in.
RESPONSE_UNIT = u.cm ** 2 * u.s


def unit_factor(unit, where: str) -> float:
    """Factor from the response's ``unit`` (text, astropy unit or None) to cm² s.

    None or an empty text means cm² s (files written without a unit attribute).

    Raises
    ------
    FileFormatError
        If the unit cannot be parsed, or is not an area × time (``where`` names the file).
    """
    if unit is None or (isinstance(unit, str) and not unit.strip()):
        return 1.0
    try:
        parsed = u.Unit(unit)
    except (ValueError, TypeError) as exc:
        raise FileFormatError(f"{where}: response unit {str(unit)!r} cannot be parsed "
                              f"({' '.join(str(exc).split())[:120]}); expected an area × time "
                              "such as 'cm2 s'") from None
    try:
        return float(parsed.to(RESPONSE_UNIT))
    except u.UnitConversionError:
        raise FileFormatError(f"{where}: response unit {parsed.to_string()!r} is not an "
                              "area × time; expected something convertible to 'cm2 s' "
                              "(such as 'm2 s')") from None


class ValueCheck:
    """Checks row blocks of the (n_model, n_data) matrix of a response ``name`` whose axes have
    the ``labels`` and ``shape`` (model axes then data axes, 5 of each)."""

    def __init__(self, name: str, labels: Sequence[str], shape: Sequence[int]):
        self.name = name
        self.labels = [str(lab) for lab in labels]
        self.shape = tuple(int(n) for n in shape)

    def block(self, j0: int, block: np.ndarray) -> None:
        """Check rows ``j0 : j0 + len(block)`` (shape (rows, n_data)).

        Raises
        ------
        InvalidDataError
            For a NaN, infinite or negative element, naming the first.
        """
        if block.size == 0:
            return
        lo, hi = block.min(), block.max()   # NaN propagates into both
        if lo >= 0 and np.isfinite(hi):
            return
        flat = block.reshape(block.shape[0], -1)
        bad = ~(np.isfinite(flat) & (flat >= 0))
        r, c = np.unravel_index(int(np.argmax(bad)), flat.shape)
        value = flat[r, c]
        index = np.unravel_index((j0 + int(r)) * flat.shape[1] + int(c), self.shape)
        where = ", ".join(f"{lab}={int(i)}" for lab, i in zip(self.labels, index))
        what = "NaN" if np.isnan(value) else "infinite" if np.isinf(value) else "negative"
        n_bad = int(bad.sum())
        raise InvalidDataError(
            f"{self.name}: response element [{where}] is {what} ({value!r}); expected finite "
            f"values ≥ 0 ({n_bad} bad element(s) in rows {j0}..{j0 + block.shape[0] - 1})")

    def matrix(self, matrix: np.ndarray, rows: int = 4096) -> None:
        """Check a whole (n_model, n_data) matrix in row blocks."""
        for j0 in range(0, matrix.shape[0], rows):
            self.block(j0, matrix[j0:j0 + rows])


def check_csr(ptr: np.ndarray, idx: np.ndarray, val: np.ndarray, n_seg: int, n_rows: int,
              n_cols: int, what: str) -> None:
    """Check a segmented CSR (:class:`~.sparse.SegmentedCSR`) before a kernel touches it.

    ``ptr`` must be (n_seg, n_rows + 1) int64, non-decreasing along each segment, with values
    in [0, nnz]; ``idx`` and ``val`` one-dimensional of one length nnz, with ``idx`` < n_cols.

    Raises
    ------
    InvalidCacheError
        Naming ``what`` (the file and array) and the first failure.
    """
    if ptr.ndim != 2 or ptr.shape != (n_seg, n_rows + 1) or ptr.dtype != np.int64:
        raise InvalidCacheError(f"{what}: pointer array {ptr.dtype} {ptr.shape}, expected int64 "
                                f"{(n_seg, n_rows + 1)}")
    if idx.ndim != 1 or val.ndim != 1 or idx.shape != val.shape:
        raise InvalidCacheError(f"{what}: index array {idx.shape} and value array {val.shape}, "
                                "expected one-dimensional arrays of one length")
    if idx.dtype.kind not in "iu" or val.dtype not in (np.float32, np.float64):
        raise InvalidCacheError(f"{what}: index dtype {idx.dtype}, value dtype {val.dtype}")
    nnz = int(val.shape[0])
    if ptr.size and (int(ptr.min()) < 0 or int(ptr.max()) > nnz):
        raise InvalidCacheError(f"{what}: row pointers span {int(ptr.min())}..{int(ptr.max())}, "
                                f"outside 0..{nnz} (the number of stored elements)")
    step = np.diff(ptr, axis=1)
    if step.size and int(step.min()) < 0:
        k, r = np.unravel_index(int(np.argmin(step)), step.shape)
        raise InvalidCacheError(f"{what}: row pointers decrease at segment {int(k)}, row "
                                f"{int(r)} ({int(ptr[k, r])} → {int(ptr[k, r + 1])})")
    if nnz and idx.dtype.kind == "i" and int(idx.min()) < 0:
        raise InvalidCacheError(f"{what}: negative column index {int(idx.min())}")
    if nnz and int(idx.max()) >= n_cols:
        raise InvalidCacheError(f"{what}: column index {int(idx.max())}, expected < {n_cols}")
