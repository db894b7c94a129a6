"""Event selection by time and energy, and concatenation of several inputs."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path

import numpy as np

from ...errors import InvalidParameterError
from .columns import DEFAULT_CHUNK_SIZE, EventSource, validate_events
from .reader import check_chunk_size, check_event_range, iter_event_chunks
from .writer import EventWriter

__all__ = ["event_inputs", "iter_memory_chunks", "select_events"]

logger = logging.getLogger(__name__)


def event_inputs(source: EventSource) -> list:
    """The inputs of an event source as a list: the file or mapping, or each of a sequence."""
    if source is None:
        raise InvalidParameterError("no unbinned data given (a file, a list of files, or a "
                                    "mapping of event columns)")
    if isinstance(source, (Mapping, str, os.PathLike)):
        return [source]
    items = list(source)
    if not items:
        raise InvalidParameterError("an empty list of unbinned data files was given")
    return items


def iter_memory_chunks(events: Mapping[str, np.ndarray], columns: Iterable[str] | None = None,
                       chunk_size: int = DEFAULT_CHUNK_SIZE,
                       event_range: tuple[int, int | None] | None = None,
                       callback: Callable[[int], None] | None = None
                       ) -> Iterator[dict[str, np.ndarray]]:
    """Chunks (views into the arrays; Quantities give their values) of in-memory event columns,
    with the parameters of :func:`~comptonsky.io.events.iter_event_chunks`."""
    use = list(events) if columns is None else list(columns)
    n = validate_events(events, where="in-memory events", required=use)
    chunk_size = check_chunk_size(chunk_size)
    start, stop = (0, n) if event_range is None else check_event_range(event_range)
    stop = n if stop is None else min(stop, n)
    for a in range(start, stop, chunk_size):
        b = min(stop, a + chunk_size)
        if callback is not None:
            callback(b - a)
        yield {c: np.asarray(getattr(events[c], "value", events[c]))[a:b] for c in use}


def select_events(unbinned_data: EventSource, output: str | os.PathLike | None = None, *,
                  tmin: float | None = None, tmax: float | None = None,
                  emin: float | None = None, emax: float | None = None,
                  columns: Iterable[str] | None = None,
                  chunk_size: int = DEFAULT_CHUNK_SIZE, overwrite: bool = True
                  ) -> dict[str, np.ndarray] | Path:
    """Select events by time and energy from one or several inputs, concatenated in order.

    Parameters
    ----------
    unbinned_data : path-like, sequence of path-like, or mapping of str to ndarray
        Event files (FITS, HDF5, .tra) or in-memory columns.
    output : path-like, optional
        Stream the selection to this file (written atomically) and return its path; default:
        return the columns in memory.
    tmin, tmax : float, optional
        Keep ``tmin <= TimeTags < tmax`` (s).
    emin, emax : float, optional
        Keep ``emin <= Energies < emax`` (keV).
    columns : iterable of str, optional
        Columns to keep (default: all columns of the first input).
    chunk_size : int
        Events per chunk.
    overwrite : bool
        Replace an existing ``output``.

    Returns
    -------
    dict of str to ndarray, or pathlib.Path
        The selected columns (canonical units), or the path written.
    """
    inputs = event_inputs(unbinned_data)
    cols = None if columns is None else list(columns)
    writer = EventWriter(output, overwrite=overwrite) if output is not None else None
    parts: dict[str, list[np.ndarray]] = {}
    n_seen = n_kept = 0
    try:
        for item in inputs:
            if isinstance(item, Mapping):
                chunks = iter_memory_chunks(item, cols, chunk_size)
            else:
                chunks = iter_event_chunks(item, columns=cols, chunk_size=chunk_size)
            for chunk in chunks:
                if cols is None:
                    cols = list(chunk)
                keep = np.ones(len(next(iter(chunk.values()))), dtype=bool)
                for name, lo, hi in (("TimeTags", tmin, tmax), ("Energies", emin, emax)):
                    if lo is not None:
                        keep &= chunk[name] >= lo
                    if hi is not None:
                        keep &= chunk[name] < hi
                sel = {k: v[keep] for k, v in chunk.items()}
                n_seen, n_kept = n_seen + keep.size, n_kept + int(keep.sum())
                if writer is not None:
                    writer.write(sel)
                else:
                    for k, v in sel.items():
                        parts.setdefault(k, []).append(v)
    except BaseException:
        if writer is not None:
            writer.abort(*sys.exc_info())
        raise
    logger.info("%d of %d events selected (TimeTags in [%s, %s) s, Energies in [%s, %s) keV)",
                n_kept, n_seen, tmin, tmax, emin, emax)
    if writer is not None:
        return writer.close()
    return {k: np.concatenate(v) for k, v in parts.items()}
