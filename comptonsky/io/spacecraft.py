"""``SpacecraftFile``: the COSI team's orientation-history object, on top of :class:`Orientation`.

cosipy users open an ``.ori`` file with ``SpacecraftFile.parse_from_file(path)`` and pass the
object to the exposure-table and conversion-matrix builders. This class offers the same entry
points (``parse_from_file``, ``get_time``, ``get_time_delta``, ``get_altitude``, ``livetime``,
``x_pointings``, ``z_pointings``, ``earth_zenith``, ``source_interval`` and its newer name
``select_interval``) and keeps the history as plain arrays (:attr:`orientation`), so the heavy
work never touches astropy objects.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import astropy.units as u
import numpy as np
from astropy.coordinates import SkyCoord
from astropy.time import Time, TimeDelta

from ..errors import InvalidParameterError
from ..geometry import vec_to_lonlat
from .orientation import Orientation, read_ori

__all__ = ["SpacecraftFile", "as_orientation", "interval", "to_unix"]

logger = logging.getLogger(__name__)


def to_unix(value) -> float:
    """Seconds (Unix time) of an astropy ``Time``, a ``Quantity`` in time units or a number."""
    if isinstance(value, Time):
        return float(value.unix)
    if isinstance(value, u.Quantity):
        return float(value.to_value(u.s))
    return float(value)


def as_orientation(obj) -> Orientation:
    """The :class:`Orientation` behind a :class:`SpacecraftFile` (or the object itself)."""
    if isinstance(obj, SpacecraftFile):
        return obj.orientation
    if isinstance(obj, Orientation):
        return obj
    raise InvalidParameterError(
        f"expected a SpacecraftFile or an Orientation, found {type(obj).__name__}")


def _lerp_unit(a: np.ndarray, b: np.ndarray, f: float) -> np.ndarray:
    """Linear interpolation of two unit vectors, renormalised (zero rows stay zero)."""
    v = (1.0 - f) * a + f * b
    n = np.linalg.norm(v)
    return v / n if n > 0 else v


def _sample_at(o: Orientation, i: int, time: float) -> tuple:
    """Attitude, altitude and zenith interpolated at ``time`` inside interval i."""
    f = (time - o.time[i]) / (o.time[i + 1] - o.time[i])
    return (_lerp_unit(o.x_axis[i], o.x_axis[i + 1], f), _lerp_unit(o.z_axis[i], o.z_axis[i + 1], f),
            (1.0 - f) * o.altitude[i] + f * o.altitude[i + 1],
            _lerp_unit(o.earth_zenith[i], o.earth_zenith[i + 1], f))


def interval(o: Orientation, start: float, stop: float) -> Orientation:
    """The history between ``start`` and ``stop`` (s), with samples inserted at both ends.

    A sample is interpolated at ``start`` and at ``stop`` when they fall between time stamps
    (unit vectors linearly, then renormalised; altitude linearly); the live time of a cut
    interval is its live time times the fraction kept. The last sample's live time is 0. The
    range is clipped to the history's span.

    Parameters
    ----------
    o : Orientation
    start, stop : float
        Unix seconds, ``start < stop``.
    """
    t = o.time
    if not start < stop:
        raise InvalidParameterError(f"interval start {start!r} must be before stop {stop!r}")
    start, stop = max(start, float(t[0])), min(stop, float(t[-1]))
    if not start < stop:
        raise InvalidParameterError(
            f"interval [{start}, {stop}] s lies outside the history ({t[0]} – {t[-1]} s)")
    i0 = int(np.searchsorted(t, start, side="left"))
    i1 = int(np.searchsorted(t, stop, side="left"))
    keep = slice(i0, i1 + 1 if t[i1] == stop else i1)
    time, x, z = [t[keep]], [o.x_axis[keep]], [o.z_axis[keep]]
    alt, ez = [o.altitude[keep]], [o.earth_zenith[keep]]
    live = o.livetime[keep].copy()
    dt = np.diff(t)
    if t[i0] != start:  # prepend an interpolated sample for [start, t[i0]]
        xs, zs, a, e = _sample_at(o, i0 - 1, start)
        time.insert(0, [start])
        x.insert(0, xs[None])
        z.insert(0, zs[None])
        alt.insert(0, [a])
        ez.insert(0, e[None])
        live = np.concatenate([[o.livetime[i0 - 1] * (min(t[i0], stop) - start) / dt[i0 - 1]],
                               live])
    if t[i1] != stop:  # append an interpolated end sample; cut the last interval
        xs, zs, a, e = _sample_at(o, i1 - 1, stop)
        if i1 - 1 >= i0:
            live[-1] = o.livetime[i1 - 1] * (stop - t[i1 - 1]) / dt[i1 - 1]
        time.append([stop])
        x.append(xs[None])
        z.append(zs[None])
        alt.append([a])
        ez.append(e[None])
        live = np.concatenate([live, [0.0]])
    else:
        live[-1] = 0.0
    return Orientation(np.concatenate(time), np.concatenate(x), np.concatenate(z),
                       np.concatenate(alt), np.concatenate(ez), live)


class SpacecraftFile:
    """An attitude history as cosipy's ``SpacecraftFile``.

    Parameters
    ----------
    orientation : Orientation
        Time stamps, spacecraft x/z axes, altitude, Earth zenith and live times.
    filename : path-like, optional
        The file it was read from (for messages).

    Notes
    -----
    Differences from cosipy: :meth:`get_attitude` returns rotation matrices (N, 3, 3) rather
    than a ``scoords.Attitude``; live time is what the file says (cosipy's exposure tables use
    the wall-clock spacing of the time stamps instead).
    """

    def __init__(self, orientation: Orientation, filename: str | os.PathLike | None = None):
        if not isinstance(orientation, Orientation):
            raise InvalidParameterError(
                f"SpacecraftFile needs an Orientation, found {type(orientation).__name__}; "
                "read a file with SpacecraftFile.parse_from_file(path)")
        if len(orientation) < 2:
            raise InvalidParameterError(
                f"an attitude history needs at least 2 time stamps, found {len(orientation)}")
        self.orientation = orientation
        self.filename = Path(filename) if filename is not None else None
        self._time: Time | None = None
        self._coords: dict[str, SkyCoord] = {}

    @classmethod
    def parse_from_file(cls, file: str | os.PathLike) -> SpacecraftFile:
        """Read an ``.ori`` file (type ``OrientationsGalactic``).

        Raises
        ------
        FileFormatError
            Missing file, another type, malformed or invalid rows (file and line named).
        """
        return cls(read_ori(file), filename=file)

    open = parse_from_file

    @classmethod
    def from_orientation(cls, orientation: Orientation) -> SpacecraftFile:
        """Wrap an :class:`Orientation` (e.g. a simulated orbit)."""
        return cls(orientation)

    def __len__(self) -> int:
        return len(self.orientation)

    def __repr__(self) -> str:
        o = self.orientation
        src = f" from {self.filename}" if self.filename else ""
        return (f"<SpacecraftFile{src}: {len(o)} time stamps, {o.time[0]:.1f} – {o.time[-1]:.1f} s, "
                f"live time {o.total_livetime:.1f} s>")

    # --- cosipy accessors -------------------------------------------------------------------
    def get_time(self, time_array=None) -> Time:
        """Time stamps as an astropy ``Time`` (format ``unix``), shape (N,)."""
        if time_array is not None:
            return Time(np.asarray(time_array, dtype=np.float64), format="unix")
        if self._time is None:
            self._time = Time(self.orientation.time, format="unix")
        return self._time

    def get_time_delta(self, time_array=None) -> TimeDelta:
        """Spacing of consecutive time stamps, shape (N - 1,)."""
        t = self.orientation.time if time_array is None else np.asarray(time_array, np.float64)
        return TimeDelta(np.diff(t) * u.s)

    def get_altitude(self) -> np.ndarray:
        """Altitude (km) at each time stamp, shape (N,)."""
        return self.orientation.altitude

    @property
    def livetime(self) -> np.ndarray:
        """Live time (s) of each interval between consecutive time stamps, shape (N - 1,)."""
        return self.orientation.livetime[:-1]

    def _skycoord(self, name: str, vec: np.ndarray) -> SkyCoord:
        if name not in self._coords:
            lon, lat = vec_to_lonlat(vec)
            self._coords[name] = SkyCoord(l=lon * u.deg, b=lat * u.deg, frame="galactic")
        return self._coords[name]

    @property
    def x_pointings(self) -> SkyCoord:
        """Galactic direction of the spacecraft x axis at each time stamp."""
        return self._skycoord("x", self.orientation.x_axis)

    @property
    def z_pointings(self) -> SkyCoord:
        """Galactic direction of the spacecraft z axis at each time stamp."""
        return self._skycoord("z", self.orientation.z_axis)

    @property
    def earth_zenith(self) -> SkyCoord:
        """Galactic direction of the local zenith (the z axis where the file gives none)."""
        return self._skycoord("zenith", self.orientation.zenith)

    def get_attitude(self) -> np.ndarray:
        """Detector → Galactic rotation matrices, shape (N, 3, 3) (columns: x, y, z axes)."""
        return self.orientation.rotations

    # --- selections -------------------------------------------------------------------------
    def source_interval(self, start, stop) -> SpacecraftFile:
        """The history between ``start`` and ``stop`` (astropy ``Time`` or Unix seconds).

        Samples are interpolated at the ends when they fall between time stamps and the live
        time of a cut interval is scaled by the fraction kept (see :func:`interval`).
        """
        return SpacecraftFile(interval(self.orientation, to_unix(start), to_unix(stop)),
                              filename=self.filename)

    select_interval = source_interval
