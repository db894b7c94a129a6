"""Fast reader for the text of ``.ori`` orientation files.

A background thread reads the file in pieces that end at a line end, into a small ring of reused
buffers, while the calling thread parses the previous piece: a compiled scanner splits each piece
into line-aligned blocks, parses the ``OG`` rows of every block in parallel and checks each row
(finite numbers, latitudes within ±90°, x and z axes not parallel, live time ≥ 0, increasing time
stamps, also across pieces). A bad row is reported with its line number. Lines that start with
another keyword are skipped; the first ``EN`` line ends the data.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import threading
from pathlib import Path

import numba
import numpy as np

from .._numba import njit
from ..errors import FileFormatError

__all__ = ["read_ori_table", "read_ori_arrays", "ORI_COLUMNS"]

logger = logging.getLogger(__name__)

#: The nine numbers of an ``OG`` row, in file order.
ORI_COLUMNS = ("time", "x_lat", "x_lon", "z_lat", "z_lon", "altitude",
               "earthzenith_lat", "earthzenith_lon", "livetime")

_NCOL = 9
#: Bytes read per piece; the ring holds ``_RING`` pieces (plus ``_HEADROOM`` bytes each for the
#: partial line carried over from the previous piece).
_PIECE_BYTES = 16 << 20
_RING = 3
_HEADROOM = 1 << 16
#: Pieces smaller than this are parsed on the calling thread alone: waking the kernel threads
#: for a few kilobytes costs more than the parse, and much more when the cores are busy.
_SERIAL_BYTES = 1 << 20
#: Bytes at the start of the file searched for the ``Type`` line.
_HEAD_BYTES = 65536
_POW10 = np.array([10.0 ** k for k in range(23)])

# error codes returned by the kernels
_OK, _MISSING, _BADNUM = 0, 1, 2
_BAD_ROW_MESSAGES = {
    1: "a non-finite value (NaN or infinity)",
    2: "a latitude beyond ±90°",
    3: "x and z axes along the same direction",
    4: "a negative live time",
}


@njit(cache=True, inline="always")
def _is_blank(c):
    return c == 32 or c == 9 or c == 13  # space, tab, CR


@njit(cache=True, inline="always")
def _keyword(buf, p, end):
    """1 for an ``OG`` line starting at p (after blanks), 2 for ``EN``, 0 otherwise."""
    if p + 1 < end:
        a, b = buf[p], buf[p + 1]
        after = buf[p + 2] if p + 2 < end else 10
        if _is_blank(after) or after == 10:
            if a == 79 and b == 71:  # "OG"
                return 1
            if a == 69 and b == 78:  # "EN"
                return 2
    return 0


@njit(cache=True, inline="always")
def _parse_number(buf, p, end, pow10):
    """Parse one decimal number at p (after blanks on the same line).

    Returns (value, new position, status) with status 0 ok, 1 missing (end of line), 2 malformed.
    """
    while p < end and _is_blank(buf[p]):
        p += 1
    if p >= end or buf[p] == 10:
        return 0.0, p, _MISSING
    neg = False
    c = buf[p]
    if c == 45 or c == 43:  # - +
        neg = c == 45
        p += 1
    mant = 0
    ndig = 0
    exp10 = 0
    seen = False
    p0 = p
    while p < end and 48 <= buf[p] <= 57:
        if ndig < 19:
            mant = mant * 10 + (buf[p] - 48)
            ndig += mant > 0
        else:
            exp10 += 1
        p += 1
    seen = p > p0
    if p < end and buf[p] == 46:  # "."
        p += 1
        p1 = p
        while p < end and 48 <= buf[p] <= 57:
            if ndig < 19:
                mant = mant * 10 + (buf[p] - 48)
                ndig += mant > 0
                exp10 -= 1
            p += 1
        seen = seen or p > p1
    if not seen:
        # nan / inf (any case)
        if p + 3 <= end and (buf[p] | 32) == 110 and (buf[p + 1] | 32) == 97 \
                and (buf[p + 2] | 32) == 110:
            p += 3
            val = np.nan
        elif p + 3 <= end and (buf[p] | 32) == 105 and (buf[p + 1] | 32) == 110 \
                and (buf[p + 2] | 32) == 102:
            p += 3
            while p < end and 97 <= (buf[p] | 32) <= 122:
                p += 1
            val = np.inf
        else:
            return 0.0, p, _BADNUM
        if p < end and not (_is_blank(buf[p]) or buf[p] == 10):
            return 0.0, p, _BADNUM
        return (-val if neg else val), p, _OK
    if p < end and (buf[p] | 32) == 101:  # e / E
        p += 1
        eneg = False
        if p < end and (buf[p] == 45 or buf[p] == 43):
            eneg = buf[p] == 45
            p += 1
        e = 0
        edig = False
        while p < end and 48 <= buf[p] <= 57:
            if e < 10000:
                e = e * 10 + (buf[p] - 48)
            edig = True
            p += 1
        if not edig:
            return 0.0, p, _BADNUM
        exp10 += -e if eneg else e
    if p < end and not (_is_blank(buf[p]) or buf[p] == 10):
        return 0.0, p, _BADNUM
    # one correctly rounded operation when the mantissa and the power of ten are exact doubles
    if mant < 9007199254740992 and -22 <= exp10 <= 22:
        val = mant * pow10[exp10] if exp10 >= 0 else mant / pow10[-exp10]
    else:
        val = float(mant) * 10.0 ** exp10
    return (-val if neg else val), p, _OK


@njit(parallel=True, cache=True, nogil=True)
def _parse_blocks(buf, starts, ends, caps, out, counts, ended, status, lines, pow10):
    """Parse the OG rows of block k into out[caps[k]:caps[k + 1]] (one pass, no pre-count).

    counts[k]: rows parsed; ended[k]: 1 if an EN line stopped the block; status[k] = (row,
    code, column) of the first malformed row (code 0: none); lines[k]: lines read (all the
    lines of the block when it has no EN line and no malformed row).
    """
    for k in numba.prange(len(starts)):
        row = caps[k]
        p = starts[k]
        end = ends[k]
        nline = 0
        while p < end:
            while p < end and _is_blank(buf[p]):
                p += 1
            kw = _keyword(buf, p, end)
            if kw == 2:
                ended[k] = 1
                break
            if kw == 1:
                p += 2
                for c in range(_NCOL):
                    v, p, st = _parse_number(buf, p, end, pow10)
                    if st != _OK:
                        status[k, 0] = row - caps[k]
                        status[k, 1] = st
                        status[k, 2] = c
                        break
                    out[row, c] = v
                if status[k, 1] != 0:
                    break
                row += 1
            while p < end and buf[p] != 10:
                p += 1
            p += 1
            nline += 1
        counts[k] = row - caps[k]
        lines[k] = nline


@njit(parallel=True, cache=True, nogil=True)
def _check_rows(big, src):
    """Index of the first row (big[src[i]]) breaking a rule, per rule code (-1: none)."""
    t = big
    n = src.shape[0]
    nchunk = 64
    first = np.full((nchunk, 5), -1, dtype=np.int64)
    step = (n + nchunk - 1) // nchunk
    for k in numba.prange(nchunk):
        for ii in range(k * step, min(n, (k + 1) * step)):
            i = src[ii]
            bad = 0
            for c in range(_NCOL):
                if not math.isfinite(t[i, c]):
                    bad = 1
            if bad == 0 and (abs(t[i, 1]) > 90.0 or abs(t[i, 3]) > 90.0 or abs(t[i, 6]) > 90.0):
                bad = 2
            # x and z along one line: only rows with |x_b| ≈ |z_b| can be, test those exactly
            if bad == 0 and abs(abs(t[i, 1]) - abs(t[i, 3])) < 1e-3:
                d = math.pi / 180.0
                cx, cz = math.cos(t[i, 1] * d), math.cos(t[i, 3] * d)
                x0, x1, x2 = cx * math.cos(t[i, 2] * d), cx * math.sin(t[i, 2] * d), math.sin(t[i, 1] * d)
                z0, z1, z2 = cz * math.cos(t[i, 4] * d), cz * math.sin(t[i, 4] * d), math.sin(t[i, 3] * d)
                c0, c1, c2 = x1 * z2 - x2 * z1, x2 * z0 - x0 * z2, x0 * z1 - x1 * z0
                if c0 * c0 + c1 * c1 + c2 * c2 < 1e-12:
                    bad = 3
            if bad == 0 and t[i, 8] < 0.0:
                bad = 4
            if bad and first[k, bad] < 0:
                first[k, bad] = ii
            if ii > 0 and not (t[i, 0] > t[src[ii - 1], 0]) and first[k, 0] < 0:
                first[k, 0] = ii
    out = np.full(5, -1, dtype=np.int64)
    for r in range(5):
        for k in range(nchunk):
            if first[k, r] >= 0:
                out[r] = first[k, r]
                break
    return out


@njit(cache=True, nogil=True)
def _line_of_row(buf, end, row):
    """1-based line number and byte offset of the OG row number ``row``."""
    line = 1
    n = -1
    p = 0
    while p < end:
        q = p
        while q < end and _is_blank(buf[q]):
            q += 1
        if _keyword(buf, q, end) == 1:
            n += 1
            if n == row:
                return line, p
        while p < end and buf[p] != 10:
            p += 1
        p += 1
        line += 1
    return line, p


def _check_type_line(path: Path, head_bytes: bytes) -> None:
    head = head_bytes[:_HEAD_BYTES].decode("latin-1")
    for lineno, line in enumerate(head.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "Type":
            if len(parts) < 2 or parts[1] != "OrientationsGalactic":
                raise FileFormatError(
                    f"{path}:{lineno}: orientation type {' '.join(parts[1:])!r}; only "
                    "'OrientationsGalactic' is supported")
            return
        if parts[0] == "OG":
            return


def _bad_line(buf: np.ndarray, row: int) -> tuple[int, str]:
    """1-based line (within ``buf``) and text of the OG row number ``row`` of ``buf``."""
    line, pos = _line_of_row(buf, len(buf), row)
    nl = _find_newline(buf, pos)
    text = bytes(buf[pos: nl if nl >= 0 else len(buf)]).decode("latin-1").strip()
    return int(line), text


def _last_newline(buf: np.ndarray, lo: int, hi: int) -> int:
    """Index of the last newline in ``buf[lo:hi]`` (-1: none), searched backwards in windows."""
    step = 1 << 16
    while hi > lo:
        a = max(lo, hi - step)
        j = bytes(buf[a:hi]).rfind(b"\n")
        if j >= 0:
            return a + j
        hi = a
        step *= 4
    return -1


class _PieceReader:
    """Read a file sequentially in a background thread, in pieces that end at a line end.

    Each piece is ``(buffer, n)``: ``buffer[:n]`` holds whole lines (the bytes after the last
    newline of a read are carried to the front of the next piece); only the last piece of the
    file may end without a newline. Buffers come from a small ring and are reused once handed
    back with :meth:`release`.
    """

    def __init__(self, path: Path, piece: int, nbuf: int = _RING):
        self._piece = int(piece)
        self._file = open(path, "rb", buffering=0)  # noqa: SIM115 - closed by close()
        try:
            os.posix_fadvise(self._file.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
        except (AttributeError, OSError):  # pragma: no cover - platform without fadvise
            pass
        self._free: queue.Queue = queue.Queue()
        self._full: queue.Queue = queue.Queue()
        for _ in range(nbuf):
            self._free.put(np.empty(self._piece + _HEADROOM, dtype=np.uint8))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ori-reader", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            carry = np.empty(0, dtype=np.uint8)
            piece = self._piece
            while True:
                buf = self._free.get()
                if buf is None or self._stop.is_set():
                    return
                filled = len(carry)
                if len(buf) < filled + piece:  # a line longer than the headroom
                    buf = np.empty(filled + piece + _HEADROOM, dtype=np.uint8)
                buf[:filled] = carry
                while True:  # read until the piece holds a newline (or the file ends)
                    n = self._file.readinto(memoryview(buf)[filled: filled + piece])
                    if not n:  # end of file: the last line has no newline
                        if filled:
                            self._full.put((buf, filled))
                        self._full.put(None)
                        return
                    nl = _last_newline(buf, filled, filled + n)  # no newline before filled
                    filled += n
                    if nl >= 0:
                        break
                    if len(buf) < filled + piece:  # grow geometrically: linear in the line
                        bigger = np.empty(max(2 * len(buf), filled + piece), dtype=np.uint8)
                        bigger[:filled] = buf[:filled]
                        buf = bigger
                carry = buf[nl + 1: filled].copy()
                self._full.put((buf, nl + 1))
        except BaseException as exc:  # handed to the parsing thread  # noqa: BLE001
            self._full.put(exc)

    def __iter__(self):
        while True:
            item = self._full.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def release(self, buf: np.ndarray) -> None:
        self._free.put(buf)

    def close(self) -> None:
        self._stop.set()
        self._free.put(None)
        self._thread.join()
        self._file.close()


class _Grown:
    """Output arrays of ``(capacity,) + shape`` rows, grown on demand, trimmed at the end."""

    def __init__(self, shapes: dict[str, tuple[int, ...]]):
        self.shapes = shapes
        self.cap = 0
        self.arrays: dict[str, np.ndarray] = {}

    def reserve(self, need: int, have: int, estimate: int) -> None:
        if need <= self.cap:
            return
        cap = max(need, estimate)
        new = {k: np.empty((cap,) + s) for k, s in self.shapes.items()}
        for k, a in self.arrays.items():
            new[k][:have] = a[:have]
        if self.arrays:
            logger.debug("grew the row arrays from %d to %d rows", self.cap, cap)
        self.arrays, self.cap = new, cap

    def trim(self, n: int) -> dict[str, np.ndarray]:
        if n < self.cap:  # shrinks in place (realloc), the unwritten tail was never touched
            for a in self.arrays.values():
                a.resize((n,) + a.shape[1:], refcheck=False)
        self.cap = n
        return self.arrays


def _parse_checked(path: Path, threads: int | None, shapes: dict[str, tuple[int, ...]],
                   store) -> dict[str, np.ndarray]:
    """Read, parse and check the file piece by piece; ``store(t, src, arrays, n0)`` keeps rows.

    The rows of a piece are ``t[src]``; ``store`` writes them to rows ``n0:n0 + len(src)`` of
    the output ``arrays`` (shapes ``(N,) + shapes[name]``). A malformed row raises at once; a
    row breaking a rule is raised once the file is read, unless a malformed row comes later
    (malformed rows are reported first).
    """
    if not path.exists():
        raise FileFormatError(f"{path}: no such file")
    size = path.stat().st_size
    if size == 0:
        raise FileFormatError(f"{path}: empty file, expected an OrientationsGalactic .ori")
    with open(path, "rb") as f:
        _check_type_line(path, f.read(_HEAD_BYTES))
    piece = max(1, int(_PIECE_BYTES))
    nthread = int(threads or numba.get_num_threads())
    upper = size // 20 + 1  # an OG row takes at least 20 bytes
    out = _Grown(shapes)
    scratch = np.empty((0, _NCOL))
    nrow = 0            # rows stored
    lines_before = 0    # lines of the file before the current piece
    bytes_before = 0
    prev_time = 0.0     # time of the last stored row
    rule_error = None   # message of the first row breaking a rule
    reader = _PieceReader(path, piece)
    pool = numba.get_num_threads()  # this thread's setting, put back below
    try:
        for whole, nbytes in reader:
            buf = whole[:nbytes]
            serial = nbytes < _SERIAL_BYTES
            numba.set_num_threads(1 if serial else pool)
            nblock = 1 if serial else max(1, nthread * 4)
            starts_a = _block_starts(buf, nblock)
            ends_a = np.append(starts_a[1:], nbytes).astype(np.int64)
            # rows reserved per block: pages never written cost no memory, and the scratch
            # table is reused piece after piece
            caps = np.concatenate([[0], np.cumsum((ends_a - starts_a) // 20 + 1)]).astype(np.int64)
            if len(scratch) < caps[-1]:
                scratch = np.empty((max(int(caps[-1]), (piece + _HEADROOM) // 20 + nblock + 1),
                                    _NCOL))
            nb = len(starts_a)
            counts = np.zeros(nb, dtype=np.int64)
            ended = np.zeros(nb, dtype=np.int64)
            status = np.zeros((nb, 3), dtype=np.int64)
            lines = np.zeros(nb, dtype=np.int64)
            _parse_blocks(buf, starts_a, ends_a, caps, scratch, counts, ended, status, lines,
                          _POW10)
            last = int(np.argmax(ended)) if ended.any() else nb - 1  # rows after EN: ignored
            offsets = np.concatenate([[0], np.cumsum(counts[: last + 1])]).astype(np.int64)
            bad = np.nonzero(status[: last + 1, 1])[0]
            if len(bad):
                k = int(bad[0])
                row, code, col = status[k]
                line, text = _bad_line(buf, int(offsets[k] + row))
                line += lines_before
                if code == _MISSING:
                    raise FileFormatError(
                        f"{path}:{line}: an OG row needs 9 numbers (t x_b x_l z_b z_l altitude "
                        f"earthzenith_b earthzenith_l livetime), found {col}: {text!r}")
                raise FileFormatError(
                    f"{path}:{line}: cannot read number {col + 1} ({ORI_COLUMNS[col]}) of "
                    f"{text!r}")
            cnt = int(offsets[-1])
            if cnt and rule_error is None:
                src = np.concatenate([np.arange(caps[k], caps[k] + counts[k])
                                      for k in range(last + 1)])
                rule_error = _rule_error(path, buf, scratch, src, lines_before,
                                         prev_time if nrow else None)
                if rule_error is None:
                    est = int(math.ceil((nrow + cnt) / (bytes_before + nbytes) * size * 1.01))
                    out.reserve(nrow + cnt, nrow, min(upper, est + 1024))
                    store(scratch, src, out.arrays, nrow)
                    nrow += cnt
                    prev_time = float(scratch[src[-1], 0])
            reader.release(whole)
            if ended.any():
                break
            lines_before += int(lines.sum())
            bytes_before += nbytes
    finally:
        numba.set_num_threads(pool)
        reader.close()
    if rule_error is not None:
        raise FileFormatError(rule_error)
    if nrow == 0:
        raise FileFormatError(f"{path}: no 'OG' rows found")
    logger.debug("parsed %d OG rows of %s", nrow, path)
    return out.trim(nrow)


def _rule_error(path: Path, buf: np.ndarray, t: np.ndarray, src: np.ndarray,
                lines_before: int, prev_time: float | None) -> str | None:
    """Message for the first of the rows ``t[src]`` (of ``buf``) breaking a rule, else None.

    ``prev_time``: time of the row before ``t[src[0]]`` (None: it is the first row).
    """
    if prev_time is not None and not (t[src[0], 0] > prev_time):
        row, rule = 0, 0
    else:
        first = _check_rows(t, src)
        rules = [(int(first[r]), r) for r in range(5) if first[r] >= 0]
        if not rules:
            return None
        row, rule = min(rules)
    line, text = _bad_line(buf, row)
    line += lines_before
    if rule == 0:
        before = float(t[src[row - 1], 0]) if row else float(prev_time)
        return (f"{path}:{line}: time stamps must increase; {float(t[src[row], 0])!r} follows "
                f"{before!r}")
    return f"{path}:{line}: {_BAD_ROW_MESSAGES[rule]} in {text!r}"


def _store_table(t: np.ndarray, src: np.ndarray, arrays: dict, n0: int) -> None:
    np.take(t, src, axis=0, out=arrays["table"][n0: n0 + len(src)])


def read_ori_table(path: str | os.PathLike, threads: int | None = None) -> np.ndarray:
    """The ``OG`` rows of an ``.ori`` file as a float64 table, checked row by row.

    The file is read in pieces by a background thread while the rows of the previous piece
    are parsed, so the whole file is never held in memory.

    Parameters
    ----------
    path : path-like
        The file (type ``OrientationsGalactic``).
    threads : int, optional
        Number of parallel blocks per piece (default: numba's thread count).

    Returns
    -------
    ndarray, shape (N, 9)
        Columns :data:`ORI_COLUMNS`: time (s), x latitude and longitude, z latitude and longitude
        (Galactic, deg), altitude (km), Earth-zenith latitude and longitude (deg), live time (s).

    Raises
    ------
    FileFormatError
        Missing or empty file, another orientation type, a row with fewer than 9 numbers or a
        malformed number, no rows, or a row breaking a rule (non-finite value, latitude beyond
        ±90°, parallel x and z axes, negative live time, time not increasing). The message gives
        the file and line.
    """
    return _parse_checked(Path(path), threads, {"table": (_NCOL,)}, _store_table)["table"]


@njit(cache=True, nogil=True)
def _find_newline(buf, pos):
    n = len(buf)
    while pos < n:
        if buf[pos] == 10:
            return pos
        pos += 1
    return -1


@njit(cache=True, nogil=True)
def _block_starts(buf, nblock):
    """Starts of at most ``nblock`` line-aligned blocks of about equal size (the first is 0)."""
    size = len(buf)
    starts = np.zeros(nblock, dtype=np.int64)
    n = 1
    for k in range(1, nblock):
        nl = _find_newline(buf, (size * k) // nblock)
        if nl >= 0 and nl + 1 > starts[n - 1] and nl + 1 < size:
            starts[n] = nl + 1
            n += 1
    return starts[:n].copy()


@njit(cache=True, inline="always")
def _unit(t, r, col, out, i):
    d = math.pi / 180.0
    b = t[r, col] * d
    lon = t[r, col + 1] * d
    cb = math.cos(b)
    out[i, 0] = cb * math.cos(lon)
    out[i, 1] = cb * math.sin(lon)
    out[i, 2] = math.sin(b)


@njit(parallel=True, cache=True, nogil=True)
def _columns(t, src, time, x, z, alt, ez, live):
    for i in numba.prange(src.shape[0]):
        r = src[i]
        time[i] = t[r, 0]
        alt[i] = t[r, 5]
        live[i] = t[r, 8]
        _unit(t, r, 1, x, i)
        _unit(t, r, 3, z, i)
        _unit(t, r, 6, ez, i)
        if t[r, 6] == 0.0 and t[r, 7] == 0.0 and t[r, 5] == 0.0:  # Earth position unknown
            ez[i, 0] = 0.0
            ez[i, 1] = 0.0
            ez[i, 2] = 0.0


def _store_arrays(t: np.ndarray, src: np.ndarray, a: dict, n0: int) -> None:
    s = slice(n0, n0 + len(src))
    _columns(t, src, a["time"][s], a["x_axis"][s], a["z_axis"][s], a["altitude"][s],
             a["earth_zenith"][s], a["livetime"][s])


def read_ori_arrays(path: str | os.PathLike, threads: int | None = None) -> dict:
    """Parse and check an ``.ori`` file (as :func:`read_ori_table`) into attitude arrays.

    Returns
    -------
    dict
        ``time``, ``altitude``, ``livetime`` (N,) and ``x_axis``, ``z_axis``, ``earth_zenith``
        (N, 3) Galactic unit vectors; ``earth_zenith`` rows are zero where the file gives no
        Earth position (zenith latitude, longitude and altitude all 0).
    """
    shapes = {"time": (), "x_axis": (3,), "z_axis": (3,), "altitude": (),
              "earth_zenith": (3,), "livetime": ()}
    return _parse_checked(Path(path), threads, shapes, _store_arrays)
