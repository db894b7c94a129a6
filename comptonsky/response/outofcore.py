"""Out-of-core dense response: stream row blocks from a file under a memory budget.

The C-ordered (n_model, n_data) matrix stays in a file (the converted cache or the response file
itself). Each product reads it in row blocks into two reusable buffers, a reader thread
(``os.preadv``, GIL released) one block ahead of BLAS; the file is never mapped (mapped pages
would count against the process's memory). A Phi subset reads only its (Em, φ) runs of each row
(``mode='runs'``); a PsiChi subset reads whole rows (``fallback``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..errors import FileFormatError, InvalidParameterError
from .operator import ResponseOperator, ResponseSubset, RestrictedResponse

__all__ = ["OutOfCoreResponse", "OutOfCoreSubset"]

logger = logging.getLogger(__name__)

#: Largest single read buffer (larger blocks do not stream faster).
MAX_BLOCK_BYTES = 128 * 2 ** 20
#: Memory budget when none is given.
DEFAULT_MEMORY_BUDGET = 2 ** 30


class OutOfCoreResponse(ResponseOperator):
    """Dense response streamed in row blocks from file ``path``, which holds the C-ordered
    (n_model, n_data) ``dtype`` matrix at byte ``offset``.

    ``memory_budget`` (default 1 GiB) is the bytes the two row-block buffers may use together
    (at least two rows); ``unlink`` removes the file's directory entry once opened (a private
    temporary file). Other parameters: :class:`~.operator.ResponseOperator`.
    """

    storage = "out-of-core"

    def __init__(self, path, offset: int, dtype, model_axes, data_axes, pixel_solid_angle, unit,
                 memory_budget: int | None = None, row_sums: np.ndarray | None = None,
                 unlink: bool = False):
        super().__init__(model_axes, data_axes, pixel_solid_angle, unit, row_sums=row_sums,
                         dtype=dtype)
        self.path = os.fspath(path)
        self.offset = int(offset)
        self.memory_budget = int(memory_budget or DEFAULT_MEMORY_BUDGET)
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
        self._bufs = [np.empty(self.block_rows * self.n_data, dtype=self.dtype)
                      for _ in range(2)]
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="comptonsky-ooc")
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

    def _read(self, j0: int, j1: int, view: np.ndarray, runs) -> np.ndarray:
        """Rows j0:j1, columns ``runs`` ((start, length) pairs, or None: all) into ``view``."""
        item = self.dtype.itemsize
        if runs is None:
            pieces = [(self.offset + j0 * self.n_data * item, memoryview(view).cast("B"))]
        else:
            pieces = []
            for j in range(j0, j1):
                col = 0
                for start, length in runs:
                    dest = memoryview(view[j - j0, col:col + length]).cast("B")
                    pieces.append((self.offset + (j * self.n_data + start) * item, dest))
                    col += length
        for pos, mv in pieces:
            done = 0
            while done < mv.nbytes:
                n = os.preadv(self._fd, [mv[done:]], pos + done)
                if n <= 0:
                    raise FileFormatError(f"{self.path}: ends at byte {pos + done}, expected "
                                          f"{pos + mv.nbytes}: the response file was truncated "
                                          "while in use")
                done += n
        return view

    def _blocks(self, runs=None, width: int | None = None
                ) -> Iterator[tuple[int, int, np.ndarray]]:
        """Row blocks (j0, j1, values (j1 − j0, width)), the next read while this one is used."""
        width = self.n_data if width is None else width
        step = self.block_rows
        views = [b[:step * width].reshape(step, width) for b in self._bufs]
        starts = list(range(0, self.n_model, step))

        def read(b):
            j0 = starts[b]
            j1 = min(j0 + step, self.n_model)
            return self._read(j0, j1, views[b % 2][:j1 - j0], runs)
        fut = self._pool.submit(read, 0)
        for b, j0 in enumerate(starts):
            view = fut.result()
            if b + 1 < len(starts):
                fut = self._pool.submit(read, b + 1)
            yield j0, j0 + view.shape[0], view

    def _matvec(self, x, runs=None, width=None):
        out = np.zeros(self.n_data if width is None else width, dtype=np.float64)
        xd = x.astype(self.dtype)
        for j0, j1, blk in self._blocks(runs, width):
            out += xd[j0:j1] @ blk
        return out

    def _rmatvec(self, y, runs=None, width=None):
        out = np.empty(self.n_model, dtype=np.float64)
        yd = y.astype(self.dtype)
        for j0, j1, blk in self._blocks(runs, width):
            out[j0:j1] = blk @ yd
        return out

    def _matvec_rows(self, rows, coef, runs=None, width=None):
        width = self.n_data if width is None else width
        row = np.empty((1, width), dtype=self.dtype)
        out = np.zeros(width, dtype=np.float64)
        for j, c in zip(rows.tolist(), np.asarray(coef).tolist()):
            out += c * self._read(j, j + 1, row, runs)[0]
        return out

    def _subset(self, k, n_subsets, axis, indices):
        if axis == "PsiChi":
            return RestrictedResponse(self, indices)
        return OutOfCoreSubset(self, k, n_subsets, indices)

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


class OutOfCoreSubset(ResponseSubset):
    """A Phi subset of an out-of-core response: reads only its (Em, φ) runs, into the parent's
    buffers."""

    mode = "runs"

    def __init__(self, parent: OutOfCoreResponse, k: int, n_subsets: int, indices: np.ndarray):
        super().__init__(parent, indices)
        n_psi = parent.data_shape[2]
        self._runs = [(int(s) * n_psi, n_psi) for s in parent._phi_segments(k, n_subsets)]

    def _matvec(self, x):
        return self.parent._matvec(x, self._runs, self.n_data)

    def _rmatvec(self, y):
        return self.parent._rmatvec(y, self._runs, self.n_data)

    def _matvec_rows(self, rows, coef):
        return self.parent._matvec_rows(rows, coef, self._runs, self.n_data)
