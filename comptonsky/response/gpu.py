"""Optional GPU backend: the dense response held in GPU memory (CuPy or PyTorch, picked at run time).

Neither library is a dependency. The matrix is uploaded in row blocks (no second host copy) and
the products, subsets included (:mod:`.dense`), run as cuBLAS matrix–vector products; only the
model and data vectors cross the bus per product.

.. warning::
   This backend has not been run on a GPU: the project machine has none. The test suite covers
   it only for the "no GPU available" error path.
"""

from __future__ import annotations

import logging

import numpy as np

from ..errors import InvalidParameterError
from .dense import DenseResponse

__all__ = ["gpu_backend", "GPUDenseResponse"]

logger = logging.getLogger(__name__)

#: Rows uploaded per transfer.
UPLOAD_BLOCK_BYTES = 64 * 2 ** 20


def gpu_backend() -> str | None:
    """'cupy' or 'torch' if that library is importable and sees a CUDA device, else None."""
    try:
        import cupy
        if cupy.cuda.runtime.getDeviceCount() > 0:
            return "cupy"
    except Exception:  # noqa: BLE001 - any import or driver failure means "not available"
        pass
    try:
        import torch
        if torch.cuda.is_available():
            return "torch"
    except Exception:  # noqa: BLE001
        pass
    return None


class GPUDenseResponse(DenseResponse):
    """Dense response in GPU memory.

    Parameters
    ----------
    matrix : ndarray, shape (n_model, n_data)
        Host matrix (float32 or float64; a memory-mapped cache is fine); uploaded in row blocks.
    model_axes, data_axes, pixel_solid_angle, unit, row_sums
        See :class:`~.operator.ResponseOperator`.
    backend : {'cupy', 'torch'}, optional
        The library (kept as ``library``); default :func:`gpu_backend`.

    Raises
    ------
    InvalidParameterError
        If no GPU library with a CUDA device is available.
    """

    device = "gpu"

    def __init__(self, matrix: np.ndarray, model_axes, data_axes, pixel_solid_angle, unit,
                 row_sums: np.ndarray | None = None, backend: str | None = None):
        backend = backend or gpu_backend()
        if backend not in ("cupy", "torch"):
            raise InvalidParameterError(
                "response device: 'gpu' needs CuPy or PyTorch with a CUDA device; found "
                f"{backend or 'neither'} (use device='cpu')")
        super().__init__(matrix, model_axes, data_axes, pixel_solid_angle, unit, row_sums)
        self.library = backend
        host = self.matrix
        step = max(1, UPLOAD_BLOCK_BYTES // max(1, self.n_data * self.dtype.itemsize))
        if backend == "cupy":
            import cupy
            self.matrix = cupy.empty(host.shape, dtype=self.dtype)
            for j0 in range(0, self.n_model, step):
                self.matrix[j0:j0 + step].set(np.ascontiguousarray(host[j0:j0 + step]))
        else:
            import torch
            tdtype = torch.float32 if self.dtype == np.float32 else torch.float64
            self.matrix = torch.empty(host.shape, dtype=tdtype, device="cuda")
            for j0 in range(0, self.n_model, step):
                self.matrix[j0:j0 + step].copy_(torch.from_numpy(np.array(host[j0:j0 + step])))
        logger.info("response on the GPU (%s): %.1f MB", backend, self.nbytes / 1e6)

    def _put(self, v: np.ndarray, dtype=None):
        v = np.ascontiguousarray(v, dtype=dtype or self.dtype)
        if self.library == "cupy":
            import cupy
            return cupy.asarray(v)
        import torch
        return torch.from_numpy(v).to("cuda")

    def _get(self, v) -> np.ndarray:
        if self.library == "cupy":
            import cupy
            return cupy.asnumpy(v).astype(np.float64)
        return v.cpu().numpy().astype(np.float64)

    def _index(self, rows: np.ndarray):
        return self._put(rows, rows.dtype)

    def _permuted(self, order: np.ndarray):
        return self.matrix[:, self._index(order)]

    def _matvec_rows(self, rows, coef):
        return self._get(self._put(coef) @ self.matrix[self._index(rows)])
