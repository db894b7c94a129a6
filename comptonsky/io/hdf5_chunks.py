"""Reading gzip-chunked HDF5 datasets on every core.

libhdf5 inflates a compressed dataset chunk after chunk on one thread, under h5py's global
lock, so reading a GB-sized response takes several seconds however many cores there are.
:class:`ChunkedDatasetReader` locates a dataset's chunks once, reads their stored bytes with
``os.pread`` and inflates them on a thread pool (ISA-L's inflate, or zlib's, both of which
release the GIL while they work), writing each chunk straight into its place in the output.

Only the filter pipelines cosipy and h5py write for responses are handled: deflate (gzip),
optionally preceded by byte shuffle, on a numeric dtype. :meth:`ChunkedDatasetReader.supports`
says whether a dataset qualifies; anything else (other filters, checksums, contiguous or
virtual layouts) is read through h5py as before. Every chunk's deflate stream carries an
Adler-32 checksum, so a damaged chunk is an error naming the file and the chunk, never wrong
numbers.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import h5py
import numpy as np

from ..errors import FileFormatError

try:  # ISA-L inflates faster than zlib (a dependency already, for event files)
    from isal import isal_zlib as _inflate_lib
except ImportError:  # pragma: no cover - isal is a declared dependency
    _inflate_lib = zlib
_INFLATE_ERRORS = (zlib.error, _inflate_lib.error)

__all__ = ["ChunkedDatasetReader", "default_threads", "inflate"]

logger = logging.getLogger(__name__)

_DEFLATE, _SHUFFLE = h5py.h5z.FILTER_DEFLATE, h5py.h5z.FILTER_SHUFFLE


def inflate(data: bytes, size: int) -> bytes:
    """One zlib stream inflated (ISA-L when installed) into a single buffer of ``size`` bytes,
    the expected length, so it takes one call.

    Raises
    ------
    zlib.error or isal_zlib.error
        If the stream is damaged (its Adler-32 checksum included).
    """
    return _inflate_lib.decompress(data, bufsize=size)


def default_threads() -> int:
    """Threads used to inflate chunks: the CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _filters(ds: h5py.Dataset) -> list[int] | None:
    """Filter ids of ``ds`` in write order, or None when its layout is not chunked."""
    plist = ds.id.get_create_plist()
    if plist.get_layout() != h5py.h5d.CHUNKED:
        return None
    return [int(plist.get_filter(i)[0]) for i in range(plist.get_nfilters())]


class ChunkedDatasetReader:
    """Reads slabs ``ds[lo:hi]`` (along the first axis) of a deflate-chunked dataset.

    Parameters
    ----------
    path : path-like
        The HDF5 file holding ``ds`` (opened a second time, read-only, for ``pread``).
    ds : h5py.Dataset
        A chunked dataset whose filters are deflate, or shuffle then deflate
        (:meth:`supports`).
    threads : int, optional
        Inflating threads (default :func:`default_threads`).

    Raises
    ------
    FileFormatError
        If ``ds`` is not supported (check :meth:`supports` first).
    """

    def __init__(self, path: str | os.PathLike, ds: h5py.Dataset, threads: int | None = None):
        self.path = Path(path)
        self.name = ds.name
        if not self.supports(ds):
            raise FileFormatError(f"{self.path}: dataset {ds.name} is not a deflate-chunked "
                                  "numeric dataset")
        self.shape = tuple(int(n) for n in ds.shape)
        self.chunks = tuple(int(n) for n in ds.chunks)
        self.dtype = ds.dtype
        self.filters = _filters(ds)
        self.fillvalue = ds.fillvalue
        self.threads = int(threads or default_threads())
        self._index = self._chunk_index(ds)
        self._lock = threading.Lock()
        self._fd: int | None = None

    @staticmethod
    def supports(ds: h5py.Dataset) -> bool:
        """True for a chunked, numeric dataset compressed with deflate (and maybe shuffle), in
        a file without a user block (whose chunk addresses could be relative to it)."""
        if ds.dtype.kind not in "fiu" or ds.ndim == 0 or ds.size == 0:
            return False
        if ds.file.userblock_size:
            return False
        try:
            filters = _filters(ds)
        except Exception:  # pragma: no cover - property lists unavailable (e.g. a virtual set)
            return False
        return filters in ([_DEFLATE], [_SHUFFLE, _DEFLATE])

    def _chunk_index(self, ds: h5py.Dataset) -> dict[tuple[int, ...], tuple[int, int, int]]:
        """Chunk grid coordinates → (byte offset, stored size, filter mask)."""
        index: dict[tuple[int, ...], tuple[int, int, int]] = {}
        cs = self.chunks

        def add(info) -> None:
            if info.byte_offset is None:  # never written: fill value
                return
            key = tuple(int(o) // c for o, c in zip(info.chunk_offset, cs))
            index[key] = (int(info.byte_offset), int(info.size), int(info.filter_mask))

        try:
            ds.id.chunk_iter(add)
        except (AttributeError, NotImplementedError, RuntimeError):  # older HDF5: one by one
            index.clear()
            for i in range(ds.id.get_num_chunks()):
                add(ds.id.get_chunk_info(i))
        return index

    # --- reading ---------------------------------------------------------------------------
    def _decode(self, key: tuple[int, ...], raw: bytes, mask: int) -> np.ndarray:
        data = raw
        n_expected = int(np.prod(self.chunks)) * self.dtype.itemsize
        for k in range(len(self.filters) - 1, -1, -1):  # undo the filters, last first
            if mask & (1 << k):
                continue  # this filter was skipped for this chunk
            if self.filters[k] == _DEFLATE:
                try:
                    data = inflate(data, n_expected)
                except _INFLATE_ERRORS as exc:
                    raise FileFormatError(
                        f"{self.path}: {self.name} chunk at {self._origin(key)} is damaged "
                        f"({exc})") from exc
            else:  # byte shuffle: the i-th bytes of all elements, then the next
                b = np.frombuffer(data, dtype=np.uint8)
                n = b.size // self.dtype.itemsize
                data = b[: n * self.dtype.itemsize].reshape(self.dtype.itemsize, n).T.tobytes()
        if len(data) != n_expected:
            raise FileFormatError(
                f"{self.path}: {self.name} chunk at {self._origin(key)} holds {len(data)} "
                f"bytes, expected {n_expected}")
        return np.frombuffer(data, dtype=self.dtype).reshape(self.chunks)

    def _origin(self, key: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(k * c for k, c in zip(key, self.chunks))

    def _fill_one(self, key: tuple[int, ...], lo: int, hi: int, out: np.ndarray) -> None:
        origin = self._origin(key)
        dst, src = [], []
        for d, (o, c, n) in enumerate(zip(origin, self.chunks, self.shape)):
            a, b = (max(o, lo), min(o + c, hi)) if d == 0 else (o, min(o + c, n))
            dst.append(slice(a - lo, b - lo) if d == 0 else slice(a, b))
            src.append(slice(a - o, b - o))
        where = self._index.get(key)
        if where is None:
            out[tuple(dst)] = self.fillvalue
            return
        offset, size, mask = where
        raw = os.pread(self._fd, size, offset)
        if len(raw) != size:
            raise FileFormatError(
                f"{self.path}: {self.name} chunk at {origin} is cut short ({len(raw)} of "
                f"{size} bytes; truncated file?)")
        out[tuple(dst)] = self._decode(key, raw, mask)[tuple(src)]

    def read(self, lo: int, hi: int, out: np.ndarray | None = None) -> np.ndarray:
        """``ds[lo:hi]``, inflated on :attr:`threads` threads.

        Parameters
        ----------
        lo, hi : int
            Range along the first axis, ``0 <= lo <= hi <= shape[0]``.
        out : ndarray, optional
            Destination shaped ``(hi - lo,) + shape[1:]`` (any float or integer dtype:
            values are cast on assignment).

        Returns
        -------
        ndarray
            ``out``, or a new array in the dataset's dtype (native byte order).
        """
        lo, hi = int(lo), int(hi)
        if not 0 <= lo <= hi <= self.shape[0]:
            raise IndexError(f"{self.path}: rows {lo}:{hi} outside 0:{self.shape[0]} of "
                             f"{self.name}")
        if out is None:
            out = np.empty((hi - lo,) + self.shape[1:], dtype=self.dtype.newbyteorder("="))
        if hi == lo:
            return out
        grid = [range(lo // self.chunks[0], (hi - 1) // self.chunks[0] + 1)] + \
            [range(-(-n // c)) for n, c in zip(self.shape[1:], self.chunks[1:])]
        keys = list(itertools.product(*grid))  # chunk grid coordinates covering rows lo:hi
        with self._lock:
            if self._fd is None:
                self._fd = os.open(self.path, os.O_RDONLY)
        if self.threads == 1 or len(keys) == 1:
            for key in keys:
                self._fill_one(key, lo, hi, out)
            return out
        with ThreadPoolExecutor(min(self.threads, len(keys))) as pool:
            for future in [pool.submit(self._fill_one, key, lo, hi, out) for key in keys]:
                future.result()
        return out

    def close(self) -> None:
        """Close the second file descriptor (reopened on the next :meth:`read`)."""
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def __del__(self) -> None:  # pragma: no cover - interpreter shutdown order varies
        try:
            self.close()
        except Exception:
            pass
