"""Opening HDF5 files for reading with an error that names the file."""

from __future__ import annotations

import os

import h5py

from ..errors import FileFormatError

__all__ = ["open_hdf5"]


def open_hdf5(path: str | os.PathLike, **kwargs) -> h5py.File:
    """Open ``path`` read-only with h5py.

    Parameters
    ----------
    path : path-like
    **kwargs
        Passed to :class:`h5py.File` (for example chunk-cache sizes).

    Raises
    ------
    FileFormatError
        If the file is missing or is not HDF5 (the message names the file and h5py's reason).
    """
    try:
        return h5py.File(path, "r", **kwargs)
    except OSError as exc:
        raise FileFormatError(f"{path}: cannot be read as HDF5 ({exc})") from exc
