"""Reading event files of any registered format, whole or in chunks."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

from ...errors import FileFormatError, InvalidParameterError
from .columns import DC2_COLUMNS, DEFAULT_CHUNK_SIZE
from .registry import EventFormat, event_file_format, event_format

__all__ = ["check_event_range", "count_events", "event_file_columns", "iter_event_chunks",
           "iter_tra_chunks", "read_events", "read_tra"]


def check_event_range(event_range, name: str = "event_range") -> tuple[int, int | None]:
    """``event_range`` as ``(start, stop)`` integers, ``stop`` None for the end of the file.

    Raises
    ------
    InvalidParameterError
        Unless it is a pair of integers (``stop`` may be None) with ``0 <= start < stop``; an
        empty or inverted range is an error, not zero events.
    """
    try:
        start, stop = event_range
    except (TypeError, ValueError):
        raise InvalidParameterError(
            f"{name} must be a pair (START, STOP), found {event_range!r}") from None
    for label, v in (("START", start), ("STOP", stop)):
        if v is None and label == "STOP":
            continue
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise InvalidParameterError(
                f"{name}: {label} must be an integer event index, found {v!r}")
    start, stop = int(start), None if stop is None else int(stop)
    if start < 0:
        raise InvalidParameterError(f"{name}: START must be >= 0, found {start}")
    if stop is not None and stop <= start:
        raise InvalidParameterError(
            f"{name} [{start}, {stop}) is empty: STOP must be greater than START")
    return start, stop


def _existing(path: str | os.PathLike, format: str | None) -> tuple[Path, EventFormat]:
    """The path and its format; raises if the format is unknown or the file missing."""
    path = Path(path)
    fmt = event_format(event_file_format(path, format))
    if not path.exists():
        raise FileFormatError(f"{path}: no such file")
    if not path.is_file():
        raise FileFormatError(f"{path}: is a folder or special file, expected an event file")
    return path, fmt


def check_chunk_size(chunk_size) -> int:
    """``chunk_size`` as an int >= 1, else :class:`InvalidParameterError`."""
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) \
            or chunk_size < 1:
        raise InvalidParameterError(f"chunk_size must be an integer >= 1, got {chunk_size!r}")
    return int(chunk_size)


def iter_event_chunks(path: str | os.PathLike, columns: Iterable[str] | None = None,
                      chunk_size: int = DEFAULT_CHUNK_SIZE, format: str | None = None,
                      event_range: tuple[int, int | None] | None = None,
                      callback: Callable[[int], None] | None = None,
                      prefetch: bool = True) -> Iterator[dict[str, np.ndarray]]:
    """Stream an event file as chunks of columns in the canonical units.

    Memory stays bounded by a few chunks whatever the file size: a gzipped FITS file is inflated
    through a fixed buffer, an HDF5 file is read by slices. With ``prefetch`` a reader thread
    prepares the next chunk while the caller processes the current one.

    Parameters
    ----------
    path : path-like
        A DC2 FITS (``.fits``, ``.fits.gz``), HDF5 (``.h5``, ``.hdf5``) or MEGAlib ``.tra``/
        ``.tra.gz`` file.
    columns : iterable of str, optional
        Columns to read (default: all of them).
    chunk_size : int
        Events per chunk.
    format : {"fits", "hdf5", "tra"}, optional
        Default: from the file name.
    event_range : (int, int or None), optional
        Read only events ``start <= index < stop`` (file order); ``0 <= start < stop``.
    callback : callable, optional
        Called with the number of events of each chunk as it is read (for progress bars).
    prefetch : bool
        Read ahead in a background thread.

    Yields
    ------
    dict of str to numpy.ndarray
        One array per column, shape ``(n,)`` or ``(n, 2)``, float64 in the canonical units of
        :data:`~comptonsky.io.events.DC2_COLUMNS` (other columns as stored, native byte order).

    Raises
    ------
    FileFormatError
        If the file is missing, is not a readable event file, lacks a requested column, stores
        a column in a unit that cannot be converted, or is corrupt or truncated; the message names
        the file.
    """
    path, fmt = _existing(path, format)
    check_chunk_size(chunk_size)
    cols = None if columns is None else list(dict.fromkeys(columns))
    start, stop = (0, None) if event_range is None else check_event_range(event_range)
    return fmt.read(path, cols, int(chunk_size), start, stop, callback, prefetch)


def read_events(path: str | os.PathLike, columns: Iterable[str] | None = None,
                format: str | None = None,
                event_range: tuple[int, int | None] | None = None) -> dict[str, np.ndarray]:
    """Read a whole event file (or a range of it) into memory.

    Same parameters and units as :func:`iter_event_chunks`; returns one array per column of
    shape ``(N,)`` or ``(N, 2)``. For big files prefer :func:`iter_event_chunks`.
    """
    parts: dict[str, list[np.ndarray]] = {}
    for chunk in iter_event_chunks(path, columns=columns, format=format,
                                   event_range=event_range, prefetch=False):
        for k, v in chunk.items():
            parts.setdefault(k, []).append(v)
    if not parts:
        names = list(columns) if columns is not None else event_file_columns(path, format)
        return {n: np.empty((0,) + DC2_COLUMNS[n].shape if n in DC2_COLUMNS else (0,))
                for n in names}
    return {k: np.concatenate(v) if len(v) > 1 else v[0] for k, v in parts.items()}


def read_tra(path: str | os.PathLike, columns: Iterable[str] | None = None
             ) -> dict[str, np.ndarray]:
    """Read all Compton events of a MEGAlib ``.tra``/``.tra.gz`` file (whatever its name) into
    DC2 columns.

    Returns
    -------
    dict of str to ndarray
        Columns of shape (N,) or (N, 2) in canonical units (empty arrays if no Compton event).
    """
    return read_events(path, columns, format="tra")


def iter_tra_chunks(path: str | os.PathLike, columns: Iterable[str] | None = None,
                    chunk_size: int = 1 << 16,
                    event_range: tuple[int, int | None] | None = None,
                    callback: Callable[[int], None] | None = None
                    ) -> Iterator[dict[str, np.ndarray]]:
    """Stream the Compton events of a MEGAlib ``.tra``/``.tra.gz`` file (whatever its name) as
    DC2 column chunks: :func:`iter_event_chunks` with ``format="tra"``, without read-ahead.

    ``event_range`` counts Compton events in file order. Raises :class:`FileFormatError` on a
    missing, unparsable, corrupt or truncated file (the message names the file and line).
    """
    return iter_event_chunks(path, columns, chunk_size, "tra", event_range, callback,
                             prefetch=False)


def event_file_columns(path: str | os.PathLike, format: str | None = None) -> list[str]:
    """Names of the columns stored in an event file (reads only the header / metadata)."""
    path, fmt = _existing(path, format)
    return fmt.columns(path)


def count_events(path: str | os.PathLike, format: str | None = None) -> int | None:
    """Number of events in an event file from its metadata; None where the format does not
    store it (``.tra``)."""
    path, fmt = _existing(path, format)
    return fmt.count(path)
