"""Streaming binner: event files or in-memory columns into CDS histograms, in one pass.

Events are read in chunks by a background thread (decompression releases the GIL) while the
main thread bins the previous chunk with a compiled kernel, so the rate approaches the rate at
which the file can be decompressed and memory stays bounded whatever the file size.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
from histpy import Histogram
from tqdm.auto import tqdm

from ..errors import FileFormatError, InvalidParameterError
from ..io.events import (
    DEFAULT_CHUNK_SIZE,
    EventSource,
    check_event_range,
    count_events,
    event_file_columns,
    event_inputs,
    iter_event_chunks,
    iter_memory_chunks,
    validate_events,
)
from ..io.events.reader import check_chunk_size
from .kernel import Accumulator, FileStats
from .spec import CDSBinning

__all__ = ["bin_events"]

logger = logging.getLogger(__name__)

_BASE_COLUMNS = ("TimeTags", "Energies", "Phi")


def bin_events(unbinned_data: EventSource, binnings: CDSBinning | Sequence[CDSBinning], *,
               event_range: tuple[int, int | None] | None = None,
               chunk_size: int = DEFAULT_CHUNK_SIZE, progress: bool = True,
               format: str | None = None) -> list[Histogram]:
    """Bin event files (or in-memory columns) into one or several CDS histograms in one pass.

    Parameters
    ----------
    unbinned_data : path-like, sequence of path-like, or mapping of str to ndarray
        DC2 FITS/HDF5 files, MEGAlib ``.tra`` files, or event columns in canonical units
        (:data:`comptonsky.io.events.DC2_COLUMNS`). Several inputs are added together.
    binnings : CDSBinning or sequence of CDSBinning
        Each gets its own histogram; the data are read only once.
    event_range : (int, int or None), optional
        Bin only events ``start <= index < stop`` of each input.
    chunk_size : int
        Events read and binned at a time (memory per chunk is about 100 bytes per event).
    progress : bool
        Show a progress bar over events.
    format : {"fits", "hdf5", "tra"}, optional
        Input format (default: from each file name).

    Returns
    -------
    list of histpy.Histogram
        One per binning, axes (Time, Em, Phi, PsiChi) (the first axis ScAtt, or Time
        intervals, for a binning with a ``first_axis``), sparse float64 counts.

    Raises
    ------
    FileFormatError
        On a missing, unreadable, corrupt or truncated file, a missing column or a column in a
        unit that cannot be converted (naming the file).
    InvalidParameterError
        On an empty or inverted ``event_range`` or a ``chunk_size`` < 1.
    InvalidDataError
        If all events of an input are outside a binning's time range.

    Notes
    -----
    Events that are not binned are counted per input and binning and logged by reason (outside
    an axis' range, non-finite or impossible values, a direction off the sphere): as a warning
    when any were invalid or outside the time range, or none was binned.
    """
    blist = [binnings] if isinstance(binnings, CDSBinning) else list(binnings)
    if not blist:
        raise InvalidParameterError("no binning given")
    inputs = event_inputs(unbinned_data)
    chunk_size = check_chunk_size(chunk_size)
    if event_range is not None:
        event_range = check_event_range(event_range)
    scope = "" if event_range is None else (
        f" in event range [{event_range[0]}, "
        f"{'end' if event_range[1] is None else event_range[1]})")
    columns = list(_BASE_COLUMNS)
    for b in blist:
        extra = () if b.first_axis is None else b.first_axis.columns
        for c in (*b.direction_columns, *extra):
            if c not in columns:
                columns.append(c)
    accs = [Accumulator(b) for b in blist]
    totals = []
    for item in inputs:
        if isinstance(item, Mapping):
            totals.append(validate_events(item, where="in-memory events", required=columns))
        else:
            # fail fast, before binning earlier files, on an unknown format, a missing file or
            # a file that lacks a column
            have = event_file_columns(item, format)
            missing = [c for c in columns if c not in have]
            if missing:
                raise FileFormatError(f"{item}: missing column(s) {missing}; the file has {have}")
            totals.append(count_events(item, format))
    if event_range is not None:
        start, stop = event_range
        totals = [None if t is None else max(0, (t if stop is None else min(stop, t)) - start)
                  for t in totals]
    total = None if any(t is None for t in totals) else int(sum(totals))
    bar = tqdm(total=total, unit="ev", unit_scale=True, desc="binning events",
               disable=not progress, dynamic_ncols=True)
    try:
        for item in inputs:
            name = "in-memory events" if isinstance(item, Mapping) else str(item)
            stats = FileStats(name, scope)
            if isinstance(item, Mapping):
                chunks: Iterator = (
                    {c: np.ascontiguousarray(v, dtype=np.float64) for c, v in chunk.items()}
                    for chunk in iter_memory_chunks(item, columns, chunk_size, event_range,
                                                    bar.update))
            else:
                logger.info("binning %s", item)
                chunks = iter_event_chunks(item, columns=columns, chunk_size=chunk_size,
                                           format=format, event_range=event_range,
                                           callback=bar.update)
            for chunk in chunks:
                with np.errstate(over="ignore", invalid="ignore"):
                    phi_deg = np.rad2deg(chunk["Phi"])
                stats.n_read += phi_deg.shape[0]
                for acc in accs:
                    acc.add(chunk, phi_deg, stats)
            stats.check(blist)
    finally:
        bar.close()
    for acc in accs:
        logger.info("%d events binned into %s PsiChi, shape %s", acc.n_binned,
                    acc.binning.psichi_binning, acc.binning.shape)
    return [acc.histogram() for acc in accs]
