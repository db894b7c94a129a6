"""Where numba caches compiled kernels, and :func:`njit` for every compiled function of comptonsky.

numba caches ``cache=True`` kernels in ``__pycache__`` beside the source file, else in the
user's cache folder (``~/.cache/numba``); where neither can be written (an installation owned by
another user with a read-only or missing home folder) it refuses to define the function at all.
Importing this module checks those places once, before any kernel is compiled:

- if ``$NUMBA_CACHE_DIR`` names a writable folder, or numba's default places are writable,
  nothing changes;
- otherwise ``$NUMBA_CACHE_DIR`` is set to a private folder in the temporary directory
  (``comptonsky-numba-<uid>``, mode 0700, owned by this user);
- if there is no such folder either, :func:`njit` compiles without caching.

Each decision is logged at debug level. The module imports numba only when :func:`njit` is
called, so importing it is cheap.
"""

from __future__ import annotations

import logging
import os
import stat
import sys
import tempfile
from pathlib import Path

__all__ = ["CACHE_ENABLED", "configure_cache", "njit"]

logger = logging.getLogger(__name__)

_PACKAGE_DIR = Path(__file__).resolve().parent

#: Whether ``cache=True`` is honoured (False when no writable cache folder was found).
CACHE_ENABLED = True
_configured = False


def _writable_dir(path: Path) -> bool:
    """Whether ``path`` is, or could be created as, a folder this process can write into."""
    for p in (path, *path.parents):
        if p.exists():
            return p.is_dir() and os.access(p, os.W_OK | os.X_OK)
    return False


def _user_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "numba"


def _private_temp_dir() -> Path | None:
    """A folder only this user can write, in the temporary directory; None if impossible."""
    try:
        folder = Path(tempfile.gettempdir()) / f"comptonsky-numba-{os.getuid()}"
        folder.mkdir(mode=0o700, exist_ok=True)
        st = folder.lstat()
    except (OSError, AttributeError):  # AttributeError: no os.getuid (not POSIX)
        return None
    mine = stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid()
    private = not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    if mine and private and os.access(folder, os.W_OK | os.X_OK):
        return folder
    return None


def configure_cache() -> bool:
    """Make sure numba has a writable cache folder; return whether caching is possible.

    Runs once (at import); see the module docstring for the rules.
    """
    global CACHE_ENABLED, _configured
    if _configured:
        return CACHE_ENABLED
    _configured = True
    given = os.environ.get("NUMBA_CACHE_DIR")
    if given:
        if _writable_dir(Path(given)):
            return True
        logger.debug("NUMBA_CACHE_DIR=%s is not writable", given)
    if _writable_dir(_PACKAGE_DIR / "__pycache__") or _writable_dir(_user_cache_dir()):
        return True
    folder = _private_temp_dir()
    if folder is None:
        CACHE_ENABLED = False
        logger.debug("no writable numba cache folder; compiled kernels are not cached")
        return False
    os.environ["NUMBA_CACHE_DIR"] = str(folder)
    numba_config = sys.modules.get("numba.core.config")
    if numba_config is not None:  # numba already imported: it reads the variable only then
        numba_config.CACHE_DIR = str(folder)
    logger.debug("package and user cache folders not writable; numba caches in %s", folder)
    return True


def njit(*args, **kwargs):
    """:func:`numba.njit`, with ``cache=True`` dropped when no cache folder can be written."""
    import numba

    if kwargs.get("cache") and not configure_cache():
        kwargs["cache"] = False
    return numba.njit(*args, **kwargs)


configure_cache()
