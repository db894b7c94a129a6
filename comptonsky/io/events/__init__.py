"""Unbinned event lists: DC2 FITS (plain or gzipped) and HDF5, MEGAlib ``.tra``, read in chunks.

Every reader yields the DC2 columns in the canonical units of :mod:`.columns`
(:data:`DC2_COLUMNS`); formats are looked up by name or file suffix in :mod:`.registry`.
"""

from .columns import DC2_COLUMNS, DEFAULT_CHUNK_SIZE, ColumnSpec, EventSource, validate_events
from .reader import (
    check_event_range,
    count_events,
    event_file_columns,
    iter_event_chunks,
    iter_tra_chunks,
    read_events,
    read_tra,
)
from .registry import EventFormat, event_file_format, register_format
from .select import event_inputs, iter_memory_chunks, select_events
from .tra import ELECTRON_MASS_KEV, compton_columns
from .writer import EventWriter, write_events

__all__ = [
    "DC2_COLUMNS", "DEFAULT_CHUNK_SIZE", "ELECTRON_MASS_KEV", "ColumnSpec", "EventFormat",
    "EventSource", "EventWriter", "check_event_range", "compton_columns", "count_events", "event_file_columns",
    "event_file_format", "event_inputs", "iter_event_chunks", "iter_memory_chunks",
    "iter_tra_chunks", "read_events", "read_tra", "register_format", "select_events",
    "validate_events", "write_events",
]
