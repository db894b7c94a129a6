"""Exposure tables: cosipy's tables and files, a slow reference grouping, live time, l = 0°."""

from __future__ import annotations

from pathlib import Path

import healpy as hp
import numpy as np
import pandas as pd
import pytest
from astropy.io import fits

from comptonsky import SpacecraftAttitudeExposureTable, SpacecraftFile, TimeBinnedExposureTable
from comptonsky.errors import FileFormatError, InvalidParameterError
from comptonsky.geometry import lonlat_to_vec
from comptonsky.io.orientation import Orientation

from .conftest import reference_file

REF = Path(__file__).parent / "data" / "cosipy_detector_reference.npz"
ORI10 = "cosipy-test-data/20280301_first_10sec.ori"
TABLE_FITS = "cosipy-test-data/exposure_table_test_nside1_ring.fits"


def angle(a_lb, b_lb):
    """Angular distance (rad) between (l, b) arrays in degrees."""
    a = lonlat_to_vec(np.asarray(a_lb)[..., 0], np.asarray(a_lb)[..., 1])
    b = lonlat_to_vec(np.asarray(b_lb)[..., 0], np.asarray(b_lb)[..., 1])
    return np.arccos(np.clip(np.sum(a * b, axis=-1), -1, 1))


def generated_ori(tmp_path: Path) -> SpacecraftFile:
    z = np.load(REF)
    path = tmp_path / "gen.ori"
    fmt = str(z["gen/ori_format"])
    lines = ["Type OrientationsGalactic"] + [fmt % tuple(r) for r in z["gen/ori_table"].tolist()]
    path.write_text("\n".join(lines + ["EN"]) + "\n")
    return SpacecraftFile.parse_from_file(path)


def random_orbit(n=3000, seed=0, saa=None, start_l=300.0):
    """Zenith-pointing great-circle motion crossing l = 0°; optional zero-live-time rows."""
    rng = np.random.default_rng(seed)
    t = 1.0e9 + np.cumsum(rng.uniform(0.5, 1.5, n))
    ph = np.radians(start_l) + np.radians(0.07) * np.arange(n)
    axis = np.array([0.05, -0.1, 1.0])  # near the Galactic pole: the phase is close to l
    axis /= np.linalg.norm(axis)
    e1 = np.array([1.0, 0, 0]) - axis[0] * axis
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(axis, e1)
    z = np.cos(ph)[:, None] * e1 + np.sin(ph)[:, None] * e2
    x = np.cross(z, axis)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    live = np.append(np.diff(t) * rng.uniform(0.8, 1.0, n - 1), 0.0)
    if saa is not None:
        live[saa] = 0.0
    return Orientation(t, x, z, np.full(n, 550.0), z.copy(), live)


def slow_table(o: Orientation, nside: int, nest=False):
    """Obvious loop: pair midpoints, pixel pair, dict of bins in order of appearance."""
    bins: dict = {}
    for i in range(len(o) - 1):
        zm = o.z_axis[i] + o.z_axis[i + 1]
        xm = o.x_axis[i] + o.x_axis[i + 1]
        key = (int(hp.vec2pix(nside, *zm, nest=nest)), int(hp.vec2pix(nside, *xm, nest=nest)))
        b = bins.setdefault(key, {"z": [], "x": [], "dt": []})
        b["z"].append(zm / np.linalg.norm(zm))
        b["x"].append(xm / np.linalg.norm(xm))
        b["dt"].append(o.livetime[i])
    return bins


def test_matches_cosipy_on_test_orientation():
    ori = SpacecraftFile.parse_from_file(reference_file(ORI10))
    t = ori.get_time()
    et = SpacecraftAttitudeExposureTable.from_orientation(ori, nside=1, start=t[0], stop=t[-1],
                                                          min_exposure=0, min_num_pointings=1)
    ref = SpacecraftAttitudeExposureTable.from_fits(reference_file(TABLE_FITS))
    assert list(ref.columns) == ["scatt_binning_index", "healpix_index", "zpointing",
                                 "xpointing", "zpointing_averaged", "xpointing_averaged",
                                 "delta_time", "exposure", "num_pointings", "bkg_group"]
    assert list(et.columns)[:10] == list(ref.columns)
    assert et.nside == ref.nside == 1 and et.scheme == ref.scheme == "ring"
    assert list(et["healpix_index"]) == list(ref["healpix_index"]) == [(2, 0)]
    np.testing.assert_allclose(et["exposure"], ref["exposure"], rtol=1e-9)
    np.testing.assert_array_equal(et["num_pointings"], ref["num_pointings"])
    np.testing.assert_allclose(et["delta_time"][0], ref["delta_time"][0], rtol=1e-9)
    for col in ("zpointing", "xpointing", "zpointing_averaged", "xpointing_averaged"):
        # cosipy 0.3 takes the mean of the end points' (l, b): ≤ 1e-7 rad from the unit-vector
        # midpoint here
        assert angle(et[col][0], ref[col][0]).max() < 1e-6
    assert et["scatt_binning_index"].dtype == np.int64 and et["exposure"].dtype == np.float64


@pytest.mark.parametrize("scheme", ["ring", "nested"])
def test_matches_cosipy_on_generated_orbit(tmp_path, scheme):
    z = np.load(REF)
    ori = generated_ori(tmp_path)
    et = SpacecraftAttitudeExposureTable.from_orientation(ori, nside=int(z["gen/nside_table"]),
                                                          scheme=scheme)
    p = f"gen_et_{scheme}"
    idx = np.array([tuple(q) for q in et["healpix_index"]])
    np.testing.assert_array_equal(idx, z[f"{p}/healpix_index"])
    np.testing.assert_array_equal(et["num_pointings"], z[f"{p}/num_pointings"])
    np.testing.assert_array_equal(et["scatt_binning_index"], z[f"{p}/scatt_binning_index"])
    np.testing.assert_allclose(et["exposure"], z[f"{p}/exposure"], rtol=1e-9)
    np.testing.assert_allclose(np.concatenate(list(et["delta_time"])), z[f"{p}/delta_time"],
                               rtol=1e-9)
    for col in ("zpointing", "xpointing"):
        assert angle(np.concatenate(list(et[col])), z[f"{p}/{col}"]).max() < 1e-6
    for col in ("zpointing_averaged", "xpointing_averaged"):
        assert angle(np.stack(et[col]), z[f"{p}/{col}"]).max() < 1e-6
    cut = SpacecraftAttitudeExposureTable.from_orientation(ori, nside=4, min_exposure=60.0,
                                                           min_num_pointings=1)
    np.testing.assert_array_equal(np.array([tuple(q) for q in cut["healpix_index"]]),
                                  z["gen_et_min60/healpix_index"])
    np.testing.assert_array_equal(cut["scatt_binning_index"], np.arange(len(cut)))
    assert cut.nside == 4 and type(cut) is SpacecraftAttitudeExposureTable


@pytest.mark.parametrize("nest", [False, True])
def test_vectorised_table_equals_slow_loop(nest):
    o = random_orbit(2500, seed=2, saa=slice(900, 1300))
    et = SpacecraftAttitudeExposureTable.from_orientation(o, nside=8,
                                                          scheme="nested" if nest else "ring")
    slow = slow_table(o, 8, nest)
    assert list(et["healpix_index"]) == list(slow)
    for k, b in enumerate(slow.values()):
        np.testing.assert_allclose(et["delta_time"][k], b["dt"], rtol=1e-12)
        assert et["num_pointings"][k] == len(b["dt"])
        np.testing.assert_allclose(et["exposure"][k], np.sum(b["dt"]), rtol=1e-12)
        w = np.asarray(b["dt"]) if np.sum(b["dt"]) > 0 else np.ones(len(b["dt"]))
        for col, vecs in (("zpointing", b["z"]), ("xpointing", b["x"])):
            got = lonlat_to_vec(et[col][k][:, 0], et[col][k][:, 1])
            np.testing.assert_allclose(got, vecs, atol=1e-12)
            m = (w[:, None] * np.asarray(vecs)).sum(0)
            m /= np.linalg.norm(m)
            avg = et[f"{col}_averaged"][k]
            np.testing.assert_allclose(lonlat_to_vec(avg[0], avg[1]), m, atol=1e-12)


def test_livetime_not_wall_clock_and_saa_counts_zero():
    o = random_orbit(2000, seed=4, saa=slice(500, 800))
    et = SpacecraftAttitudeExposureTable.from_orientation(o, nside=4)
    np.testing.assert_allclose(et["exposure"].sum(), o.livetime.sum(), rtol=1e-12)
    assert o.livetime.sum() < np.diff(o.time).sum()
    assert (np.concatenate(list(et["delta_time"])) == 0).sum() == 300  # the SAA intervals
    assert et["num_pointings"].sum() == len(o) - 1  # SAA intervals are kept, with zero weight
    trajectory = et.calc_pointing_trajectory_map()
    assert list(trajectory.axes.labels) == ["z", "x"]
    dense = trajectory.to_dense()
    np.testing.assert_allclose(dense.contents.sum().value, o.livetime.sum(), rtol=1e-12)
    zi, xi = et["healpix_index"][0]
    np.testing.assert_allclose(dense.contents[zi, xi].value, et["exposure"][0])


def test_average_across_l_zero():
    o = random_orbit(400, seed=5, start_l=355.0)
    et = SpacecraftAttitudeExposureTable.from_orientation(o, nside=1)
    for k in range(len(et)):
        v = lonlat_to_vec(et["zpointing"][k][:, 0], et["zpointing"][k][:, 1])
        w = et["delta_time"][k][:, None]
        m = (w * v).sum(0)
        avg = et["zpointing_averaged"][k]
        np.testing.assert_allclose(lonlat_to_vec(avg[0], avg[1]), m / np.linalg.norm(m),
                                   atol=1e-12)
    ls = np.concatenate(list(et["zpointing"]))[:, 0]
    assert ls.min() < 5 and ls.max() > 355  # the track does cross l = 0


def test_fits_round_trip_and_cosipy_layout(tmp_path):
    o = random_orbit(1500, seed=6)
    et = SpacecraftAttitudeExposureTable.from_orientation(o, nside=2, scheme="nested")
    path = et.save_as_fits(tmp_path / "t.fits")
    back = SpacecraftAttitudeExposureTable.from_fits(path)
    assert back == et and not (back != et)
    assert back.nside == 2 and back.scheme == "nested"
    with fits.open(path) as h:
        names = h["EXPOSURETABLE"].columns.names
        assert h["EXPOSURETABLE"].header["NSIDE"] == 2
    for name in ("scatt_binning_index", "exposure", "num_pointings", "bkg_group",
                 "healpix_index_z_pointing", "healpix_index_x_pointing", "delta_time",
                 "zpointing_l", "zpointing_b", "xpointing_l", "xpointing_b",
                 "zpointing_averaged_l", "xpointing_averaged_b", "earth_zenith_l", "altitude"):
        assert name in names
    with pytest.raises(FileExistsError):
        et.save_as_fits(path)
    other = et.copy()
    other.loc[0, "exposure"] = 0.5
    assert not (other == et)


def test_reads_cosipy_fits_and_04_layout(tmp_path):
    ref = SpacecraftAttitudeExposureTable.from_fits(reference_file(TABLE_FITS))
    assert "earth_zenith" not in ref.columns
    with fits.open(reference_file(TABLE_FITS)) as h:
        cols = [c for c in h[1].columns if c.name not in ("delta_time", "exposure", "bkg_group")]
        cols.append(fits.Column(name="livetime", format="PD()",
                                array=np.array([np.ones(10)] + [None], dtype=object)[:1]))
        cols.append(fits.Column(name="total_livetime", format="D", array=np.array([10.0])))
        hdu = fits.BinTableHDU.from_columns(cols, name="EXPOSURETABLE")
        hdu.header["NSIDE"] = 1
        hdu.header["SCHEME"] = "ring"
        fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(tmp_path / "v04.fits")
    t = SpacecraftAttitudeExposureTable.from_fits(tmp_path / "v04.fits")
    np.testing.assert_allclose(t["exposure"], [10.0])
    assert list(t["healpix_index"]) == [(2, 0)] and t["bkg_group"][0] == 0


def test_hostile_fits(tmp_path):
    with pytest.raises(FileFormatError, match="no such file"):
        SpacecraftAttitudeExposureTable.from_fits(tmp_path / "none.fits")
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(
        [fits.Column(name="a", format="K", array=np.arange(3))], name="OTHER")]).writeto(
        tmp_path / "o.fits")
    with pytest.raises(FileFormatError, match="no HDU 'EXPOSURETABLE'"):
        SpacecraftAttitudeExposureTable.from_fits(tmp_path / "o.fits")
    et = SpacecraftAttitudeExposureTable.from_orientation(random_orbit(300), nside=1)
    path = et.save_as_fits(tmp_path / "t.fits")
    with fits.open(path) as h:
        del h[1].header["NSIDE"]
        h.writeto(tmp_path / "nonside.fits")
    with pytest.raises(FileFormatError, match="no 'NSIDE'"):
        SpacecraftAttitudeExposureTable.from_fits(tmp_path / "nonside.fits")
    (tmp_path / "junk.fits").write_text("junk")
    with pytest.raises(FileFormatError, match="junk.fits"):
        SpacecraftAttitudeExposureTable.from_fits(tmp_path / "junk.fits")


def test_arguments():
    o = random_orbit(300)
    with pytest.raises(InvalidParameterError, match="both start and stop"):
        SpacecraftAttitudeExposureTable.from_orientation(o, nside=1, start=o.time[3])
    with pytest.raises(InvalidParameterError, match="scheme"):
        SpacecraftAttitudeExposureTable.from_orientation(o, nside=1, scheme="nest-ish")
    with pytest.raises(InvalidParameterError, match="power of 2"):
        SpacecraftAttitudeExposureTable.from_orientation(o, nside=3)
    part = SpacecraftAttitudeExposureTable.from_orientation(o, nside=2, start=o.time[10],
                                                            stop=o.time[200])
    assert part["num_pointings"].sum() == 190
    np.testing.assert_allclose(part["exposure"].sum(), o.livetime[10:200].sum())


def test_time_binned_table(tmp_path):
    o = random_orbit(1000, seed=8, saa=slice(100, 150))
    t = o.time
    starts = np.array([t[0], t[300] + 0.3, t[600]])
    stops = np.array([t[300] + 0.3, t[500], t[999]])
    tb = TimeBinnedExposureTable.from_orientation(o, starts, stops)
    assert list(tb["time_binning_index"]) == [0, 1, 2]
    frac = (t[301] - (t[300] + 0.3)) / (t[301] - t[300])
    want0 = o.livetime[:300].sum() + o.livetime[300] * (1 - frac)
    want1 = o.livetime[301:500].sum() + o.livetime[300] * frac
    np.testing.assert_allclose(tb["exposure"], [want0, want1, o.livetime[600:999].sum()],
                               rtol=1e-10)
    assert isinstance(tb, pd.DataFrame)
    back = TimeBinnedExposureTable.from_fits(tb.save_as_fits(tmp_path / "tb.fits"))
    assert back == tb
    with pytest.raises(InvalidParameterError, match="disjoint"):
        TimeBinnedExposureTable.from_orientation(o, [t[0], t[5]], [t[10], t[20]])
