"""Reading and writing histpy histograms (HDF5), with clear errors and atomic writes."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import h5py
from histpy import Histogram

from ..errors import FileFormatError
from ..frames import register_spacecraft_frame
from .atomic import atomic_path

__all__ = ["open_histogram", "write_histogram"]

logger = logging.getLogger(__name__)


def open_histogram(path: str | os.PathLike, name: str = "hist") -> Histogram:
    """Open a histpy HDF5 file written by histpy 1.x or 2.x.

    Parameters
    ----------
    path : path-like
        The HDF5 file.
    name : str
        Group holding the histogram (histpy's default is ``"hist"``).

    Raises
    ------
    FileFormatError
        If the file is missing, is not HDF5, or has no histogram group ``name``.
    """
    register_spacecraft_frame()
    path = Path(path)
    if not path.exists():
        raise FileFormatError(f"{path}: no such file")
    try:
        with h5py.File(path, "r") as f:
            if name not in f:
                raise FileFormatError(
                    f"{path}: no histogram group {name!r} (found groups: {sorted(f.keys())}); "
                    "is this a histpy HDF5 file?"
                )
    except OSError as exc:
        if isinstance(exc, FileFormatError):
            raise
        raise FileFormatError(f"{path}: cannot be read as HDF5 ({exc})") from exc
    logger.debug("opening histogram %s", path)
    return Histogram.open(path, name=name)


def write_histogram(hist: Histogram, path: str | os.PathLike, overwrite: bool = True,
                    name: str = "hist") -> Path:
    """Write ``hist`` to ``path`` atomically (temporary file, then rename).

    Returns
    -------
    pathlib.Path
        The path written.
    """
    path = Path(path)
    with atomic_path(path, overwrite=overwrite) as tmp:
        hist.write(tmp, name=name, overwrite=True)
    return path
