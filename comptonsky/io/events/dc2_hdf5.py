"""DC2 event lists as HDF5: one dataset per column at the root, with a ``unit`` attribute."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

import h5py
import numpy as np

from ...errors import FileFormatError
from ..hdf5 import GuardedFile, create_hdf5, open_hdf5
from .columns import DC2_COLUMNS, dc2_order, stored_unit_factor

__all__ = ["Hdf5Sink", "count_hdf5", "hdf5_columns", "iter_hdf5_chunks", "write_hdf5"]

SUFFIXES = (".h5", ".hdf5", ".hdf", ".he5")

#: Rows per compressed chunk and gzip level (event columns compress little; level 1 is twice as
#: fast to write as 4 for about the same size).
_HDF5_CHUNK_ROWS = 1 << 16
_HDF5_GZIP_LEVEL = 1


def write_hdf5(tmp: Path, cols: Mapping[str, np.ndarray], col_units: Mapping[str, str], n: int,
               *, gz: bool, chunk_size: int, compresslevel: int | None,
               meta: Mapping[str, str] | None) -> None:
    """Write ``n`` events of ``cols`` to ``tmp``, one gzip-compressed dataset per column."""
    with create_hdf5(tmp) as fh, h5py.File(fh, "w") as f:
        for key, value in (meta or {}).items():
            f.attrs[str(key)] = value
        for name, arr in cols.items():
            chunks = (max(1, min(n, _HDF5_CHUNK_ROWS)),) + arr.shape[1:] if n else None
            ds = f.create_dataset(name, data=arr, chunks=chunks,
                                  compression="gzip" if n else None,
                                  compression_opts=(_HDF5_GZIP_LEVEL if compresslevel is None
                                                    else compresslevel) if n else None)
            if col_units[name]:
                ds.attrs["unit"] = col_units[name]


class Hdf5Sink:
    """Streaming HDF5 output: resizable datasets created from the first chunk grow in place."""

    def __init__(self, tmp: Path, first: Mapping[str, np.ndarray], col_units: Mapping[str, str],
                 gz: bool, compresslevel: int | None, meta: Mapping[str, str] | None):
        self._file = GuardedFile(tmp)
        self._h5 = h5py.File(self._file, "w")
        for key, value in (meta or {}).items():
            self._h5.attrs[str(key)] = value
        for name, arr in first.items():
            ds = self._h5.create_dataset(
                name, shape=(0,) + arr.shape[1:], maxshape=(None,) + arr.shape[1:],
                dtype=arr.dtype, chunks=(_HDF5_CHUNK_ROWS,) + arr.shape[1:],
                compression="gzip",
                compression_opts=_HDF5_GZIP_LEVEL if compresslevel is None else compresslevel)
            if col_units[name]:
                ds.attrs["unit"] = col_units[name]
        self.n = 0

    def write(self, cols: Mapping[str, np.ndarray], n: int) -> None:
        """Append ``n`` rows."""
        for name, arr in cols.items():
            ds = self._h5[name]
            ds.resize(self.n + n, axis=0)
            ds[self.n:self.n + n] = arr
        self.n += n

    def close(self) -> None:
        """Close the file; raises the first write error (a full disk...) if there was one."""
        try:
            self._h5.close()
        finally:
            self._file.finish()

    def abort(self) -> None:
        """Close the file, ignoring errors (the caller is already failing)."""
        try:
            self._h5.close()
        except Exception:  # noqa: BLE001 - already failing
            pass
        self._file.close()


def iter_hdf5_chunks(path: Path, columns: list[str] | None, chunk_size: int, start: int,
                     stop: int | None, callback) -> Iterator[dict[str, np.ndarray]]:
    """Column chunks of an HDF5 event file (datasets at the root or in its only group)."""
    where = str(path)
    with open_hdf5(path) as f:
        grp = f
        if "Energies" not in f and len(f.keys()) == 1 and isinstance(next(iter(f.values())),
                                                                    h5py.Group):
            grp = next(iter(f.values()))
        names = dc2_order([k for k, v in grp.items() if isinstance(v, h5py.Dataset)])
        wanted = names if columns is None else list(columns)
        missing = [c for c in wanted if c not in names]
        if missing:
            raise FileFormatError(f"{where}: missing column(s) {missing}; the file has {names}")
        datasets = {c: grp[c] for c in wanted}
        lengths = {c: d.shape[0] if d.shape else 0 for c, d in datasets.items()}
        if len(set(lengths.values())) > 1:
            raise FileFormatError(f"{where}: columns have different lengths {lengths}")
        nrows = next(iter(lengths.values())) if lengths else 0
        factors = {}
        for c, d in datasets.items():
            unit = d.attrs.get("unit", d.attrs.get("units"))
            factors[c] = stored_unit_factor(unit, c, where)
            spec = DC2_COLUMNS.get(c)
            if not d.shape:
                raise FileFormatError(f"{where}: column {c!r} is a scalar, not one value per "
                                      "event")
            if spec is not None and d.dtype.kind not in "iufb":
                raise FileFormatError(
                    f"{where}: column {c!r} holds {d.dtype}, expected numbers in {spec.unit}")
            if spec is not None and d.shape[1:] != spec.shape:
                raise FileFormatError(
                    f"{where}: column {c!r} has per-event shape {d.shape[1:]}, expected "
                    f"{spec.shape}")
        stop = nrows if stop is None else min(stop, nrows)
        row = max(0, min(start, stop))
        while row < stop:
            end = min(stop, row + chunk_size)
            chunk = {}
            for c, d in datasets.items():
                try:
                    arr = d[row:end]
                except OSError as exc:
                    raise FileFormatError(
                        f"{where}: cannot read column {c!r} events {row}-{end} ({exc})") from exc
                if c in DC2_COLUMNS and arr.dtype != np.float64:
                    arr = arr.astype(np.float64)
                if factors[c] != 1.0:
                    arr *= factors[c]
                chunk[c] = arr
            if callback is not None:
                callback(end - row)
            row = end
            yield chunk


def hdf5_columns(path: Path) -> list[str]:
    """Dataset names at the root of an HDF5 event file, DC2 columns first."""
    with open_hdf5(path) as f:
        return dc2_order([k for k, v in f.items() if isinstance(v, h5py.Dataset)])


def count_hdf5(path: Path) -> int:
    """Number of events of an HDF5 event file: the length of its first root dataset."""
    with open_hdf5(path) as f:
        for v in f.values():
            if isinstance(v, h5py.Dataset) and v.shape:
                return int(v.shape[0])
        return 0
