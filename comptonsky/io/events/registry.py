"""Event-file formats by name and file suffix: the reader and writers of each.

The built-in formats are ``"fits"`` (DC2 FITS, plain or gzipped), ``"hdf5"`` (DC2 HDF5) and
``"tra"`` (MEGAlib ``.tra``, read only). Another format is added with :func:`register_format`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ...errors import InvalidParameterError
from . import dc2_fits, dc2_hdf5, tra
from .columns import DC2_COLUMNS
from .prefetch import read_ahead

__all__ = ["EventFormat", "event_file_format", "event_format", "register_format"]


@dataclass(frozen=True)
class EventFormat:
    """How to read (and possibly write) one event-file format, selected by ``name`` or
    ``aliases`` (``format=``) or by a lower-case file-name ending in ``suffixes``.

    ``read(path, columns, chunk_size, start, stop, callback, prefetch)`` yields column dicts in
    canonical units; ``columns(path)`` and ``count(path)`` (None if unknown) read only the
    header. Writable formats have ``write(tmp, cols, col_units, n, *, gz, chunk_size,
    compresslevel, meta)`` and ``sink(tmp, first_chunk, col_units, gz, compresslevel, meta)``,
    a streaming writer with ``write(cols, n)``, ``close()`` and ``abort()``. ``gzip_suffix``:
    whether a ``.gz`` output name means gzip.
    """

    name: str
    suffixes: tuple[str, ...]
    read: Callable[..., Iterator[dict]]
    columns: Callable[[Path], list[str]]
    count: Callable[[Path], int | None]
    write: Callable[..., None] | None = None
    sink: Callable[..., object] | None = None
    aliases: tuple[str, ...] = ()
    gzip_suffix: bool = True


_FORMATS: dict[str, EventFormat] = {}


def register_format(fmt: EventFormat) -> None:
    """Make ``fmt`` known by its name, aliases and suffixes (replacing a format of that name)."""
    _FORMATS[fmt.name] = fmt


def event_format(name: str) -> EventFormat:
    """The registered format called ``name`` (as returned by :func:`event_file_format`)."""
    return _FORMATS[name]


def _expected(items: list[str]) -> str:
    return ", ".join(items[:-1]) + " or " + items[-1] if len(items) > 1 else items[0]


def event_file_format(path: str | os.PathLike, format: str | None = None) -> str:
    """Return the format name (``"fits"``, ``"hdf5"``, ``"tra"``, ...) of an event file.

    Parameters
    ----------
    path : path-like
        The event file. Its name decides unless ``format`` is given.
    format : str, optional
        Explicit format: a registered name or alias (``"h5"`` and ``"fits.gz"`` are aliases).

    Raises
    ------
    InvalidParameterError
        If the format is unknown or cannot be guessed from the name.
    """
    if format is not None:
        key = str(format).lower().lstrip(".")
        for fmt in _FORMATS.values():
            if key == fmt.name or key in fmt.aliases:
                return fmt.name
        raise InvalidParameterError(
            f"unknown event file format {format!r}; expected "
            f"{_expected([repr(n) for n in _FORMATS])}")
    name = Path(path).name.lower()
    for fmt in _FORMATS.values():
        if name.endswith(fmt.suffixes):
            return fmt.name
    suffixes = [s for fmt in _FORMATS.values() for s in fmt.suffixes]
    raise InvalidParameterError(
        f"{path}: cannot tell the event file format from the name; expected a name ending in "
        f"{_expected(suffixes)}, or pass format=")


def _threaded(iter_chunks: Callable[..., Iterator]) -> Callable[..., Iterator]:
    """A ``read`` that runs ``iter_chunks(path, columns, chunk_size, start, stop, callback)`` in
    a reader thread when asked to prefetch."""

    def read(path, columns, chunk_size, start, stop, callback, prefetch):
        it = iter_chunks(path, columns, chunk_size, start, stop, callback)
        return read_ahead(it) if prefetch else it

    return read


for _fmt in (
    EventFormat("fits", dc2_fits.SUFFIXES, dc2_fits.read_fits_chunks, dc2_fits.fits_columns,
                dc2_fits.count_fits, dc2_fits.write_fits, dc2_fits.FitsSink,
                aliases=("fits.gz", "fit")),
    EventFormat("hdf5", dc2_hdf5.SUFFIXES, _threaded(dc2_hdf5.iter_hdf5_chunks),
                dc2_hdf5.hdf5_columns, dc2_hdf5.count_hdf5, dc2_hdf5.write_hdf5,
                dc2_hdf5.Hdf5Sink, aliases=("h5", "hdf"), gzip_suffix=False),
    EventFormat("tra", tra.SUFFIXES, _threaded(tra.iter_tra), lambda path: list(DC2_COLUMNS),
                lambda path: None, aliases=("tra.gz",)),
):
    register_format(_fmt)
