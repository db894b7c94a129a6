"""Converted-response cache: one file per (response content, dtype, storage, threshold).

A cache file holds raw arrays, each at a 4096-byte boundary, then a JSON footer (the arrays'
offsets, dtypes, shapes and CRC-32 checksums, and the identity of the response) and a 16-byte
trailer (footer length, magic). It is written sequentially (arrays of unknown length stream in)
under a temporary ``.part`` name, locked (``flock``) while it is written, made read-only and
renamed when complete.

The key hashes the source's resolved path, size and modification time, a digest of its contents
(:meth:`~.source.ResponseSource.fingerprint`: shapes, unit and sampled rows), the dtype, storage,
threshold and format version. Opening a cache checks the footer against the file size, every
array's CRC-32 (``verify='full'``; once per process and file), and the layout against the
response; the loader then checks sizes, index ranges and sampled rows against the response file
(:mod:`.load`). A cache that fails any check is removed with a warning and converted again.

A cache file (or a response file) is memory-mapped only when nobody without root rights can
change it in place (``map_files='read-only'``); otherwise its arrays are read into memory, so a
running job never dies with SIGBUS when the file is truncated or overwritten under it.

Location, first match wins: the ``cache_dir`` option; ``$COMPTONSKY_CACHE_DIR``; the source
file's directory if writable; ``$XDG_CACHE_HOME/comptonsky`` (default ``~/.cache/comptonsky``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import mmap
import os
import stat
import struct
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import FileFormatError, InvalidCacheError, OutputError
from ..io.atomic import atomic_path
from ..io.hdf5_chunks import default_threads

try:  # ISA-L computes zlib's CRC-32 several times faster
    from isal.isal_zlib import crc32 as _crc32
except ImportError:  # pragma: no cover - isal is a declared dependency
    from zlib import crc32 as _crc32

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None

__all__ = ["CACHE_ENV", "CacheWriter", "CacheFile", "file_array", "ResponseCache",
           "sweep_orphans", "part_in_use", "PART_GLOB", "ORPHAN_AGE_S"]

logger = logging.getLogger(__name__)

CACHE_ENV = "COMPTONSKY_CACHE_DIR"
FORMAT_VERSION = 2
MAGIC = b"CSKYRSP1"
ALIGN = 4096
_TRAILER = struct.Struct("<Q8s")
#: Largest footer accepted (bytes).
_MAX_FOOTER = 1 << 20
#: dtypes a cache array may have.
_DTYPES = {np.dtype(t).str for t in ("<f4", "<f8", "<i8", "<i4", "<u2")}
#: Unfinished cache files (``atomic_path`` temporaries) of converted and out-of-core caches.
PART_GLOB = ".*comptonsky-*.cache.*.part"
#: Where ``flock`` is missing: a ``.part`` file unmodified for this long (s) is an orphan.
ORPHAN_AGE_S = 3600.0
#: Bytes read (and checksummed) at a time.
_READ_BLOCK = 32 * 2 ** 20


def _process_start() -> float:
    try:
        import psutil
        return float(psutil.Process().create_time())
    except Exception:  # noqa: BLE001 - no psutil or no /proc: the import time
        return time.time()


#: When this process started (s since the epoch): a ``.part`` file older than it is not ours.
PROCESS_START = _process_start()


def _lock(fh) -> None:
    if fcntl is not None:
        with contextlib.suppress(OSError):
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)


def part_in_use(path: str | os.PathLike) -> bool:
    """Whether an unfinished cache file is being written by a live process (it holds the file's
    ``flock``; without ``flock``: modified within :data:`ORPHAN_AGE_S`)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    except OSError:                         # cannot tell (another user's file): leave it
        return True
    try:
        if fcntl is None:  # pragma: no cover - not POSIX
            return time.time() - os.fstat(fd).st_mtime < ORPHAN_AGE_S
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        except OSError:  # no locks on this file system: judge by age
            return time.time() - os.fstat(fd).st_mtime < ORPHAN_AGE_S
        return False
    finally:
        os.close(fd)


def sweep_orphans(directory: str | os.PathLike) -> list[Path]:
    """Remove the unfinished cache files in ``directory`` left by killed conversions: those
    older than this process that no live process is writing (:func:`part_in_use`), and
    out-of-core temporaries of processes that no longer run. Returns the removed paths."""
    removed = []
    directory = Path(directory)
    candidates = list(directory.glob(PART_GLOB)) if directory.is_dir() else []
    for path in candidates:
        try:
            st = path.stat()
            if st.st_mtime >= PROCESS_START or part_in_use(path):
                continue
            path.unlink()
        except OSError:
            continue
        removed.append(path)
        logger.info("removed %s (%.1f MB), left by an interrupted response conversion", path,
                    st.st_size / 1e6)
    for path in directory.glob("comptonsky-response-*-*.cache") if directory.is_dir() else []:
        pid = path.name.split("-")[2]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            with contextlib.suppress(OSError):
                path.unlink()
                removed.append(path)
                logger.info("removed %s, left by an interrupted out-of-core run", path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


class CacheWriter:
    """Stream arrays into a new cache file ``path`` from a writer thread (atomic: written under
    a temporary name, renamed when complete), with the JSON-serialisable ``meta`` in its footer;
    ``prune`` removes older caches of the same source, storage and dtype on success. An appended
    block must stay unchanged until :meth:`wait` (or the end of the file).

    Raises
    ------
    OutputError
        If the file cannot be created (an unwritable or missing folder).
    """

    def __init__(self, path: str | os.PathLike, meta: dict[str, Any], prune: bool = True):
        self.path = Path(path)
        self.prune = prune
        self.meta = dict(meta)
        self.arrays: dict[str, dict[str, Any]] = {}
        self._ctx = atomic_path(self.path)
        self.tmp = self._ctx.__enter__()
        try:
            self._fh = open(self.tmp, "wb")  # noqa: SIM115 - closed in _finish()/abort()
        except OSError as exc:
            self._ctx.__exit__(type(exc), exc, None)
            raise OutputError(f"{self.path}: cannot be written ({exc.strerror or exc})") from exc
        _lock(self._fh)                     # released when closed, or when the process dies
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
                             "inner": list(inner_shape), "count": 0, "crc32": 0}

    def append(self, block: np.ndarray) -> None:
        """Append ``block`` (of the array's dtype) to the current array."""
        info = self.arrays[self._current]
        if block.dtype.str != info["dtype"]:
            raise TypeError(f"block dtype {block.dtype} != array dtype {info['dtype']}")
        info["count"] += int(block.shape[0])
        self._write(memoryview(np.ascontiguousarray(block)).cast("B"), info)

    def end(self) -> None:
        info = self.arrays[self._current]
        info["shape"] = [info.pop("count")] + info.pop("inner")
        self._current = None

    def add(self, name: str, array: np.ndarray) -> None:
        """Write a whole array (at least 1-D)."""
        self.begin(name, array.dtype, array.shape[1:])
        self.append(array)
        self.end()

    def _write(self, data, info: dict[str, Any] | None = None) -> None:
        self._pos += len(data) if isinstance(data, bytes) else data.nbytes
        self._pending.append(self._pool.submit(self._write_now, data, info))

    def _write_now(self, data, info) -> None:
        self._fh.write(data)
        if info is not None:                # the checksum, in the writer thread (in order)
            info["crc32"] = _crc32(data, info["crc32"])

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
            self._fh.flush()
            with contextlib.suppress(OSError):  # nobody changes it in place (see map_files)
                os.fchmod(self._fh.fileno(), 0o444)
            self._ctx.__exit__(None, None, None)  # renamed while still locked
            self._fh.close()
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


def may_map(fd: int, path: str | os.PathLike, map_files: str) -> bool:
    """Whether the file open as ``fd`` may be memory-mapped under the ``map_files`` rule
    (:class:`~.options.ResponseOptions`): 'read-only' when it has no write permission bits and
    this process cannot write it (so that only root could truncate it under a mapping)."""
    if map_files in ("always", "never"):
        return map_files == "always"
    st = os.fstat(fd)
    if st.st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH):
        return False
    return not os.access(path, os.W_OK)


def _pread_into(fd: int, pos: int, mv: memoryview, path, crc: int | None = None) -> int | None:
    """Fill ``mv`` (bytes) from ``fd`` at byte ``pos``; returns the CRC-32 continued from
    ``crc`` (None: not computed).

    The blocks are read on every core (``preadv`` releases the GIL, so the copies out of the
    page cache and the first touches of the new memory run side by side) and checksummed in
    file order on this thread as they arrive.

    Raises
    ------
    InvalidCacheError
        If the file ends early (truncated meanwhile).
    """
    starts = range(0, mv.nbytes, _READ_BLOCK)
    threads = min(default_threads(), len(starts))
    if threads <= 1:
        _read_all(fd, pos, mv, path)
        return None if crc is None else _crc32(mv, crc)
    with ThreadPoolExecutor(threads, thread_name_prefix="cache-read") as pool:
        reads = [pool.submit(_read_all, fd, pos + s, mv[s:s + _READ_BLOCK], path)
                 for s in starts]
        try:
            for s, done in zip(starts, reads):
                done.result()
                if crc is not None:
                    crc = _crc32(mv[s:s + _READ_BLOCK], crc)
        except BaseException:
            for r in reads:
                r.cancel()
            raise
    return crc


def _read_all(fd: int, pos: int, mv: memoryview, path) -> None:
    done = 0
    while done < mv.nbytes:
        n = os.preadv(fd, [mv[done:done + _READ_BLOCK]], pos + done)
        if n <= 0:
            raise InvalidCacheError(f"{path}: ends at byte {pos + done}, expected "
                                    f"{pos + mv.nbytes} (truncated?)")
        done += n


def _mmap(fd: int, populate: bool) -> mmap.mmap:
    flags = mmap.MAP_SHARED
    if populate and hasattr(mmap, "MAP_POPULATE"):
        flags |= mmap.MAP_POPULATE
    return mmap.mmap(fd, 0, flags=flags, prot=mmap.PROT_READ)


#: (path, device, inode, size, mtime) of the cache files whose checksums this process verified.
_VERIFIED: set[tuple] = set()


class CacheFile:
    """A cache file opened for reading: its ``meta`` and its arrays (``cf[name]``, read-only;
    memory maps when ``map_files`` allows (``mapped``), else read into memory; ``populate``
    pre-faults maps). With ``verify='full'`` each array is checked against its CRC-32 when first
    used (once per process and file).

    Raises
    ------
    InvalidCacheError
        If the file is not a cache of this format version, or its footer does not fit the file
        (the message says what failed); later, if an array fails its checksum.
    """

    def __init__(self, path: str | os.PathLike, populate: bool = False, verify: str = "full",
                 map_files: str = "read-only"):
        self.path = Path(path)
        self.populate = populate
        self._fd = os.open(self.path, os.O_RDONLY)
        try:
            self._open(verify, map_files)
        except BaseException:
            self.close()
            raise

    def _open(self, verify: str, map_files: str) -> None:
        st = os.fstat(self._fd)
        size = st.st_size
        if size < _TRAILER.size:
            raise InvalidCacheError(f"{self.path}: not a comptonsky response cache (too short)")
        n, magic = _TRAILER.unpack(os.pread(self._fd, _TRAILER.size, size - _TRAILER.size))
        if magic != MAGIC:
            raise InvalidCacheError(f"{self.path}: not a comptonsky response cache "
                                    f"(magic {magic!r}, expected {MAGIC!r})")
        if n > min(size - _TRAILER.size, _MAX_FOOTER):
            raise InvalidCacheError(f"{self.path}: footer length {n} does not fit the file "
                                    f"({size} bytes)")
        self.data_end = size - _TRAILER.size - n
        try:
            footer = json.loads(os.pread(self._fd, n, self.data_end))
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidCacheError(f"{self.path}: unreadable footer ({exc})") from None
        if not isinstance(footer, dict) or footer.get("version") != FORMAT_VERSION:
            version = footer.get("version") if isinstance(footer, dict) else None
            raise InvalidCacheError(f"{self.path}: cache format version {version}, expected "
                                    f"{FORMAT_VERSION}")
        meta, layout = footer.get("meta"), footer.get("arrays")
        if not isinstance(meta, dict) or not isinstance(layout, dict):
            raise InvalidCacheError(f"{self.path}: footer without 'meta' and 'arrays'")
        for name, info in layout.items():
            self._check_layout(name, info)
        self.meta: dict[str, Any] = meta
        self.layout: dict[str, dict[str, Any]] = layout
        self._ident = (str(self.path), st.st_dev, st.st_ino, size, st.st_mtime_ns)
        self.verify = verify == "full" and self._ident not in _VERIFIED
        self._verified: set[str] = set()
        self.mapped = may_map(self._fd, self.path, map_files)
        self._mmap = _mmap(self._fd, self.populate) if self.mapped else None
        self._arrays: dict[str, np.ndarray] = {}

    def _check_layout(self, name: str, info: Any) -> None:
        try:
            offset, shape = int(info["offset"]), [int(n) for n in info["shape"]]
            dtype, crc = np.dtype(info["dtype"]), int(info["crc32"])
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidCacheError(f"{self.path}: array {name!r}: malformed entry {info!r} "
                                    f"({exc})") from None
        if dtype.str not in _DTYPES or not shape or min(shape) < 0 or offset < 0 or \
                offset % ALIGN or not 0 <= crc < 2 ** 32:
            raise InvalidCacheError(f"{self.path}: array {name!r}: dtype {dtype}, shape {shape}, "
                                    f"offset {offset}: not a valid cache array")
        end = offset + int(np.prod(shape, dtype=object)) * dtype.itemsize
        if end > self.data_end:
            raise InvalidCacheError(
                f"{self.path}: array {name!r} {tuple(shape)} {dtype} ends at byte {end}, beyond "
                f"the data ({self.data_end} bytes): the footer claims more than the file holds")

    def _geometry(self, name: str) -> tuple[int, tuple[int, ...], np.dtype, int]:
        info = self.layout[name]
        shape = tuple(int(n) for n in info["shape"])
        return int(info["offset"]), shape, np.dtype(info["dtype"]), int(info["crc32"])

    def _crc_ok(self, name: str, crc: int, expected: int) -> None:
        if crc != expected:
            raise InvalidCacheError(f"{self.path}: array {name!r} fails its checksum (CRC-32 "
                                    f"{crc:08x}, expected {expected:08x}): the file was changed")
        self._verified.add(name)
        if self._verified >= set(self.layout):
            _VERIFIED.add(self._ident)

    def __getitem__(self, name: str) -> np.ndarray:
        if name in self._arrays:
            return self._arrays[name]
        offset, shape, dtype, expected = self._geometry(name)
        count = int(np.prod(shape))
        check = self.verify and name not in self._verified
        if self.mapped:
            arr = np.frombuffer(self._mmap, dtype=dtype, count=count, offset=offset)
            if check:
                mv = memoryview(arr).cast("B")
                crc = 0
                for s in range(0, mv.nbytes, _READ_BLOCK):
                    crc = _crc32(mv[s:s + _READ_BLOCK], crc)
                self._crc_ok(name, crc, expected)
        else:
            arr = np.empty(count, dtype=dtype)
            crc = _pread_into(self._fd, offset, memoryview(arr).cast("B"), self.path,
                              0 if check else None)
            if check:
                self._crc_ok(name, crc, expected)
            arr.flags.writeable = False
        arr = arr.reshape(shape)
        self._arrays[name] = arr
        return arr

    def check(self, name: str) -> None:
        """Verify array ``name``'s checksum by streaming it (without holding it) when
        ``verify`` asks for it (out-of-core)."""
        if not self.verify or name in self._verified:
            return
        offset, shape, dtype, expected = self._geometry(name)
        nbytes = int(np.prod(shape)) * dtype.itemsize
        buf = np.empty(min(nbytes, _READ_BLOCK), dtype=np.uint8)
        crc = 0
        for s in range(0, nbytes, buf.size):
            mv = memoryview(buf)[:min(buf.size, nbytes - s)]
            crc = _pread_into(self._fd, offset + s, mv, self.path, crc)
        self._crc_ok(name, crc, expected)

    def row(self, name: str, j: int) -> np.ndarray:
        """Row ``j`` (along the first axis) of array ``name``, read from the file."""
        offset, shape, dtype, _ = self._geometry(name)
        inner = int(np.prod(shape[1:]))
        out = np.empty(inner, dtype=dtype)
        _pread_into(self._fd, offset + j * inner * dtype.itemsize, memoryview(out).cast("B"),
                    self.path)
        return out.reshape(shape[1:])

    def __contains__(self, name: str) -> bool:
        return name in self.layout

    def shape(self, name: str) -> tuple[int, ...]:
        return self._geometry(name)[1]

    def dtype(self, name: str) -> np.dtype:
        return self._geometry(name)[2]

    def offset(self, name: str) -> int:
        return int(self.layout[name]["offset"])

    def close(self) -> None:
        """Close the file (maps and arrays already taken stay valid)."""
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self):
        with contextlib.suppress(Exception):
            self.close()


def file_array(path: str | os.PathLike, offset: int, shape: tuple[int, ...], dtype,
               populate: bool = False, map_files: str = "read-only", check=None
               ) -> tuple[np.ndarray, bool]:
    """A read-only C-ordered array of ``shape`` at byte ``offset`` of a file, and whether it is
    memory-mapped (``map_files``, :func:`may_map`) rather than read into memory; ``check``
    (a :class:`~.validate.ValueCheck`) checks the rows as they are read, or the mapped array.

    Raises
    ------
    FileFormatError
        If the file is shorter than the array.
    InvalidDataError
        From ``check``.
    """
    dtype = np.dtype(dtype)
    count = int(np.prod(shape))
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        if offset + count * dtype.itemsize > size:
            raise FileFormatError(f"{path}: {size} bytes, expected at least "
                                  f"{offset + count * dtype.itemsize} for a {shape} {dtype} array")
        if may_map(fd, path, map_files):
            mm = _mmap(fd, populate)
            arr = np.frombuffer(mm, dtype=dtype, count=count, offset=offset).reshape(shape)
            if check is not None:
                check.matrix(arr)
            return arr, True
        arr = np.empty(shape, dtype=dtype)
        rows = max(1, _READ_BLOCK // max(1, arr[0].nbytes)) if arr.ndim > 1 else arr.shape[0]
        row_bytes = arr[0].nbytes if arr.ndim > 1 else dtype.itemsize
        for j0 in range(0, arr.shape[0], rows):
            block = arr[j0:j0 + rows]
            try:
                _pread_into(fd, offset + j0 * row_bytes, memoryview(block).cast("B"), path)
            except InvalidCacheError as exc:
                raise FileFormatError(str(exc)) from None
            if check is not None:
                check.block(j0, block)
        arr.flags.writeable = False
        return arr, False
    finally:
        os.close(fd)


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
    """The cache file (``path``) of one response file ``source`` with content ``fingerprint``
    (:meth:`~.source.ResponseSource.fingerprint`), ``dtype``, layout ``kind`` ('dense', also
    used by out-of-core, or 'sparse'), sparse ``threshold`` (None for dense) and the arrays'
    ``layout`` (a dict, e.g. the sparse forward rows' PsiChi grouping; None: none), in
    ``cache_dir`` or the default location; ``meta`` is the identity written into its footer.
    """

    def __init__(self, source, fingerprint: str, dtype: str, kind: str,
                 threshold: float | None = None, cache_dir=None,
                 layout: dict[str, Any] | None = None):
        self.source = Path(source)
        st = self.source.resolve().stat()
        parts = [FORMAT_VERSION, str(self.source.resolve()), st.st_size, st.st_mtime_ns,
                 fingerprint, str(dtype), kind, None if threshold is None else float(threshold)]
        if layout:               # e.g. the sparse forward rows' PsiChi grouping
            parts.append(layout)
        ident = json.dumps(parts, sort_keys=True)
        self.key = hashlib.sha256(ident.encode()).hexdigest()[:20]
        self.directory = _cache_dir(self.source, cache_dir)
        self.path = self.directory / f"{self.source.name}.comptonsky-{kind}-{dtype}-{self.key}.cache"
        self.meta = {"key": self.key, "source": str(source), "fingerprint": fingerprint,
                     "storage": kind, "dtype": dtype, "threshold": threshold}

    def find(self, populate: bool = False, verify: str = "full",
             map_files: str = "read-only") -> CacheFile | None:
        """The cache file (opened, its footer checked), once any write of it by this process has
        finished; None if there is none (one that fails a check is removed with a warning)."""
        pending = _PENDING.pop(str(self.path), None)
        if pending is not None:
            try:
                pending.result()
            except Exception:  # noqa: BLE001 - logged by the writer; convert again
                pass
        if not self.path.exists():
            return None
        try:
            cf = CacheFile(self.path, populate=populate, verify=verify, map_files=map_files)
        except (FileFormatError, OSError) as exc:
            self.discard(exc)
            return None
        if cf.meta.get("key") != self.key or cf.meta.get("fingerprint") != \
                self.meta["fingerprint"]:
            cf.close()
            self.discard(f"key {cf.meta.get('key')}, expected {self.key}")
            return None
        return cf

    def discard(self, reason) -> None:
        """Remove the cache file with a warning naming it and ``reason``."""
        text = " ".join(str(reason).split())
        if text.startswith(f"{self.path}: "):
            text = text[len(str(self.path)) + 2:]
        logger.warning("ignoring response cache %s: %s; removed, the response is converted "
                       "again", self.path, text)
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            logger.warning("cannot remove %s: %s", self.path, exc.strerror or exc)

    def writer(self, meta: dict[str, Any]) -> CacheWriter:
        """A writer of this cache file (``meta`` is added to the identity), after removing the
        unfinished files of killed conversions in its folder (:func:`sweep_orphans`).

        Raises
        ------
        OutputError
            If the folder cannot be created or written.
        """
        sweep_orphans(self.directory)
        return CacheWriter(self.path, {**self.meta, **meta})

    def finish_in_background(self, writer: CacheWriter) -> Future:
        """Close ``writer`` from its thread; a later :meth:`find` waits for it."""
        _PENDING[str(self.path)] = fut = writer.close_in_background()
        return fut
