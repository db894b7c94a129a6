"""Out-of-core dense response: stream row blocks from a file under a memory budget.

The matrix lives in a raw C-ordered file (the converted cache, :mod:`.cache`) of shape
(n_model, n_data) in float32 or float64. Each product reads it once, in row blocks, into two
reusable buffers: a background thread reads block b + 1 (``os.preadv``, which releases the GIL)
while BLAS works on block b. The process holds ``2 × block`` bytes of response, never the whole
matrix, and never maps the file (mapped pages would count against the process's memory).

Per product this streams the file at the page-cache or disk read speed, so it is several times
slower than an in-memory dense product; it is the mode for a response that does not fit.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..errors import InvalidParameterError
from .operator import ResponseOperator

__all__ = ["OutOfCoreResponse", "parse_memory"]

logger = logging.getLogger(__name__)

_UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "m": 1e6, "mb": 1e6, "g": 1e9, "gb": 1e9,
          "t": 1e12, "tb": 1e12, "kib": 2 ** 10, "mib": 2 ** 20, "gib": 2 ** 30, "tib": 2 ** 40}

#: Largest single read buffer (larger blocks do not stream faster).
MAX_BLOCK_BYTES = 128 * 2 ** 20


def parse_memory(value: str | int | float | None, what: str = "memory_budget") -> int | None:
    """Bytes from ``1073741824``, ``"1 GiB"``, ``"512MB"``, ``"2.5G"`` (None passes through).

    Raises
    ------
    InvalidParameterError
        Naming ``what``, the value found and the accepted forms.
    """
    if value is None:
        return None
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        if value <= 0:
            raise InvalidParameterError(f"{what}: expected a positive size, found {value!r}")
        return int(value)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*", str(value))
    if not m or m.group(2).lower() not in _UNITS or float(m.group(1)) <= 0:
        raise InvalidParameterError(
            f"{what}: expected a positive size such as 1073741824, '1 GiB', '512 MB' or '2G', "
            f"found {value!r}")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


class OutOfCoreResponse(ResponseOperator):
    """Dense response streamed from a raw file in row blocks.

    Parameters
    ----------
    path : path-like
        File holding the matrix (C order, shape (n_model, n_data)) at byte ``offset``.
    offset : int
        Byte offset of element (0, 0).
    dtype : {'float32', 'float64'}
    model_axes, data_axes, pixel_solid_angle, unit
        See :class:`~comptonsky.response.operator.ResponseOperator`.
    memory_budget : int
        Bytes the two row-block buffers may use together (at least two rows).
    row_sums : ndarray, shape (n_model,), optional
        Σ_i R_ij if already known (else one pass computes it).
    unlink : bool
        Remove the file's directory entry once opened (a private temporary file).
    """

    storage = "out-of-core"

    def __init__(self, path, offset: int, dtype, model_axes, data_axes, pixel_solid_angle, unit,
                 memory_budget: int = 2 ** 30, row_sums: np.ndarray | None = None,
                 unlink: bool = False):
        super().__init__(model_axes, data_axes, pixel_solid_angle, unit)
        self.path = os.fspath(path)
        self.offset = int(offset)
        self.dtype = np.dtype(dtype)
        self.memory_budget = int(memory_budget)
        row_bytes = self.n_data * self.dtype.itemsize
        block = min(self.memory_budget // 2, MAX_BLOCK_BYTES)
        self.block_rows = int(max(1, min(self.n_model, block // row_bytes)))
        if 2 * row_bytes > self.memory_budget:
            logger.warning("memory_budget %d B is below two response rows (%d B); using one-row "
                           "blocks", self.memory_budget, 2 * row_bytes)
        self._fd = os.open(self.path, os.O_RDONLY)
        if unlink:
            os.unlink(self.path)
        need = self.offset + self.n_model * row_bytes
        if os.fstat(self._fd).st_size < need:
            raise InvalidParameterError(f"{self.path}: {os.fstat(self._fd).st_size} bytes, "
                                        f"expected at least {need} for the response matrix")
        self._bufs = [np.empty((self.block_rows, self.n_data), dtype=self.dtype)
                      for _ in range(2)]
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="comptonsky-ooc")
        self._row_sums_cache = None if row_sums is None else np.asarray(row_sums, np.float64)
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(self._fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        logger.info("out-of-core response %s: %d-row blocks (%.1f MB each, 2 buffers)",
                    self.path, self.block_rows, self.block_rows * row_bytes / 1e6)

    @property
    def nbytes(self) -> int:
        """Bytes of response held in memory (the two block buffers)."""
        return int(sum(b.nbytes for b in self._bufs))

    @property
    def bytes_per_product(self) -> int:
        return self.n_model * self.n_data * self.dtype.itemsize

    def _read(self, j0: int, j1: int, buf: np.ndarray) -> np.ndarray:
        view = buf[: j1 - j0]
        mv = memoryview(view).cast("B")
        pos = self.offset + j0 * self.n_data * self.dtype.itemsize
        done = 0
        while done < mv.nbytes:
            n = os.preadv(self._fd, [mv[done:]], pos + done)
            if n <= 0:
                raise OSError(f"{self.path}: short read at byte {pos + done}")
            done += n
        return view

    def _blocks(self) -> Iterator[tuple[int, int, np.ndarray]]:
        starts = list(range(0, self.n_model, self.block_rows))
        fut = self._pool.submit(self._read, 0, min(self.block_rows, self.n_model), self._bufs[0])
        for b, j0 in enumerate(starts):
            j1 = min(j0 + self.block_rows, self.n_model)
            view = fut.result()
            if b + 1 < len(starts):
                n0 = starts[b + 1]
                fut = self._pool.submit(self._read, n0, min(n0 + self.block_rows, self.n_model),
                                        self._bufs[(b + 1) % 2])
            yield j0, j1, view

    def _matvec(self, x: np.ndarray) -> np.ndarray:
        out = np.zeros(self.n_data, dtype=np.float64)
        xd = x.astype(self.dtype)
        for j0, j1, blk in self._blocks():
            out += xd[j0:j1] @ blk
        return out

    def _rmatvec(self, y: np.ndarray) -> np.ndarray:
        out = np.empty(self.n_model, dtype=np.float64)
        yd = y.astype(self.dtype)
        for j0, j1, blk in self._blocks():
            out[j0:j1] = blk @ yd
        return out

    def _matvec_rows(self, rows: np.ndarray, coef: np.ndarray) -> np.ndarray:
        row = np.empty((1, self.n_data), dtype=self.dtype)
        out = np.zeros(self.n_data, dtype=np.float64)
        for j, c in zip(rows.tolist(), np.asarray(coef).tolist()):
            out += c * self._read(j, j + 1, row)[0]
        return out

    def _row_sums(self) -> np.ndarray:
        if self._row_sums_cache is None:
            out = np.empty(self.n_model, dtype=np.float64)
            for j0, j1, blk in self._blocks():
                out[j0:j1] = blk.sum(axis=1, dtype=np.float64)
            self._row_sums_cache = out
        return self._row_sums_cache

    def close(self) -> None:
        """Release the file and the reader thread."""
        if getattr(self, "_fd", None) is not None:
            self._pool.shutdown()
            os.close(self._fd)
            self._fd = None

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass
