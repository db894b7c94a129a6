"""Exposure tables: an attitude history grouped into spacecraft-attitude or time bins.

``SpacecraftAttitudeExposureTable`` is cosipy's pandas table for ScAtt binning (docs/design.md §8,
§9): every interval between consecutive ``.ori`` time stamps goes to the bin of the HEALPix pixels
(z axis, x axis) of its midpoint attitude; bins are numbered in order of first appearance. The
columns are cosipy's:

=====================  =========================================================================
``scatt_binning_index`` int, 0..n-1
``healpix_index``       (z pixel, x pixel) tuple
``zpointing``           ndarray (k, 2): (l, b) in deg of the z axis of each interval of the bin
``xpointing``           ndarray (k, 2): same for the x axis
``zpointing_averaged``  ndarray (2,): live-time weighted unit-vector mean of ``zpointing``
``xpointing_averaged``  ndarray (2,): same for ``xpointing``
``delta_time``          ndarray (k,): live time (s) of each interval
``exposure``            float: total live time (s)
``num_pointings``       int: k
``bkg_group``           int: background group (0)
=====================  =========================================================================

plus ``earth_zenith`` (ndarray (k, 2), (l, b) of the local zenith) and ``altitude`` (ndarray
(k,), km), which the conversion matrix needs for Earth occultation. Exposure is live time: an
interval with zero live time (SAA passage) counts zero (cosipy 0.3 uses the wall-clock spacing of
the time stamps instead). The averages are means of unit vectors, so they are right across
l = 0°/360° (cosipy 0.3 averages the end points' l and b of each interval, which is not).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import astropy.units as u
import healpy as hp
import numba
import numpy as np
import pandas as pd
from astropy.io import fits
from histpy import Axes, HealpixAxis, Histogram

from .._numba import njit
from ..errors import FileFormatError, InvalidParameterError
from ..io.atomic import atomic_path
from ..io.spacecraft import as_orientation, interval, to_unix
from .healpix import vec2pix
from .samples import (
    Samples,
    group_order,
    lonlat_deg,
    pair_midpoints,
    split_by_intervals,
    unit_vectors,
)

__all__ = ["SpacecraftAttitudeExposureTable", "TimeBinnedExposureTable"]

logger = logging.getLogger(__name__)

_SCHEMES = {"ring": "ring", "nested": "nested", "nest": "nested"}


def _scheme(scheme) -> str:
    s = _SCHEMES.get(str(scheme).lower()) if scheme is not None else None
    if s is None:
        raise InvalidParameterError(f"HEALPix scheme must be 'ring' or 'nested', found {scheme!r}")
    return s


@njit(parallel=True, cache=True, nogil=True)
def _bin_sums(live, z, x, order, offsets, exposure, zsum, xsum):
    """Per bin: total live time and live-time weighted sums of z and x (equal weights where a
    bin has no live time)."""
    for b in numba.prange(len(offsets) - 1):
        e = 0.0
        for i in range(offsets[b], offsets[b + 1]):
            e += live[order[i]]
        exposure[b] = e
        for k in range(3):
            zsum[b, k] = 0.0
            xsum[b, k] = 0.0
        for i in range(offsets[b], offsets[b + 1]):
            j = order[i]
            w = live[j] if e > 0 else 1.0
            for k in range(3):
                zsum[b, k] += w * z[j, k]
                xsum[b, k] += w * x[j, k]


def _bin_columns(s: Samples, order: np.ndarray, offsets: np.ndarray) -> dict:
    """Per-bin columns from samples grouped by ``order``/``offsets``."""
    nb = len(offsets) - 1
    live = s.livetime[order]
    zl, xl = lonlat_deg(s.z, order), lonlat_deg(s.x, order)
    # zenith pointing (the usual case): the zenith column is the z column
    el = zl if np.array_equal(s.zenith, s.z) else lonlat_deg(s.zenith, order)
    alt = s.altitude[order]
    exposure = np.zeros(nb)
    zsum, xsum = np.zeros((nb, 3)), np.zeros((nb, 3))
    c = np.ascontiguousarray
    _bin_sums(c(s.livetime, dtype=np.float64), c(s.z), c(s.x), c(order, dtype=np.int64),
              c(offsets, dtype=np.int64), exposure, zsum, xsum)

    def mean_dir(m):
        out = np.full((nb, 2), np.nan)
        ok = np.linalg.norm(m, axis=1) > 0
        out[ok] = lonlat_deg(m[ok])
        return list(out)

    def split(a):
        return [a[offsets[k]: offsets[k + 1]] for k in range(nb)]

    return {"zpointing": split(zl), "xpointing": split(xl),
            "zpointing_averaged": mean_dir(zsum), "xpointing_averaged": mean_dir(xsum),
            "delta_time": split(live), "exposure": exposure,
            "num_pointings": np.diff(offsets).astype(np.int64), "earth_zenith": split(el),
            "altitude": split(alt)}


@njit(cache=True, nogil=True)
def _first_appearance(keys, size):
    table = np.full(size, -1, dtype=np.int64)
    codes = np.empty(len(keys), dtype=np.int64)
    uniq = np.empty(len(keys), dtype=np.int64)
    n = 0
    for i in range(len(keys)):
        k = keys[i]
        c = table[k]
        if c < 0:
            c = n
            table[k] = n
            uniq[n] = k
            n += 1
        codes[i] = c
    return codes, uniq[:n]


def _factorize(keys: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Codes in order of first appearance (dense lookup table when it fits, else pandas)."""
    if size <= 200_000_000:
        return _first_appearance(keys, int(size))
    codes, uniq = pd.factorize(keys, sort=False)
    return codes.astype(np.int64), np.asarray(uniq, dtype=np.int64)


class _AttitudeTable(pd.DataFrame):
    """Common behaviour of the exposure tables (pandas DataFrame with metadata)."""

    _metadata = ["nside", "scheme"]
    binning_index_name = ""
    binning_method = ""
    _scalar_columns: tuple[tuple[str, str, str], ...] = ()

    @property
    def _constructor(self):
        return type(self)

    def __eq__(self, other) -> bool:  # cosipy semantics: one boolean for the whole table
        if not isinstance(other, pd.DataFrame) or len(self) != len(other):
            return False
        for name in self._metadata:
            if getattr(self, name, None) != getattr(other, name, None):
                return False
        names = [c for c in self.columns if c in other.columns]
        if self.binning_index_name not in names:
            return False
        for name in names:
            for a, b in zip(self[name], other[name]):
                if not np.array_equal(np.asarray(a), np.asarray(b)):
                    return False
        return True

    def __ne__(self, other) -> bool:
        return not self.__eq__(other)

    __hash__ = None

    # --- samples back out (for the conversion matrix) ----------------------------------------
    def _samples(self, need_earth: bool, need_attitude: bool = True
                 ) -> tuple[Samples, np.ndarray]:
        """All intervals of the table and the table row of each (only the parts needed)."""
        if need_earth and not {"earth_zenith", "altitude"} <= set(self.columns):
            raise InvalidParameterError(
                "this exposure table has no 'earth_zenith'/'altitude' columns (written by cosipy "
                "0.3?): rebuild it with from_orientation, or pass earth_occ=False")
        counts = np.asarray(self["num_pointings"], dtype=np.int64)
        rows = np.repeat(np.arange(len(self)), counts)

        def cat(name, width):
            parts = [np.asarray(a, dtype=np.float64).reshape(-1, width) for a in self[name]]
            return np.concatenate(parts) if parts else np.zeros((0, width))

        live = cat("delta_time", 1)[:, 0]
        n = len(live)
        if need_attitude:
            z, x = unit_vectors(cat("zpointing", 2)), unit_vectors(cat("xpointing", 2))
        else:
            z = x = np.zeros((n, 3))
        if need_earth:
            zen, alt = unit_vectors(cat("earth_zenith", 2)), cat("altitude", 1)[:, 0]
        else:
            zen, alt = np.zeros((n, 3)), np.zeros(n)
        return Samples(time=np.zeros(n), livetime=live, x=x, z=z, zenith=zen, altitude=alt), rows

    def averaged_samples(self) -> Samples:
        """One sample per bin at the averaged pointings, weighted by the bin's exposure."""
        z = np.stack(self["zpointing_averaged"].to_numpy()) if len(self) else np.zeros((0, 2))
        x = np.stack(self["xpointing_averaged"].to_numpy()) if len(self) else np.zeros((0, 2))
        return Samples(time=np.zeros(len(self)), livetime=np.asarray(self["exposure"], float),
                       x=unit_vectors(x), z=unit_vectors(z),
                       zenith=np.zeros((len(self), 3)), altitude=np.zeros(len(self)))

    # --- FITS --------------------------------------------------------------------------------
    def save_as_fits(self, filename: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write the table to FITS (HDU ``EXPOSURETABLE``), atomically.

        The layout is cosipy's (readable by cosipy 0.3): scalar columns, the pixel indices,
        variable-length ``delta_time``, ``zpointing_l/_b``, ``xpointing_l/_b``, the averaged
        pointings, and additionally ``earth_zenith_l/_b`` and ``altitude`` when present.
        """
        path = Path(filename)
        cols = [fits.Column(name=self.binning_index_name, format="K",
                            array=np.asarray(self[self.binning_index_name], dtype=np.int64))]
        for name, fmt, unit in self._scalar_columns:
            cols.append(fits.Column(name=name, format=fmt, unit=unit or None,
                                    array=np.asarray(self[name])))
        cols += self._extra_fits_columns()

        def vla(name, values, unit):
            values = list(values)
            arr = np.empty(len(values), dtype=object)
            for k, v in enumerate(values):
                arr[k] = np.asarray(v, dtype=np.float64)
            return fits.Column(name=name, format="PD()", unit=unit, array=arr)

        cols.append(vla("delta_time", self["delta_time"], "s"))
        for name in ("zpointing", "xpointing"):
            cols.append(vla(f"{name}_l", [np.asarray(p).reshape(-1, 2)[:, 0] for p in self[name]],
                            "degree"))
            cols.append(vla(f"{name}_b", [np.asarray(p).reshape(-1, 2)[:, 1] for p in self[name]],
                            "degree"))
        for name in ("zpointing_averaged", "xpointing_averaged"):
            a = np.stack(self[name].to_numpy()) if len(self) else np.zeros((0, 2))
            cols.append(fits.Column(name=f"{name}_l", format="D", unit="degree", array=a[:, 0]))
            cols.append(fits.Column(name=f"{name}_b", format="D", unit="degree", array=a[:, 1]))
        if "earth_zenith" in self.columns:
            ez = [np.asarray(p).reshape(-1, 2) for p in self["earth_zenith"]]
            cols.append(vla("earth_zenith_l", [p[:, 0] for p in ez], "degree"))
            cols.append(vla("earth_zenith_b", [p[:, 1] for p in ez], "degree"))
        if "altitude" in self.columns:
            cols.append(vla("altitude", self["altitude"], "km"))
        hdu = fits.BinTableHDU.from_columns(cols, name="EXPOSURETABLE")
        self._write_header(hdu.header)
        with atomic_path(path, overwrite=overwrite) as tmp:
            fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(tmp)
        logger.info("wrote %s with %d bins to %s", type(self).__name__, len(self), path)
        return path

    def _extra_fits_columns(self) -> list:
        return []

    def _write_header(self, header) -> None:
        pass

    @classmethod
    def _read_fits(cls, filename) -> tuple[dict, fits.Header, Path]:
        path = Path(filename)
        if not path.exists():
            raise FileFormatError(f"{path}: no such file")
        try:
            with fits.open(path, memmap=False) as hdul:
                names = [h.name.upper() for h in hdul]
                if "EXPOSURETABLE" not in names:
                    raise FileFormatError(f"{path}: no HDU 'EXPOSURETABLE' (found "
                                          f"{', '.join(names)})")
                hdu = hdul["EXPOSURETABLE"]
                data = {n: hdu.data[n] for n in hdu.columns.names}
                header = hdu.header.copy()
        except OSError as exc:
            raise FileFormatError(f"{path}: cannot be read as FITS ({exc})") from exc
        return data, header, path

    @classmethod
    def _common_columns(cls, data: dict, path: Path) -> dict:
        live_name = "delta_time" if "delta_time" in data else "livetime"
        need = [cls.binning_index_name, live_name, "zpointing_l", "zpointing_b", "xpointing_l",
                "xpointing_b", "zpointing_averaged_l", "zpointing_averaged_b",
                "xpointing_averaged_l", "xpointing_averaged_b"]
        for name in need:
            if name not in data:
                raise FileFormatError(f"{path}: EXPOSURETABLE has no column {name!r}")

        def pairs(lname, bname):
            return [np.column_stack([np.asarray(a, np.float64), np.asarray(b, np.float64)])
                    for a, b in zip(data[lname], data[bname])]

        live = [np.asarray(a, dtype=np.float64) for a in data[live_name]]
        out = {cls.binning_index_name: np.asarray(data[cls.binning_index_name], np.int64)}
        out["zpointing"] = pairs("zpointing_l", "zpointing_b")
        out["xpointing"] = pairs("xpointing_l", "xpointing_b")
        for name in ("zpointing_averaged", "xpointing_averaged"):
            out[name] = list(np.column_stack([np.asarray(data[f"{name}_l"], np.float64),
                                              np.asarray(data[f"{name}_b"], np.float64)]))
        out["delta_time"] = live
        exp_name = "exposure" if "exposure" in data else "total_livetime"
        out["exposure"] = (np.asarray(data[exp_name], np.float64) if exp_name in data
                           else np.array([a.sum() for a in live]))
        out["num_pointings"] = (np.asarray(data["num_pointings"], np.int64)
                                if "num_pointings" in data else np.array([len(a) for a in live]))
        if "earth_zenith_l" in data and "earth_zenith_b" in data:
            out["earth_zenith"] = pairs("earth_zenith_l", "earth_zenith_b")
        if "altitude" in data:
            out["altitude"] = [np.asarray(a, dtype=np.float64) for a in data["altitude"]]
        return out


class SpacecraftAttitudeExposureTable(_AttitudeTable):
    """Exposure per spacecraft-attitude (ScAtt) bin, as a pandas DataFrame (cosipy's layout).

    Parameters
    ----------
    df : DataFrame or dict
        The columns (see the module documentation).
    nside : int
        HEALPix nside of the attitude pixels.
    scheme : {'ring', 'nested'}
    """

    binning_index_name = "scatt_binning_index"
    binning_method = "ScAtt"
    _scalar_columns = (("exposure", "D", "s"), ("num_pointings", "K", ""),
                       ("bkg_group", "K", ""))

    def __init__(self, df=None, nside=None, scheme="ring", **kwargs):
        super().__init__(df, **kwargs)
        self.nside = nside
        self.scheme = _scheme(scheme) if scheme is not None else None

    @classmethod
    def from_orientation(cls, orientation, nside: int, scheme: str = "ring", start=None,
                         stop=None, min_exposure: float | None = None,
                         min_num_pointings: int | None = None,
                         min_livetime: float | None = None) -> SpacecraftAttitudeExposureTable:
        """Group an attitude history into ScAtt bins.

        Parameters
        ----------
        orientation : SpacecraftFile or Orientation
        nside : int
            HEALPix nside of the z- and x-axis pixels defining a bin.
        scheme : {'ring', 'nested'}
        start, stop : astropy Time or float (Unix s), optional
            Use only this part of the history (both or neither; ends interpolated).
        min_exposure : float, optional
            Drop bins with less live time (s); ``min_livetime`` is the same (cosipy 0.4 name).
        min_num_pointings : int, optional
            Drop bins with fewer intervals. Bins are renumbered after dropping.

        Returns
        -------
        SpacecraftAttitudeExposureTable
        """
        scheme = _scheme(scheme)
        nside = int(nside)
        if nside < 1 or nside & (nside - 1):
            raise InvalidParameterError(f"nside must be a power of 2, found {nside}")
        o = as_orientation(orientation)
        if (start is None) != (stop is None):
            raise InvalidParameterError("give both start and stop, or neither")
        if start is not None:
            o = interval(o, to_unix(start), to_unix(stop))
        s = pair_midpoints(o)
        nest = scheme == "nested"
        npix = hp.nside2npix(nside)
        keys = vec2pix(nside, s.z, nest) * npix + vec2pix(nside, s.x, nest)
        codes, uniq = _factorize(keys, npix * npix)
        order, offsets = group_order(codes, len(uniq))
        cols = _bin_columns(s, order, offsets)
        df = {"scatt_binning_index": np.arange(len(uniq), dtype=np.int64),
              "healpix_index": [(int(k // npix), int(k % npix)) for k in uniq]}
        df.update({k: cols[k] for k in ("zpointing", "xpointing", "zpointing_averaged",
                                        "xpointing_averaged", "delta_time", "exposure",
                                        "num_pointings")})
        df["bkg_group"] = np.zeros(len(uniq), dtype=np.int64)
        df["earth_zenith"] = cols["earth_zenith"]
        df["altitude"] = cols["altitude"]
        table = cls(pd.DataFrame(df), nside=nside, scheme=scheme)
        if min_livetime is not None:
            min_exposure = min_livetime if min_exposure is None else max(min_exposure,
                                                                         min_livetime)
        if min_exposure is not None or min_num_pointings is not None:
            keep = np.ones(len(table), dtype=bool)
            if min_exposure is not None:
                keep &= table["exposure"].to_numpy() >= min_exposure
            if min_num_pointings is not None:
                keep &= table["num_pointings"].to_numpy() >= min_num_pointings
            table = table[keep].reset_index(drop=True)
            table["scatt_binning_index"] = np.arange(len(table), dtype=np.int64)
        logger.info("ScAtt table: %d bins (nside %d, %s) from %d intervals, %.1f s live",
                    len(table), nside, scheme, len(s), float(table["exposure"].sum()))
        return table

    analyze_orientation = from_orientation

    @classmethod
    def from_fits(cls, filename: str | os.PathLike) -> SpacecraftAttitudeExposureTable:
        """Read a table written by :meth:`save_as_fits` or by cosipy (0.3 or 0.4 layout).

        Raises
        ------
        FileFormatError
            Missing file, no ``EXPOSURETABLE`` HDU, or a missing column or header key.
        """
        data, header, path = cls._read_fits(filename)
        for key in ("NSIDE", "SCHEME"):
            if key not in header:
                raise FileFormatError(f"{path}: EXPOSURETABLE header has no {key!r}")
        for name in ("healpix_index_z_pointing", "healpix_index_x_pointing"):
            if name not in data:
                raise FileFormatError(f"{path}: EXPOSURETABLE has no column {name!r}")
        cols = cls._common_columns(data, path)
        df = {"scatt_binning_index": cols["scatt_binning_index"],
              "healpix_index": [(int(z), int(x)) for z, x in
                                zip(data["healpix_index_z_pointing"],
                                    data["healpix_index_x_pointing"])]}
        for name in ("zpointing", "xpointing", "zpointing_averaged", "xpointing_averaged",
                     "delta_time", "exposure", "num_pointings"):
            df[name] = cols[name]
        df["bkg_group"] = (np.asarray(data["bkg_group"], np.int64) if "bkg_group" in data
                           else np.zeros(len(df["exposure"]), dtype=np.int64))
        for name in ("earth_zenith", "altitude"):
            if name in cols:
                df[name] = cols[name]
        return cls(pd.DataFrame(df), nside=int(header["NSIDE"]), scheme=header["SCHEME"])

    def _extra_fits_columns(self) -> list:
        idx = np.array([tuple(p) for p in self["healpix_index"]], dtype=np.int64).reshape(-1, 2)
        return [fits.Column(name="healpix_index_z_pointing", format="K", array=idx[:, 0]),
                fits.Column(name="healpix_index_x_pointing", format="K", array=idx[:, 1])]

    def _write_header(self, header) -> None:
        header["NSIDE"] = int(self.nside)
        header["SCHEME"] = str(self.scheme)

    def get_binned_data(self, unbinned_event, psichi_binning: str = "local",
                        sparse: bool = False, unbinned_data=None,
                        tmin: float | None = None, tmax: float | None = None,
                        chunk_size: int | None = None, progress: bool = False,
                        orientation=None) -> Histogram:
        """Bin events per ScAtt bin of this table (cosipy's ``get_binned_data``).

        Each event goes to the bin whose (z, x) pixel pair is that of its own ``Zpointings``
        and ``Xpointings`` columns at this table's nside and scheme, as cosipy does
        (:mod:`comptonsky.binning.first_axis`); events whose pair is in no bin are counted out
        and reported. Files are streamed in chunks.

        Parameters
        ----------
        unbinned_event : UnBinnedData or BinnedData
            Binning parameters (``energy_bins``, ``phi_pix_size``, ``nside``, ``scheme``) and
            the events (``cosi_dataset``, else ``data_file``).
        psichi_binning : {"local", "galactic"}
            Frame of PsiChi; the detector-frame imaging needs ``"local"``.
        sparse : bool
            Sparse (COO) contents; dense by default, as cosipy.
        unbinned_data : path-like, sequence of path-like or mapping, optional
            Bin these events instead of those of ``unbinned_event``.
        tmin, tmax : float, optional
            Count only events with ``tmin <= TimeTags < tmax`` (s); cosipy applies no time cut.
        orientation : SpacecraftFile, Orientation or path, optional
            Assign bins by time instead of by pointing (for events without pointing columns):
            an event goes to the bin this table's rule gives the orientation interval holding
            it (:meth:`scatt_by_time`). ``tmin``/``tmax`` do not apply then.

        Returns
        -------
        histpy.Histogram
            Axes ScAtt (edges 0..N), Em (keV), Phi (deg), PsiChi.
        """
        from ..binning import ScAttAxis, bin_by_first_axis
        from ..io.events import DEFAULT_CHUNK_SIZE

        if orientation is not None:
            return bin_by_first_axis(unbinned_event, self.scatt_by_time(orientation),
                                     psichi_binning, sparse, unbinned_data,
                                     chunk_size or DEFAULT_CHUNK_SIZE, progress)
        time_range = None
        if tmin is not None or tmax is not None:
            time_range = (-np.inf if tmin is None else float(tmin),
                          np.inf if tmax is None else float(tmax))
        pairs = np.array([tuple(p) for p in self["healpix_index"]],
                         dtype=np.int64).reshape(-1, 2)
        axis = ScAttAxis(pairs, nside=int(self.nside), scheme=str(self.scheme or "ring"),
                         time_range=time_range)
        return bin_by_first_axis(unbinned_event, axis, psichi_binning, sparse, unbinned_data,
                                 chunk_size or DEFAULT_CHUNK_SIZE, progress)

    #: cosipy 0.3's name
    get_binned_data_scatt = get_binned_data

    def scatt_by_time(self, orientation):
        """The ScAtt bin of every interval of ``orientation`` under this table's rule (pixel pair
        of the interval's midpoint attitude; -1 for a pair not in the table), as a
        :class:`~comptonsky.binning.ScAttByTimeAxis` that bins events by time."""
        from ..binning import ScAttByTimeAxis
        from ..io.spacecraft import SpacecraftFile

        if isinstance(orientation, (str, os.PathLike)):
            orientation = SpacecraftFile.parse_from_file(orientation)
        o = as_orientation(orientation)
        s = pair_midpoints(o)
        nest = _scheme(self.scheme or "ring") == "nested"
        nside = int(self.nside)
        npix = hp.nside2npix(nside)
        keys = vec2pix(nside, s.z, nest) * npix + vec2pix(nside, s.x, nest)
        pairs = np.array([tuple(p) for p in self["healpix_index"]],
                         dtype=np.int64).reshape(-1, 2)
        table_keys = pairs[:, 0] * npix + pairs[:, 1]
        order = np.argsort(table_keys)
        codes = np.full(len(keys), -1, dtype=np.int64)
        if len(table_keys):
            i = np.minimum(np.searchsorted(table_keys[order], keys), len(order) - 1)
            hit = table_keys[order][i] == keys
            codes[hit] = order[i[hit]]
        return ScAttByTimeAxis(o.time[:-1], o.time[1:], codes, len(self))

    def calc_pointing_trajectory_map(self) -> Histogram:
        """Exposure (s) per (z pixel, x pixel): a sparse Histogram on axes 'z' and 'x'."""
        import sparse

        axes = Axes([HealpixAxis(nside=self.nside, scheme=self.scheme, coordsys="galactic",
                                 label=lab) for lab in ("z", "x")])
        npix = hp.nside2npix(self.nside)
        idx = np.array([tuple(p) for p in self["healpix_index"]], dtype=np.int64).reshape(-1, 2)
        coo = sparse.COO(idx.T, np.asarray(self["exposure"], dtype=np.float64),
                         shape=(npix, npix))
        return Histogram(axes, contents=coo, unit=u.s)


class TimeBinnedExposureTable(_AttitudeTable):
    """Exposure per time interval, with the attitude samples of each interval.

    Columns: ``time_binning_index``, ``tstart``, ``tstop`` (s), and ``zpointing``,
    ``xpointing``, ``zpointing_averaged``, ``xpointing_averaged``, ``delta_time``, ``exposure``,
    ``num_pointings``, ``earth_zenith``, ``altitude`` as in the ScAtt table. A sample is an
    interval between time stamps with the attitude at its start; intervals are cut at the bin
    edges (attitude interpolated there, live time scaled by the fraction kept).
    """

    binning_index_name = "time_binning_index"
    binning_method = "Time"
    _metadata: list = []
    _scalar_columns = (("tstart", "D", "s"), ("tstop", "D", "s"), ("exposure", "D", "s"),
                       ("num_pointings", "K", ""))

    @classmethod
    def from_orientation(cls, orientation, tstart_list, tstop_list) -> TimeBinnedExposureTable:
        """Build the table for the intervals [tstart_k, tstop_k) (sorted, disjoint).

        Parameters
        ----------
        orientation : SpacecraftFile or Orientation
        tstart_list, tstop_list : astropy Time, Quantity or float array (Unix s)
        """
        o = as_orientation(orientation)
        tstart = _seconds(tstart_list)
        tstop = _seconds(tstop_list)
        s = split_by_intervals(o, tstart, tstop)
        s = s.take(s.bin >= 0)
        order, offsets = group_order(s.bin, len(tstart))
        cols = _bin_columns(s, order, offsets)
        df = {"time_binning_index": np.arange(len(tstart), dtype=np.int64), "tstart": tstart,
              "tstop": tstop}
        df.update({k: cols[k] for k in ("zpointing", "xpointing", "zpointing_averaged",
                                        "xpointing_averaged", "delta_time", "exposure",
                                        "num_pointings", "earth_zenith", "altitude")})
        return cls(pd.DataFrame(df))

    @classmethod
    def from_fits(cls, filename: str | os.PathLike) -> TimeBinnedExposureTable:
        """Read a table written by :meth:`save_as_fits`."""
        data, header, path = cls._read_fits(filename)
        for name in ("tstart", "tstop"):
            if name not in data:
                raise FileFormatError(f"{path}: EXPOSURETABLE has no column {name!r}")
        cols = cls._common_columns(data, path)
        df = {"time_binning_index": cols["time_binning_index"],
              "tstart": np.asarray(data["tstart"], np.float64),
              "tstop": np.asarray(data["tstop"], np.float64)}
        df.update({k: v for k, v in cols.items() if k != "time_binning_index"})
        return cls(pd.DataFrame(df))

    def get_binned_data(self, unbinned_event, psichi_binning: str = "local",
                        sparse: bool = False, unbinned_data=None,
                        chunk_size: int | None = None, progress: bool = False) -> Histogram:
        """Bin events per time interval of this table (cosipy 0.4's ``get_binned_data``).

        An event at time t goes to the last interval with ``tstart <= t <= tstop``. The first
        axis is ``Time`` with the edges in seconds when the intervals are contiguous (the axis
        of :meth:`CoordsysConversionMatrix.from_exposure_table` for this table), else the
        interval numbers 0..N. Parameters as
        :meth:`SpacecraftAttitudeExposureTable.get_binned_data`.
        """
        from ..binning import IntervalAxis, bin_by_first_axis
        from ..io.events import DEFAULT_CHUNK_SIZE

        t0, t1 = self.time_edges()
        return bin_by_first_axis(unbinned_event, IntervalAxis(t0, t1), psichi_binning, sparse,
                                 unbinned_data, chunk_size or DEFAULT_CHUNK_SIZE, progress)

    def time_edges(self) -> tuple[np.ndarray, np.ndarray]:
        """(tstart, tstop) arrays (s)."""
        return np.asarray(self["tstart"], float), np.asarray(self["tstop"], float)


def _seconds(values) -> np.ndarray:
    from astropy.time import Time

    if isinstance(values, Time):
        return np.atleast_1d(np.asarray(values.unix, dtype=np.float64))
    if isinstance(values, u.Quantity):
        return np.atleast_1d(values.to_value(u.s)).astype(np.float64)
    return np.atleast_1d(np.asarray(values, dtype=np.float64))
