"""Opening HDF5 files for reading with an error that names the file, and creating them so that
a failed write (a full disk) is an ordinary Python error."""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterator

import h5py

from ..errors import FileFormatError

__all__ = ["GuardedFile", "create_hdf5", "open_hdf5"]


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
        reason = " ".join(str(exc).split())
        if os.path.isdir(path):
            reason = "is a folder"
        raise FileFormatError(f"{path}: cannot be read as HDF5 ({reason})") from exc


class GuardedFile(io.RawIOBase):
    """A new binary file for h5py that keeps the first operating-system error of a write.

    The HDF5 library cannot recover from a write that fails inside it: the file stays open, and
    closing it fails again when Python exits (which can crash the interpreter). Here a failed
    write is recorded and reported as done; once the library has closed the file the recorded
    error is raised by :func:`create_hdf5`.
    """

    def __init__(self, path: str | os.PathLike):
        super().__init__()
        self._fh = open(path, "w+b", buffering=1 << 22)  # noqa: SIM115 - closed in close()
        self.error: OSError | None = None

    def _guard(self, call, *args):
        if self.error is None:
            try:
                return call(*args)
            except OSError as exc:
                self.error = exc
        return None

    def readinto(self, buffer) -> int:
        if self.error is not None:  # nothing trustworthy to read back
            buffer[:] = bytes(len(buffer))
            return len(buffer)
        return self._fh.readinto(buffer)

    def write(self, data) -> int:
        self._guard(self._fh.write, data)
        return len(data)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._fh.seek(offset, whence)

    def tell(self) -> int:
        return self._fh.tell()

    def truncate(self, size: int | None = None) -> int:
        got = self._guard(self._fh.truncate, size)
        return self._fh.tell() if got is None else got

    def flush(self) -> None:
        if not self._fh.closed:
            self._guard(self._fh.flush)

    def close(self) -> None:
        if not self._fh.closed:
            self.flush()
            with contextlib.suppress(OSError):
                self._fh.close()
        super().close()

    def finish(self) -> None:
        """Close; raise the first write error if there was one (after h5py closed the file)."""
        self.close()
        if self.error is not None:
            raise self.error


@contextlib.contextmanager
def create_hdf5(path: str | os.PathLike) -> Iterator[GuardedFile]:
    """A new, empty file at ``path`` for :class:`h5py.File` (pass the yielded object as its
    name, mode ``"w"`` or ``"a"``).

    Raises
    ------
    OSError
        The first error of a write (for example ``ENOSPC``), after the HDF5 library has closed
        the file; the caller removes it.
    """
    guard = GuardedFile(path)
    try:
        yield guard
    finally:
        guard.close()
    guard.finish()
