"""``comptonsky cache list|clean``: the converted-response caches on disk, and removing them.

A cache is ``<response file name>.comptonsky-<storage>-<dtype>-<key>.cache``
(:mod:`comptonsky.response.cache`), beside its response file when that directory is writable,
else in ``$COMPTONSKY_CACHE_DIR`` or ``$XDG_CACHE_HOME/comptonsky``. A cache being written is
``.<cache name>.<random>.part`` in the same directory, locked (``flock``) by the process writing
it; an unlocked one is left over from an interrupted run (an orphan).
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass
from pathlib import Path

from ..response.cache import part_in_use
from . import COMMANDS

HELP = COMMANDS["cache"]

CACHE_GLOB = "*.comptonsky-*.cache"
PART_GLOB = ".*.comptonsky-*.cache.*.part"
#: A ``.part`` file younger than this (seconds) is kept: its writer may not hold the lock yet.
FRESH_S = 60.0
DAY_S = 86400.0


@dataclass(frozen=True)
class CacheEntry:
    """One file: ``path``, ``size`` (bytes), ``age_s`` (seconds since its last modification) and
    ``partial`` (an unfinished ``.part`` file)."""

    path: Path
    size: int
    age_s: float
    partial: bool


def default_dirs() -> list[Path]:
    """``$COMPTONSKY_CACHE_DIR`` (when set) and ``$XDG_CACHE_HOME/comptonsky``."""
    from ..response.cache import CACHE_ENV

    dirs = [Path(os.environ[CACHE_ENV]).expanduser()] if os.environ.get(CACHE_ENV) else []
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    dirs.append(Path(base) / "comptonsky")
    return list(dict.fromkeys(dirs))


def find_caches(directories: list[Path], now: float | None = None) -> list[CacheEntry]:
    """The cache and ``.part`` files in ``directories`` (not recursive), oldest first."""
    now = time.time() if now is None else now
    entries = []
    for directory in directories:
        if not directory.is_dir():
            continue
        for pattern, partial in ((CACHE_GLOB, False), (PART_GLOB, True)):
            for path in directory.glob(pattern):
                try:
                    st = path.stat()
                except OSError:       # removed meanwhile
                    continue
                entries.append(CacheEntry(path, st.st_size, now - st.st_mtime, partial))
    return sorted(entries, key=lambda e: -e.age_s)


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover


def _age(seconds: float) -> str:
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < DAY_S:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / DAY_S:.1f} d"


def _days(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of days, found {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number of days ≥ 0, found {text!r}")
    return value


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "cache", help=HELP, description=HELP + ". Caches beside a response file are found "
        "with --cache-dir set to that file's directory.")
    p.add_argument("action", choices=("list", "clean"),
                   help="list: size and age of each file; clean: remove them")
    p.add_argument("--cache-dir", action="append", type=Path, default=None, metavar="DIR",
                   help="directory to look in (repeatable; default: $COMPTONSKY_CACHE_DIR and "
                        "$XDG_CACHE_HOME/comptonsky)")
    p.add_argument("--older-than", type=_days, default=None, metavar="DAYS",
                   help="only files last modified more than DAYS days ago")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    directories = args.cache_dir or default_dirs()
    entries = find_caches(directories)
    if args.older_than is not None:
        entries = [e for e in entries if e.age_s > args.older_than * DAY_S]
    where = ", ".join(str(d) for d in directories)
    if args.action == "list":
        for e in entries:
            print(f"{_size(e.size):>9}  {_age(e.age_s):>8}  {e.path}"
                  f"{'  (unfinished)' if e.partial else ''}")
        caches = [e for e in entries if not e.partial]
        print(f"{len(caches)} cache file(s), {_size(sum(e.size for e in caches))}; "
              f"{len(entries) - len(caches)} .part file(s), "
              f"{_size(sum(e.size for e in entries if e.partial))} in {where}")
        return 0
    removed, freed, kept = 0, 0, 0
    for e in entries:
        if e.partial and (e.age_s < FRESH_S or part_in_use(e.path)):   # being written
            kept += 1
            continue
        try:
            e.path.unlink()
        except FileNotFoundError:
            continue
        except OSError as exc:
            print(f"cannot remove {e.path}: {exc.strerror}")
            kept += 1
            continue
        removed += 1
        freed += e.size
    print(f"removed {removed} file(s), {_size(freed)} freed, from {where}"
          + (f"; kept {kept} (being written or not removable)" if kept else ""))
    return 0
