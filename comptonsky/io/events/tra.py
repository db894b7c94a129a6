"""MEGAlib ``.tra`` / ``.tra.gz`` event files: Compton events to DC2 columns.

A ``.tra`` file is a text file of event blocks, each opened by a ``SE`` line. For Compton events
(``ET CO``) the lines used here are::

    TI  t                          time (s)
    GX  lon lat                    Galactic (l, b) of the spacecraft x axis (deg)
    GZ  lon lat                    Galactic (l, b) of the spacecraft z axis (deg)
    CE  Eg dEg Ee dEe              energy of the scattered gamma ray and of the recoil electron (keV)
    CD  x1 y1 z1 dx1 dy1 dz1 x2 y2 z2 dx2 dy2 dz2 ...   first two interaction positions (cm)

From them each event gets the DC2 columns (:data:`~comptonsky.io.events.DC2_COLUMNS`):

- ``Energies`` = Eg + Ee;
- ``Phi`` = arccos(1 − mₑc² (1/Eg − 1/(Eg + Ee))) with mₑc² = 510.999 keV (the value MEGAlib
  uses); NaN where kinematically impossible (such events are never binned);
- the scattered-photon direction d = (r1 − r2)/|r1 − r2| (from the second interaction back to the
  first, the Compton-data-space convention of MEGAlib and the DC2 files); ``Psi local`` its polar
  angle from +z and ``Chi local`` its azimuth in [0, 2π), both in rad; ``Distance`` = |r1 − r2|;
- ``Xpointings``, ``Zpointings`` from GX, GZ and ``Ypointings`` = z × x, as (l, b) in rad with
  l in (−π, π];
- ``Chi galactic``, ``Psi galactic``: Galactic (l, b) in deg, l in [0, 360), of the same
  direction d rotated by the attitude (columns x̂, ŷ, ẑ in Galactic coordinates).

Other event types (photo-absorption, pair, unknown) are skipped (logged at info level). Compton
events without a TI, CE or CD line, with one of those lines repeated (two events run together)
or with impossible values are dropped, and counted in a warning per file.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ...errors import FileFormatError
from ...geometry import lonlat_to_vec, vec_to_lonlat
from ...physics import MEGALIB_ELECTRON_MASS_KEV
from .columns import DC2_COLUMNS
from .compression import GZIP_ERRORS, open_input
from .drops import DropCounter, format_reasons

__all__ = ["ELECTRON_MASS_KEV", "compton_columns", "iter_tra"]

SUFFIXES = (".tra", ".tra.gz")

logger = logging.getLogger(__name__)

#: Electron rest energy used by MEGAlib for the Compton angle (keV).
ELECTRON_MASS_KEV = MEGALIB_ELECTRON_MASS_KEV


def _wrap_pi(lon: np.ndarray) -> np.ndarray:
    """Longitudes (rad) wrapped into (-pi, pi]."""
    return np.pi - np.mod(np.pi - lon, 2 * np.pi)


def compton_columns(time: np.ndarray, e_gamma: np.ndarray, e_electron: np.ndarray,
                    pos1: np.ndarray, pos2: np.ndarray, x_lonlat_deg: np.ndarray,
                    z_lonlat_deg: np.ndarray) -> dict[str, np.ndarray]:
    """DC2 columns of Compton events from their measured quantities.

    Parameters
    ----------
    time : ndarray, shape (N,)
        Event times (s).
    e_gamma, e_electron : ndarray, shape (N,)
        Energy deposited by the scattered gamma ray and by the recoil electron (keV).
    pos1, pos2 : ndarray, shape (N, 3)
        Positions of the first and second interaction in the spacecraft frame (cm).
    x_lonlat_deg, z_lonlat_deg : ndarray, shape (N, 2)
        Galactic (l, b) of the spacecraft x and z axes (deg); NaN where unknown.

    Returns
    -------
    dict of str to ndarray
        The DC2 columns in their canonical units (see module docstring).
    """
    time = np.asarray(time, dtype=np.float64)
    eg = np.asarray(e_gamma, dtype=np.float64)
    ee = np.asarray(e_electron, dtype=np.float64)
    etot = eg + ee
    with np.errstate(invalid="ignore", divide="ignore"):
        cos_phi = 1.0 - ELECTRON_MASS_KEV * (1.0 / eg - 1.0 / etot)
        phi = np.arccos(np.where(np.abs(cos_phi) <= 1.0, cos_phi, np.nan))
    d = np.asarray(pos1, dtype=np.float64) - np.asarray(pos2, dtype=np.float64)
    dist = np.linalg.norm(d, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        u = d / dist[:, None]
        psi_local = np.arccos(np.clip(u[:, 2], -1.0, 1.0))
    chi_local = np.mod(np.arctan2(u[:, 1], u[:, 0]), 2 * np.pi)
    x_deg = np.asarray(x_lonlat_deg, dtype=np.float64)
    z_deg = np.asarray(z_lonlat_deg, dtype=np.float64)
    xv = lonlat_to_vec(x_deg[:, 0], x_deg[:, 1])
    zv = lonlat_to_vec(z_deg[:, 0], z_deg[:, 1])
    yv = np.cross(zv, xv)
    g = xv * u[:, :1] + yv * u[:, 1:2] + zv * u[:, 2:3]
    with np.errstate(invalid="ignore", divide="ignore"):  # x parallel to z, or no direction
        ylon, ylat = np.radians(vec_to_lonlat(yv))
        glon, glat = vec_to_lonlat(g)
    # pointings: longitudes in (-pi, pi], as in the DC2 and MEGAlib files
    xr, zr = np.radians(x_deg), np.radians(z_deg)
    xr[:, 0], zr[:, 0] = _wrap_pi(xr[:, 0]), _wrap_pi(zr[:, 0])
    return {
        "Energies": etot,
        "TimeTags": time,
        "Xpointings": xr,
        "Ypointings": np.stack([_wrap_pi(ylon), ylat], axis=1),
        "Zpointings": zr,
        "Phi": phi,
        "Chi local": chi_local,
        "Psi local": psi_local,
        "Distance": dist,
        "Chi galactic": glon,
        "Psi galactic": glat,
    }


#: Lines that appear at most once per event.
_SINGLE_KEYS = frozenset((b"ET", b"TI", b"CE", b"CD", b"GX", b"GZ"))


def _problem(t, eg, ee, cd, repeated: bytes) -> str | None:
    """Why a Compton event cannot be used, or None."""
    if repeated:
        return f"repeated {repeated.decode()} line"
    if t is None:
        return "no TI line"
    if eg is None:
        return "no CE line"
    if cd is None:
        return "no CD line"
    if not math.isfinite(t):
        return "non-finite TI"
    if not (math.isfinite(eg) and math.isfinite(ee)):
        return "non-finite CE"
    if eg <= 0.0 or ee < 0.0:
        return "CE energy <= 0"
    if not all(math.isfinite(x) for x in (*cd[0:3], *cd[6:9])):
        return "non-finite CD position"
    return None


def _iter_compton_records(path: Path, dropped: DropCounter, skipped: Counter
                          ) -> Iterator[tuple[float, ...]]:
    """Yield (t, Eg, Ee, 9 CD numbers, GX lon, lat, GZ lon, lat) per usable Compton event, in
    file order; count unusable Compton events in ``dropped`` (by reason) and other event types,
    and Compton events without attitude (``"no GX/GZ"``), in ``skipped``."""
    where = str(path)
    lineno = 0
    in_event = compton = seen_event = tra_header = False
    event_type = repeated = b""
    seen_keys: set[bytes] = set()
    t = eg = ee = cd = gx = gz = None
    try:
        with open_input(path) as raw:
            # a final "EN" closes the last event
            for bline in itertools.chain(raw, [b"EN"]):
                lineno += 1
                key = bline[:2]
                if key == b"SE" or key == b"EN":
                    if compton:
                        problem = _problem(t, eg, ee, cd, repeated)
                        if problem is None:
                            if not all(math.isfinite(v) for v in (*gx, *gz)):
                                skipped["no GX/GZ"] += 1
                            yield (t, eg, ee, *cd, *gx, *gz)
                        else:
                            dropped[problem] += 1
                    elif in_event:
                        skipped[event_type.decode("ascii", "replace") or "no ET line"] += 1
                    in_event, compton = key == b"SE", False
                    seen_event = seen_event or in_event
                    event_type = repeated = b""
                    seen_keys = set()
                    t = eg = ee = cd = None
                    gx = gz = (np.nan, np.nan)
                    continue
                if not in_event:
                    tra_header = tra_header or (key == b"Ty" and b"TRA" in bline)
                    if key == b"ET":  # an event whose SE line is missing
                        dropped["no SE line"] += 1
                    continue
                if key in _SINGLE_KEYS:
                    if key in seen_keys:
                        # two events run together (a lost SE line): neither can be trusted
                        repeated = repeated or key
                    seen_keys.add(key)
                try:
                    if key == b"ET":
                        event_type = b" ".join(bline.split()[1:2])
                        compton = compton or event_type == b"CO"
                    elif key == b"TI":
                        t = float(bline.split()[1])
                    elif key == b"CE":
                        parts = bline.split()
                        eg, ee = float(parts[1]), float(parts[3])
                    elif key == b"CD":
                        cd = [float(x) for x in bline.split()[1:10]]
                        if len(cd) < 9:
                            raise ValueError("CD needs two interaction positions")
                    elif key == b"GX" or key == b"GZ":
                        parts = bline.split()
                        lonlat = (float(parts[1]), float(parts[2]))
                        gx, gz = (lonlat, gz) if key == b"GX" else (gx, lonlat)
                except (ValueError, IndexError) as exc:
                    text = bline.decode("ascii", "replace").strip()
                    hint = "; the gzip file may be corrupt" if path.name.endswith(".gz") else ""
                    raise FileFormatError(
                        f"{where}, line {lineno}: cannot parse {text[:60]!r} ({exc}){hint}"
                    ) from exc
    except FileFormatError:
        raise
    except GZIP_ERRORS as exc:
        raise FileFormatError(
            f"{where}: cannot decompress near line {lineno}: {exc} (corrupt or truncated gzip)"
        ) from exc
    if lineno == 1:
        raise FileFormatError(f"{where}: empty file, not a MEGAlib .tra file")
    if not seen_event and not tra_header:
        raise FileFormatError(
            f"{where}: no event (SE line) and no 'Type TRA' header in {lineno - 1} lines; not a "
            "MEGAlib .tra file")


def _records_to_columns(recs: list, wanted: list[str] | None) -> dict[str, np.ndarray]:
    a = np.array(recs, dtype=np.float64).reshape(len(recs), 16)
    cols = compton_columns(a[:, 0], a[:, 1], a[:, 2], a[:, 3:6], a[:, 9:12], a[:, 12:14],
                           a[:, 14:16])
    return cols if wanted is None else {k: cols[k] for k in wanted}


def iter_tra(path: Path, columns: list[str] | None, chunk_size: int, start: int,
             stop: int | None, callback) -> Iterator[dict[str, np.ndarray]]:
    """Column chunks of the Compton events ``start <= index < stop`` of a ``.tra`` file (the
    reader behind :func:`~comptonsky.io.events.iter_tra_chunks`).

    Compton events that lack a TI, CE or CD line or hold impossible values (non-finite numbers,
    a scattered-photon energy <= 0) are dropped and do not count in the index; the drops are
    logged once, as a warning with the count per reason, when the file has been read.
    """
    unknown = [c for c in columns or () if c not in DC2_COLUMNS]
    if unknown:
        raise FileFormatError(
            f"{path}: missing column(s) {unknown}; a .tra file provides {list(DC2_COLUMNS)}")
    dropped, skipped = DropCounter(), Counter()
    records = itertools.islice(_iter_compton_records(path, dropped, skipped), max(0, start),
                               stop)
    n = 0
    while recs := list(itertools.islice(records, chunk_size)):
        n += len(recs)
        if callback is not None:
            callback(len(recs))
        yield _records_to_columns(recs, columns)
    scope = "" if start <= 0 and stop is None else (
        f" from event range [{start}, {'end' if stop is None else stop})")
    dropped.report(logger, str(path), n, "Compton events", scope)
    no_attitude = skipped.pop("no GX/GZ", 0)
    if no_attitude:
        logger.warning("%s: %d Compton events have no GX/GZ attitude line; their Galactic "
                       "columns are NaN (they cannot be binned in the Galactic frame)",
                       path, no_attitude)
    if skipped:
        logger.info("%s: %d events of other types skipped: %s", path, sum(skipped.values()),
                    format_reasons(skipped))
