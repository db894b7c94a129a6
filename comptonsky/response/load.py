"""Turn a response histogram (or its histpy HDF5 file) into a response operator.

A load goes one way: source (:mod:`.source`) → storage strategy (chosen once from the
:class:`~.options.ResponseOptions`) → operator. A strategy holds the operator on the source's own
memory or file when it can, else opens its converted cache (:mod:`.cache`), else converts the
source in row blocks, writing the cache as it goes. Dense and out-of-core share one cache layout
(the matrix and its row sums), sparse has its own (both CSR orientations and the row sums).
:class:`LazyResponse` is a response whose operator is made when first needed.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from histpy import Histogram

from ..errors import InvalidDataError, InvalidParameterError
from .cache import CACHE_ENV, CacheWriter, ResponseCache, map_array
from .dense import DenseResponse
from .operator import ResponseOperator
from .options import ResponseOptions
from .outofcore import DEFAULT_MEMORY_BUDGET, OutOfCoreResponse
from .source import LOAD_BLOCK_BYTES, ResponseSource, open_source, probe_response
from .sparse import SegmentedCSR, SparseResponse, build_rows, index_dtype

__all__ = ["load_response", "LazyResponse", "choose_storage"]

logger = logging.getLogger(__name__)


def load_response(rsp: Histogram | str | os.PathLike, dtype: str | None = None,
                  storage: str | None = None, *, options: ResponseOptions | None = None,
                  **kwargs: Any) -> ResponseOperator:
    """Build a response operator from a histpy response histogram or HDF5 file.

    Parameters
    ----------
    rsp : histpy.Histogram or path-like
        Response with axes ``(NuLambda, Ei, Em, Phi, PsiChi)`` in cm² s, shape
        (n_pix, n_Ei, n_Em, n_Phi, n_PsiChi); the file may carry under/overflow bins.
    dtype, storage, **kwargs
        Options (:class:`~.options.ResponseOptions`), changing ``options`` if given.

    Returns
    -------
    ResponseOperator
        :class:`~.dense.DenseResponse`, :class:`~.sparse.SparseResponse`,
        :class:`~.outofcore.OutOfCoreResponse` or :class:`~.gpu.GPUDenseResponse`; its ``info``
        records the storage chosen and why, the dtype, the source, whether the cache was used,
        the cache path and the load time (s).

    Raises
    ------
    UnknownChoiceError, InvalidParameterError
        For an unknown or out-of-range option, or a GPU asked for and not usable.
    FileFormatError, InvalidDataError
        For a missing or malformed file, or a response with no exposure.
    """
    t0 = time.perf_counter()
    opts = ResponseOptions.from_mapping({"dtype": dtype, "storage": storage, **kwargs},
                                        "load_response", base=options)
    with open_source(rsp) as src:
        dt = np.dtype(opts.dtype) if opts.dtype is not None else src.file_dtype
        name, reason = opts.storage, "requested"
        if name == "auto":
            limit = opts.memory_budget or int(0.7 * psutil.virtual_memory().available)
            density = _estimate_density(src, dt, opts.sparse_threshold)
            name, reason = choose_storage(src.n_model, src.n_data, dt, density, limit, src.n_psi)
            logger.info("response storage 'auto' → %r: %s", name, reason)
        gpu = _gpu_library(opts.device, name)
        op = STRATEGIES[name]().load(src, dt, opts)
        if gpu is not None:
            from .gpu import GPUDenseResponse
            info = op.info
            op = GPUDenseResponse(op.matrix, *src.operator_args, row_sums=op._known_row_sums,
                                  backend=gpu)
            op.info.update(info)
    if not np.any(op.exposure > 0):
        raise InvalidDataError(f"{src.name}: the response has no exposure (all entries are zero)")
    op.info.update(storage=name, reason=reason, dtype=dt.name, source=src.name,
                   seconds=time.perf_counter() - t0, device=getattr(op, "device", "cpu"))
    extra = ""
    if op.storage == "sparse":
        extra = (f", threshold {op.threshold:g}: {op.nnz} elements (density {op.density:.4f}), "
                 f"dropped flux fraction {op.dropped_flux_fraction:.3g} (worst model element "
                 f"{op.max_row_dropped_fraction:.3g})")
    logger.info("response %s: %d model × %d data elements, %s %s, %.1f MB held, %s in %.2f s%s",
                src.name, op.n_model, op.n_data, name, dt, op.nbytes / 1e6,
                "from cache" if op.info.get("cached") else "converted", op.info["seconds"],
                extra)
    return op


def _gpu_library(device: str, storage: str) -> str | None:
    """The GPU library to hold the response with ('gpu', or 'auto' with a GPU and dense storage).

    Raises
    ------
    InvalidParameterError
        If a GPU is asked for and none is usable, or with a storage other than dense.
    """
    if device == "cpu":
        return None
    from .gpu import gpu_backend
    backend = gpu_backend()
    if device == "auto" and (backend is None or storage != "dense"):
        return None
    if storage != "dense":
        raise InvalidParameterError(f"response device 'gpu' supports storage 'dense' only, "
                                    f"found storage {storage!r}")
    if backend is None:
        raise InvalidParameterError("response device: 'gpu' needs CuPy or PyTorch with a CUDA "
                                    "device; found neither (use device='cpu')")
    return backend


def _estimate_density(src: ResponseSource, dtype, threshold: float, n_sample: int = 24) -> float:
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
    """(storage, reason): what ``auto`` picks for an (n_model, n_data) matrix of ``dtype`` when
    the sparse storage keeps ``density`` of it in segments of ``n_cols`` columns (PsiChi pixels)
    and the response may use ``limit`` bytes: sparse if it streams < 60 % of the dense bytes and
    fits, else dense if it fits, else out-of-core."""
    itemsize = np.dtype(dtype).itemsize
    dense = n_model * n_data * itemsize
    stream = int(density * n_model * n_data * (itemsize + index_dtype(n_cols).itemsize))
    peak = 3 * stream + LOAD_BLOCK_BYTES      # while building: the pieces and both orientations
    if stream < 0.6 * dense and peak < limit:
        return "sparse", (f"sparse streams {stream / 1e9:.2f} GB per product against "
                          f"{dense / 1e9:.2f} GB dense (density {density:.3f}) and fits")
    if int(1.05 * dense) + LOAD_BLOCK_BYTES < limit:
        return "dense", f"dense ({dense / 1e9:.2f} GB) fits in {limit / 1e9:.2f} GB"
    return "out-of-core", (f"neither dense ({dense / 1e9:.2f} GB) nor sparse "
                           f"(≈{peak / 1e9:.2f} GB to build) fits in {limit / 1e9:.2f} GB")


def _meta(src: ResponseSource) -> dict[str, Any]:
    return {"n_model": src.n_model, "n_data": src.n_data, "n_psi": src.n_psi}


def _stream_rows(src: ResponseSource, dt: np.dtype, opts: ResponseOptions,
                 out: np.ndarray | None = None, writer: CacheWriter | None = None,
                 target_bytes: int = LOAD_BLOCK_BYTES) -> np.ndarray:
    """Read every row (into ``out`` if given), appending them to ``writer``'s 'matrix' array;
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
    """How one backend holds a response: on the source's own memory or file (``in_place``, None
    if it cannot), from its converted cache (``open_cache(cf, src, dt, opts)``), or converted
    (``build(src, dt, opts, cache, info)``, filling ``info``)."""

    name = cache_kind = "abstract"

    def load(self, src: ResponseSource, dt: np.dtype, opts: ResponseOptions) -> ResponseOperator:
        op = self.in_place(src, dt, opts) if dt == src.file_dtype else None
        if op is not None:             # on the histogram's memory, or mapped where the file is
            op.info.update(cached=False, cache_path=None, mapped_source=src.path is not None)
            return op
        cache = None
        if opts.cache and src.path is not None:
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
        return None


class DenseStorage(Storage):
    name = cache_kind = "dense"

    def in_place(self, src, dt, opts):
        view = src.dense_view()            # no copy: the histogram's memory is the response
        if view is not None:
            return DenseResponse(view, *src.operator_args)
        offset = src.contiguous_offset()
        if offset is None:
            return None
        matrix = map_array(src.path, offset, (src.n_model, src.n_data), dt, opts.populate)
        return DenseResponse(matrix, *src.operator_args)

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
    """Rows streamed from the dense-layout cache file, or without a cache from a private
    temporary file."""

    name, cache_kind = "out-of-core", "dense"

    def in_place(self, src, dt, opts):
        offset = src.contiguous_offset()
        if offset is None:
            return None
        return OutOfCoreResponse(src.path, offset, dt, *src.operator_args,
                                 memory_budget=opts.memory_budget)

    def open_cache(self, cf, src, dt, opts):
        return OutOfCoreResponse(cf.path, cf.offset("matrix"), dt, *src.operator_args,
                                 memory_budget=opts.memory_budget,
                                 row_sums=np.array(cf["row_sums"]))

    def build(self, src, dt, opts, cache, info):
        if cache is None:
            tmpdir = Path(opts.cache_dir or os.environ.get(CACHE_ENV) or tempfile.gettempdir())
            tmpdir.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix="comptonsky-response-", suffix=".cache",
                                        dir=tmpdir)
            os.close(fd)
            writer = CacheWriter(name, _meta(src), prune=False)
        else:
            writer = cache.writer(_meta(src))
        budget = opts.memory_budget or DEFAULT_MEMORY_BUDGET
        try:
            row_sums = _stream_rows(src, dt, opts, writer=writer,
                                    target_bytes=min(LOAD_BLOCK_BYTES, max(1, budget // 2)))
            writer.close()
        except BaseException:
            writer.abort()
            if cache is None and writer.path.exists():
                writer.path.unlink()
            raise
        return OutOfCoreResponse(writer.path, int(writer.arrays["matrix"]["offset"]), dt,
                                 *src.operator_args, memory_budget=budget, row_sums=row_sums,
                                 unlink=cache is None)


class SparseStorage(Storage):
    name = cache_kind = "sparse"

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
        rows, row_kept, dropped, worst = build_rows(
            src.blocks(dt, opts.progress), src.n_model, src.n_data // src.n_psi, src.n_psi, dt,
            opts.sparse_threshold)
        op = SparseResponse(rows, None, *src.operator_args, threshold=opts.sparse_threshold,
                            dropped_flux_fraction=dropped, max_row_dropped_fraction=worst,
                            row_sums=row_kept)
        if cache is not None:
            writer = cache.writer({**_meta(src), "dropped_flux_fraction": dropped,
                                   "max_row_dropped_fraction": worst})
            try:
                for name in ("rows", "cols"):
                    for part in ("ptr", "idx", "val"):
                        writer.add(f"{name}_{part}", getattr(getattr(op, name), part))
                writer.add("row_sums", row_kept)
                info["cache_pending"] = cache.finish_in_background(writer)
            except BaseException:
                writer.abort()
                raise
        return op


STRATEGIES: dict[str, type[Storage]] = {s.name: s for s in (DenseStorage, SparseStorage,
                                                            OutOfCoreStorage)}


class LazyResponse:
    """A response to be loaded (``rsp``, a Histogram or file) with ``options``; its axes and unit
    are read at once, the operator on first use with the options set by then.

    Raises
    ------
    FileFormatError
        For a missing or malformed file (its axes are read at once).
    InvalidDataError
        For an in-memory response that is all zero.
    """

    def __init__(self, rsp: Histogram | str | os.PathLike, options: ResponseOptions):
        self.source = rsp
        self.options = options
        self.model_axes, self.data_axes, self.unit = probe_response(rsp)
        self._operator: ResponseOperator | None = None

    @property
    def loaded(self) -> bool:
        return self._operator is not None

    def configure(self, mapping: Mapping[str, Any], where: str) -> bool:
        """Change the options (True if they changed); a loaded operator made with other options
        is dropped."""
        new = ResponseOptions.from_mapping(mapping, where, base=self.options)
        if new == self.options:
            return False
        # reuse_products is applied by the fit, not by loading: it alone needs no new load
        same_load = dataclasses.replace(new, reuse_products=self.options.reuse_products)
        if self._operator is not None and same_load != self.options:
            logger.info("response %s: options changed to %s; it will be loaded again",
                        self.name, new)
            self._operator = None
        self.options = new
        return True

    def operator(self) -> ResponseOperator:
        """The operator, loaded on the first call with the options set by then."""
        if self._operator is None:
            self._operator = load_response(self.source, options=self.options)
        return self._operator

    @property
    def name(self) -> str:
        return "in-memory histogram" if isinstance(self.source, Histogram) else str(self.source)
