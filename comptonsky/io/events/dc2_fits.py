"""DC2 event lists as FITS binary tables (plain or gzipped): streaming reader and writers.

Layout: an empty primary HDU and a binary table in HDU 1 with one column per entry and a
``TUNITn`` card each. Files are parsed here rather than through :mod:`astropy.io.fits` so that a
gzipped file of any size is streamed through a fixed-size buffer instead of being inflated into
memory.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import NamedTuple

import numpy as np
from astropy.io import fits

from ...errors import FileFormatError, InvalidParameterError
from .columns import DC2_COLUMNS, stored_unit_factor
from .compression import GZIP_ERRORS, open_input, output_stream
from .prefetch import PREFETCH_DEPTH, read_ahead

__all__ = ["FitsSink", "count_fits", "fits_columns", "read_fits_chunks", "write_fits"]

SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz", ".fts.gz")

_FITS_BLOCK = 2880

#: Row buffers rotated by the reader in prefetch mode (> PREFETCH_DEPTH + 2).
_RING_BUFFERS = PREFETCH_DEPTH + 4

# FITS binary-table TFORM letter -> big-endian numpy type
_TFORM_DTYPES = {
    "L": "i1", "B": "u1", "I": ">i2", "J": ">i4", "K": ">i8", "E": ">f4", "D": ">f8",
}


# --------------------------------------------------------------------------------------------
# writing


def _fits_tform(arr: np.ndarray) -> tuple[str, str]:
    """(TFORM, big-endian dtype string) for a column array."""
    kind, size = arr.dtype.kind, arr.dtype.itemsize
    if kind == "f":
        letter, dt = ("E", ">f4") if size == 4 else ("D", ">f8")
    elif kind == "b":
        letter, dt = "L", "i1"
    elif kind in "iu":
        letter, dt = {1: ("B", "u1"), 2: ("I", ">i2"), 4: ("J", ">i4")}.get(size, ("K", ">i8"))
    else:
        raise InvalidParameterError(f"cannot write a column of dtype {arr.dtype} to FITS")
    repeat = int(np.prod(arr.shape[1:], dtype=np.int64)) if arr.ndim > 1 else 1
    return (f"{repeat}{letter}" if repeat != 1 else letter), dt


def _headers(cols: Mapping[str, np.ndarray], col_units: Mapping[str, str], nrows: int,
             meta: Mapping[str, str] | None) -> tuple[list[bytes], np.dtype]:
    """Primary and binary-table headers for ``nrows`` rows of ``cols``, and the row dtype."""
    primary = fits.Header([("SIMPLE", True), ("BITPIX", 8), ("NAXIS", 0), ("EXTEND", True)])
    fields = []
    for name, arr in cols.items():
        tform, dt = _fits_tform(arr)
        fields.append((name, dt, arr.shape[1:], tform))
    row_dtype = np.dtype([(name, dt, shape) for name, dt, shape, _ in fields])
    header = fits.Header([("XTENSION", "BINTABLE"), ("BITPIX", 8), ("NAXIS", 2),
                          ("NAXIS1", row_dtype.itemsize), ("NAXIS2", nrows), ("PCOUNT", 0),
                          ("GCOUNT", 1), ("TFIELDS", len(fields))])
    for i, (name, _, shape, tform) in enumerate(fields, start=1):
        header[f"TTYPE{i}"] = name
        header[f"TFORM{i}"] = tform
        if col_units[name]:
            header[f"TUNIT{i}"] = col_units[name]
        if len(shape) > 1:
            header[f"TDIM{i}"] = "(" + ",".join(str(s) for s in reversed(shape)) + ")"
    header["EXTNAME"] = "EVENTS"
    for key, value in (meta or {}).items():
        header[str(key)[:8].upper()] = value
    return [h.tostring().encode("ascii") for h in (primary, header)], row_dtype


def _pack(cols: Mapping[str, np.ndarray], row_dtype: np.dtype, start: int, stop: int) -> bytes:
    """Rows ``start:stop`` of ``cols`` as big-endian FITS records."""
    rows = np.empty(stop - start, dtype=row_dtype)
    for name, arr in cols.items():
        rows[name] = arr[start:stop]
    return rows.tobytes()


def _pad(out, nbytes: int) -> None:
    """Pad the table data of ``nbytes`` to a whole FITS block."""
    pad = (-nbytes) % _FITS_BLOCK
    if pad:
        out.write(b"\0" * pad)


def write_fits(tmp: Path, cols: Mapping[str, np.ndarray], col_units: Mapping[str, str], n: int,
               *, gz: bool, chunk_size: int, compresslevel: int | None,
               meta: Mapping[str, str] | None) -> None:
    """Write ``n`` events of ``cols`` (in column order) to ``tmp``, ``chunk_size`` rows at a time."""
    head, row_dtype = _headers(cols, col_units, n, meta)
    with output_stream(tmp, gz, compresslevel) as out:
        for block in head:
            out.write(block)
        step = max(1, int(chunk_size))
        for start in range(0, n, step):
            out.write(_pack(cols, row_dtype, start, min(n, start + step)))
        _pad(out, n * row_dtype.itemsize)


class FitsSink:
    """Streaming FITS output: rows are staged uncompressed beside ``tmp`` (the table header needs
    the final row count) and copied, gzipped if ``gz``, when the sink is closed."""

    def __init__(self, tmp: Path, first: Mapping[str, np.ndarray], col_units: Mapping[str, str],
                 gz: bool, compresslevel: int | None, meta: Mapping[str, str] | None):
        self._tmp, self._gz, self._level, self._meta = tmp, gz, compresslevel, meta
        self._empty = {name: arr[:0] for name, arr in first.items()}
        self._units = dict(col_units)
        self._row_dtype = _headers(self._empty, self._units, 0, meta)[1]
        self._rows_path = tmp.with_name(tmp.name + ".rows")
        self._rows = open(self._rows_path, "wb")  # noqa: SIM115
        self.n = 0

    def write(self, cols: Mapping[str, np.ndarray], n: int) -> None:
        """Stage ``n`` rows."""
        self._rows.write(_pack(cols, self._row_dtype, 0, n))
        self.n += n

    def close(self) -> None:
        """Write the headers and the staged rows to ``tmp``."""
        self._rows.close()
        try:
            head = _headers(self._empty, self._units, self.n, self._meta)[0]
            with output_stream(self._tmp, self._gz, self._level) as out, \
                    open(self._rows_path, "rb") as src:
                for block in head:
                    out.write(block)
                while block := src.read(1 << 24):
                    out.write(block)
                _pad(out, self.n * self._row_dtype.itemsize)
        finally:
            self._rows_path.unlink(missing_ok=True)

    def abort(self) -> None:
        """Drop the staged rows."""
        self._rows.close()
        self._rows_path.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------
# reading


class _FitsTable(NamedTuple):
    """Layout of a FITS binary table (HDU 1) as needed to stream its rows."""

    nrows: int
    row_dtype: np.dtype
    units: dict[str, str | None]


def _read_header(stream, where: str, block: bytes | None = None) -> fits.Header:
    """Read one FITS header (2880-byte blocks up to END, the first one ``block`` if given)."""
    blocks = []
    while True:
        block = stream.read(_FITS_BLOCK) if block is None else block
        if len(block) < _FITS_BLOCK:
            raise FileFormatError(f"{where}: file ends inside a FITS header; truncated or not FITS")
        blocks.append(block)
        if any(block[i:i + 8] == b"END     " for i in range(0, _FITS_BLOCK, 80)):
            break
        block = None
        if len(blocks) > 1000:
            raise FileFormatError(f"{where}: no END card in the FITS header; not a FITS file")
    try:
        return fits.Header.fromstring(b"".join(blocks).decode("ascii"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise FileFormatError(f"{where}: unreadable FITS header ({exc})") from exc


def _parse_fits_table(path: Path, stream) -> _FitsTable:
    """Parse the primary header and the HDU 1 binary-table header; leave ``stream`` at row 0."""
    try:
        return _parse_headers(path, stream)
    except FileFormatError:
        raise
    except GZIP_ERRORS as exc:
        raise FileFormatError(
            f"{path}: cannot decompress the FITS header: {exc} (corrupt or not gzip)") from exc
    except KeyError as exc:
        raise FileFormatError(f"{path}: FITS header lacks the keyword {exc.args[0]!r}") from exc
    except (ValueError, TypeError, OverflowError) as exc:
        raise FileFormatError(
            f"{path}: FITS header has an invalid value ({' '.join(str(exc).split())})") from exc


def _parse_headers(path: Path, stream) -> _FitsTable:
    where = str(path)
    first = stream.read(_FITS_BLOCK)
    if not first.startswith(b"SIMPLE"):
        raise FileFormatError(f"{where}: not a FITS file (does not start with SIMPLE)")
    primary = _read_header(stream, where, first)
    naxis = int(primary.get("NAXIS", 0))
    if naxis:
        nbytes = abs(int(primary.get("BITPIX", 8))) // 8
        for i in range(1, naxis + 1):
            nbytes *= int(primary[f"NAXIS{i}"])
        _skip(stream, nbytes + (-nbytes) % _FITS_BLOCK, where)
    header = _read_header(stream, where)
    if str(header.get("XTENSION", "")).strip() != "BINTABLE":
        raise FileFormatError(
            f"{where}: HDU 1 is {header.get('XTENSION')!r}, expected a binary table (BINTABLE)")
    nfields = int(header["TFIELDS"])
    fields, units = [], {}
    for i in range(1, nfields + 1):
        name = str(header.get(f"TTYPE{i}", f"col{i}")).strip()
        tform = str(header[f"TFORM{i}"]).strip().upper()
        digits = "".join(ch for ch in tform if ch.isdigit())
        letter = tform[len(digits):len(digits) + 1]
        if letter not in _TFORM_DTYPES:
            raise FileFormatError(
                f"{where}: column {name!r} has FITS format {tform!r}, which is not supported "
                "(expected a numeric column)")
        if header.get(f"TSCAL{i}", 1) != 1 or header.get(f"TZERO{i}", 0) != 0:
            if not (letter in "JK" and header.get(f"TSCAL{i}", 1) == 1):
                raise FileFormatError(f"{where}: column {name!r} is scaled (TSCAL/TZERO)")
        repeat = int(digits) if digits else 1
        shape: tuple[int, ...] = () if repeat == 1 else (repeat,)
        tdim = header.get(f"TDIM{i}")
        if tdim:
            dims = tuple(int(x) for x in str(tdim).strip("() ").split(",") if x.strip())
            shape = tuple(reversed(dims))
            if len(shape) == 1 and shape[0] == 1:
                shape = ()
        fields.append((name, _TFORM_DTYPES[letter], shape))
        units[name] = header.get(f"TUNIT{i}")
    row_dtype = np.dtype(fields)
    if int(header["NAXIS2"]) < 0:
        raise FileFormatError(f"{where}: NAXIS2 is {header['NAXIS2']}, expected a row count >= 0")
    if row_dtype.itemsize != int(header["NAXIS1"]):
        raise FileFormatError(
            f"{where}: row size {header['NAXIS1']} bytes does not match its columns "
            f"({row_dtype.itemsize} bytes)")
    return _FitsTable(int(header["NAXIS2"]), row_dtype, units)


def _skip(stream, nbytes: int, where: str) -> None:
    while nbytes > 0:
        got = len(stream.read(min(nbytes, 1 << 24)))
        if got == 0:
            raise FileFormatError(f"{where}: file ends early (truncated)")
        nbytes -= got


def _readinto_full(stream, view: memoryview) -> int:
    got = 0
    while got < len(view):
        k = stream.readinto(view[got:])
        if not k:
            break
        got += k
    return got


class _RawRows:
    """A chunk of FITS rows (big-endian records in their own buffer), converted to columns on
    demand: the reader thread only inflates, the consumer thread converts."""

    __slots__ = ("rec", "wanted", "factors")

    def __init__(self, rec: np.ndarray, wanted: list[str], factors: dict[str, float]):
        self.rec, self.wanted, self.factors = rec, wanted, factors

    def columns(self) -> dict[str, np.ndarray]:
        rec = self.rec
        chunk = {}
        for c in self.wanted:
            col = rec[c]
            # one pass: byte swap (and widen float32 / integer DC2 columns to float64)
            arr = col.astype(np.float64 if c in DC2_COLUMNS else col.dtype.newbyteorder("="))
            if self.factors[c] != 1.0:
                arr *= self.factors[c]
            chunk[c] = arr
        return chunk


def _iter_fits(path: Path, columns: list[str] | None, chunk_size: int, start: int,
               stop: int | None, callback, raw: bool = False) -> Iterator:
    """Yield column dicts, or with ``raw`` :class:`_RawRows` (one fresh buffer per chunk)."""
    where = str(path)
    with open_input(path) as stream:
        table = _parse_fits_table(path, stream)
        names = list(table.row_dtype.names)
        wanted = names if columns is None else list(columns)
        missing = [c for c in wanted if c not in names]
        if missing:
            raise FileFormatError(
                f"{where}: missing column(s) {missing}; the file has {names}")
        factors = {c: stored_unit_factor(table.units[c], c, where) for c in wanted}
        stop = table.nrows if stop is None else min(stop, table.nrows)
        start = max(0, min(start, stop))
        rowbytes = table.row_dtype.itemsize
        row = start
        try:
            _skip(stream, start * rowbytes, where)
            size = min(chunk_size, max(stop - start, 1)) * rowbytes
            # In raw mode chunks are handed to another thread: rotate through a ring of buffers
            # bigger than what can be in flight (queue depth + one being filled + one being
            # converted), so no buffer is overwritten while in use and none is re-allocated.
            ring = [bytearray(size) for _ in range(_RING_BUFFERS if raw else 1)]
            k = 0
            while row < stop:
                nrows = min(chunk_size, stop - row)
                buf = ring[k % len(ring)]
                k += 1
                view = memoryview(buf)[: nrows * rowbytes]
                got = _readinto_full(stream, view)
                if got < nrows * rowbytes:
                    raise FileFormatError(
                        f"{where}: file ends after {row + got // rowbytes} of {table.nrows} "
                        "events (truncated)")
                rows = _RawRows(np.frombuffer(buf, dtype=table.row_dtype, count=nrows), wanted,
                                factors)
                row += nrows
                if callback is not None:
                    callback(nrows)
                yield rows if raw else rows.columns()
        except GZIP_ERRORS as exc:
            if isinstance(exc, FileFormatError):
                raise
            raise FileFormatError(
                f"{where}: cannot decompress after event {row}: "
                f"{exc} (corrupt or truncated gzip)") from exc


def read_fits_chunks(path: Path, columns: list[str] | None, chunk_size: int, start: int,
                     stop: int | None, callback, prefetch: bool) -> Iterator[dict[str, np.ndarray]]:
    """Column chunks of a FITS event file; with ``prefetch`` a thread inflates the rows ahead
    and the caller's thread converts them."""
    if prefetch:
        raw = _iter_fits(path, columns, chunk_size, start, stop, callback, raw=True)
        return (rows.columns() for rows in read_ahead(raw))
    return _iter_fits(path, columns, chunk_size, start, stop, callback)


def fits_columns(path: Path) -> list[str]:
    """Column names of a FITS event file, from its header."""
    with open_input(path) as stream:
        return list(_parse_fits_table(path, stream).row_dtype.names)


def count_fits(path: Path) -> int:
    """Number of events of a FITS event file, from its header."""
    with open_input(path) as stream:
        return _parse_fits_table(path, stream).nrows
