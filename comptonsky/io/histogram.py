"""Reading and writing histpy histograms (HDF5), with clear errors and atomic writes."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import h5py
from histpy import Histogram

from ..errors import ComptonskyError, FileFormatError
from ..frames import register_spacecraft_frame
from .atomic import atomic_path
from .hdf5 import create_hdf5, open_hdf5

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
        If the file is missing, is not HDF5, has no histogram group ``name``, or that group is
        not a readable histogram (no ``axes`` or ``contents``, contents whose shape does not fit
        the axes, unreadable axes); the message names the file and group.
    """
    register_spacecraft_frame()
    path = Path(path)
    if not path.exists():
        raise FileFormatError(f"{path}: no such file")
    where = f"{path}, group {name!r}"
    try:
        with open_hdf5(path) as f:
            if name not in f:
                raise FileFormatError(
                    f"{path}: no histogram group {name!r} (found groups: {sorted(f.keys())}); "
                    "is this a histpy HDF5 file?"
                )
            group = f[name]
            if not isinstance(group, h5py.Group):
                raise FileFormatError(f"{where}: is a dataset, expected a histpy histogram group")
            missing = [k for k in ("axes", "contents") if k not in group]
            if missing:
                raise FileFormatError(
                    f"{where}: no {' or '.join(repr(k) for k in missing)} (found "
                    f"{sorted(group.keys())}); not a histpy histogram")
        logger.debug("opening histogram %s", path)
        return Histogram.open(path, name=name)
    except ComptonskyError:
        raise
    except (OSError, KeyError, ValueError, TypeError, IndexError, AttributeError,
            UnicodeDecodeError) as exc:
        # histpy reports malformed groups through whatever the failing call raised
        text = " ".join(str(exc).split()) or type(exc).__name__
        raise FileFormatError(f"{where}: not a readable histpy histogram ({text})") from exc


def write_histogram(hist: Histogram, path: str | os.PathLike, overwrite: bool = True,
                    name: str = "hist") -> Path:
    """Write ``hist`` to ``path`` atomically (temporary file, then rename).

    Raises
    ------
    OutputError
        If ``path`` cannot be an output file or writing fails (a full disk...): nothing is
        left under ``path``.

    Returns
    -------
    pathlib.Path
        The path written.
    """
    path = Path(path)
    with atomic_path(path, overwrite=overwrite) as tmp, create_hdf5(tmp) as fh:
        hist.write(fh, name=name, overwrite=True)
    return path
