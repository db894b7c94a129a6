"""Optional GPU backend: the dense response held in GPU memory (CuPy or PyTorch, picked at run time).

Neither library is a dependency. The products, subsets included (:mod:`.dense`), run as cuBLAS
matrix–vector products; only the model and data vectors cross the bus.

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
    """Dense response in GPU memory: the host ``matrix`` (as :class:`~.dense.DenseResponse`'s;
    a memory-mapped cache is fine) uploaded in row blocks with the library ``backend`` ('cupy'
    or 'torch', kept as ``library``; default :func:`gpu_backend`).

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
        if backend == "cupy":
            import cupy
            self._to_device, self._to_host = cupy.asarray, cupy.asnumpy
            self.matrix = cupy.empty(host.shape, dtype=self.dtype)
        else:
            import torch
            self._to_device = lambda v: torch.from_numpy(v).to("cuda")
            self._to_host = lambda v: v.cpu().numpy()
            self.matrix = torch.empty(host.shape, dtype=getattr(torch, self.dtype.name),
                                      device="cuda")
        step = max(1, UPLOAD_BLOCK_BYTES // max(1, self.n_data * self.dtype.itemsize))
        for j0 in range(0, self.n_model, step):
            self.matrix[j0:j0 + step] = self._put(host[j0:j0 + step])
        logger.info("response on the GPU (%s): %.1f MB", backend, self.nbytes / 1e6)

    def _put(self, v: np.ndarray, dtype=None):
        return self._to_device(np.ascontiguousarray(v, dtype=dtype or self.dtype))

    def _get(self, v) -> np.ndarray:
        return np.asarray(self._to_host(v), dtype=np.float64)

    def _index(self, rows: np.ndarray):
        return self._put(rows, rows.dtype)

    def _permuted(self, order: np.ndarray):
        return self.matrix[:, self._index(order)]

    def _matvec_rows(self, rows, coef):
        return self._get(self._put(coef) @ self.matrix[self._index(rows)])
