"""Storage strategies: how a response source becomes an operator of one backend.

One strategy per backend (dense, sparse, out-of-core, GPU). Each knows how large it will be
(:meth:`Storage.estimate_bytes`), how to build its operator from a source (writing its converted
cache as it goes), and how to open that cache. :func:`select_storage` picks one per load
(``storage='auto'``: the fastest that fits).

Cache files (:mod:`.cache`): dense and out-of-core share one layout (the matrix and its row sums),
sparse has its own (both CSR orientations and the row sums). A cached load memory-maps the file
in well under a second.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidParameterError
from .cache import CACHE_ENV, CacheWriter, ResponseCache, map_array
from .dense import DenseResponse
from .memory import available_memory
from .operator import ResponseOperator
from .options import ResponseOptions
from .outofcore import OutOfCoreResponse
from .source import LOAD_BLOCK_BYTES, HDF5Source, ResponseSource
from .sparse import SegmentedCSR, SparseBuilder, SparseResponse, index_dtype, transpose

__all__ = ["Storage", "DenseStorage", "SparseStorage", "OutOfCoreStorage", "GPUStorage",
           "choose_storage", "select_storage", "DEFAULT_OUT_OF_CORE_BUDGET"]

logger = logging.getLogger(__name__)

#: Default budget of the out-of-core mode when none is given.
DEFAULT_OUT_OF_CORE_BUDGET = 2 ** 30


def _stream_rows(src: ResponseSource, dt: np.dtype, opts: ResponseOptions,
                 out: np.ndarray | None = None, writer: CacheWriter | None = None,
                 target_bytes: int = LOAD_BLOCK_BYTES) -> np.ndarray:
    """Read every row (into ``out`` if given), append them to ``writer``'s 'matrix' array;
    returns Σ_i R_ij in float64."""
    row_sums = np.empty(src.n_model, dtype=np.float64)
    if writer is not None:
        writer.begin("matrix", dt, (src.n_data,))
    for j0, j1, block in src.blocks(dt, opts.progress, target_bytes, out):
        row_sums[j0:j1] = block.sum(axis=1, dtype=np.float64)
        if writer is not None:
            writer.append(block)
            if out is None:
                writer.wait()                  # the block buffer is reused
    if writer is not None:
        writer.end()
        writer.add("row_sums", row_sums)
    return row_sums


class Storage:
    """A backend's way of holding a response (subclasses)."""

    name = "abstract"
    #: layout of its cache file ('dense' or 'sparse'), None if it has none
    cache_kind: str | None = None

    @staticmethod
    def estimate_bytes(n_model: int, n_data: int, dtype, density: float = 1.0,
                       n_cols: int = 1) -> int:
        """Peak bytes of memory the storage needs (while building, or once held)."""
        raise NotImplementedError

    def load(self, src: ResponseSource, dt: np.dtype, opts: ResponseOptions) -> ResponseOperator:
        """The operator from ``src``: in place if possible, else from the cache, else built."""
        op = self.in_place(src, dt, opts)
        if op is not None:
            op.info.update(cached=False, cache_path=None)
            return op
        cache = None
        if opts.cache and src.path is not None and self.cache_kind is not None:
            threshold = opts.sparse_threshold if self.cache_kind == "sparse" else None
            cache = ResponseCache(src.path, dt.name, self.cache_kind, threshold, opts.cache_dir)
            cf = cache.find(populate=opts.populate and self.name != "out-of-core")
            if cf is not None:
                logger.debug("using response cache %s", cache.path)
                op = self.open_cache(cf, src, dt, opts)
                op.info.update(cached=True, cache_path=str(cache.path))
                return op
        info: dict[str, Any] = {"cached": False,
                                "cache_path": None if cache is None else str(cache.path)}
        op = self.build(src, dt, opts, cache, info)
        op.info.update(info)
        return op

    def in_place(self, src, dt, opts) -> ResponseOperator | None:
        """The operator on the source's own memory or file (no conversion), if possible."""
        return None

    # open_cache(cf, src, dt, opts) and build(src, dt, opts, cache, info) -> ResponseOperator:
    # in each strategy


def _mapped(op: ResponseOperator) -> ResponseOperator:
    op.info["mapped_source"] = True
    return op


def _meta(src: ResponseSource) -> dict[str, Any]:
    return {"n_model": src.n_model, "n_data": src.n_data, "n_psi": src.n_psi}


class DenseStorage(Storage):
    """One (n_model, n_data) matrix in memory (:class:`DenseResponse`)."""

    name = "dense"
    cache_kind = "dense"

    @staticmethod
    def estimate_bytes(n_model, n_data, dtype, density=1.0, n_cols=1):
        return int(1.05 * n_model * n_data * np.dtype(dtype).itemsize) + LOAD_BLOCK_BYTES

    def in_place(self, src, dt, opts):
        if dt == src.file_dtype:
            view = src.dense_view()        # no copy: the histogram's memory is the response
            if view is not None:
                return DenseResponse(view, *src.operator_args)
            offset = src.contiguous_offset() if isinstance(src, HDF5Source) else None
            if offset is not None:          # the file holds the matrix: map it where it lies
                matrix = map_array(src.path, offset, (src.n_model, src.n_data), dt,
                                   opts.populate)
                return _mapped(DenseResponse(matrix, *src.operator_args))
        return None

    def open_cache(self, cf, src, dt, opts):
        return DenseResponse(cf["matrix"], *src.operator_args, row_sums=np.array(cf["row_sums"]))

    def build(self, src, dt, opts, cache, info):
        matrix = np.empty((src.n_model, src.n_data), dtype=dt)
        writer = None if cache is None else cache.writer(_meta(src))
        try:
            row_sums = _stream_rows(src, dt, opts, out=matrix, writer=writer)
            if writer is not None:         # the rows are final: finish the cache behind us
                info["cache_pending"] = cache.finish_in_background(writer)
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
        return DenseResponse(matrix, *src.operator_args, row_sums=row_sums)


class OutOfCoreStorage(Storage):
    """Row blocks streamed from the converted (dense-layout) cache file
    (:class:`OutOfCoreResponse`); without a cache, from a private temporary file."""

    name = "out-of-core"
    cache_kind = "dense"

    @staticmethod
    def estimate_bytes(n_model, n_data, dtype, density=1.0, n_cols=1):
        return 2 * LOAD_BLOCK_BYTES

    @staticmethod
    def _budget(opts):
        return opts.memory_budget or DEFAULT_OUT_OF_CORE_BUDGET

    def in_place(self, src, dt, opts):
        offset = (src.contiguous_offset()
                  if isinstance(src, HDF5Source) and dt == src.file_dtype else None)
        if offset is None:
            return None
        return _mapped(OutOfCoreResponse(src.path, offset, dt, *src.operator_args,
                                         memory_budget=self._budget(opts)))

    def open_cache(self, cf, src, dt, opts):
        return OutOfCoreResponse(cf.path, cf.offset("matrix"), dt, *src.operator_args,
                                 memory_budget=self._budget(opts),
                                 row_sums=np.array(cf["row_sums"]))

    def build(self, src, dt, opts, cache, info):
        budget = self._budget(opts)
        unlink = cache is None
        if cache is None:
            tmpdir = Path(opts.cache_dir or os.environ.get(CACHE_ENV) or tempfile.gettempdir())
            tmpdir.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix="comptonsky-response-", suffix=".cache",
                                        dir=tmpdir)
            os.close(fd)
            target, meta = Path(name), _meta(src)
        else:
            target, meta = cache.path, {**cache.meta, **_meta(src)}
        writer = CacheWriter(target, meta, background=False, prune=not unlink)
        try:
            row_sums = _stream_rows(src, dt, opts, writer=writer,
                                    target_bytes=min(LOAD_BLOCK_BYTES, max(1, budget // 2)))
            writer.close()
        except BaseException:
            writer.abort()
            if unlink and target.exists():
                target.unlink()
            raise
        return OutOfCoreResponse(target, int(writer.arrays["matrix"]["offset"]), dt,
                                 *src.operator_args, memory_budget=budget, row_sums=row_sums,
                                 unlink=unlink)


class SparseStorage(Storage):
    """Segmented CSR in both orientations (:class:`SparseResponse`)."""

    name = "sparse"
    cache_kind = "sparse"

    @staticmethod
    def stream_bytes(n_model, n_data, dtype, density, n_cols) -> int:
        """Bytes one product streams."""
        return int(density * n_model * n_data * (np.dtype(dtype).itemsize
                                                 + index_dtype(n_cols).itemsize))

    @staticmethod
    def estimate_bytes(n_model, n_data, dtype, density=1.0, n_cols=1):
        # while building: the pieces and both orientations
        return 3 * SparseStorage.stream_bytes(n_model, n_data, dtype, density, n_cols) \
            + LOAD_BLOCK_BYTES

    def open_cache(self, cf, src, dt, opts):
        n_psi, n_model = int(cf.meta["n_psi"]), int(cf.meta["n_model"])
        rows = SegmentedCSR(cf["rows_ptr"], cf["rows_idx"], cf["rows_val"], n_psi)
        cols = SegmentedCSR(cf["cols_ptr"], cf["cols_idx"], cf["cols_val"], n_model)
        return SparseResponse(
            rows, cols, *src.operator_args, threshold=float(cf.meta["threshold"]),
            dropped_flux_fraction=float(cf.meta["dropped_flux_fraction"]),
            max_row_dropped_fraction=float(cf.meta["max_row_dropped_fraction"]),
            row_sums=np.array(cf["row_sums"]) if "row_sums" in cf else None)

    def build(self, src, dt, opts, cache, info):
        builder = SparseBuilder(src.n_model, src.n_data // src.n_psi, src.n_psi, dt,
                                opts.sparse_threshold)
        for j0, _, block in src.blocks(dt, opts.progress):
            builder.add(j0, block)
        rows = builder.finish()
        cols = transpose(rows)
        dropped, worst = builder.dropped_flux_fraction, builder.max_row_dropped_fraction
        if cache is not None:
            writer = cache.writer({**_meta(src), "dropped_flux_fraction": dropped,
                                   "max_row_dropped_fraction": worst})
            try:
                for name, s in (("rows", rows), ("cols", cols)):
                    writer.add(f"{name}_ptr", s.ptr)
                    writer.add(f"{name}_idx", s.idx)
                    writer.add(f"{name}_val", s.val)
                writer.add("row_sums", builder.row_kept)
                info["cache_pending"] = cache.finish_in_background(writer)
            except BaseException:
                writer.abort()
                raise
        return SparseResponse(rows, cols, *src.operator_args, threshold=opts.sparse_threshold,
                              dropped_flux_fraction=dropped, max_row_dropped_fraction=worst,
                              row_sums=builder.row_kept)


class GPUStorage(DenseStorage):
    """The dense storage, uploaded to GPU memory (:class:`~.gpu.GPUDenseResponse`)."""

    name = "dense"

    def __init__(self, backend: str):
        self.backend = backend

    def load(self, src, dt, opts):
        from .gpu import GPUDenseResponse
        host = super().load(src, dt, opts)
        op = GPUDenseResponse(host.matrix, *src.operator_args, row_sums=host._known_row_sums,
                              backend=self.backend)
        op.info.update(host.info)
        return op


STRATEGIES: dict[str, type[Storage]] = {s.name: s for s in (DenseStorage, SparseStorage,
                                                            OutOfCoreStorage)}


def estimate_density(src: ResponseSource, dtype, threshold: float, n_sample: int = 24) -> float:
    """Fraction of elements a sparse storage would keep, from evenly spaced sample rows."""
    rows = np.unique(np.linspace(0, src.n_model - 1, min(n_sample, src.n_model)).astype(int))
    buf = np.empty((1, src.n_data), dtype=dtype)
    kept = 0
    for j in rows:
        src.read(int(j), int(j) + 1, buf)
        kept += int(np.count_nonzero(buf[0] > threshold * buf[0].max()))
    return kept / (len(rows) * src.n_data)


def choose_storage(n_model: int, n_data: int, dtype, density: float, limit: int,
                   n_cols: int) -> tuple[str, str]:
    """The storage ``auto`` picks, and why.

    Parameters
    ----------
    n_model, n_data : int
        Matrix shape.
    dtype : numpy dtype
        Value dtype.
    density : float
        Estimated fraction of elements the sparse storage keeps.
    limit : int
        Bytes the response may use.
    n_cols : int
        Columns per sparse segment (PsiChi pixels).

    Returns
    -------
    (storage, reason)
    """
    dense = n_model * n_data * np.dtype(dtype).itemsize
    stream = SparseStorage.stream_bytes(n_model, n_data, dtype, density, n_cols)
    peak = SparseStorage.estimate_bytes(n_model, n_data, dtype, density, n_cols)
    if stream < 0.6 * dense and peak < limit:
        return "sparse", (f"sparse streams {stream / 1e9:.2f} GB per product against "
                          f"{dense / 1e9:.2f} GB dense (density {density:.3f}) and fits")
    if DenseStorage.estimate_bytes(n_model, n_data, dtype) < limit:
        return "dense", f"dense ({dense / 1e9:.2f} GB) fits in {limit / 1e9:.2f} GB"
    return "out-of-core", (f"neither dense ({dense / 1e9:.2f} GB) nor sparse "
                           f"(≈{peak / 1e9:.2f} GB to build) fits in {limit / 1e9:.2f} GB")


def select_storage(src: ResponseSource, dt: np.dtype, opts: ResponseOptions
                   ) -> tuple[Storage, str]:
    """The strategy for this load, and why (``auto`` decides by size, ``device`` by GPU).

    Raises
    ------
    InvalidParameterError
        If a GPU is asked for and none is usable, or with a storage other than dense.
    """
    storage, reason = opts.storage, "requested"
    if storage == "auto":
        limit = opts.memory_budget or int(0.7 * available_memory())
        density = estimate_density(src, dt, opts.sparse_threshold)
        storage, reason = choose_storage(src.n_model, src.n_data, dt, density, limit, src.n_psi)
        logger.info("response storage 'auto' → %r: %s", storage, reason)
    if opts.device != "cpu":
        from .gpu import gpu_backend
        backend = gpu_backend()
        if opts.device == "gpu" or (backend is not None and storage == "dense"):
            if storage != "dense":
                raise InvalidParameterError(f"response device 'gpu' supports storage 'dense' "
                                            f"only, found storage {storage!r}")
            if backend is None:
                raise InvalidParameterError(
                    "response device: 'gpu' needs CuPy or PyTorch with a CUDA device; found "
                    "neither (use device='cpu')")
            return GPUStorage(backend), reason
    return STRATEGIES[storage](), reason
