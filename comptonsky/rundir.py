"""Run directories that cannot mislead: fresh or explicitly replaced, with a status.

A run writes into a folder that is new or empty; a folder holding an earlier comptonsky run
(recognised by its ``summary.json``) is refused unless the run is told to replace it
(``overwrite``: the files that run wrote are removed first, nothing else) or to continue it
(``resume``: from its ``checkpoint.npz``). ``summary.json`` is the first file written, with
``status: running``, and the last, with ``complete`` (or ``interrupted`` / ``failed``), so a
folder whose summary does not say ``complete`` is never mistaken for a finished run. Temporary
files that a killed process left behind (the names of :func:`comptonsky.io.atomic.atomic_path`)
are removed on start, and a command that fails before writing anything leaves no folder.

The checks (:meth:`RunDirectory.check`) touch nothing, so they run before any work;
:meth:`RunDirectory.begin` then makes the folder ready and writes the first summary.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import OutputError, OutputExistsError
from .io.atomic import atomic_path

__all__ = ["RunDirectory", "SUMMARY_FILE", "CHECKPOINT_FILE", "sweep_temporary",
           "read_summary", "write_summary", "STATUSES"]

logger = logging.getLogger(__name__)

SUMMARY_FILE = "summary.json"
CHECKPOINT_FILE = "checkpoint.npz"
#: Values of ``summary.json``'s ``status``.
STATUSES = ("running", "complete", "interrupted", "failed")
#: Temporary names of :func:`~comptonsky.io.atomic.atomic_path` (``tempfile.mkstemp``'s eight
#: random characters between ``.<name>.`` and ``.part``).
TEMPORARY = re.compile(r"^\..+\.[a-z0-9_]{8}\.part$")
#: Files a deconvolution run writes (besides those its summary lists).
_RUN_FILES = re.compile(r"^(summary\.json|parameters\.yml|checkpoint\.npz|report\.html|"
                        r"results\.fits|convergence\.png|model_E\d+_(linear|log)\.png|"
                        r"(model|delta_model|processed_delta_model|prior_filter)_itr\d+"
                        r"\.(hdf5|fits))$")


def _json_default(obj):
    import numpy as np

    if isinstance(obj, (np.floating, np.integer, np.bool_)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_summary(summary: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write ``summary`` as indented JSON, atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(summary, indent=2, default=_json_default) + "\n")
    return path


def sweep_temporary(directory: str | os.PathLike) -> list[Path]:
    """Remove the temporary files of interrupted atomic writes in ``directory`` (not below).

    Returns
    -------
    list of pathlib.Path
        The files removed.
    """
    removed = []
    directory = Path(directory)
    if not directory.is_dir():
        return removed
    for path in directory.iterdir():
        if TEMPORARY.match(path.name) and path.is_file() and not path.is_symlink():
            with contextlib.suppress(OSError):
                path.unlink()
                removed.append(path)
    if removed:
        logger.warning("%s: removed %d temporary file(s) left by an interrupted run", directory,
                       len(removed))
    return removed


def read_summary(directory: str | os.PathLike) -> dict[str, Any] | None:
    """The ``summary.json`` of a comptonsky run in ``directory``; None when there is none (or
    the file is not a comptonsky summary)."""
    path = Path(directory) / SUMMARY_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict) or not ({"status", "provenance"} & set(data)):
        return None
    return data


def _process_start(pid: int) -> str | None:
    """The start time of process ``pid`` (clock ticks since boot; Linux), or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[-1].split()[19]


def _alive(summary: Mapping[str, Any]) -> int | None:
    """The pid of the process that wrote a ``running`` summary, if it still runs here."""
    pid = summary.get("pid")
    if summary.get("status") != "running" or not isinstance(pid, int) or pid == os.getpid():
        return None
    if summary.get("host") != socket.gethostname():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    except OSError:
        return None
    started = summary.get("pid_start")
    if started is not None and _process_start(pid) not in (None, started):
        return None  # the pid now belongs to another process
    return pid


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


@dataclass
class RunDirectory:
    """The output folder of one run.

    Build it with :meth:`check` (which refuses unusable folders before any work is done),
    then call :meth:`begin` and, at the end, :meth:`finish` or :meth:`fail`.

    Attributes
    ----------
    path : pathlib.Path
    mode : {'fresh', 'overwrite', 'resume'}
    previous : dict or None
        The summary of the run found in the folder.
    """

    path: Path
    mode: str
    previous: dict[str, Any] | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    _created: list[Path] = field(default_factory=list)

    @property
    def checkpoint(self) -> Path:
        """Where the run's checkpoint lives."""
        return self.path / CHECKPOINT_FILE

    @property
    def summary_path(self) -> Path:
        return self.path / SUMMARY_FILE

    @classmethod
    def check(cls, output: str | os.PathLike, overwrite: bool = False,
              resume: bool = False) -> RunDirectory:
        """Check that ``output`` can take this run; nothing is written.

        Raises
        ------
        OutputExistsError
            If the folder holds files and neither ``overwrite`` nor ``resume`` is given, or
            ``overwrite`` is given for a folder that does not hold a comptonsky run.
        OutputError
            If ``output`` is a file, another process is writing the run there, or ``resume``
            finds nothing to resume (no run, a complete run, no checkpoint).
        """
        if overwrite and resume:
            raise OutputError(f"{output}: give either overwrite or resume, not both")
        text = os.fspath(output)
        if not text.strip():
            raise OutputError("--output: expected a folder, found an empty name")
        path = Path(output)
        if path.exists() and not path.is_dir():
            raise OutputError(f"{path}: is a file; expected a folder for the run's outputs")
        entries = ([p for p in path.iterdir() if not TEMPORARY.match(p.name)]
                   if path.is_dir() else [])
        previous = read_summary(path) if entries else None
        if previous is not None and (pid := _alive(previous)) is not None:
            raise OutputError(f"{path}: comptonsky process {pid} is writing a run there now; "
                              "wait for it or choose another folder")
        status = (previous or {}).get("status", "complete")
        if resume:
            if previous is None:
                raise OutputError(f"{path}: no comptonsky run to resume there (no "
                                  f"{SUMMARY_FILE}); run without --resume")
            if status == "complete":
                raise OutputError(f"{path}: the run there is complete; nothing to resume")
            if not (path / CHECKPOINT_FILE).is_file():
                raise OutputError(f"{path}: the run there ({status}) left no {CHECKPOINT_FILE} "
                                  "to resume from; start it again with --overwrite")
            return cls(path, "resume", previous)
        if not entries:
            return cls(path, "fresh")
        if not overwrite:
            what = (f"holds a comptonsky run ({status})" if previous is not None
                    else f"is not empty ({len(entries)} entries)")
            hint = ("use --overwrite to replace it, --resume to continue it" if previous
                    is not None and status != "complete" else "use --overwrite to replace it"
                    if previous is not None else "choose a new or empty folder")
            raise OutputExistsError(f"{path}: {what}; {hint}, or choose another --output")
        if previous is None:
            raise OutputExistsError(f"{path}: is not empty and holds no comptonsky "
                                    f"{SUMMARY_FILE}; refusing to clear it, choose a new or "
                                    "empty folder")
        return cls(path, "overwrite", previous)

    def _old_files(self, keep: tuple[str, ...] = ()) -> list[Path]:
        """Files of the earlier run: those its summary lists and the names a run writes, in
        this folder only."""
        names = set()
        here = self.path.resolve()
        for item in (self.previous or {}).get("files", []) or []:
            p = Path(str(item))
            if p.name and (p.parent.resolve() == here or p.parent == self.path):
                names.add(p.name)
        found = []
        for p in self.path.iterdir():
            if p.name in keep or not (p.is_file() or p.is_symlink()):
                continue
            if p.name in names or _RUN_FILES.match(p.name):
                found.append(p)
        return found

    def begin(self, summary: Mapping[str, Any]) -> None:
        """Make the folder ready and write ``summary`` with ``status: running`` into it.

        Creates the folder (and missing parents), removes the earlier run's files
        (``overwrite``; on ``resume`` all but its checkpoint) and stale temporary files.
        """
        for p in (self.path, *self.path.parents):
            if p.exists():
                break
            self._created.insert(0, p)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            self._remove_created()
            raise OutputError(f"{self.path}: cannot create the output folder "
                              f"({os.strerror(exc.errno) if exc.errno else exc})") from exc
        sweep_temporary(self.path)
        if self.mode in ("overwrite", "resume"):
            old = self._old_files(keep=(CHECKPOINT_FILE,) if self.mode == "resume" else ())
            for p in old:
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
            logger.info("%s: removed %d file(s) of the earlier run", self.path, len(old))
        self.summary = {"status": "running", "started": _now(), "pid": os.getpid(),
                        "pid_start": _process_start(os.getpid()),
                        "host": socket.gethostname(), **dict(summary)}
        self.write(self.summary)

    def write(self, summary: Mapping[str, Any]) -> Path:
        """Write ``summary`` as the folder's ``summary.json`` (atomically)."""
        return write_summary(summary, self.summary_path)

    def update(self, status: str, **entries: Any) -> dict[str, Any]:
        """Write the summary with ``status`` and ``entries`` added to what it held."""
        if status not in STATUSES:
            raise ValueError(f"status {status!r} is not one of {STATUSES}")
        self.summary = {**self.summary, **entries, "status": status}
        if status != "running":
            self.summary["ended"] = _now()
        self.write(self.summary)
        return self.summary

    def fail(self, exc: BaseException) -> None:
        """Record a failure: ``status: failed`` and the error (or, when nothing but the first
        summary was written, remove the folder again)."""
        if not self.summary_path.exists():
            self._remove_created()
            return
        with contextlib.suppress(OSError):
            if isinstance(exc, KeyboardInterrupt):
                self.update("interrupted")
            else:
                message = " ".join(str(exc).split()) or type(exc).__name__
                self.update("failed", error=message, error_type=type(exc).__name__)

    def abandon(self) -> None:
        """Remove the folders this run created, when it failed before :meth:`begin`."""
        self._remove_created()

    def _remove_created(self) -> None:
        for p in reversed(self._created):
            with contextlib.suppress(OSError):
                p.rmdir()
        self._created = []
