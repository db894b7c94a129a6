"""Writing event lists in the DC2 layout, whole or chunk by chunk, atomically."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ...errors import InvalidParameterError
from ..atomic import atomic_path
from .columns import DEFAULT_CHUNK_SIZE, output_columns
from .compression import is_gzip
from .registry import EventFormat, event_file_format, event_format

__all__ = ["EventWriter", "write_events"]

logger = logging.getLogger(__name__)


def _writable(path: Path, format: str | None, streaming: bool) -> EventFormat:
    fmt = event_format(event_file_format(path, format))
    if (fmt.sink if streaming else fmt.write) is None:
        raise InvalidParameterError(f"{path}: cannot write event lists in format {fmt.name!r}")
    if is_gzip(path) and not fmt.gzip_suffix:
        raise InvalidParameterError(
            f"{path}: {fmt.name.upper()} files are compressed internally; drop the .gz suffix")
    return fmt


def write_events(path: str | os.PathLike, events: Mapping[str, np.ndarray],
                 format: str | None = None, overwrite: bool = True,
                 units: Mapping[str, str] | None = None, chunk_size: int = DEFAULT_CHUNK_SIZE,
                 compresslevel: int | None = None, meta: Mapping[str, str] | None = None) -> Path:
    """Write an event list in the DC2 layout, atomically.

    FITS: an empty primary HDU and a binary table in HDU 1 with one column per entry and a
    ``TUNITn`` card each; gzipped when the name ends in ``.gz``. HDF5: one dataset per column at
    the root of the file (gzip-compressed, chunked), each with a string attribute ``unit``.
    The file appears under ``path`` only once it is complete.

    Parameters
    ----------
    path : path-like
        Output file, e.g. ``events.fits.gz`` or ``events.hdf5``.
    events : mapping of str to array or Quantity
        Columns, all with the same number of events N. DC2 columns
        (:data:`~comptonsky.io.events.DC2_COLUMNS`) have shape ``(N,)`` or ``(N, 2)`` for
        pointings, in the canonical units (astropy Quantities are converted to them). Other
        columns are written as given, without a unit.
    format : {"fits", "hdf5"}, optional
        Default: from the file name.
    overwrite : bool
        If False and ``path`` exists, raise :class:`FileExistsError`.
    units : mapping of str to str, optional
        Write these columns in another unit (e.g. ``{"Chi galactic": "rad"}``); the values are
        converted from the canonical unit.
    chunk_size : int
        Rows converted and written at a time (bounds memory for big lists).
    compresslevel : int, optional
        gzip level for ``.gz`` FITS output (ISA-L levels 0-3, default 1; 0-9 with zlib) or HDF5
        gzip level (default 1).
    meta : mapping of str to str, optional
        Extra header keywords (FITS) or root attributes (HDF5).

    Returns
    -------
    pathlib.Path
        The path written.

    Raises
    ------
    InvalidParameterError
        On inconsistent column lengths, wrong per-event shapes, or an unknown format.
    """
    path = Path(path)
    fmt = _writable(path, format, streaming=False)
    cols, col_units, n = output_columns(events, dict(units or {}), str(path))
    with atomic_path(path, overwrite=overwrite) as tmp:
        fmt.write(tmp, cols, col_units, n, gz=is_gzip(path), chunk_size=chunk_size,
                  compresslevel=compresslevel, meta=meta)
    logger.info("wrote %d events to %s", n, path)
    return path


class EventWriter:
    """Write an event list chunk by chunk with bounded memory; the file appears only on success.

    The first chunk fixes the columns; every later chunk must have the same ones. FITS rows are
    staged in an uncompressed temporary file beside the output (the table header needs the final
    row count) and then copied, gzipped if the name ends in ``.gz``; HDF5 datasets grow in place.

    Parameters
    ----------
    path : path-like
        Output file (``.fits``, ``.fits.gz``, ``.hdf5``, ``.h5``).
    format, overwrite, units, compresslevel, meta
        As for :func:`write_events`.

    Examples
    --------
    >>> with EventWriter("selected.fits.gz") as out:          # doctest: +SKIP
    ...     for chunk in iter_event_chunks("big.fits.gz"):
    ...         out.write({k: v[chunk["Energies"] > 500] for k, v in chunk.items()})
    """

    def __init__(self, path: str | os.PathLike, format: str | None = None,
                 overwrite: bool = True, units: Mapping[str, str] | None = None,
                 compresslevel: int | None = None, meta: Mapping[str, str] | None = None):
        self.path = Path(path)
        self._format = _writable(self.path, format, streaming=True)
        self.format = self._format.name
        self.units = dict(units or {})
        self.compresslevel = compresslevel
        self.meta = dict(meta or {})
        self.n = 0
        self._names: list[str] | None = None
        self._stack = contextlib.ExitStack()
        self._tmp = self._stack.enter_context(atomic_path(self.path, overwrite=overwrite))
        self._sink = None
        self._closed = False

    def __enter__(self) -> EventWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort(exc_type, exc, tb)

    def write(self, chunk: Mapping[str, np.ndarray]) -> None:
        """Append a chunk of events (same columns as the first chunk)."""
        if self._closed:
            raise InvalidParameterError(f"{self.path}: writer already closed")
        where = str(self.path)
        cols, col_units, n = output_columns(chunk, self.units, where)
        if self._sink is None:
            self._names = list(cols)
            self._sink = self._format.sink(self._tmp, cols, col_units, is_gzip(self.path),
                                           self.compresslevel, self.meta)
        elif set(cols) != set(self._names):
            raise InvalidParameterError(
                f"{where}: chunk columns {sorted(cols)} differ from the first chunk's "
                f"{sorted(self._names)}")
        self._sink.write(cols, n)
        self.n += n

    def close(self) -> Path:
        """Finish the file and move it to its final name; returns the path."""
        if self._closed:
            return self.path
        try:
            if self._sink is None:
                raise InvalidParameterError(f"{self.path}: no events were written (no columns)")
            self._sink.close()
        except BaseException:
            self.abort(*sys.exc_info())
            raise
        self._closed = True
        self._stack.close()
        logger.info("wrote %d events to %s", self.n, self.path)
        return self.path

    def abort(self, exc_type=None, exc=None, tb=None) -> None:
        """Discard everything written; the output name is left untouched."""
        if self._closed:
            return
        self._closed = True
        if self._sink is not None:
            self._sink.abort()
        self._stack.__exit__(exc_type or RuntimeError, exc or RuntimeError("aborted"), tb)
