"""Turn a response histogram (or its histpy HDF5 file) into a response operator.

A load goes one way: source (:mod:`.source`) → storage strategy (chosen once from the
:class:`~.options.ResponseOptions`) → operator. A strategy holds the operator on the source's own
memory or file when it can, else opens its converted cache (:mod:`.cache`), else converts the
source in row blocks, writing the cache as it goes. Dense and out-of-core share one cache layout
(the matrix and its row sums), sparse has its own (both CSR orientations and the row sums).

A cache is trusted only after its checks (:mod:`.cache`: footer, checksums) and those here:
shapes and dtypes against the response, index ranges of sparse arrays (before any kernel runs),
sampled rows against the response file, and for sparse storage the two orientations against
each other and the row sums. A failed check removes the cache with a warning and converts again;
a cache folder that cannot be written means running without a cache, with one warning.
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

from ..errors import InvalidCacheError, InvalidDataError, InvalidParameterError, OutputError
from .cache import CACHE_ENV, CacheFile, CacheWriter, ResponseCache, file_array, sweep_orphans
from .dense import DenseResponse
from .operator import ResponseOperator
from .options import ResponseOptions
from .outofcore import DEFAULT_MEMORY_BUDGET, OutOfCoreResponse
from .source import LOAD_BLOCK_BYTES, ResponseSource, open_source, probe_response
from .sparse import SegmentedCSR, SparseResponse, build_rows, index_dtype, psi_groups_for
from .validate import ValueCheck, check_csr

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

    def cache_layout(self, src: ResponseSource) -> dict[str, Any] | None:
        """The layout of the converted arrays, part of the cache key (None: the kind's only)."""
        return None

    def load(self, src: ResponseSource, dt: np.dtype, opts: ResponseOptions) -> ResponseOperator:
        op = self.in_place(src, dt, opts) if dt == src.file_dtype else None
        if op is not None:             # on the histogram's memory, or the file read as stored
            op.info.update(cached=False, cache_path=None, in_place=True)
            op.info.setdefault("mapped_source", False)
            return op
        cache = None
        if opts.cache and src.path is not None:
            threshold = opts.sparse_threshold if self.cache_kind == "sparse" else None
            cache = ResponseCache(src.path, src.fingerprint(), dt.name, self.cache_kind,
                                  threshold, opts.cache_dir, layout=self.cache_layout(src))
            cf = cache.find(populate=opts.populate and self.name != "out-of-core",
                            verify=opts.verify_cache, map_files=opts.map_files)
            if cf is not None:
                try:
                    op = self.open_cache(cf, src, dt, opts)
                except InvalidCacheError as exc:
                    cache.discard(exc)
                else:
                    logger.debug("using response cache %s", cache.path)
                    op.info.update(cached=True, cache_path=str(cache.path),
                                   mapped=cf.mapped)
                    return op
                finally:
                    cf.close()
        info: dict[str, Any] = {"cached": False,
                                "cache_path": None if cache is None else str(cache.path)}
        op = self.build(src, dt, opts, cache, info)
        op.info.update(info)
        return op

    def in_place(self, src, dt, opts) -> ResponseOperator | None:
        return None


def _writer(cache: ResponseCache | None, meta: dict[str, Any], info: dict[str, Any]
            ) -> CacheWriter | None:
    """A writer of ``cache``, or None (no cache, or its folder cannot be written: one warning,
    and the load goes on without a cache)."""
    if cache is None:
        return None
    try:
        return cache.writer(meta)
    except OutputError as exc:
        logger.warning("cannot write the response cache (%s); running without a cache",
                       " ".join(str(exc).split()))
        info["cache_path"] = None
        return None


def _expect(cf: CacheFile, name: str, shape: tuple[int, ...], dtypes) -> None:
    """Array ``name`` of ``cf`` exists with ``shape`` (None entries: any) and a dtype in
    ``dtypes``, else InvalidCacheError."""
    if name not in cf:
        raise InvalidCacheError(f"{cf.path}: no array {name!r}")
    got = cf.shape(name)
    if len(got) != len(shape) or any(e is not None and g != e for g, e in zip(got, shape)) or \
            cf.dtype(name) not in [np.dtype(d) for d in dtypes]:
        raise InvalidCacheError(f"{cf.path}: array {name!r} is {cf.dtype(name)} {got}, expected "
                                f"{'/'.join(str(np.dtype(d)) for d in dtypes)} {shape}")


def _check_meta(cf: CacheFile, src: ResponseSource) -> None:
    for key, value in _meta(src).items():
        if cf.meta.get(key) != value:
            raise InvalidCacheError(f"{cf.path}: {key} {cf.meta.get(key)!r}, expected {value} "
                                    f"from {src.name}")


def _sample_rows(n_model: int, n: int = 3) -> list[int]:
    """``n`` random rows (unpredictable: a planted cache cannot know which are compared)."""
    rng = np.random.default_rng()
    return sorted({int(j) for j in rng.integers(0, n_model, n)})


def _check_row_sums(cf: CacheFile, row_sums: np.ndarray) -> None:
    if not (np.all(np.isfinite(row_sums)) and np.all(row_sums >= 0)):
        raise InvalidCacheError(f"{cf.path}: row sums not all finite and ≥ 0")


def _check_values(cf: CacheFile, src: ResponseSource, name: str, matrix: np.ndarray) -> None:
    """Array ``name`` finite and ≥ 0 (a forged checksum would not catch a NaN)."""
    try:
        ValueCheck(f"{cf.path}: {name}", src.axes.labels, src.axes.nbins).matrix(
            matrix.reshape(src.n_model, -1) if name == "matrix" else matrix.reshape(1, -1))
    except InvalidDataError as exc:
        raise InvalidCacheError(str(exc)) from None


def _check_dense_cache(cf: CacheFile, src: ResponseSource, dt: np.dtype,
                       matrix: np.ndarray | None = None) -> np.ndarray:
    """Check a dense-layout cache against ``src`` (and ``matrix``, its values, when held);
    returns its row sums."""
    _check_meta(cf, src)
    _expect(cf, "matrix", (src.n_model, src.n_data), [dt])
    _expect(cf, "row_sums", (src.n_model,), [np.float64])
    row_sums = np.array(cf["row_sums"])
    _check_row_sums(cf, row_sums)
    if matrix is not None:
        _check_values(cf, src, "matrix", matrix)
    buf = np.empty((1, src.n_data), dtype=dt)
    for j in _sample_rows(src.n_model):
        src.read(j, j + 1, buf)
        if not np.array_equal(cf.row("matrix", j), buf[0]):
            raise InvalidCacheError(f"{cf.path}: row {j} differs from the response file "
                                    f"{src.name}")
        total = float(buf[0].sum(dtype=np.float64))
        if not np.isclose(row_sums[j], total, rtol=1e-9, atol=0):
            raise InvalidCacheError(f"{cf.path}: row sum {j} is {row_sums[j]!r}, expected "
                                    f"{total!r}")
    return row_sums


class DenseStorage(Storage):
    name = cache_kind = "dense"

    def in_place(self, src, dt, opts):
        view = src.dense_view()            # no copy: the histogram's memory is the response
        if view is not None:
            src.check.matrix(view)
            return DenseResponse(view, *src.operator_args)
        offset = src.contiguous_offset()
        if offset is None:
            return None
        matrix, mapped = file_array(src.path, offset, (src.n_model, src.n_data), dt,
                                    opts.populate, opts.map_files, src.check)
        if not mapped:
            logger.info("%s: read into memory (not memory-mapped: the file can be changed in "
                        "place; response option map_files)", src.name)
        op = DenseResponse(matrix, *src.operator_args)
        op.info.update(mapped_source=mapped)
        return op

    def open_cache(self, cf, src, dt, opts):
        _expect(cf, "matrix", (src.n_model, src.n_data), [dt])
        matrix = cf["matrix"]
        row_sums = _check_dense_cache(cf, src, dt, matrix)
        return DenseResponse(matrix, *src.operator_args, row_sums=row_sums)

    def build(self, src, dt, opts, cache, info):
        matrix = np.empty((src.n_model, src.n_data), dtype=dt)
        writer = _writer(cache, _meta(src), info)
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
        op = OutOfCoreResponse(src.path, offset, dt, *src.operator_args,
                               memory_budget=opts.memory_budget)
        for j0, _, block in op._blocks():  # noqa: SLF001 - one checking pass over the file
            src.check.block(j0, block)
        op.info.update(mapped_source=False, read_from_source=True)
        return op

    def open_cache(self, cf, src, dt, opts):
        _expect(cf, "matrix", (src.n_model, src.n_data), [dt])
        cf.check("matrix")
        row_sums = _check_dense_cache(cf, src, dt)
        return OutOfCoreResponse(cf.path, cf.offset("matrix"), dt, *src.operator_args,
                                 memory_budget=opts.memory_budget, row_sums=row_sums)

    def build(self, src, dt, opts, cache, info):
        writer = _writer(cache, _meta(src), info)
        if writer is None:
            writer = _private_writer(src, opts)
            cache = None
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

    def cache_layout(self, src):
        return {"psi_groups": psi_groups_for(src.n_psi)}

    def open_cache(self, cf, src, dt, opts):
        _check_meta(cf, src)
        n_psi, n_model, n_seg = src.n_psi, src.n_model, src.n_data // src.n_psi
        groups = psi_groups_for(n_psi)
        if cf.meta.get("psi_groups") != groups:
            raise InvalidCacheError(f"{cf.path}: footer psi_groups {cf.meta.get('psi_groups')!r}"
                                    f", expected {groups}")
        for name, n_sg, n_rows, n_cols in (("rows", n_seg, n_model, n_psi),
                                           ("cols", groups * n_seg, n_psi // groups, n_model)):
            _expect(cf, f"{name}_ptr", (n_sg, n_rows + 1), [np.int64])
            _expect(cf, f"{name}_idx", (None,), [index_dtype(n_cols)])
            _expect(cf, f"{name}_val", cf.shape(f"{name}_idx"), [dt])
            check_csr(cf[f"{name}_ptr"], cf[f"{name}_idx"], cf[f"{name}_val"], n_sg, n_rows,
                      n_cols, f"{cf.path}: {name}")
            _check_values(cf, src, f"{name}_val", cf[f"{name}_val"])
        _expect(cf, "row_sums", (n_model,), [np.float64])
        row_sums = np.array(cf["row_sums"])
        _check_row_sums(cf, row_sums)
        try:
            threshold = float(cf.meta["threshold"])
            fractions = [float(cf.meta[k]) for k in ("dropped_flux_fraction",
                                                     "max_row_dropped_fraction")]
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidCacheError(f"{cf.path}: malformed footer entry ({exc})") from None
        if threshold != opts.sparse_threshold:
            raise InvalidCacheError(f"{cf.path}: threshold {threshold}, expected "
                                    f"{opts.sparse_threshold}")
        rows = SegmentedCSR(cf["rows_ptr"], cf["rows_idx"], cf["rows_val"], n_psi)
        cols = SegmentedCSR(cf["cols_ptr"], cf["cols_idx"], cf["cols_val"], n_model)  # grouped
        if rows.nnz != cols.nnz:
            raise InvalidCacheError(f"{cf.path}: {rows.nnz} elements in rows, {cols.nnz} in "
                                    "cols")
        _check_sparse_rows(cf, src, dt, rows, row_sums, threshold)
        op = SparseResponse(rows, cols, *src.operator_args, threshold=threshold,
                            dropped_flux_fraction=fractions[0],
                            max_row_dropped_fraction=fractions[1], row_sums=row_sums,
                            psi_groups=groups)
        _check_orientations(cf, op, row_sums)
        return op

    def build(self, src, dt, opts, cache, info):
        rows, row_kept, dropped, worst = build_rows(
            src.blocks(dt, opts.progress), src.n_model, src.n_data // src.n_psi, src.n_psi, dt,
            opts.sparse_threshold)
        op = SparseResponse(rows, None, *src.operator_args, threshold=opts.sparse_threshold,
                            dropped_flux_fraction=dropped, max_row_dropped_fraction=worst,
                            row_sums=row_kept)
        writer = _writer(cache, {**_meta(src), "dropped_flux_fraction": dropped,
                                 "max_row_dropped_fraction": worst,
                                 "psi_groups": op.psi_groups}, info)
        if writer is not None:
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


def _private_writer(src: ResponseSource, opts: ResponseOptions) -> CacheWriter:
    """A writer of an unnamed out-of-core file (removed once opened) in ``cache_dir``,
    ``$COMPTONSKY_CACHE_DIR`` or the temporary folder, the first that can be written.

    Raises
    ------
    OutputError
        If none can.
    """
    dirs = [d for d in (opts.cache_dir, os.environ.get(CACHE_ENV)) if d]
    error: OutputError | None = None
    for d in [*dirs, tempfile.gettempdir()]:
        tmpdir = Path(d).expanduser()
        name = tmpdir / f"comptonsky-response-{os.getpid()}-{os.urandom(6).hex()}.cache"
        try:
            sweep_orphans(tmpdir)
            return CacheWriter(name, _meta(src), prune=False)
        except OutputError as exc:
            error = exc
    raise error


def _sparse_row(csr: SegmentedCSR, j: int, width: int, dtype) -> np.ndarray:
    """Row ``j`` of every segment of ``csr``, dense (n_seg, width)."""
    out = np.zeros((csr.n_seg, width), dtype=dtype)
    for k in range(csr.n_seg):
        s, e = int(csr.ptr[k, j]), int(csr.ptr[k, j + 1])
        out[k, csr.idx[s:e].astype(np.int64)] = csr.val[s:e]
    return out


def _check_sparse_rows(cf, src, dt, rows: SegmentedCSR, row_sums, threshold) -> None:
    """Sampled rows of the rows orientation against the response file, kept as when built."""
    buf = np.empty((1, src.n_data), dtype=dt)
    for j in _sample_rows(src.n_model):
        src.read(j, j + 1, buf)
        thr = dt.type(0) if threshold == 0.0 else \
            (np.float64(buf[0].max()) * threshold).astype(dt)
        kept = np.where(buf[0] > thr, buf[0], 0).reshape(rows.n_seg, rows.n_cols)
        if not np.array_equal(_sparse_row(rows, j, rows.n_cols, dt), kept):
            raise InvalidCacheError(f"{cf.path}: row {j} differs from the response file "
                                    f"{src.name}")
        total = float(kept.sum(dtype=np.float64))
        if not np.isclose(row_sums[j], total, rtol=1e-6, atol=0):
            raise InvalidCacheError(f"{cf.path}: row sum {j} is {row_sums[j]!r}, expected "
                                    f"{total!r}")


def _check_orientations(cf, op: SparseResponse, row_sums: np.ndarray) -> None:
    """The forward orientation is the transpose of the adjoint one (zᵀ(R x) = (Rᵀ z)ᵀ x for
    random x, z) and the row sums are Rᵀ 1 (indices already checked: the kernels are safe)."""
    rng = np.random.default_rng()
    x, z = rng.random(op.n_model), rng.random(op.n_data)
    a, b = float(z @ op._matvec(x)), float(op._rmatvec(z) @ x)
    tol = 1e-4 if op.dtype == np.float32 else 1e-9
    if not abs(a - b) <= tol * max(abs(a), abs(b), 1e-300):
        raise InvalidCacheError(f"{cf.path}: the two sparse orientations disagree "
                                f"(zᵀRx {a:.9g} against (Rᵀz)ᵀx {b:.9g})")
    sums = op._rmatvec(np.ones(op.n_data))
    if not np.allclose(sums, row_sums, rtol=tol, atol=tol * max(float(row_sums.max()), 0.0)):
        j = int(np.argmax(np.abs(sums - row_sums)))
        raise InvalidCacheError(f"{cf.path}: row sum {j} is {row_sums[j]!r}, the stored "
                                f"elements sum to {sums[j]!r}")


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
