"""How a result was made: software versions, host, input-file checksums, as JSON and FITS cards.

:func:`collect` gathers one mapping that ``summary.json`` stores under ``provenance``;
:func:`fits_cards` turns it into header cards for the FITS files of the same run. Input files
are identified by SHA-256 of their bytes, read in a stream; files above
:data:`FULL_HASH_LIMIT` are identified by their size, modification time and the SHA-256 of their
first and last MiB (the ``method`` entry says which was done, ``seconds`` how long it took).
"""

from __future__ import annotations

import datetime
import hashlib
import importlib.metadata
import os
import platform
import socket
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["collect", "file_identity", "package_versions", "host_info", "fits_cards",
           "DEPENDENCIES", "FULL_HASH_LIMIT"]

#: Distributions whose versions are recorded (besides comptonsky and Python).
DEPENDENCIES = ("numpy", "scipy", "astropy", "healpy", "histpy", "numba", "h5py", "mhealpy",
                "matplotlib")
#: Files up to this size (bytes) are hashed whole; larger ones by their first and last MiB.
FULL_HASH_LIMIT = 4 << 30
_MIB = 1 << 20
_FULL = "sha256 of the whole file"
_PARTIAL = "sha256 of the first and last MiB, with size and mtime"
#: FITS keywords of the recorded versions (8 characters at most).
_VERSION_KEYS = {"python": "V_PYTHON", "numpy": "V_NUMPY", "scipy": "V_SCIPY",
                 "astropy": "V_ASTROP", "healpy": "V_HEALPY", "histpy": "V_HISTPY",
                 "numba": "V_NUMBA", "h5py": "V_H5PY", "mhealpy": "V_MHEALP",
                 "matplotlib": "V_MPL"}


def package_versions() -> dict[str, str]:
    """Versions of comptonsky, Python and :data:`DEPENDENCIES` (``"absent"`` if not installed).

    Read from the installed distributions' metadata; nothing is imported.
    """
    from . import __version__

    versions = {"comptonsky": __version__, "python": platform.python_version()}
    for name in DEPENDENCIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


def host_info() -> dict[str, Any]:
    """Host name, operating system, machine, CPU count and total memory (bytes, if known)."""
    info = {"hostname": socket.gethostname(), "platform": platform.platform(),
            "machine": platform.machine(), "cpus": os.cpu_count()}
    try:
        import psutil

        info["memory_bytes"] = int(psutil.virtual_memory().total)
    except ImportError:  # pragma: no cover - psutil is a dependency
        pass
    return info


def file_identity(path: str | os.PathLike, full_limit: int = FULL_HASH_LIMIT) -> dict[str, Any]:
    """Size, modification time and SHA-256 of a file, read in 4 MiB blocks.

    Parameters
    ----------
    path : path-like
        The file.
    full_limit : int
        Files of at most this many bytes are hashed whole; larger ones by their first and last
        MiB (then ``sha256`` covers those 2 MiB only, and size and ``mtime`` complete the
        identity).

    Returns
    -------
    dict
        ``path`` (absolute), ``bytes``, ``mtime`` (ISO 8601, UTC), ``sha256``, ``method`` and
        ``seconds`` (time spent hashing).
    """
    path = Path(path).resolve()
    stat = path.stat()
    start = time.perf_counter()
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        if stat.st_size <= full_limit:
            method = _FULL
            for block in iter(lambda: fh.read(4 * _MIB), b""):
                digest.update(block)
        else:
            method = _PARTIAL
            digest.update(fh.read(_MIB))
            fh.seek(max(stat.st_size - _MIB, _MIB))
            digest.update(fh.read(_MIB))
    mtime = datetime.datetime.fromtimestamp(stat.st_mtime, datetime.timezone.utc)
    return {"path": str(path), "bytes": int(stat.st_size),
            "mtime": mtime.isoformat(timespec="seconds"), "sha256": digest.hexdigest(),
            "method": method, "seconds": round(time.perf_counter() - start, 4)}


def collect(inputs: Mapping[str, str | os.PathLike | None] | None = None,
            full_limit: int = FULL_HASH_LIMIT) -> dict[str, Any]:
    """The provenance of a run: when, where, with which software, from which files.

    Parameters
    ----------
    inputs : mapping of role → path, optional
        Input files by role (``event``, ``background albedo``, ``response``, ``parameter
        file``, ...); entries that are None or not files (in-memory inputs) are recorded as
        ``"in memory"``.
    full_limit : int
        See :func:`file_identity`.

    Returns
    -------
    dict
        ``created`` (UTC, ISO 8601), ``command`` (the process's argv), ``versions``,
        ``host``, ``inputs`` (role → :func:`file_identity` or ``"in memory"``) and
        ``hash_seconds``.
    """
    start = time.perf_counter()
    files: dict[str, Any] = {}
    for role, path in (inputs or {}).items():
        is_file = isinstance(path, (str, os.PathLike)) and Path(path).is_file()
        files[role] = file_identity(path, full_limit) if is_file else "in memory"
    now = datetime.datetime.now(datetime.timezone.utc)
    return {"created": now.isoformat(timespec="seconds"), "command": list(sys.argv),
            "versions": package_versions(), "host": host_info(), "inputs": files,
            "hash_seconds": round(time.perf_counter() - start, 4)}


def fits_cards(provenance: Mapping[str, Any]) -> list[tuple[str, Any, str]]:
    """FITS header cards (keyword, value, comment) of a :func:`collect` mapping.

    ``CREATOR``, ``DATE``, ``HOST``, one ``V_*`` card per recorded version and, for input
    file n, ``INROLEn`` (its role), ``INFILEn`` (its name), ``INSHAn`` (SHA-256) and
    ``INHASHn`` (``FULL`` or ``PARTIAL``, see :func:`file_identity`).
    """
    versions = provenance.get("versions", {})
    cards = [("CREATOR", f"comptonsky {versions.get('comptonsky', '')}".strip(),
              "software that wrote this file"),
             ("DATE", str(provenance.get("created", ""))[:19], "creation time (UTC)"),
             ("HOST", str(provenance.get("host", {}).get("hostname", "")), "host name")]
    cards += [(key, str(versions[name]), f"{name} version")
              for name, key in _VERSION_KEYS.items() if name in versions]
    files = [(role, item) for role, item in provenance.get("inputs", {}).items()
             if isinstance(item, Mapping)]
    for n, (role, item) in enumerate(files, start=1):
        cards += [(f"INROLE{n}", role, "input file role"),
                  (f"INFILE{n}", Path(item["path"]).name, "input file name"),
                  (f"INSHA{n}", item["sha256"], ""),
                  (f"INHASH{n}", "FULL" if item["method"] == _FULL else "PARTIAL",
                   "SHA-256 of all bytes, or of first+last MiB")]
    return cards
