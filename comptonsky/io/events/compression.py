"""gzip input and output for event files, through ISA-L when it is installed."""

from __future__ import annotations

import contextlib
import gzip
import os
import zlib
from collections.abc import Iterator
from pathlib import Path

from ...errors import FileFormatError

try:  # ISA-L inflates about twice as fast as zlib; fall back to the standard library.
    from isal import igzip
    from isal import isal_zlib as _isal_zlib

    #: Exceptions that a corrupt or truncated gzip stream raises while it is read.
    GZIP_ERRORS: tuple[type[BaseException], ...] = (
        OSError, EOFError, zlib.error, _isal_zlib.error, gzip.BadGzipFile,
    )
except ImportError:  # pragma: no cover - isal is a declared dependency
    igzip = None
    GZIP_ERRORS = (OSError, EOFError, zlib.error, gzip.BadGzipFile)

__all__ = ["GZIP_ERRORS", "is_gzip", "open_input", "output_stream"]


def is_gzip(path: Path) -> bool:
    """Whether the file name ends in ``.gz``."""
    return path.name.lower().endswith(".gz")


def open_input(path: Path):
    """Binary read stream of ``path``, inflated on the fly when the name ends in ``.gz``.

    Raises
    ------
    FileFormatError
        If the file cannot be opened (a folder, no permission).
    """
    try:
        if is_gzip(path):
            return igzip.open(path, "rb") if igzip is not None else gzip.open(path, "rb")
        return open(path, "rb")  # noqa: SIM115
    except OSError as exc:
        raise FileFormatError(
            f"{path}: cannot be read ({os.strerror(exc.errno) if exc.errno else exc})") from exc


@contextlib.contextmanager
def output_stream(path: Path, gz: bool, compresslevel: int | None) -> Iterator:
    """Binary output stream, gzipped if ``gz``.

    The gzip header carries no file name (a temporary name would leak into it) and a zero time
    stamp, so equal contents give equal files. ISA-L compresses at levels 0-3 (default 1);
    higher levels use zlib (default 6 when ISA-L is missing).
    """
    with open(path, "wb") as raw:
        if not gz:
            yield raw
            return
        if igzip is not None and (compresslevel is None or compresslevel <= 3):
            level = 1 if compresslevel is None else compresslevel
            stream = igzip.IGzipFile(filename="", mode="wb", fileobj=raw, mtime=0,
                                     compresslevel=level)
        else:
            level = 6 if compresslevel is None else compresslevel
            stream = gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0,
                                   compresslevel=level)
        with stream:
            yield stream
