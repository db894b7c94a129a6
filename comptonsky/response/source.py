"""Where a response's values come from: a histpy Histogram in memory or a histpy HDF5 file.

A source knows the response's axes, unit and stored dtype and fills rows j0:j1 of the
(n_model, n_data) matrix into any float array: a file is read block-wise with h5py
``read_direct`` straight into the destination rows (HDF5 converting the type on the way, so a
float32 load never holds a float64 copy). Values come out in cm² s (a file in ``m2 s`` is scaled
as it is read; :func:`~.validate.unit_factor`), and every block read is checked for NaN,
infinite and negative elements (:class:`~.validate.ValueCheck`).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from histpy import Axes, HealpixAxis, Histogram
from tqdm.auto import tqdm

from ..errors import FileFormatError, InvalidDataError
from ..frames import register_spacecraft_frame
from ..io.hdf5 import open_hdf5
from ..io.histogram import open_histogram
from .validate import RESPONSE_UNIT, ValueCheck, unit_factor

__all__ = ["response_axes", "ResponseSource", "HistogramSource", "HDF5Source", "open_source",
           "probe_response", "LOAD_BLOCK_BYTES"]

logger = logging.getLogger(__name__)

#: Target size of one block read from the file while loading.
LOAD_BLOCK_BYTES = 64 * 2 ** 20


def response_axes(rsp: Histogram | Axes, source: str = "response") -> tuple[Axes, Axes]:
    """Model axes ``(lb, Ei)`` and data axes ``(Em, Phi, PsiChi)`` of a response (or its axes).

    Raises
    ------
    FileFormatError
        If the labels are not ``(NuLambda|lb, Ei, Em, Phi, PsiChi)`` (``source`` names the file).
    """
    axes = rsp if isinstance(rsp, Axes) else rsp.axes
    labels = tuple(str(lab) for lab in axes.labels)
    if len(labels) != 5 or labels[0] not in ("NuLambda", "lb") or \
            labels[1:] != ("Ei", "Em", "Phi", "PsiChi"):
        raise FileFormatError(
            f"{source}: response axes are {list(labels)}, expected "
            f"['NuLambda' (or 'lb'), 'Ei', 'Em', 'Phi', 'PsiChi']")
    image = axes[0]
    if not isinstance(image, HealpixAxis):
        raise FileFormatError(f"{source}: axis {labels[0]!r} must be a HEALPix axis, "
                              f"found {type(image).__name__}")
    lb = HealpixAxis(nside=image.nside, scheme=image.scheme, coordsys=image.coordsys,
                     label="lb")
    return Axes([lb, axes["Ei"]]), Axes([axes["Em"], axes["Phi"], axes["PsiChi"]])


class ResponseSource:
    """Rows of a response matrix (a context manager): ``name``, ``path`` (the file, or None),
    ``model_axes``, ``data_axes``, ``unit`` (always cm² s: the values are converted),
    ``file_unit`` and ``scale`` (the stored unit and the factor to cm² s), ``file_dtype`` (the
    stored precision), ``row_align`` (rows per chunk of the file), ``n_model``, ``n_data``,
    ``n_psi``, ``check`` (the :class:`~.validate.ValueCheck` every block read passes)."""

    path: Path | None = None
    row_align: int = 1
    scale: float = 1.0

    def _setup(self, axes: Axes, unit) -> None:
        self.axes, self.file_unit = axes, unit
        self.model_axes, self.data_axes = response_axes(axes, self.name)
        self.scale = unit_factor(unit, self.name)
        self.unit = RESPONSE_UNIT
        if self.scale != 1.0:
            logger.info("%s: response unit %s, values scaled by %g to cm2 s", self.name, unit,
                        self.scale)
        self.n_model = int(np.prod(self.model_axes.nbins))
        self.n_data = int(np.prod(self.data_axes.nbins))
        self.n_psi = int(self.data_axes.nbins[-1])
        self.check = ValueCheck(self.name, axes.labels, axes.nbins)

    def _scale(self, out: np.ndarray) -> None:
        if self.scale != 1.0:
            np.multiply(out, out.dtype.type(self.scale), out=out)

    @property
    def operator_args(self) -> tuple:
        """(model_axes, data_axes, pixel_solid_angle, unit) of the response operator."""
        solid = np.full(self.n_model, self.model_axes["lb"].pixarea().to_value("sr"))
        return (self.model_axes, self.data_axes, solid, self.unit)

    def read(self, j0: int, j1: int, out: np.ndarray) -> None:  # pragma: no cover - abstract
        """Fill ``out[:j1 - j0]`` (shape (·, n_data)) with rows j0:j1, in cm² s (not checked:
        :meth:`blocks` checks)."""
        raise NotImplementedError

    def fingerprint(self, n_rows: int = 8) -> str:
        """A digest of the response's identity: shapes, stored dtype and unit, and the values of
        ``n_rows`` evenly spaced rows (cheap; part of a converted cache's key)."""
        h = hashlib.sha256(repr((self.n_model, self.n_data, self.n_psi, self.file_dtype.str,
                                 str(self.file_unit), self.scale)).encode())
        buf = np.empty((1, self.n_data), dtype=self.file_dtype)
        for j in np.unique(np.linspace(0, self.n_model - 1, min(n_rows, self.n_model))
                           .astype(int)):
            self.read(int(j), int(j) + 1, buf)
            h.update(memoryview(buf).cast("B"))
        return h.hexdigest()

    def block_rows(self, itemsize: int, target_bytes: int = LOAD_BLOCK_BYTES) -> int:
        """Rows per read block: about ``target_bytes``, a multiple of the file's row chunks."""
        rows = max(1, target_bytes // max(1, self.n_data * itemsize))
        align = max(1, self.row_align)
        return int(min(max(align, rows // align * align), self.n_model))

    def blocks(self, dtype, progress: bool | None = None, target_bytes: int = LOAD_BLOCK_BYTES,
               out: np.ndarray | None = None) -> Iterator[tuple[int, int, np.ndarray]]:
        """Read the matrix in row blocks, yielding (j0, j1, rows (j1 − j0, n_data)), into ``out``
        (n_model, n_data) if given, else into one reused buffer (the caller is done with a block
        before asking for the next). ``progress`` None: a bar for over 256 MiB on a terminal."""
        dtype = np.dtype(dtype)
        step = self.block_rows(dtype.itemsize, target_bytes)
        buf = None if out is not None else np.empty((step, self.n_data), dtype=dtype)
        total = self.n_model * self.n_data * self.file_dtype.itemsize
        disable = (not progress) if progress is not None else (total < 256 * 2 ** 20 or None)
        with tqdm(total=total, unit="B", unit_scale=True, desc=f"reading {Path(self.name).name}",
                  disable=disable, leave=False) as bar:
            for j0 in range(0, self.n_model, step):
                j1 = min(j0 + step, self.n_model)
                dest = out[j0:j1] if out is not None else buf[:j1 - j0]
                self.read(j0, j1, dest)
                self.check.block(j0, dest)
                yield j0, j1, dest
                bar.update((j1 - j0) * self.n_data * self.file_dtype.itemsize)

    def dense_view(self) -> np.ndarray | None:
        """The values as a C-contiguous (n_model, n_data) array without a copy, if possible."""
        return None

    def contiguous_offset(self) -> int | None:
        """Byte offset of the values in the file if it can be mapped as the matrix, else None."""
        return None

    def close(self) -> None:
        pass

    def __enter__(self) -> ResponseSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class HistogramSource(ResponseSource):
    """An in-memory histpy Histogram (dense or sparse contents)."""

    def __init__(self, hist: Histogram, name: str = "response"):
        self.name = name
        raw = hist.contents
        self.values = getattr(raw, "value", raw)
        self.sparse = hasattr(self.values, "todense")
        dt = np.dtype(self.values.dtype)
        self.file_dtype = dt if dt in (np.float32, np.float64) else np.dtype(np.float64)
        self._setup(hist.axes, hist.unit)

    def read(self, j0, j1, out):
        block = self.values[j0:j1]
        if self.sparse:
            block = block.todense()
        out[:j1 - j0] = np.asarray(block).reshape(j1 - j0, self.n_data)
        self._scale(out[:j1 - j0])

    def dense_view(self):
        if self.sparse or self.scale != 1.0:
            return None
        v = np.asarray(self.values)
        return v.reshape(self.n_model, self.n_data) if v.flags.c_contiguous else None


def _header(f: h5py.File, path) -> tuple[h5py.Group, Axes, Any]:
    """The histogram group of a histpy file, its axes and unit."""
    if "hist" not in f:
        raise FileFormatError(f"{path}: no histogram group 'hist' (found {sorted(f.keys())}); "
                              "is this a histpy file?")
    g = f["hist"]
    unit = g.attrs.get("unit")
    return g, Axes.open(g["axes"]), unit.decode() if isinstance(unit, bytes) else unit


class HDF5Source(ResponseSource):
    """A histpy HDF5 file with dense contents, read block-wise with ``read_direct`` (made by
    :func:`open_source`, which reads other layouts whole)."""

    def __init__(self, path: Path, file: h5py.File):
        self.name = str(path)
        self.path = path
        self.file = file
        g, axes, unit = _header(file, path)
        self.ds = g["contents"]
        if self.ds.dtype.kind != "f":
            raise FileFormatError(f"{path}: response contents have dtype {self.ds.dtype}, "
                                  "expected a floating-point type")
        self.file_dtype = np.dtype(self.ds.dtype)
        self._setup(axes, unit)
        nbins = [int(n) for n in axes.nbins]
        pad = []
        for stored, n, label in zip(self.ds.shape, nbins, axes.labels):
            if stored not in (n, n + 2):
                raise FileFormatError(
                    f"{path}: contents dimension of axis {label!r} is {stored}, expected "
                    f"{n} (or {n + 2} with under/overflow)")
            pad.append(1 if stored == n + 2 else 0)
        self.sel_template = [slice(p, p + n) for p, n in zip(pad, nbins)]
        self.pad0 = pad[0]
        self.row_shape = tuple(nbins[1:])
        # a matrix row is one (sky pixel, Ei) pair: the file's first two axes
        self.n_ei = int(nbins[1])
        self.row_align = self.n_ei * (int(self.ds.chunks[0]) if self.ds.chunks is not None
                                      else 1)

    def contiguous_offset(self):
        # the matrix as stored: contiguous, unfiltered, no overflow bins, native byte order
        if self.ds.chunks is not None or any(s.start for s in self.sel_template) or \
                not self.file_dtype.isnative or self.scale != 1.0:
            return None
        try:
            offset = self.ds.id.get_offset()
        except Exception:  # noqa: BLE001 - no storage allocated, external, ...
            return None
        return None if offset is None else int(offset)

    def read(self, j0, j1, out):
        n_ei, nb = self.n_ei, j1 - j0
        if j0 % n_ei == 0 and j1 % n_ei == 0:      # whole sky pixels: one hyperslab
            p0, p1 = j0 // n_ei, j1 // n_ei
            sel = tuple([slice(self.pad0 + p0, self.pad0 + p1)] + self.sel_template[1:])
            self.ds.read_direct(out[:nb].reshape((p1 - p0,) + self.row_shape), source_sel=sel)
            self._scale(out[:nb])
            return
        for j in range(j0, j1):                    # rows that split a pixel's energy bands
            p, e = divmod(j, n_ei)
            ei = self.sel_template[1].start + e
            sel = tuple([slice(self.pad0 + p, self.pad0 + p + 1), slice(ei, ei + 1)]
                        + self.sel_template[2:])
            self.ds.read_direct(out[j - j0].reshape((1, 1) + self.row_shape[1:]),
                                source_sel=sel)
        self._scale(out[:nb])

    def close(self):
        self.file.close()


def _existing(rsp: str | os.PathLike) -> Path:
    path = Path(rsp)
    if not path.exists():
        raise FileFormatError(f"{path}: response file not found")
    register_spacecraft_frame()
    return path


def open_source(rsp: Histogram | str | os.PathLike) -> ResponseSource:
    """The source of a response Histogram or histpy HDF5 file.

    Raises
    ------
    FileFormatError
        For a missing or malformed file.
    """
    if isinstance(rsp, Histogram):
        return HistogramSource(rsp)
    path = _existing(rsp)
    f = open_hdf5(path, rdcc_nbytes=256 * 2 ** 20, rdcc_nslots=100003)
    try:
        g, _, unit = _header(f, path)
        unit_factor(unit, str(path))       # refused before any other reader sees it
        fmt = g.attrs.get("format", "dense")
        fmt = fmt.decode() if isinstance(fmt, bytes) else str(fmt)
        if fmt == "dense" and isinstance(g.get("contents"), h5py.Dataset):
            return HDF5Source(path, f)
    except BaseException:
        f.close()
        raise
    f.close()
    logger.info("%s: contents stored as %r; reading them whole", path, fmt)
    return HistogramSource(open_histogram(path), name=str(path))


def probe_response(rsp: Histogram | str | os.PathLike) -> tuple[Axes, Axes, Any]:
    """Model axes, data axes and unit of a response without reading its values.

    Raises
    ------
    FileFormatError
        For a missing or malformed file.
    InvalidDataError
        For an in-memory response whose values are all zero.
    """
    if isinstance(rsp, Histogram):
        src = HistogramSource(rsp)
        values = getattr(src.values, "data", None) if src.sparse else src.values
        if values is None or not np.any(values):
            raise InvalidDataError("response: the response has no exposure (all entries are "
                                   "zero)")
        return src.model_axes, src.data_axes, src.unit
    path = _existing(rsp)
    with open_hdf5(path) as f:
        _, axes, unit = _header(f, path)
    unit_factor(unit, str(path))
    return (*response_axes(axes, str(path)), RESPONSE_UNIT)
