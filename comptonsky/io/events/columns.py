"""The DC2 event-column contract: names, canonical units, shapes, and unit conversion.

Every reader yields chunks as a ``dict`` mapping column name to a numpy array of shape ``(n,)``
or ``(n, 2)``, float64 in the canonical units of :data:`DC2_COLUMNS` (keV, s, rad for the
pointings, Phi and the local angles, cm, deg for the Galactic angles; columns outside the contract
keep their stored dtype, in native byte order). Writers take the same mapping.

Note the asymmetry inherited from the COSI DC2 files: ``Psi local`` is a *colatitude* (HEALPix
``theta``) while ``Psi galactic`` is a *latitude*. Binning therefore uses
``healpy.ang2pix(nside, psi_local, chi_local)`` for the local frame and
``healpy.ang2pix(nside, l, b, lonlat=True)`` for the Galactic frame, which reproduces the reference
tool's histograms bin for bin.

Readers honour the unit stored with each column (FITS ``TUNITn``, HDF5 attribute ``unit``) and
convert to the canonical units; a column without a stored unit is taken to be in the
canonical unit.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from astropy import units as u

from ...errors import FileFormatError, InvalidParameterError

__all__ = [
    "ColumnSpec", "DC2_COLUMNS", "DEFAULT_CHUNK_SIZE", "EventSource", "dc2_order",
    "validate_events",
]

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


def dc2_order(names: Iterable[str]) -> list[str]:
    """DC2 columns first, in the DC2 order, then the others in their given order."""
    names = list(names)
    return [n for n in DC2_COLUMNS if n in names] + [n for n in names if n not in DC2_COLUMNS]


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


def stored_unit_factor(text: str | bytes | None, column: str, where: str) -> float:
    """Factor converting values stored with unit string ``text`` to ``column``'s canonical unit.

    DC2 writes pointing units as ``'rad:[glon,glat]'``; the part after ``:`` is ignored. A
    missing or empty unit, or a column outside the contract, gives 1.

    Raises
    ------
    FileFormatError
        If ``text`` is not a unit or cannot be converted to the canonical unit.
    """
    if isinstance(text, bytes):
        text = text.decode("ascii", "replace")
    text = "" if text is None else str(text).strip()
    if not text:
        return 1.0
    spec = DC2_COLUMNS.get(column)
    try:
        stored = u.Unit(text.split(":", 1)[0].strip())
    except (ValueError, TypeError, u.UnitsError) as exc:
        raise FileFormatError(
            f"{where}: column {column!r} has unit {text!r}, which is not a unit (expected "
            f"something convertible to {spec.unit if spec else 'a known unit'})") from exc
    if spec is None:
        return 1.0
    try:
        factor = float(stored.to(u.Unit(spec.unit)))
    except (u.UnitsError, TypeError, ValueError) as exc:
        raise FileFormatError(
            f"{where}: column {column!r} is stored in {stored.to_string()!r}, which cannot be "
            f"converted to {spec.unit!r} ({spec.description})"
        ) from exc
    if not np.isfinite(factor) or factor == 0:
        raise FileFormatError(f"{where}: column {column!r} has unit {text!r}, which scales "
                              f"{spec.unit!r} by {factor}")
    return factor


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


def output_columns(events: Mapping[str, np.ndarray], units: Mapping[str, str], where: str
                   ) -> tuple[dict[str, np.ndarray], dict[str, str], int]:
    """Columns ready to write, in :func:`dc2_order`: canonical arrays (Quantities converted),
    checked, then converted to the requested output ``units`` (DC2 columns only). Returns them,
    the unit string to store with each (``""`` for none) and the event count."""
    cols = {name: _canonical_array(name, values, where) for name, values in events.items()}
    n = validate_events(cols, where=where)
    for name, unit in units.items():
        if name not in DC2_COLUMNS:
            raise InvalidParameterError(f"{where}: cannot set a unit for non-DC2 column {name!r}")
        factor = u.Unit(DC2_COLUMNS[name].unit).to(u.Unit(unit))
        if name in cols and factor != 1.0:
            cols[name] = cols[name] * factor
    cols = {name: cols[name] for name in dc2_order(cols)}
    col_units = {name: units.get(name, DC2_COLUMNS[name].unit) if name in DC2_COLUMNS else ""
                 for name in cols}
    return cols, col_units, n
