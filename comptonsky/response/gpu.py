"""Optional GPU backend: the dense response held in GPU memory (CuPy or PyTorch, picked at run time).

Neither library is a dependency. :func:`gpu_backend` returns ``"cupy"`` when CuPy imports and sees
a CUDA device, else ``"torch"`` when PyTorch sees one, else None. The matrix is uploaded in row
blocks (no second host copy) and the products run as cuBLAS matrix–vector products; only the
model and data vectors (kB to a few MB) cross the bus per product.

.. warning::
   This backend has not been run on a GPU: the project machine has none. The test suite covers it
   only for the "no GPU available" error path. Its restricted products (OSEM subsets) share the
   code of the dense backend (:func:`~comptonsky.response.subset.dense_subset`).
"""

from __future__ import annotations

import logging

import numpy as np

from ..errors import InvalidParameterError
from .operator import ResponseOperator
from .subset import dense_subset

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


class _DeviceArrays:
    """Vector transfers and the column permutation for matrices in GPU memory."""

    def __init__(self, backend: str):
        self.backend = backend

    def put(self, v: np.ndarray, dtype):
        v = np.ascontiguousarray(v, dtype=dtype)
        if self.backend == "cupy":
            import cupy
            return cupy.asarray(v)
        import torch
        return torch.from_numpy(v).to("cuda")

    def get(self, v) -> np.ndarray:
        if self.backend == "cupy":
            import cupy
            return cupy.asnumpy(v).astype(np.float64)
        return v.cpu().numpy().astype(np.float64)

    def index(self, rows: np.ndarray):
        if self.backend == "cupy":
            import cupy
            return cupy.asarray(rows)
        import torch
        return torch.as_tensor(rows, device="cuda")

    def permute_columns(self, matrix, order: np.ndarray):
        return matrix[:, self.index(order)]


class GPUDenseResponse(ResponseOperator):
    """Dense response in GPU memory.

    Parameters
    ----------
    matrix : ndarray, shape (n_model, n_data)
        Host matrix (float32 or float64; a memory-mapped cache is fine); uploaded in row blocks.
    model_axes, data_axes, pixel_solid_angle, unit, row_sums
        See :class:`~comptonsky.response.operator.ResponseOperator`.
    backend : {'cupy', 'torch'}, optional
        Default: :func:`gpu_backend`.

    Raises
    ------
    InvalidParameterError
        If no GPU library with a CUDA device is available.
    """

    storage = "dense"
    device = "gpu"

    def __init__(self, matrix: np.ndarray, model_axes, data_axes, pixel_solid_angle, unit,
                 row_sums: np.ndarray | None = None, backend: str | None = None):
        backend = backend or gpu_backend()
        if backend not in ("cupy", "torch"):
            raise InvalidParameterError(
                "response device: 'gpu' needs CuPy or PyTorch with a CUDA device; found "
                f"{backend or 'neither'} (use device='cpu')")
        super().__init__(model_axes, data_axes, pixel_solid_angle, unit, row_sums=row_sums,
                         dtype=matrix.dtype)
        self.backend = backend
        self._arrays = _DeviceArrays(backend)
        n_model, n_data = matrix.shape
        step = max(1, UPLOAD_BLOCK_BYTES // max(1, n_data * self.dtype.itemsize))
        if backend == "cupy":
            import cupy
            self._m = cupy.empty((n_model, n_data), dtype=self.dtype)
            for j0 in range(0, n_model, step):
                self._m[j0:j0 + step].set(np.ascontiguousarray(matrix[j0:j0 + step]))
        else:
            import torch
            tdtype = torch.float32 if self.dtype == np.float32 else torch.float64
            self._m = torch.empty((n_model, n_data), dtype=tdtype, device="cuda")
            for j0 in range(0, n_model, step):
                self._m[j0:j0 + step].copy_(torch.from_numpy(np.array(matrix[j0:j0 + step])))
        logger.info("response on the GPU (%s): %.1f MB", backend, self.nbytes / 1e6)

    @property
    def nbytes(self) -> int:
        return self.n_model * self.n_data * self.dtype.itemsize

    def _matvec(self, x):
        return self._arrays.get(self._arrays.put(x, self.dtype) @ self._m)

    def _rmatvec(self, y):
        return self._arrays.get(self._m @ self._arrays.put(y, self.dtype))

    def _matvec_rows(self, rows, coef):
        return self._arrays.get(self._arrays.put(coef, self.dtype)
                                @ self._m[self._arrays.index(rows)])

    def _subset(self, k, n_subsets, axis, indices):
        return dense_subset(self, self._m, k, n_subsets, axis, indices, self._arrays)
