"""DC2 unbinned event lists: FITS binary tables (plain or gzipped) and HDF5, read in chunks.

Column contract (DESIGN §7), with the units this package works in ("canonical" units):

=================  ==========  ========  =====================================================
column             unit        shape     meaning
=================  ==========  ========  =====================================================
``Energies``       keV         (N,)      measured energy Em
``TimeTags``       s           (N,)      event time
``Xpointings``     rad         (N, 2)    Galactic (l, b) of the spacecraft x axis
``Ypointings``     rad         (N, 2)    Galactic (l, b) of the spacecraft y axis
``Zpointings``     rad         (N, 2)    Galactic (l, b) of the spacecraft z axis (boresight)
``Phi``            rad         (N,)      Compton scatter angle, 0..pi
``Chi local``      rad         (N,)      azimuth of the scattered photon, spacecraft frame
``Psi local``      rad         (N,)      polar angle (colatitude, 0 at +z) of the scattered
                                         photon, spacecraft frame
``Distance``       cm          (N,)      distance between the first two interactions
``Chi galactic``   deg         (N,)      Galactic longitude l of the scattered photon
``Psi galactic``   deg         (N,)      Galactic latitude b of the scattered photon
=================  ==========  ========  =====================================================

Note the asymmetry inherited from the COSI DC2 files: ``Psi local`` is a *colatitude* (HEALPix
``theta``) while ``Psi galactic`` is a *latitude*. Binning therefore uses
``healpy.ang2pix(nside, psi_local, chi_local)`` for the local frame and
``healpy.ang2pix(nside, l, b, lonlat=True)`` for the Galactic frame, which reproduces the reference
tool's histograms bin for bin.

Readers honour the unit stored with each column (FITS ``TUNITn``, HDF5 attribute ``unit``) and
convert to the canonical units above; a column without a stored unit is taken to be in the
canonical unit. FITS files are parsed here rather than through :mod:`astropy.io.fits` so that a
gzipped file of any size is streamed through a fixed-size buffer instead of being inflated into
memory.
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import os
import queue
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
from astropy import units as u
from astropy.io import fits

from ..errors import FileFormatError, InvalidParameterError
from .atomic import atomic_path
from .hdf5 import open_hdf5

try:  # ISA-L inflates about twice as fast as zlib; fall back to the standard library.
    from isal import igzip as _igzip
    from isal import isal_zlib as _isal_zlib

    _GZIP_ERRORS: tuple[type[BaseException], ...] = (
        OSError, EOFError, zlib.error, _isal_zlib.error, gzip.BadGzipFile,
    )
except ImportError:  # pragma: no cover - isal is a declared dependency
    _igzip = None
    _GZIP_ERRORS = (OSError, EOFError, zlib.error, gzip.BadGzipFile)

__all__ = [
    "EventSource",
    "EventWriter",
    "select_events",
    "ColumnSpec",
    "DC2_COLUMNS",
    "DEFAULT_CHUNK_SIZE",
    "event_file_format",
    "count_events",
    "event_file_columns",
    "iter_event_chunks",
    "read_events",
    "validate_events",
    "write_events",
]

logger = logging.getLogger(__name__)

#: What binning and selection accept as input: an event file, several files (added together in
#: order), or event columns already in memory (canonical units).
EventSource = str | os.PathLike | Sequence[str | os.PathLike] | Mapping[str, np.ndarray]

#: Events per chunk when streaming: 16384 DC2 rows are 1.8 MB; binning measured faster with this
#: than with chunks of 65536 or 262144 events.
DEFAULT_CHUNK_SIZE = 1 << 14


@dataclass(frozen=True)
class ColumnSpec:
    """Description of one DC2 event column.

    Attributes
    ----------
    name : str
        Column name as stored in DC2 files.
    unit : str
        Canonical unit (astropy unit string) of the values this package reads and writes.
    shape : tuple of int
        Shape of one event's value: ``()`` for scalars, ``(2,)`` for (lon, lat) pointings.
    description : str
        Human-readable meaning.
    """

    name: str
    unit: str
    shape: tuple[int, ...]
    description: str


#: The DC2 columns, in the order the DC2 files store them.
DC2_COLUMNS: dict[str, ColumnSpec] = {
    c.name: c
    for c in (
        ColumnSpec("Energies", "keV", (), "measured energy"),
        ColumnSpec("TimeTags", "s", (), "event time"),
        ColumnSpec("Xpointings", "rad", (2,), "Galactic (l, b) of the spacecraft x axis"),
        ColumnSpec("Ypointings", "rad", (2,), "Galactic (l, b) of the spacecraft y axis"),
        ColumnSpec("Zpointings", "rad", (2,), "Galactic (l, b) of the spacecraft z axis"),
        ColumnSpec("Phi", "rad", (), "Compton scatter angle"),
        ColumnSpec("Chi local", "rad", (), "azimuth of the scattered photon (spacecraft frame)"),
        ColumnSpec("Psi local", "rad", (),
                   "colatitude of the scattered photon (spacecraft frame, 0 at +z)"),
        ColumnSpec("Distance", "cm", (), "distance between the first two interactions"),
        ColumnSpec("Chi galactic", "deg", (), "Galactic longitude l of the scattered photon"),
        ColumnSpec("Psi galactic", "deg", (), "Galactic latitude b of the scattered photon"),
    )
}

#: HDF5 output: rows per compressed chunk and gzip level (event columns compress little; level 1
#: is twice as fast to write as 4 for about the same size).
_HDF5_CHUNK_ROWS = 1 << 16
_HDF5_GZIP_LEVEL = 1

_FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz", ".fts.gz")
_HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".he5")
_FITS_BLOCK = 2880

# FITS binary-table TFORM letter -> big-endian numpy type
_TFORM_DTYPES = {
    "L": "i1", "B": "u1", "I": ">i2", "J": ">i4", "K": ">i8", "E": ">f4", "D": ">f8",
}


# --------------------------------------------------------------------------------------------
# format detection and validation


def _is_gzip(path: Path) -> bool:
    return path.name.lower().endswith(".gz")


def event_file_format(path: str | os.PathLike, format: str | None = None) -> str:
    """Return ``"fits"``, ``"hdf5"`` or ``"tra"`` for an event file.

    Parameters
    ----------
    path : path-like
        The event file. Its name decides unless ``format`` is given.
    format : {"fits", "hdf5", "tra"}, optional
        Explicit format (``"h5"`` and ``"fits.gz"`` are accepted aliases).

    Raises
    ------
    InvalidParameterError
        If the format is unknown or cannot be guessed from the name.
    """
    if format is not None:
        key = str(format).lower().lstrip(".")
        aliases = {"fits": "fits", "fits.gz": "fits", "fit": "fits", "hdf5": "hdf5",
                   "h5": "hdf5", "hdf": "hdf5", "tra": "tra", "tra.gz": "tra"}
        if key not in aliases:
            raise InvalidParameterError(
                f"unknown event file format {format!r}; expected 'fits', 'hdf5' or 'tra'")
        return aliases[key]
    name = Path(path).name.lower()
    if name.endswith(_FITS_SUFFIXES):
        return "fits"
    if name.endswith(_HDF5_SUFFIXES):
        return "hdf5"
    if name.endswith((".tra", ".tra.gz")):
        return "tra"
    raise InvalidParameterError(
        f"{path}: cannot tell the event file format from the name; expected a name ending in "
        f"{', '.join(_FITS_SUFFIXES + _HDF5_SUFFIXES)}, .tra or .tra.gz, or pass format=")


def validate_events(events: Mapping[str, np.ndarray], where: str = "events",
                    required: Iterable[str] = ()) -> int:
    """Check an event mapping's column shapes and return the number of events.

    Parameters
    ----------
    events : mapping of str to array
        Columns; DC2 columns must have shape ``(N,) + DC2_COLUMNS[name].shape``; other columns
        must have a first dimension N.
    where : str
        Name used in error messages (a file name, for example).
    required : iterable of str
        Columns that must be present.

    Returns
    -------
    int
        N, the number of events.

    Raises
    ------
    InvalidParameterError
        On a missing required column, a wrong shape or inconsistent lengths.
    """
    missing = [c for c in required if c not in events]
    if missing:
        raise InvalidParameterError(
            f"{where}: missing column(s) {missing}; found {sorted(events)}")
    n: int | None = None
    for name, values in events.items():
        arr = np.asarray(getattr(values, "value", values))
        if arr.ndim == 0:
            raise InvalidParameterError(f"{where}: column {name!r} is a scalar, not per-event")
        spec = DC2_COLUMNS.get(name)
        if spec is not None and arr.shape[1:] != spec.shape:
            raise InvalidParameterError(
                f"{where}: column {name!r} has per-event shape {arr.shape[1:]}, "
                f"expected {spec.shape}")
        if n is None:
            n = arr.shape[0]
        elif arr.shape[0] != n:
            raise InvalidParameterError(
                f"{where}: column {name!r} has {arr.shape[0]} events, other columns have {n}")
    return int(n or 0)


def _parse_unit(text: str | bytes | None, column: str, where: str) -> u.UnitBase | None:
    """Parse a stored unit string; DC2 writes pointing units as ``'rad:[glon,glat]'``."""
    if text is None:
        return None
    if isinstance(text, bytes):
        text = text.decode("ascii", "replace")
    text = str(text).strip()
    if not text:
        return None
    base = text.split(":", 1)[0].strip()
    try:
        return u.Unit(base)
    except ValueError as exc:
        raise FileFormatError(
            f"{where}: column {column!r} has unit {text!r}, which is not a unit "
            f"(expected something convertible to "
            f"{DC2_COLUMNS[column].unit if column in DC2_COLUMNS else 'a known unit'})"
        ) from exc


def _conversion_factor(stored: u.UnitBase | None, column: str, where: str) -> float:
    """Factor that converts values stored in ``stored`` to the canonical unit of ``column``."""
    spec = DC2_COLUMNS.get(column)
    if spec is None or stored is None:
        return 1.0
    target = u.Unit(spec.unit)
    try:
        return float(stored.to(target))
    except u.UnitConversionError as exc:
        raise FileFormatError(
            f"{where}: column {column!r} is stored in {stored.to_string()!r}, which cannot be "
            f"converted to {spec.unit!r} ({spec.description})"
        ) from exc


def _canonical_array(name: str, values, where: str) -> np.ndarray:
    """Values as a float64 (or native) array in the canonical unit; converts Quantities."""
    spec = DC2_COLUMNS.get(name)
    if isinstance(values, u.Quantity):
        if spec is None:
            return np.asarray(values.value)
        try:
            return np.asarray(values.to_value(spec.unit), dtype=np.float64)
        except u.UnitConversionError as exc:
            raise InvalidParameterError(
                f"{where}: column {name!r} is in {values.unit}, expected a unit convertible to "
                f"{spec.unit}") from exc
    arr = np.asarray(values)
    if spec is not None and arr.dtype.kind in "iub":
        arr = arr.astype(np.float64)
    return arr


# --------------------------------------------------------------------------------------------
# writing


def _dc2_order(names: Iterable[str]) -> list[str]:
    """DC2 columns first, in the DC2 order, then the others in their given order."""
    names = list(names)
    return [n for n in DC2_COLUMNS if n in names] + [n for n in names if n not in DC2_COLUMNS]


def _ordered_names(events: Mapping[str, object]) -> list[str]:
    known = [n for n in DC2_COLUMNS if n in events]
    return known + [n for n in events if n not in DC2_COLUMNS]


def write_events(path: str | os.PathLike, events: Mapping[str, np.ndarray],
                 format: str | None = None, overwrite: bool = True,
                 units: Mapping[str, str] | None = None, chunk_size: int = DEFAULT_CHUNK_SIZE,
                 compresslevel: int | None = None, meta: Mapping[str, str] | None = None) -> Path:
    """Write an event list in the DC2 layout, atomically.

    FITS: an empty primary HDU and a binary table in HDU 1 with one column per entry and a
    ``TUNITn`` card each; gzipped when the name ends in ``.gz``. HDF5: one dataset per column at
    the root of the file (gzip-compressed, chunked), each with a string attribute ``unit``.
    The file appears under ``path`` only once it is complete.

    Parameters
    ----------
    path : path-like
        Output file, e.g. ``events.fits.gz`` or ``events.hdf5``.
    events : mapping of str to array or Quantity
        Columns, all with the same number of events N. DC2 columns (:data:`DC2_COLUMNS`) have
        shape ``(N,)`` or ``(N, 2)`` for pointings, in the canonical units (astropy Quantities are
        converted to them). Other columns are written as given, without a unit.
    format : {"fits", "hdf5"}, optional
        Default: from the file name.
    overwrite : bool
        If False and ``path`` exists, raise :class:`FileExistsError`.
    units : mapping of str to str, optional
        Write these columns in another unit (e.g. ``{"Chi galactic": "rad"}``); the values are
        converted from the canonical unit.
    chunk_size : int
        Rows converted and written at a time (bounds memory for big lists).
    compresslevel : int, optional
        gzip level for ``.gz`` FITS output (ISA-L levels 0-3, default 1; 0-9 with zlib) or HDF5
        gzip level (default 1).
    meta : mapping of str to str, optional
        Extra header keywords (FITS) or root attributes (HDF5).

    Returns
    -------
    pathlib.Path
        The path written.

    Raises
    ------
    InvalidParameterError
        On inconsistent column lengths, wrong per-event shapes, or an unknown format.
    """
    path = Path(path)
    fmt = event_file_format(path, format)
    where = str(path)
    cols = {name: _canonical_array(name, values, where) for name, values in events.items()}
    n = validate_events(cols, where=where)
    units = dict(units or {})
    for name, unit in units.items():
        if name not in DC2_COLUMNS:
            raise InvalidParameterError(f"{where}: cannot set a unit for non-DC2 column {name!r}")
        factor = u.Unit(DC2_COLUMNS[name].unit).to(u.Unit(unit))
        if name in cols and factor != 1.0:
            cols[name] = cols[name] * factor
    col_units = {name: units.get(name, DC2_COLUMNS[name].unit) if name in DC2_COLUMNS else ""
                 for name in cols}
    names = _ordered_names(cols)
    with atomic_path(path, overwrite=overwrite) as tmp:
        if fmt == "fits":
            _write_fits(tmp, names, cols, col_units, n, _is_gzip(path), chunk_size,
                        compresslevel, meta)
        elif fmt == "hdf5":
            if _is_gzip(path):
                raise InvalidParameterError(
                    f"{path}: HDF5 files are compressed internally; drop the .gz suffix")
            _write_hdf5(tmp, names, cols, col_units, n, chunk_size, compresslevel, meta)
        else:
            raise InvalidParameterError(f"{path}: cannot write event lists in format {fmt!r}")
    logger.info("wrote %d events to %s", n, path)
    return path


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


@contextlib.contextmanager
def _output_stream(path: Path, gz: bool, compresslevel: int | None) -> Iterator:
    """Binary output stream, gzipped if ``gz``. The gzip header carries no file name (the
    temporary name would leak into it) and a zero time stamp, so equal contents give equal
    files."""
    with open(path, "wb") as raw:
        if not gz:
            yield raw
            return
        if _igzip is not None and (compresslevel is None or compresslevel <= 3):
            level = 1 if compresslevel is None else compresslevel
            stream = _igzip.IGzipFile(filename="", mode="wb", fileobj=raw, mtime=0,
                                      compresslevel=level)
        else:
            level = 6 if compresslevel is None else compresslevel
            stream = gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0,
                                   compresslevel=level)
        with stream:
            yield stream


def _write_fits(tmp: Path, names, cols, col_units, n, gz, chunk_size, compresslevel, meta,
                nrows: int | None = None, rows_file: Path | None = None):
    """Write the FITS file: the rows of ``cols`` or, with ``rows_file``, ``nrows`` staged rows."""
    if rows_file is not None:
        n = nrows
    primary = fits.Header()
    primary["SIMPLE"] = True
    primary["BITPIX"] = 8
    primary["NAXIS"] = 0
    primary["EXTEND"] = True
    fields = []
    for name in names:
        tform, dt = _fits_tform(cols[name])
        fields.append((name, dt, cols[name].shape[1:], tform))
    row_dtype = np.dtype([(name, dt, shape) for name, dt, shape, _ in fields])
    header = fits.Header()
    header["XTENSION"] = "BINTABLE"
    header["BITPIX"] = 8
    header["NAXIS"] = 2
    header["NAXIS1"] = row_dtype.itemsize
    header["NAXIS2"] = n
    header["PCOUNT"] = 0
    header["GCOUNT"] = 1
    header["TFIELDS"] = len(fields)
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
    with _output_stream(tmp, gz, compresslevel) as out:
        out.write(primary.tostring().encode("ascii"))
        out.write(header.tostring().encode("ascii"))
        if rows_file is not None:
            with open(rows_file, "rb") as src:
                while True:
                    block = src.read(1 << 24)
                    if not block:
                        break
                    out.write(block)
        step = max(1, int(chunk_size))
        for start in range(0, 0 if rows_file is not None else n, step):
            stop = min(n, start + step)
            rows = np.empty(stop - start, dtype=row_dtype)
            for name in names:
                rows[name] = cols[name][start:stop]
            out.write(rows.tobytes())
        nbytes = n * row_dtype.itemsize
        pad = (-nbytes) % _FITS_BLOCK
        if pad:
            out.write(b"\0" * pad)


def _write_hdf5(tmp: Path, names, cols, col_units, n, chunk_size, compresslevel, meta):
    with h5py.File(tmp, "w") as f:
        for key, value in (meta or {}).items():
            f.attrs[str(key)] = value
        for name in names:
            arr = cols[name]
            chunks = (max(1, min(n, _HDF5_CHUNK_ROWS)),) + arr.shape[1:] if n else None
            ds = f.create_dataset(name, data=arr, chunks=chunks,
                                  compression="gzip" if n else None,
                                  compression_opts=(_HDF5_GZIP_LEVEL if compresslevel is None
                                                    else compresslevel) if n else None)
            if col_units[name]:
                ds.attrs["unit"] = col_units[name]


# --------------------------------------------------------------------------------------------
# reading


@dataclass
class _FitsTable:
    """Layout of a FITS binary table (HDU 1) as needed to stream its rows."""

    data_offset: int  # byte offset of the first row in the (decompressed) file
    nrows: int
    row_dtype: np.dtype
    units: dict[str, str | None]
    shapes: dict[str, tuple[int, ...]]


def _open_raw(path: Path):
    if _is_gzip(path):
        return _igzip.open(path, "rb") if _igzip is not None else gzip.open(path, "rb")
    return open(path, "rb")  # noqa: SIM115


def _read_header(stream, where: str) -> tuple[fits.Header, int]:
    """Read one FITS header (2880-byte blocks up to END) from a stream; return it and its size."""
    blocks = []
    while True:
        block = stream.read(_FITS_BLOCK)
        if len(block) < _FITS_BLOCK:
            raise FileFormatError(f"{where}: file ends inside a FITS header; truncated or not FITS")
        blocks.append(block)
        if any(block[i:i + 8] == b"END     " for i in range(0, _FITS_BLOCK, 80)):
            break
        if len(blocks) > 1000:
            raise FileFormatError(f"{where}: no END card in the FITS header; not a FITS file")
    raw = b"".join(blocks)
    try:
        header = fits.Header.fromstring(raw.decode("ascii"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise FileFormatError(f"{where}: unreadable FITS header ({exc})") from exc
    return header, len(raw)


def _parse_fits_table(path: Path, stream) -> _FitsTable:
    """Parse the primary header and the HDU 1 binary-table header; leave ``stream`` at row 0."""
    try:
        return _parse_fits_table_unsafe(path, stream)
    except FileFormatError:
        raise
    except _GZIP_ERRORS as exc:
        raise FileFormatError(
            f"{path}: cannot decompress the FITS header: {exc} (corrupt or not gzip)") from exc


def _parse_fits_table_unsafe(path: Path, stream) -> _FitsTable:
    where = str(path)
    try:
        head = stream.read(6)
    except _GZIP_ERRORS as exc:
        raise FileFormatError(f"{where}: cannot decompress: {exc} (corrupt or not gzip)") from exc
    if head != b"SIMPLE":
        raise FileFormatError(f"{where}: not a FITS file (does not start with SIMPLE)")
    rest = stream.read(_FITS_BLOCK - 6)
    primary, size = _read_header(_Prefixed(head + rest, stream), where)
    offset = size
    naxis = int(primary.get("NAXIS", 0))
    if naxis:
        nbytes = abs(int(primary.get("BITPIX", 8))) // 8
        for i in range(1, naxis + 1):
            nbytes *= int(primary[f"NAXIS{i}"])
        skip = nbytes + (-nbytes) % _FITS_BLOCK
        _skip(stream, skip, where)
        offset += skip
    header, size = _read_header(stream, where)
    offset += size
    if str(header.get("XTENSION", "")).strip() != "BINTABLE":
        raise FileFormatError(
            f"{where}: HDU 1 is {header.get('XTENSION')!r}, expected a binary table (BINTABLE)")
    nfields = int(header["TFIELDS"])
    fields, units, shapes = [], {}, {}
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
        shapes[name] = shape
    row_dtype = np.dtype(fields)
    if row_dtype.itemsize != int(header["NAXIS1"]):
        raise FileFormatError(
            f"{where}: row size {header['NAXIS1']} bytes does not match its columns "
            f"({row_dtype.itemsize} bytes)")
    return _FitsTable(offset, int(header["NAXIS2"]), row_dtype, units, shapes)


class _Prefixed:
    """A stream with some already-read bytes put back in front."""

    def __init__(self, prefix: bytes, stream):
        self._prefix = prefix
        self._stream = stream

    def read(self, n: int) -> bytes:
        if self._prefix:
            out, self._prefix = self._prefix[:n], self._prefix[n:]
            if len(out) < n:
                out += self._stream.read(n - len(out))
            return out
        return self._stream.read(n)


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
    with _open_raw(path) as stream:
        table = _parse_fits_table(path, stream)
        names = list(table.row_dtype.names)
        wanted = names if columns is None else list(columns)
        missing = [c for c in wanted if c not in names]
        if missing:
            raise FileFormatError(
                f"{where}: missing column(s) {missing}; the file has {names}")
        factors = {c: _conversion_factor(_parse_unit(table.units[c], c, where), c, where)
                   for c in wanted}
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
        except _GZIP_ERRORS as exc:
            if isinstance(exc, FileFormatError):
                raise
            raise FileFormatError(
                f"{where}: cannot decompress after event {row}: "
                f"{exc} (corrupt or truncated gzip)") from exc


def _iter_hdf5(path: Path, columns: list[str] | None, chunk_size: int, start: int,
               stop: int | None, callback) -> Iterator[dict[str, np.ndarray]]:
    where = str(path)
    with open_hdf5(path) as f:
        grp = f
        if "Energies" not in f and len(f.keys()) == 1 and isinstance(next(iter(f.values())),
                                                                    h5py.Group):
            grp = next(iter(f.values()))
        names = _dc2_order([k for k, v in grp.items() if isinstance(v, h5py.Dataset)])
        wanted = names if columns is None else list(columns)
        missing = [c for c in wanted if c not in names]
        if missing:
            raise FileFormatError(f"{where}: missing column(s) {missing}; the file has {names}")
        datasets = {c: grp[c] for c in wanted}
        lengths = {c: d.shape[0] if d.shape else 0 for c, d in datasets.items()}
        if len(set(lengths.values())) > 1:
            raise FileFormatError(f"{where}: columns have different lengths {lengths}")
        nrows = next(iter(lengths.values())) if lengths else 0
        factors = {}
        for c, d in datasets.items():
            unit = d.attrs.get("unit", d.attrs.get("units"))
            factors[c] = _conversion_factor(_parse_unit(unit, c, where), c, where)
            spec = DC2_COLUMNS.get(c)
            if spec is not None and d.shape[1:] != spec.shape:
                raise FileFormatError(
                    f"{where}: column {c!r} has per-event shape {d.shape[1:]}, expected "
                    f"{spec.shape}")
        stop = nrows if stop is None else min(stop, nrows)
        row = max(0, min(start, stop))
        while row < stop:
            end = min(stop, row + chunk_size)
            chunk = {}
            for c, d in datasets.items():
                try:
                    arr = d[row:end]
                except OSError as exc:
                    raise FileFormatError(
                        f"{where}: cannot read column {c!r} events {row}-{end} ({exc})") from exc
                if c in DC2_COLUMNS and arr.dtype != np.float64:
                    arr = arr.astype(np.float64)
                if factors[c] != 1.0:
                    arr *= factors[c]
                chunk[c] = arr
            if callback is not None:
                callback(end - row)
            row = end
            yield chunk


#: Chunks the reader thread may prepare ahead of the consumer.
_PREFETCH_DEPTH = 4
#: Row buffers rotated by the FITS reader in prefetch mode (> _PREFETCH_DEPTH + 2).
_RING_BUFFERS = _PREFETCH_DEPTH + 4


def _prefetch(iterator: Iterator, depth: int = _PREFETCH_DEPTH) -> Iterator:
    """Run ``iterator`` in a background thread, keeping up to ``depth`` items ready.

    Decompression (ISA-L, zlib, HDF5 filters) and numpy conversions release the GIL, so reading
    the next chunk overlaps with the consumer's work on the current one.
    """
    q: queue.Queue = queue.Queue(maxsize=max(1, depth))
    done = object()
    stop = threading.Event()

    def work():
        try:
            for item in iterator:
                while not stop.is_set():
                    try:
                        q.put(("item", item), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    break
        except BaseException as exc:  # forwarded to the consumer
            q.put(("error", exc))
            return
        finally:
            close = getattr(iterator, "close", None)
            if close is not None and stop.is_set():
                close()
        q.put(("done", done))

    thread = threading.Thread(target=work, name="comptonsky-event-reader", daemon=True)
    thread.start()
    try:
        while True:
            kind, item = q.get()
            if kind == "item":
                yield item
            elif kind == "error":
                raise item
            else:
                return
    finally:
        stop.set()
        while thread.is_alive():
            try:
                q.get(timeout=0.05)
            except queue.Empty:
                pass
        thread.join()


def iter_event_chunks(path: str | os.PathLike, columns: Iterable[str] | None = None,
                      chunk_size: int = DEFAULT_CHUNK_SIZE, format: str | None = None,
                      event_range: tuple[int, int | None] | None = None,
                      callback: Callable[[int], None] | None = None,
                      prefetch: bool = True) -> Iterator[dict[str, np.ndarray]]:
    """Stream an event file as chunks of columns in the canonical units.

    Memory stays bounded by a few chunks whatever the file size: a gzipped FITS file is inflated
    through a fixed buffer, an HDF5 file is read by slices. With ``prefetch`` a reader thread
    prepares the next chunk while the caller processes the current one.

    Parameters
    ----------
    path : path-like
        A DC2 FITS (``.fits``, ``.fits.gz``), HDF5 (``.h5``, ``.hdf5``) or MEGAlib ``.tra``/
        ``.tra.gz`` file.
    columns : iterable of str, optional
        Columns to read (default: all of them).
    chunk_size : int
        Events per chunk.
    format : {"fits", "hdf5", "tra"}, optional
        Default: from the file name.
    event_range : (int, int or None), optional
        Read only events ``start <= index < stop`` (file order).
    callback : callable, optional
        Called with the number of events of each chunk as it is read (for progress bars).
    prefetch : bool
        Read ahead in a background thread.

    Yields
    ------
    dict of str to numpy.ndarray
        One array per column, shape ``(n,)`` or ``(n, 2)``, float64 in the canonical units of
        :data:`DC2_COLUMNS` (other columns as stored, native byte order).

    Raises
    ------
    FileFormatError
        If the file is missing, is not a readable event file, lacks a requested column, stores
        a column in a unit that cannot be converted, or is corrupt or truncated; the message names
        the file.
    """
    path = Path(path)
    fmt = event_file_format(path, format)
    if not path.exists():
        raise FileFormatError(f"{path}: no such file")
    if chunk_size < 1:
        raise InvalidParameterError(f"chunk_size must be >= 1, got {chunk_size}")
    cols = None if columns is None else list(dict.fromkeys(columns))
    start, stop = (0, None) if event_range is None else (int(event_range[0]),
                                                         None if event_range[1] is None
                                                         else int(event_range[1]))
    if fmt == "fits":
        if prefetch:
            raw = _iter_fits(path, cols, int(chunk_size), start, stop, callback, raw=True)
            return (rows.columns() for rows in _prefetch(raw))
        it = _iter_fits(path, cols, int(chunk_size), start, stop, callback)
    elif fmt == "hdf5":
        it = _iter_hdf5(path, cols, int(chunk_size), start, stop, callback)
    else:
        from .tra import iter_tra_chunks

        it = iter_tra_chunks(path, columns=cols, chunk_size=int(chunk_size),
                             event_range=(start, stop), callback=callback)
    return _prefetch(it) if prefetch else it


def read_events(path: str | os.PathLike, columns: Iterable[str] | None = None,
                format: str | None = None,
                event_range: tuple[int, int | None] | None = None) -> dict[str, np.ndarray]:
    """Read a whole event file (or a range of it) into memory.

    Same parameters and units as :func:`iter_event_chunks`; returns one array per column of
    shape ``(N,)`` or ``(N, 2)``. For big files prefer :func:`iter_event_chunks`.
    """
    parts: dict[str, list[np.ndarray]] = {}
    for chunk in iter_event_chunks(path, columns=columns, format=format,
                                   event_range=event_range, prefetch=False):
        for k, v in chunk.items():
            parts.setdefault(k, []).append(v)
    if not parts:
        names = list(columns) if columns is not None else event_file_columns(path, format)
        return {n: np.empty((0,) + DC2_COLUMNS[n].shape if n in DC2_COLUMNS else (0,))
                for n in names}
    return {k: np.concatenate(v) if len(v) > 1 else v[0] for k, v in parts.items()}


def event_file_columns(path: str | os.PathLike, format: str | None = None) -> list[str]:
    """Names of the columns stored in an event file (reads only the header / metadata)."""
    path = Path(path)
    fmt = event_file_format(path, format)
    if not path.exists():
        raise FileFormatError(f"{path}: no such file")
    if fmt == "fits":
        with _open_raw(path) as stream:
            return list(_parse_fits_table(path, stream).row_dtype.names)
    if fmt == "hdf5":
        try:
            with h5py.File(path, "r") as f:
                return _dc2_order([k for k, v in f.items() if isinstance(v, h5py.Dataset)])
        except OSError as exc:
            raise FileFormatError(f"{path}: cannot be read as HDF5 ({exc})") from exc
    return list(DC2_COLUMNS)


def count_events(path: str | os.PathLike, format: str | None = None) -> int | None:
    """Number of events in a FITS or HDF5 event file from its metadata; None for ``.tra``."""
    path = Path(path)
    fmt = event_file_format(path, format)
    if not path.exists():
        raise FileFormatError(f"{path}: no such file")
    if fmt == "fits":
        with _open_raw(path) as stream:
            return _parse_fits_table(path, stream).nrows
    if fmt == "hdf5":
        try:
            with h5py.File(path, "r") as f:
                for v in f.values():
                    if isinstance(v, h5py.Dataset) and v.shape:
                        return int(v.shape[0])
                return 0
        except OSError as exc:
            raise FileFormatError(f"{path}: cannot be read as HDF5 ({exc})") from exc
    return None


# --------------------------------------------------------------------------------------------
# streaming writer, selection and concatenation


class EventWriter:
    """Write an event list chunk by chunk with bounded memory; the file appears only on success.

    The first chunk fixes the columns; every later chunk must have the same ones. FITS rows are
    staged in an uncompressed temporary file beside the output (the table header needs the final
    row count) and then copied, gzipped if the name ends in ``.gz``; HDF5 datasets grow in place.

    Parameters
    ----------
    path : path-like
        Output file (``.fits``, ``.fits.gz``, ``.hdf5``, ``.h5``).
    format, overwrite, units, compresslevel, meta
        As for :func:`write_events`.

    Examples
    --------
    >>> with EventWriter("selected.fits.gz") as out:          # doctest: +SKIP
    ...     for chunk in iter_event_chunks("big.fits.gz"):
    ...         out.write({k: v[chunk["Energies"] > 500] for k, v in chunk.items()})
    """

    def __init__(self, path: str | os.PathLike, format: str | None = None,
                 overwrite: bool = True, units: Mapping[str, str] | None = None,
                 compresslevel: int | None = None, meta: Mapping[str, str] | None = None):
        self.path = Path(path)
        self.format = event_file_format(self.path, format)
        if self.format not in ("fits", "hdf5"):
            raise InvalidParameterError(f"{path}: cannot write event lists as {self.format!r}")
        if self.format == "hdf5" and _is_gzip(self.path):
            raise InvalidParameterError(
                f"{path}: HDF5 files are compressed internally; drop the .gz suffix")
        self.units = dict(units or {})
        self.compresslevel = compresslevel
        self.meta = dict(meta or {})
        self.n = 0
        self._names: list[str] | None = None
        self._stack = contextlib.ExitStack()
        self._tmp = self._stack.enter_context(atomic_path(self.path, overwrite=overwrite))
        self._rows = None
        self._h5 = None
        self._closed = False

    def __enter__(self) -> EventWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort(exc_type, exc, tb)

    def _prepare(self, chunk: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        where = str(self.path)
        cols = {name: _canonical_array(name, values, where) for name, values in chunk.items()}
        validate_events(cols, where=where)
        if self._names is None:
            self._names = _ordered_names(cols)
            for name in self.units:
                if name not in DC2_COLUMNS:
                    raise InvalidParameterError(
                        f"{where}: cannot set a unit for non-DC2 column {name!r}")
        elif set(cols) != set(self._names):
            raise InvalidParameterError(
                f"{where}: chunk columns {sorted(cols)} differ from the first chunk's "
                f"{sorted(self._names)}")
        for name, unit in self.units.items():
            factor = u.Unit(DC2_COLUMNS[name].unit).to(u.Unit(unit))
            if name in cols and factor != 1.0:
                cols[name] = cols[name] * factor
        return cols

    def _col_unit(self, name: str) -> str:
        return self.units.get(name, DC2_COLUMNS[name].unit) if name in DC2_COLUMNS else ""

    def write(self, chunk: Mapping[str, np.ndarray]) -> None:
        """Append a chunk of events (same columns as the first chunk)."""
        if self._closed:
            raise InvalidParameterError(f"{self.path}: writer already closed")
        cols = self._prepare(chunk)
        n = validate_events(cols)
        if self.format == "fits":
            if self._rows is None:
                self._fields = []
                for name in self._names:
                    tform, dt = _fits_tform(cols[name])
                    self._fields.append((name, dt, cols[name].shape[1:], tform))
                self._row_dtype = np.dtype([(nm, dt, sh) for nm, dt, sh, _ in self._fields])
                self._rows_path = self._tmp.with_name(self._tmp.name + ".rows")
                self._rows = open(self._rows_path, "wb")  # noqa: SIM115
            rows = np.empty(n, dtype=self._row_dtype)
            for name in self._names:
                rows[name] = cols[name]
            self._rows.write(rows.tobytes())
        else:
            if self._h5 is None:
                self._h5 = h5py.File(self._tmp, "w")
                for key, value in self.meta.items():
                    self._h5.attrs[str(key)] = value
                for name in self._names:
                    arr = cols[name]
                    ds = self._h5.create_dataset(
                        name, shape=(0,) + arr.shape[1:], maxshape=(None,) + arr.shape[1:],
                        dtype=arr.dtype, chunks=(_HDF5_CHUNK_ROWS,) + arr.shape[1:],
                        compression="gzip", compression_opts=_HDF5_GZIP_LEVEL
                        if self.compresslevel is None else self.compresslevel)
                    if self._col_unit(name):
                        ds.attrs["unit"] = self._col_unit(name)
            for name in self._names:
                ds = self._h5[name]
                ds.resize(self.n + n, axis=0)
                ds[self.n:self.n + n] = cols[name]
        self.n += n

    def close(self) -> Path:
        """Finish the file and move it to its final name; returns the path."""
        if self._closed:
            return self.path
        try:
            if self._names is None:
                raise InvalidParameterError(f"{self.path}: no events were written (no columns)")
            if self.format == "fits":
                self._rows.close()
                self._finish_fits()
            else:
                self._h5.close()
        except BaseException:
            import sys

            self.abort(*sys.exc_info())
            raise
        self._closed = True
        self._stack.close()
        logger.info("wrote %d events to %s", self.n, self.path)
        return self.path

    def _finish_fits(self) -> None:
        cols = {nm: np.empty((0,) + sh, dtype=dt) for nm, dt, sh, _ in self._fields}
        try:
            # header from a zero-row table with the same layout, then the staged rows
            _write_fits(self._tmp, self._names, cols, {n: self._col_unit(n) for n in self._names},
                        0, _is_gzip(self.path), 1, self.compresslevel, self.meta,
                        nrows=self.n, rows_file=self._rows_path)
        finally:
            self._rows_path.unlink(missing_ok=True)

    def abort(self, exc_type=None, exc=None, tb=None) -> None:
        """Discard everything written; the output name is left untouched."""
        if self._closed:
            return
        self._closed = True
        if self._rows is not None:
            self._rows.close()
            self._rows_path.unlink(missing_ok=True)
        if self._h5 is not None:
            try:
                self._h5.close()
            except Exception:  # noqa: BLE001 - already failing
                pass
        self._stack.__exit__(exc_type or RuntimeError, exc or RuntimeError("aborted"), tb)


def select_events(unbinned_data: EventSource, output: str | os.PathLike | None = None, *,
                  tmin: float | None = None, tmax: float | None = None,
                  emin: float | None = None, emax: float | None = None,
                  columns: Iterable[str] | None = None,
                  chunk_size: int = DEFAULT_CHUNK_SIZE, overwrite: bool = True
                  ) -> dict[str, np.ndarray] | Path:
    """Select events by time and energy from one or several inputs, concatenated in order.

    Parameters
    ----------
    unbinned_data : path-like, sequence of path-like, or mapping of str to ndarray
        Event files (FITS, HDF5, .tra) or in-memory columns.
    output : path-like, optional
        Stream the selection to this file (written atomically) and return its path; default:
        return the columns in memory.
    tmin, tmax : float, optional
        Keep ``tmin <= TimeTags < tmax`` (s).
    emin, emax : float, optional
        Keep ``emin <= Energies < emax`` (keV).
    columns : iterable of str, optional
        Columns to keep (default: all columns of the first input).
    chunk_size : int
        Events per chunk.
    overwrite : bool
        Replace an existing ``output``.

    Returns
    -------
    dict of str to ndarray, or pathlib.Path
        The selected columns (canonical units), or the path written.
    """
    if isinstance(unbinned_data, (str, os.PathLike, Mapping)):
        inputs = [unbinned_data]
    else:
        inputs = list(unbinned_data)
    if not inputs:
        raise InvalidParameterError("select_events: no input given")
    cols = None if columns is None else list(columns)
    writer = EventWriter(output, overwrite=overwrite) if output is not None else None
    parts: dict[str, list[np.ndarray]] = {}
    try:
        for item in inputs:
            if isinstance(item, Mapping):
                n = validate_events(item, where="in-memory events")
                use = cols or list(item)
                chunks: Iterable = ({c: np.asarray(item[c])[a:a + chunk_size] for c in use}
                                    for a in range(0, n, chunk_size))
            else:
                chunks = iter_event_chunks(item, columns=cols, chunk_size=chunk_size)
            for chunk in chunks:
                if cols is None:
                    cols = list(chunk)
                keep = np.ones(len(next(iter(chunk.values()))), dtype=bool)
                if tmin is not None or tmax is not None:
                    t = chunk["TimeTags"]
                    if tmin is not None:
                        keep &= t >= tmin
                    if tmax is not None:
                        keep &= t < tmax
                if emin is not None or emax is not None:
                    e = chunk["Energies"]
                    if emin is not None:
                        keep &= e >= emin
                    if emax is not None:
                        keep &= e < emax
                sel = {k: v[keep] for k, v in chunk.items()}
                if writer is not None:
                    writer.write(sel)
                else:
                    for k, v in sel.items():
                        parts.setdefault(k, []).append(v)
    except BaseException:
        if writer is not None:
            import sys

            writer.abort(*sys.exc_info())
        raise
    if writer is not None:
        return writer.close()
    return {k: np.concatenate(v) for k, v in parts.items()}
