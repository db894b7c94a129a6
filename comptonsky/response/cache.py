"""Converted-response cache: one file per (source file identity, dtype, storage, threshold).

A cache file holds raw arrays, each at a 4096-byte boundary, then a JSON footer and a 16-byte
trailer (footer length, magic). It is written sequentially (arrays of unknown length stream in)
under a temporary name and renamed when complete, and read as read-only memory maps. The key
hashes the source's resolved path, size and modification time with the dtype, storage, threshold
and format version, so a changed response file is converted again.

Location, first match wins: the ``cache_dir`` option; ``$COMPTONSKY_CACHE_DIR``; the source
file's directory if writable; ``$XDG_CACHE_HOME/comptonsky`` (default ``~/.cache/comptonsky``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import mmap
import os
import struct
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import FileFormatError
from ..io.atomic import atomic_path

__all__ = ["CACHE_ENV", "CacheWriter", "CacheFile", "map_array", "ResponseCache"]

logger = logging.getLogger(__name__)

CACHE_ENV = "COMPTONSKY_CACHE_DIR"
FORMAT_VERSION = 1
MAGIC = b"CSKYRSP1"
ALIGN = 4096
_TRAILER = struct.Struct("<Q8s")


class CacheWriter:
    """Stream arrays into a new cache file ``path`` from a writer thread (atomic: written under
    a temporary name, renamed when complete), with the JSON-serialisable ``meta`` in its footer;
    ``prune`` removes older caches of the same source, storage and dtype on success. An appended
    block must stay unchanged until :meth:`wait` (or the end of the file)."""

    def __init__(self, path: str | os.PathLike, meta: dict[str, Any], prune: bool = True):
        self.path = Path(path)
        self.prune = prune
        self.meta = dict(meta)
        self.arrays: dict[str, dict[str, Any]] = {}
        self._ctx = atomic_path(self.path)
        self.tmp = self._ctx.__enter__()
        self._fh = open(self.tmp, "wb")  # noqa: SIM115 - closed in _finish()/abort()
        self._pool = ThreadPoolExecutor(1)
        self._pending: list[Future] = []
        self._current: str | None = None
        self._pos = 0

    def begin(self, name: str, dtype, inner_shape: tuple[int, ...] = ()) -> None:
        """Start array ``name`` of unknown length: :meth:`append` blocks, then :meth:`end`."""
        pad = (-self._pos) % ALIGN
        if pad:
            self._write(b"\0" * pad)
        self._current = name
        self.arrays[name] = {"offset": self._pos, "dtype": np.dtype(dtype).str,
                             "inner": list(inner_shape), "count": 0}

    def append(self, block: np.ndarray) -> None:
        """Append ``block`` (of the array's dtype) to the current array."""
        info = self.arrays[self._current]
        if block.dtype.str != info["dtype"]:
            raise TypeError(f"block dtype {block.dtype} != array dtype {info['dtype']}")
        info["count"] += int(block.shape[0])
        self._write(memoryview(np.ascontiguousarray(block)).cast("B"))

    def end(self) -> None:
        info = self.arrays[self._current]
        info["shape"] = [info.pop("count")] + info.pop("inner")
        self._current = None

    def add(self, name: str, array: np.ndarray) -> None:
        """Write a whole array (at least 1-D)."""
        self.begin(name, array.dtype, array.shape[1:])
        self.append(array)
        self.end()

    def _write(self, data) -> None:
        self._pos += len(data) if isinstance(data, bytes) else data.nbytes
        self._pending.append(self._pool.submit(self._fh.write, data))

    def wait(self) -> None:
        """Block until every appended block has been written."""
        for fut in self._pending:
            fut.result()
        self._pending.clear()

    def close_in_background(self) -> Future:
        """Finish the file (:meth:`close`) from the writer thread; returns its Future.

        Loading returns while the cache is still being written; the thread is not a daemon, so
        the interpreter waits for it at exit. A failure is logged and leaves no partial file.
        """
        fut = self._pool.submit(self._finish)
        self._pool.shutdown(wait=False)
        return fut

    def close(self) -> Path:
        """Write the footer, close, rename into place; remove older caches of the source."""
        return self.close_in_background().result()

    def _finish(self) -> Path:
        try:
            for fut in self._pending:
                fut.result()
            footer = json.dumps({"version": FORMAT_VERSION, "meta": self.meta,
                                 "arrays": self.arrays}).encode()
            self._fh.write(footer)
            self._fh.write(_TRAILER.pack(len(footer), MAGIC))
            self._fh.close()
            self._ctx.__exit__(None, None, None)
        except BaseException as exc:
            logger.warning("writing response cache %s failed: %s", self.path, exc)
            self._discard()
            raise
        prefix = self.path.name.rsplit("-", 1)[0] + "-"      # same source, storage and dtype
        for old in self.path.parent.glob(prefix + "*.cache") if self.prune else []:
            if old == self.path:
                continue
            try:
                old.unlink()
                logger.info("removed stale response cache %s", old)
            except OSError:
                pass
        logger.info("wrote response cache %s (%.1f MB)", self.path, self.path.stat().st_size / 1e6)
        return self.path

    def abort(self) -> None:
        """Discard the temporary file."""
        for fut in self._pending:
            fut.cancel()
        self._pool.shutdown(wait=True)
        self._discard()

    def _discard(self) -> None:
        self._fh.close()
        self._ctx.__exit__(RuntimeError, RuntimeError("aborted"), None)


def _mmap(fh, populate: bool) -> mmap.mmap:
    flags = mmap.MAP_SHARED
    if populate and hasattr(mmap, "MAP_POPULATE"):
        flags |= mmap.MAP_POPULATE
    return mmap.mmap(fh.fileno(), 0, flags=flags, prot=mmap.PROT_READ)


class CacheFile:
    """A cache file opened for reading: its ``meta`` and its arrays (``cf[name]``, read-only
    memory maps; ``populate`` pre-faults them so that the first product pays no page faults).

    Raises
    ------
    FileFormatError
        If the file is not a cache of this format version.
    """

    def __init__(self, path: str | os.PathLike, populate: bool = False):
        self.path = Path(path)
        size = self.path.stat().st_size
        with open(self.path, "rb") as fh:
            if size < _TRAILER.size:
                raise FileFormatError(f"{self.path}: not a comptonsky response cache (too short)")
            fh.seek(size - _TRAILER.size)
            n, magic = _TRAILER.unpack(fh.read(_TRAILER.size))
            if magic != MAGIC or n > size:
                raise FileFormatError(f"{self.path}: not a comptonsky response cache "
                                      f"(magic {magic!r}, expected {MAGIC!r})")
            fh.seek(size - _TRAILER.size - n)
            footer = json.loads(fh.read(n))
            if footer.get("version") != FORMAT_VERSION:
                raise FileFormatError(f"{self.path}: cache format version "
                                      f"{footer.get('version')}, expected {FORMAT_VERSION}")
            self._mmap = _mmap(fh, populate)
        self.meta: dict[str, Any] = footer["meta"]
        self.layout: dict[str, dict[str, Any]] = footer["arrays"]

    def __getitem__(self, name: str) -> np.ndarray:
        info = self.layout[name]
        shape = tuple(info["shape"])
        return np.frombuffer(self._mmap, dtype=np.dtype(info["dtype"]),
                             count=int(np.prod(shape)), offset=info["offset"]).reshape(shape)

    def __contains__(self, name: str) -> bool:
        return name in self.layout

    def offset(self, name: str) -> int:
        return int(self.layout[name]["offset"])


def map_array(path: str | os.PathLike, offset: int, shape: tuple[int, ...], dtype,
              populate: bool = False) -> np.ndarray:
    """Read-only memory map of a C-ordered array of ``shape`` at byte ``offset`` of a file.

    Raises
    ------
    FileFormatError
        If the file is shorter than the array.
    """
    dtype = np.dtype(dtype)
    count = int(np.prod(shape))
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if offset + count * dtype.itemsize > size:
            raise FileFormatError(f"{path}: {size} bytes, expected at least "
                                  f"{offset + count * dtype.itemsize} for a {shape} {dtype} array")
        mm = _mmap(fh, populate)
    return np.frombuffer(mm, dtype=dtype, count=count, offset=offset).reshape(shape)


def _cache_dir(source: Path, cache_dir) -> Path:
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    if os.access(source.resolve().parent, os.W_OK):
        return source.resolve().parent
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "comptonsky"


#: Cache files this process is still writing (path → Future), so that a second load waits.
_PENDING: dict[str, Future] = {}


class ResponseCache:
    """The cache file (``path``) of one response file ``source``, ``dtype``, layout ``kind``
    ('dense', also used by out-of-core, or 'sparse') and sparse ``threshold`` (None for dense),
    in ``cache_dir`` or the default location; ``meta`` is the identity written into its footer.
    """

    def __init__(self, source, dtype: str, kind: str, threshold: float | None = None,
                 cache_dir=None):
        self.source = Path(source)
        st = self.source.resolve().stat()
        ident = json.dumps([FORMAT_VERSION, str(self.source.resolve()), st.st_size,
                            st.st_mtime_ns, str(dtype), kind,
                            None if threshold is None else float(threshold)])
        self.key = hashlib.sha256(ident.encode()).hexdigest()[:20]
        self.path = (_cache_dir(self.source, cache_dir)
                     / f"{self.source.name}.comptonsky-{kind}-{dtype}-{self.key}.cache")
        self.meta = {"key": self.key, "source": str(source), "storage": kind, "dtype": dtype,
                     "threshold": threshold}

    def find(self, populate: bool = False) -> CacheFile | None:
        """The valid cache file (mapped), once any write of it by this process has finished;
        None if there is none (an unreadable or stale one is logged and ignored)."""
        pending = _PENDING.pop(str(self.path), None)
        if pending is not None:
            try:
                pending.result()
            except Exception:  # noqa: BLE001 - logged by the writer; convert again
                pass
        if not self.path.exists():
            return None
        try:
            cf = CacheFile(self.path, populate=populate)
        except (FileFormatError, ValueError, OSError) as exc:
            logger.warning("ignoring unreadable response cache %s: %s", self.path, exc)
            return None
        if cf.meta.get("key") != self.key:
            logger.warning("ignoring response cache %s: key %s, expected %s", self.path,
                           cf.meta.get("key"), self.key)
            return None
        return cf

    def writer(self, meta: dict[str, Any]) -> CacheWriter:
        """A writer of this cache file (``meta`` is added to the identity)."""
        return CacheWriter(self.path, {**self.meta, **meta})

    def finish_in_background(self, writer: CacheWriter) -> Future:
        """Close ``writer`` from its thread; a later :meth:`find` waits for it."""
        _PENDING[str(self.path)] = fut = writer.close_in_background()
        return fut
