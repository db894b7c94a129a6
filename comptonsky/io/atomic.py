"""Atomic file output: write to a temporary file beside the target, then rename."""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ..errors import ComptonskyError, OutputError, OutputExistsError

__all__ = ["atomic_path", "check_output_path"]


def check_output_path(path: str | os.PathLike, overwrite: bool = True) -> Path:
    """Check that ``path`` can become an output file, before anything is computed or written.

    Parameters
    ----------
    path : path-like
        The output file. Missing parent folders are fine (:func:`atomic_path` creates them).
    overwrite : bool
        Whether an existing file may be replaced.

    Returns
    -------
    pathlib.Path

    Raises
    ------
    OutputExistsError
        If the file exists and ``overwrite`` is False.
    OutputError
        If ``path`` names a folder (``.``, ``dir/``, an existing folder), something that is not a
        regular file (a device, a pipe), or lies below a file that is not a folder.
    """
    text = os.fspath(path)
    path = Path(path)
    if not text or text.endswith(("/", os.sep)) or path.name in ("", ".", ".."):
        raise OutputError(f"{text or repr(text)}: names a folder; expected a file name")
    try:
        st = path.stat()
    except FileNotFoundError:
        st = None
    except NotADirectoryError:
        st = None  # reported below with the offending parent
    except OSError as exc:
        raise OutputError(f"{path}: cannot be checked ({os.strerror(exc.errno)})") from exc
    if st is not None:
        if stat.S_ISDIR(st.st_mode):
            raise OutputError(f"{path}: is a folder; expected a file name")
        if not stat.S_ISREG(st.st_mode):
            raise OutputError(f"{path}: exists and is not a regular file; expected a file name")
        if not overwrite:
            raise OutputExistsError(f"{path} exists; pass overwrite=True to replace it")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputError(f"{path}: {parent} is a file, not a folder")
            break
    return path


def _make_parents(folder: Path) -> list[Path]:
    """Create ``folder`` and missing ancestors; return those created, innermost first."""
    missing = []
    for p in (folder, *folder.parents):
        if p.exists():
            break
        missing.append(p)
    created: list[Path] = []
    try:
        for p in reversed(missing):
            p.mkdir()
            created.insert(0, p)
    except OSError as exc:
        _remove_folders(created)
        raise OutputError(f"{folder}: cannot create the output folder "
                          f"({os.strerror(exc.errno) if exc.errno else exc})") from exc
    return created


def _remove_folders(created: list[Path]) -> None:
    """Remove folders made for an output that failed (innermost first, only if empty)."""
    for p in created:
        with contextlib.suppress(OSError):
            p.rmdir()


def _reason(exc: OSError, tmp: Path) -> str:
    reason = os.strerror(exc.errno) if exc.errno else " ".join(str(exc).split())
    name = getattr(exc, "filename", None)
    if name and os.fspath(name) != os.fspath(tmp):
        reason += f": {name}"
    return reason


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path to write to; on success rename it to ``path``.

    An exception (or an interrupted process) leaves ``path`` untouched: either the old file or
    nothing, never a truncated one; folders created for it are removed again. The temporary file
    lives in the same folder so that the final ``os.replace`` is atomic on POSIX file systems.

    Parameters
    ----------
    path : path-like
        The final output path.
    overwrite : bool
        If False and ``path`` exists, raise :class:`~comptonsky.errors.OutputExistsError` (a
        :class:`FileExistsError`) before writing anything.

    Raises
    ------
    OutputError
        If ``path`` cannot be an output file (see :func:`check_output_path`) or writing fails
        with an operating-system error (full disk, read-only file system...): the message names
        ``path`` and the reason, on one line.
    """
    path = check_output_path(path, overwrite)
    created = _make_parents(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    except OSError as exc:
        _remove_folders(created)
        raise OutputError(f"{path}: cannot be written ({_reason(exc, Path())})") from exc
    os.close(fd)
    os.unlink(tmp)  # writers such as h5py and astropy want to create the file themselves
    tmp_path = Path(tmp)
    done = False
    try:
        yield tmp_path
        os.replace(tmp_path, path)
        done = True
    except OSError as exc:
        if isinstance(exc, ComptonskyError):
            raise
        raise OutputError(f"{path}: cannot be written ({_reason(exc, tmp_path)}); nothing was "
                          "written") from exc
    finally:
        with contextlib.suppress(OSError):
            if tmp_path.exists():
                tmp_path.unlink()
        if not done:
            _remove_folders(created)
