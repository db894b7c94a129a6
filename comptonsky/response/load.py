"""Turn a response histogram (or its HDF5 file) into a :class:`ResponseOperator`.

Loading by path reads the HDF5 dataset in row blocks straight into the chosen dtype and storage
(``h5py`` ``read_direct`` into the destination rows, HDF5 converting the type on the way: there is
never a full float64 copy), and writes a converted cache (:mod:`.cache`) that the next load
memory-maps in well under a second.

Storage modes (``storage=``):

``dense``
    One (n_model, n_data) matrix, BLAS matrix–vector products (:class:`DenseResponse`).
``sparse``
    Segmented CSR in both orientations with parallel numba kernels (:class:`SparseResponse`);
    elements below ``sparse_threshold`` × (the model element's maximum) are dropped and the
    dropped flux fraction is reported.
``out-of-core``
    Row blocks streamed from the converted cache file under ``memory_budget``
    (:class:`OutOfCoreResponse`).
``auto``
    The fastest that fits: sparse when it streams well under the dense bytes and fits, else dense
    when it fits, else out-of-core. "Fits" means within ``memory_budget`` if given, else 70 % of
    the available memory.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from histpy import Axes, HealpixAxis, Histogram
from tqdm.auto import tqdm

from ..errors import FileFormatError, InvalidDataError, InvalidParameterError, UnknownChoiceError
from ..frames import register_spacecraft_frame
from ..io.hdf5 import open_hdf5
from ..io.histogram import open_histogram
from .cache import (
    CACHE_ENV,
    CacheFile,
    CacheWriter,
    cache_file,
    cache_key,
    find_cache,
    map_array,
)
from .operator import DenseResponse, ResponseOperator
from .outofcore import OutOfCoreResponse, parse_memory
from .sparse import SegmentedCSR, SparseBuilder, SparseResponse, index_dtype, transpose

__all__ = ["load_response", "response_axes", "STORAGES", "DTYPES", "OPTIONS",
           "DEFAULT_SPARSE_THRESHOLD", "choose_storage"]

logger = logging.getLogger(__name__)

#: Axis labels of a Galactic point-source response, in order. The first may also be 'lb'.
RESPONSE_LABELS = ("NuLambda", "Ei", "Em", "Phi", "PsiChi")
IMAGE_AXIS_LABELS = ("NuLambda", "lb")
STORAGES = ("dense", "sparse", "out-of-core", "auto")
_STORAGE_ALIASES = {"outofcore": "out-of-core", "out_of_core": "out-of-core",
                    "ooc": "out-of-core"}
DTYPES = ("float64", "float32")
#: Keyword options of :func:`load_response` besides ``dtype`` and ``storage``.
OPTIONS = ("sparse_threshold", "memory_budget", "cache", "cache_dir", "populate", "progress",
           "device", "reuse_products")
DEVICES = ("cpu", "gpu", "auto")
#: Default relative threshold of the sparse storage.
DEFAULT_SPARSE_THRESHOLD = 1e-4
#: Target size of one block read from the file while loading.
LOAD_BLOCK_BYTES = 64 * 2 ** 20
#: Cache files this process is still writing (path → Future), so that a second load waits.
_PENDING: dict[str, Future] = {}
#: Default budget of the out-of-core mode when none is given.
DEFAULT_OUT_OF_CORE_BUDGET = 2 ** 30


def response_axes(rsp: Histogram | Axes, source: str = "response") -> tuple[Axes, Axes]:
    """Split a response's axes into model axes ``(lb, Ei)`` and data axes ``(Em, Phi, PsiChi)``.

    Parameters
    ----------
    rsp : histpy.Histogram or histpy.Axes
        The response histogram, or its axes.
    source : str
        Name used in error messages (the file).

    Raises
    ------
    FileFormatError
        If the labels are not ``(NuLambda|lb, Ei, Em, Phi, PsiChi)``.
    """
    axes = rsp if isinstance(rsp, Axes) else rsp.axes
    labels = tuple(str(lab) for lab in axes.labels)
    if len(labels) != 5 or labels[0] not in IMAGE_AXIS_LABELS or labels[1:] != RESPONSE_LABELS[1:]:
        raise FileFormatError(
            f"{source}: response axes are {list(labels)}, expected "
            f"['NuLambda' (or 'lb'), 'Ei', 'Em', 'Phi', 'PsiChi']"
        )
    image = axes[0]
    if not isinstance(image, HealpixAxis):
        raise FileFormatError(f"{source}: axis {labels[0]!r} must be a HEALPix axis, "
                              f"found {type(image).__name__}")
    lb = HealpixAxis(nside=image.nside, scheme=image.scheme, coordsys=image.coordsys,
                     label="lb")
    model_axes = Axes([lb, axes["Ei"]])
    data_axes = Axes([axes["Em"], axes["Phi"], axes["PsiChi"]])
    return model_axes, data_axes


# ------------------------------------------------------------------------------------------
# Sources: something that fills response rows j0:j1 into a (nb, n_data) array of any dtype.
# ------------------------------------------------------------------------------------------

class _Source:
    name: str
    path: Path | None = None
    axes: Axes
    unit: Any
    file_dtype: np.dtype
    row_align: int = 1

    def setup(self) -> None:
        self.model_axes, self.data_axes = response_axes(self.axes, self.name)
        self.n_model = int(np.prod(self.model_axes.nbins))
        self.n_data = int(np.prod(self.data_axes.nbins))

    def read(self, j0: int, j1: int, out: np.ndarray) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def close(self) -> None:
        pass


class _HistogramSource(_Source):
    """An in-memory histpy Histogram (dense or sparse contents)."""

    def __init__(self, hist: Histogram, name: str = "response"):
        self.name = name
        self.hist = hist
        self.axes = hist.axes
        self.unit = hist.unit
        raw = hist.contents
        self.values = getattr(raw, "value", raw)
        self.sparse = hasattr(self.values, "todense")
        dt = np.dtype(self.values.dtype)
        self.file_dtype = dt if dt in (np.float32, np.float64) else np.dtype(np.float64)
        self.setup()

    def read(self, j0: int, j1: int, out: np.ndarray) -> None:
        nb = j1 - j0
        block = self.values[j0:j1]
        if self.sparse:
            block = block.todense()
        out[:nb] = np.asarray(block).reshape(nb, self.n_data)

    def dense_view(self) -> np.ndarray | None:
        """The contents as a C-contiguous (n_model, n_data) view, if they are one."""
        if self.sparse:
            return None
        v = np.asarray(self.values)
        if not v.flags.c_contiguous:
            return None
        return v.reshape(self.n_model, self.n_data)


class _HDF5Source(_Source):
    """A histpy HDF5 file with dense contents, read block-wise with ``read_direct``."""

    def __init__(self, path: Path, group: str = "hist"):
        self.name = str(path)
        self.path = path
        register_spacecraft_frame()
        self.file = open_hdf5(path, rdcc_nbytes=256 * 2 ** 20, rdcc_nslots=100003)
        try:
            if group not in self.file:
                raise FileFormatError(f"{path}: no histogram group {group!r} (found "
                                      f"{sorted(self.file.keys())}); is this a histpy file?")
            g = self.file[group]
            fmt = g.attrs.get("format", "dense")
            fmt = fmt.decode() if isinstance(fmt, bytes) else str(fmt)
            if fmt != "dense" or not isinstance(g.get("contents"), h5py.Dataset):
                raise _NotDense(fmt)
            self.axes = Axes.open(g["axes"])
            unit = g.attrs.get("unit")
            self.unit = unit.decode() if isinstance(unit, bytes) else unit
            self.ds = g["contents"]
            if self.ds.dtype.kind != "f":
                raise FileFormatError(f"{path}: response contents have dtype {self.ds.dtype}, "
                                      "expected a floating-point type")
            self.file_dtype = np.dtype(self.ds.dtype)
            self.setup()
            nbins = [int(n) for n in self.axes.nbins]
            pad = []
            for stored, n, label in zip(self.ds.shape, nbins, self.axes.labels):
                if stored not in (n, n + 2):
                    raise FileFormatError(
                        f"{path}: contents dimension of axis {label!r} is {stored}, expected "
                        f"{n} (or {n + 2} with under/overflow)")
                pad.append(1 if stored == n + 2 else 0)
            self.sel_template = [slice(p, p + n) for p, n in zip(pad, nbins)]
            self.pad0 = pad[0]
            self.row_shape = tuple(nbins[1:])
            if self.ds.chunks is not None:
                self.row_align = int(self.ds.chunks[0])
        except BaseException:
            self.file.close()
            raise

    def contiguous_offset(self) -> int | None:
        """Byte offset of the contents if they can be memory-mapped as the (n_model, n_data)
        matrix (contiguous layout, no filters, no overflow bins, native byte order), else None."""
        if self.ds.chunks is not None or self.pad0 or any(s.start for s in self.sel_template):
            return None
        if not self.file_dtype.isnative:
            return None
        try:
            offset = self.ds.id.get_offset()
        except Exception:  # noqa: BLE001 - no storage allocated, external, ...
            return None
        return None if offset is None else int(offset)

    def read(self, j0: int, j1: int, out: np.ndarray) -> None:
        nb = j1 - j0
        sel = tuple([slice(self.pad0 + j0, self.pad0 + j1)] + self.sel_template[1:])
        dest = out[:nb].reshape((nb,) + self.row_shape)
        self.ds.read_direct(dest, source_sel=sel)

    def close(self) -> None:
        self.file.close()


class _NotDense(Exception):
    pass


def _open_source(rsp) -> _Source:
    if isinstance(rsp, Histogram):
        return _HistogramSource(rsp)
    path = Path(rsp)
    if not path.exists():
        raise FileFormatError(f"{path}: response file not found")
    try:
        return _HDF5Source(path)
    except _NotDense as exc:
        logger.info("%s: contents stored as %r; reading them whole", path, exc.args[0])
        return _HistogramSource(open_histogram(path), name=str(path))


# ------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------

def available_memory() -> int:
    """Bytes of memory available to a new allocation (psutil, else /proc/meminfo)."""
    try:
        import psutil
        return int(psutil.virtual_memory().available)
    except ImportError:  # pragma: no cover - psutil is a dependency
        try:
            with open("/proc/meminfo") as fh:
                for line in fh:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
    return 2 ** 62


def _block_rows(src: _Source, itemsize: int, target_bytes: int = LOAD_BLOCK_BYTES) -> int:
    rows = max(1, target_bytes // max(1, src.n_data * itemsize))
    align = max(1, src.row_align)
    rows = max(align, rows // align * align)
    return int(min(rows, src.n_model))


def _progress(src: _Source, progress: bool | None) -> tqdm:
    total = src.n_model * src.n_data * src.file_dtype.itemsize
    disable = (not progress) if progress is not None else (total < 256 * 2 ** 20 or None)
    return tqdm(total=total, unit="B", unit_scale=True, desc=f"reading {Path(src.name).name}",
                disable=disable, leave=False)


def _solid_angle(model_axes: Axes) -> np.ndarray:
    solid = model_axes["lb"].pixarea().to_value("sr")
    n_energy = model_axes["Ei"].nbins
    return np.full(model_axes["lb"].nbins * n_energy, solid, dtype=np.float64)


def _estimate_density(src: _Source, dtype: np.dtype, threshold: float, n_sample: int = 24
                      ) -> float:
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
    item = np.dtype(dtype).itemsize
    dense_bytes = n_model * n_data * item
    per = item + index_dtype(n_cols).itemsize
    sparse_stream = density * n_model * n_data * per
    sparse_peak = 3 * sparse_stream + LOAD_BLOCK_BYTES     # while building: pieces + both CSRs
    if sparse_stream < 0.6 * dense_bytes and sparse_peak < limit:
        return "sparse", (f"sparse streams {sparse_stream / 1e9:.2f} GB per product against "
                          f"{dense_bytes / 1e9:.2f} GB dense (density {density:.3f}) and fits")
    if 1.05 * dense_bytes + LOAD_BLOCK_BYTES < limit:
        return "dense", f"dense ({dense_bytes / 1e9:.2f} GB) fits in {limit / 1e9:.2f} GB"
    return "out-of-core", (f"neither dense ({dense_bytes / 1e9:.2f} GB) nor sparse "
                           f"(≈{sparse_peak / 1e9:.2f} GB to build) fits in {limit / 1e9:.2f} GB")


# ------------------------------------------------------------------------------------------
# Builders
# ------------------------------------------------------------------------------------------

def _build_dense(src: _Source, dtype: np.dtype, writer: CacheWriter | None, progress):
    matrix = np.empty((src.n_model, src.n_data), dtype=dtype)
    row_sums = np.empty(src.n_model, dtype=np.float64)
    step = _block_rows(src, dtype.itemsize)
    if writer is not None:
        writer.begin("matrix", dtype, (src.n_data,))
    with _progress(src, progress) as bar:
        for j0 in range(0, src.n_model, step):
            j1 = min(j0 + step, src.n_model)
            src.read(j0, j1, matrix[j0:j1])
            row_sums[j0:j1] = matrix[j0:j1].sum(axis=1, dtype=np.float64)
            if writer is not None:
                writer.append(matrix[j0:j1])
            bar.update((j1 - j0) * src.n_data * src.file_dtype.itemsize)
    if writer is not None:
        writer.end()
        writer.add("row_sums", row_sums)
    return matrix, row_sums


def _build_sparse(src: _Source, dtype: np.dtype, threshold: float, progress):
    n_psi = int(src.data_axes.nbins[-1])
    builder = SparseBuilder(src.n_model, src.n_data // n_psi, n_psi, dtype, threshold)
    step = _block_rows(src, dtype.itemsize)
    buf = np.empty((step, src.n_data), dtype=dtype)
    with _progress(src, progress) as bar:
        for j0 in range(0, src.n_model, step):
            j1 = min(j0 + step, src.n_model)
            src.read(j0, j1, buf)
            builder.add(j0, buf[:j1 - j0])
            bar.update((j1 - j0) * src.n_data * src.file_dtype.itemsize)
    del buf
    rows = builder.finish()
    cols = transpose(rows)
    return rows, cols, builder.dropped_flux_fraction, builder.max_row_dropped_fraction


def _write_rows(src: _Source, dtype: np.dtype, writer: CacheWriter, budget: int, progress):
    """Convert the source into the writer's 'matrix' array within ``budget`` bytes."""
    step = _block_rows(src, dtype.itemsize, min(LOAD_BLOCK_BYTES, max(1, budget // 2)))
    buf = np.empty((step, src.n_data), dtype=dtype)
    row_sums = np.empty(src.n_model, dtype=np.float64)
    writer.begin("matrix", dtype, (src.n_data,))
    with _progress(src, progress) as bar:
        for j0 in range(0, src.n_model, step):
            j1 = min(j0 + step, src.n_model)
            src.read(j0, j1, buf)
            row_sums[j0:j1] = buf[:j1 - j0].sum(axis=1, dtype=np.float64)
            writer.append(buf[:j1 - j0])
            writer.wait()                      # the buffer is reused
            bar.update((j1 - j0) * src.n_data * src.file_dtype.itemsize)
    writer.end()
    writer.add("row_sums", row_sums)
    return row_sums


def _sparse_from_cache(cf: CacheFile) -> tuple[SegmentedCSR, SegmentedCSR]:
    n_psi, n_model = int(cf.meta["n_psi"]), int(cf.meta["n_model"])
    rows = SegmentedCSR(cf["rows_ptr"], cf["rows_idx"], cf["rows_val"], n_psi)
    cols = SegmentedCSR(cf["cols_ptr"], cf["cols_idx"], cf["cols_val"], n_model)
    return rows, cols


# ------------------------------------------------------------------------------------------
# The entry point
# ------------------------------------------------------------------------------------------

def load_response(rsp: Histogram | str | os.PathLike, dtype: str | None = None,
                  storage: str | None = None, *,
                  sparse_threshold: float = DEFAULT_SPARSE_THRESHOLD,
                  memory_budget: str | int | None = None, cache: bool = True,
                  cache_dir: str | os.PathLike | None = None, populate: bool = True,
                  progress: bool | None = None, device: str = "cpu",
                  reuse_products: bool = True, **unknown) -> ResponseOperator:
    """Build a response operator from a histpy response histogram or HDF5 file.

    Parameters
    ----------
    rsp : histpy.Histogram or path-like
        Response with axes ``(NuLambda, Ei, Em, Phi, PsiChi)`` in cm² s, shape
        (n_pix, n_Ei, n_Em, n_Phi, n_PsiChi); the file may carry under/overflow bins.
    dtype : {'float64', 'float32'} or None
        Precision of the stored matrix; None keeps the file's (float64 is exact).
    storage : {'dense', 'sparse', 'out-of-core', 'auto'} or None
        How the matrix is held (see the module docstring); None means 'dense'.
    sparse_threshold : float
        Sparse storage: keep R_ij > sparse_threshold · max_i R_ij (≥ 0; 0 keeps every non-zero).
    memory_budget : int or str, optional
        Bytes (``"1 GiB"`` etc.) the response may use: the out-of-core block buffers, and the
        limit ``auto`` fits within (default: 1 GiB out-of-core; 70 % of available memory for
        ``auto``).
    cache : bool
        Keep and reuse a converted cache of a response *file* (ignored for in-memory input).
    cache_dir : path-like, optional
        Where the cache lives; default ``$COMPTONSKY_CACHE_DIR``, else beside the file (if
        writable), else ``~/.cache/comptonsky``.
    populate : bool
        Pre-fault a memory-mapped cache at load (``MAP_POPULATE``), so that the first iteration
        is as fast as the others.
    progress : bool or None
        Show a progress bar while reading (None: only for files over 256 MiB on a terminal).
    device : {'cpu', 'gpu', 'auto'}
        'gpu' holds a dense response in GPU memory (CuPy or PyTorch, whichever is importable
        with a CUDA device; :mod:`comptonsky.response.gpu`, untested on real hardware); 'auto'
        uses the GPU for dense storage when one is available, else the CPU.
    reuse_products : bool
        Let ``forward`` rebuild R·x from the last two forward products when x lies on their
        line up to a few elements (an accelerated RL step: one product saved per iteration);
        False streams the response for every call.

    Returns
    -------
    ResponseOperator
        :class:`DenseResponse`, :class:`SparseResponse` or :class:`OutOfCoreResponse`; its
        attribute ``load_info`` records the storage chosen, whether the cache was used, the
        cache path and the load time (s).

    Raises
    ------
    UnknownChoiceError
        For an unknown storage, dtype or option.
    FileFormatError
        For a missing or malformed file.
    InvalidDataError
        If the response has no exposure.
    """
    t0 = time.perf_counter()
    if unknown:
        name = sorted(unknown)[0]
        raise UnknownChoiceError("response option", name, ("dtype", "storage") + OPTIONS)
    storage = "dense" if storage is None else _STORAGE_ALIASES.get(str(storage), str(storage))
    if storage not in STORAGES:
        raise UnknownChoiceError("response storage", storage, STORAGES)
    if dtype is not None:
        dtype = np.dtype(dtype).name if isinstance(dtype, type) else str(dtype)
        if dtype not in DTYPES:
            raise UnknownChoiceError("response dtype", dtype, DTYPES)
    try:
        sparse_threshold = float(sparse_threshold)
    except (TypeError, ValueError):
        sparse_threshold = -1.0
    if not (0.0 <= sparse_threshold < 1.0):
        raise InvalidParameterError(f"sparse_threshold: expected a number in [0, 1), found "
                                    f"{sparse_threshold!r}")
    budget = parse_memory(memory_budget)
    if str(device) not in DEVICES:
        raise UnknownChoiceError("response device", str(device), DEVICES)

    src = _open_source(rsp)
    try:
        dt = np.dtype(dtype) if dtype is not None else src.file_dtype
        reason = "requested"
        if storage == "auto":
            limit = budget if budget is not None else int(0.7 * available_memory())
            density = _estimate_density(src, dt, sparse_threshold)
            storage, reason = choose_storage(src.n_model, src.n_data, dt, density, limit,
                                             int(src.data_axes.nbins[-1]))
            logger.info("response storage 'auto' → %r: %s", storage, reason)
        op, info = _load(src, dt, storage, sparse_threshold, budget, cache, cache_dir,
                         populate, progress)
    finally:
        src.close()
    if not np.any(op.exposure > 0):
        raise InvalidDataError(f"{src.name}: the response has no exposure (all entries are zero)")
    op = _maybe_gpu(op, str(device))
    op.reuse_products = bool(reuse_products)
    info.update(storage=storage, reason=reason, dtype=str(dt), seconds=time.perf_counter() - t0,
                device=getattr(op, "device", "cpu"))
    op.load_info = info
    extra = ""
    if isinstance(op, SparseResponse):
        extra = (f", threshold {op.threshold:g}: {op.nnz} elements (density {op.density:.4f}), "
                 f"dropped flux fraction {op.dropped_flux_fraction:.3g} (worst model element "
                 f"{op.max_row_dropped_fraction:.3g})")
    logger.info("response %s: %d model × %d data elements, %s %s, %.1f MB held, %s in %.2f s%s",
                src.name, op.n_model, op.n_data, storage, dt, op.nbytes / 1e6,
                "from cache" if info.get("cached") else "converted", info["seconds"], extra)
    return op


def _maybe_gpu(op: ResponseOperator, device: str) -> ResponseOperator:
    """Move a dense response to the GPU when asked (or, for 'auto', when one is present)."""
    if device == "cpu":
        return op
    from .gpu import GPUDenseResponse, gpu_backend
    backend = gpu_backend()
    if device == "auto" and (backend is None or not isinstance(op, DenseResponse)):
        return op
    if not isinstance(op, DenseResponse):
        raise InvalidParameterError(f"response device 'gpu' supports storage 'dense' only, "
                                    f"found storage {op.storage!r}")
    return GPUDenseResponse(op.matrix, op.model_axes, op.data_axes, op.pixel_solid_angle,
                            op.unit, row_sums=op._row_sums(), backend=backend)


def _load(src: _Source, dt: np.dtype, storage: str, threshold: float, budget: int | None,
          cache: bool, cache_dir, populate: bool, progress) -> tuple[ResponseOperator, dict]:
    common = (src.model_axes, src.data_axes, _solid_angle(src.model_axes),
              src.unit if src.unit is not None else "cm2 s")
    info: dict[str, Any] = {"cached": False, "cache_path": None}
    kind = "sparse" if storage == "sparse" else "dense"     # out-of-core shares the dense file
    thr = threshold if kind == "sparse" else None
    use_cache = bool(cache) and src.path is not None
    target = None
    key = None
    if use_cache:
        key = cache_key(src.path, dt.name, kind, thr)
        target = cache_file(src.path, key, kind, dt.name, cache_dir)
        info["cache_path"] = str(target)
        pending = _PENDING.pop(str(target), None)
        if pending is not None:                  # this process is writing it: let it finish
            try:
                pending.result()
            except Exception:  # noqa: BLE001 - logged by the writer; convert again below
                pass
        cf = find_cache(target, key, populate=populate and storage != "out-of-core")
        if cf is not None:
            info["cached"] = True
            return _from_cache(cf, target, storage, dt, common, budget), info
    offset = (src.contiguous_offset()
               if isinstance(src, _HDF5Source) and storage in ("dense", "out-of-core")
               and dt == src.file_dtype else None)
    if offset is not None:
        # the file already holds the matrix in this dtype: map (or stream) it where it lies
        info.update(mapped_source=True, cache_path=None)
        if storage == "dense":
            matrix = map_array(src.path, offset, (src.n_model, src.n_data), dt, populate)
            return DenseResponse(matrix, *common), info
        return OutOfCoreResponse(src.path, offset, dt, *common,
                                 memory_budget=budget if budget is not None
                                 else DEFAULT_OUT_OF_CORE_BUDGET), info
    meta = {"key": key,
            "source": src.name, "storage": kind, "dtype": dt.name, "threshold": thr,
            "n_model": src.n_model, "n_data": src.n_data,
            "n_psi": int(src.data_axes.nbins[-1])}

    if storage == "dense":
        if isinstance(src, _HistogramSource) and src.file_dtype == dt:
            view = src.dense_view()
            if view is not None:       # no copy: the histogram's memory is the response
                return DenseResponse(view, *common), info
        writer = CacheWriter(target, meta) if use_cache else None
        try:
            matrix, row_sums = _build_dense(src, dt, writer, progress)
            if writer is not None:        # the rows are final: finish the cache behind us
                info["cache_pending"] = _PENDING[str(target)] = writer.close_in_background()
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
        return DenseResponse(matrix, *common, row_sums=row_sums), info

    if storage == "sparse":
        rows, cols, dropped, worst = _build_sparse(src, dt, threshold, progress)
        meta.update(dropped_flux_fraction=dropped, max_row_dropped_fraction=worst)
        if use_cache:
            writer = CacheWriter(target, meta)
            try:
                for name, s in (("rows", rows), ("cols", cols)):
                    writer.add(f"{name}_ptr", s.ptr)
                    writer.add(f"{name}_idx", s.idx)
                    writer.add(f"{name}_val", s.val)
                info["cache_pending"] = _PENDING[str(target)] = writer.close_in_background()
            except BaseException:
                writer.abort()
                raise
        return SparseResponse(rows, cols, *common, threshold=threshold,
                              dropped_flux_fraction=dropped, max_row_dropped_fraction=worst), info

    # out-of-core: convert into a file (the cache, or a private temporary file), then stream it
    budget = budget if budget is not None else DEFAULT_OUT_OF_CORE_BUDGET
    unlink = target is None
    if target is None:
        tmpdir = Path(cache_dir or os.environ.get(CACHE_ENV) or tempfile.gettempdir())
        tmpdir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix="comptonsky-response-", suffix=".cache", dir=tmpdir)
        os.close(fd)
        target = Path(name)
    writer = CacheWriter(target, meta, background=False, prune=not unlink)
    try:
        row_sums = _write_rows(src, dt, writer, budget, progress)
        writer.close()
    except BaseException:
        writer.abort()
        if unlink and target.exists():
            target.unlink()
        raise
    offset = int(writer.arrays["matrix"]["offset"])
    return OutOfCoreResponse(target, offset, dt, *common, memory_budget=budget,
                             row_sums=row_sums, unlink=unlink), info


def _from_cache(cf: CacheFile, path: Path, storage: str, dt: np.dtype, common, budget):
    logger.debug("using response cache %s", path)
    if storage == "dense":
        return DenseResponse(cf["matrix"], *common, row_sums=np.array(cf["row_sums"]))
    if storage == "sparse":
        rows, cols = _sparse_from_cache(cf)
        return SparseResponse(rows, cols, *common, threshold=float(cf.meta["threshold"]),
                              dropped_flux_fraction=float(cf.meta["dropped_flux_fraction"]),
                              max_row_dropped_fraction=float(cf.meta["max_row_dropped_fraction"]))
    row_sums = np.array(cf["row_sums"])
    offset = cf.offset("matrix")
    return OutOfCoreResponse(path, offset, dt, *common,
                             memory_budget=budget if budget is not None
                             else DEFAULT_OUT_OF_CORE_BUDGET, row_sums=row_sums)
