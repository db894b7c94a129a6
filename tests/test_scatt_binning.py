"""Binning per ScAtt bin or time interval: cosipy's histogram, an obvious loop, files, errors."""

from __future__ import annotations

import logging

import astropy.units as u
import healpy as hp
import numpy as np
import pandas as pd
import pytest

from comptonsky import (
    BinnedData,
    FullDetectorResponse,
    SpacecraftAttitudeExposureTable,
    SpacecraftFile,
    TimeBinnedExposureTable,
    UnBinnedData,
)
from comptonsky.binning import kernel as binning_mod
from comptonsky.cli import main as cli_main
from comptonsky.errors import FileFormatError, InvalidDataError, InvalidParameterError
from comptonsky.io.events import write_events
from comptonsky.io.histogram import open_histogram

from .conftest import reference_file

YAML = """\
time_bins: 10
tmin: 0.0
tmax: 100.0
energy_bins: [100., 300., 600.]
phi_pix_size: 30
nside: 2
scheme: '{scheme}'
"""


def parameters(tmp_path, scheme="ring") -> BinnedData:
    p = tmp_path / f"inputs_{scheme}.yaml"
    p.write_text(YAML.format(scheme=scheme))
    return BinnedData(p)


def random_events(n=4000, seed=0, nside_att=1, pixel_pairs=None):
    """Events whose pointings fall in a few attitude pixels, some NaN, some off the table."""
    rng = np.random.default_rng(seed)
    z = np.column_stack([rng.uniform(0, 2 * np.pi, n), np.arcsin(rng.uniform(-1, 1, n))])
    x = np.column_stack([rng.uniform(0, 2 * np.pi, n), np.arcsin(rng.uniform(-1, 1, n))])
    z[:5] = np.nan
    ev = {"TimeTags": np.sort(rng.uniform(0, 100, n)), "Energies": rng.uniform(50, 700, n),
          "Phi": rng.uniform(0, np.pi, n), "Chi local": rng.uniform(0, 2 * np.pi, n),
          "Psi local": np.arccos(rng.uniform(-1, 1, n)), "Zpointings": z, "Xpointings": x,
          "Chi galactic": rng.uniform(0, 360, n),
          "Psi galactic": np.degrees(np.arcsin(rng.uniform(-1, 1, n)))}
    return ev


def table_of(pairs, nside, scheme="ring") -> SpacecraftAttitudeExposureTable:
    n = len(pairs)
    df = {"scatt_binning_index": np.arange(n), "healpix_index": [tuple(p) for p in pairs],
          "zpointing": [np.zeros((1, 2))] * n, "xpointing": [np.zeros((1, 2))] * n,
          "zpointing_averaged": [np.zeros(2)] * n, "xpointing_averaged": [np.zeros(2)] * n,
          "delta_time": [np.ones(1)] * n, "exposure": np.ones(n), "num_pointings": np.ones(n),
          "bkg_group": np.zeros(n, dtype=int)}
    return SpacecraftAttitudeExposureTable(pd.DataFrame(df), nside=nside, scheme=scheme)


def slow_scatt_reference(ev, table, b: BinnedData, frame="local"):
    """cosipy's rule written as a loop: dict of pixel pairs, then numpy.histogramdd."""
    nest = table.scheme == "nested"
    bins = {tuple(p): k for k, p in enumerate(table["healpix_index"])}
    e_edges = np.asarray(b.energy_bins, float)
    phi_edges = np.linspace(0, 180, int(180 / b.phi_pix_size) + 1)
    npix = hp.nside2npix(b.nside)
    out = np.zeros((len(table), len(e_edges) - 1, len(phi_edges) - 1, npix))
    bnest = b.scheme == "nested"
    for i in range(len(ev["TimeTags"])):
        z, x = ev["Zpointings"][i], ev["Xpointings"][i]
        if not (np.isfinite(z).all() and np.isfinite(x).all()):
            continue
        zp = hp.ang2pix(table.nside, z[0] * 180 / np.pi, z[1] * 180 / np.pi, nest=nest,
                        lonlat=True)
        xp = hp.ang2pix(table.nside, x[0] * 180 / np.pi, x[1] * 180 / np.pi, nest=nest,
                        lonlat=True)
        k = bins.get((int(zp), int(xp)))
        e, phi = ev["Energies"][i], np.rad2deg(ev["Phi"][i])
        if k is None or not (e_edges[0] <= e < e_edges[-1]) or not phi < 180:
            continue
        ie = np.searchsorted(e_edges, e, side="right") - 1
        ip = np.searchsorted(phi_edges, phi, side="right") - 1
        if frame == "local":
            p = hp.ang2pix(b.nside, ev["Psi local"][i], ev["Chi local"][i], nest=bnest)
        else:
            p = hp.ang2pix(b.nside, ev["Chi galactic"][i], ev["Psi galactic"][i], nest=bnest,
                           lonlat=True)
        out[k, ie, ip, p] += 1
    return out


def test_reproduces_cosipy_scatt_histogram():
    """cosipy's own test: its exposure table of the 10 s orientation, its crab events with the
    pointing columns under their newer names, its binned histogram."""
    ori = SpacecraftFile.parse_from_file(reference_file("cosipy-test-data/20280301_first_10sec.ori"))
    table = SpacecraftAttitudeExposureTable.from_orientation(
        ori, nside=1, start=ori.get_time()[0], stop=ori.get_time()[-1], min_exposure=0,
        min_num_pointings=1)
    fdr = FullDetectorResponse.open(
        reference_file("cosipy-test-data/test_full_detector_response.h5"))
    analysis = BinnedData(reference_file("cosipy-test-data/inputs_crab.yaml"))
    analysis.cosi_dataset = analysis.get_dict_from_hdf5(
        reference_file("unbinned_data_MEGAlib_calc.hdf5"))
    analysis.energy_bins = fdr.axes['Em'].edges.to(u.keV).value
    analysis.nside = fdr.axes['PsiChi'].nside
    analysis.phi_pix_size = fdr.axes['Phi'].widths[0].to(u.deg).value
    analysis.time_bins = 10
    for axis in "XYZ":
        values = analysis.cosi_dataset.pop(f"{axis}pointings")
        analysis.cosi_dataset.pop(f"{axis}pointings (glon,glat)")
        analysis.cosi_dataset[f"{axis}pointings (glon,glat)"] = values
    binned = table.get_binned_data(analysis, psichi_binning='local', sparse=False)
    ref = open_histogram(reference_file("cosipy-test-data/test_event_histogram_localCDS_scatt.h5"))
    assert list(binned.axes.labels) == ["ScAtt", "Em", "Phi", "PsiChi"]
    for a, r in zip(binned.axes, ref.axes):
        np.testing.assert_array_equal(np.asarray(a.edges), np.asarray(r.edges))
    assert binned.axes["PsiChi"].coordsys.name == "spacecraftframe"
    np.testing.assert_array_equal(binned.contents, ref.contents)
    # the cosipy 0.3 name is the same method
    assert np.array_equal(table.get_binned_data_scatt(analysis).contents, binned.contents)


@pytest.mark.parametrize("scheme", ["ring", "nested"])
@pytest.mark.parametrize("frame", ["local", "galactic"])
def test_matches_slow_loop(tmp_path, scheme, frame):
    b = parameters(tmp_path, scheme)
    rng = np.random.default_rng(1)
    pairs = np.unique(rng.integers(0, 12, size=(40, 2)), axis=0)[:25]
    table = table_of(pairs, nside=1, scheme=scheme)
    ev = random_events()
    want = slow_scatt_reference(ev, table, b, frame)
    b.cosi_dataset = ev
    got = table.get_binned_data(b, psichi_binning=frame)
    np.testing.assert_array_equal(got.contents, want)
    assert got.axes["PsiChi"].scheme.lower().startswith(scheme[:4])
    assert 0 < want.sum() < len(ev["TimeTags"])  # some events are in no bin


def test_streamed_file_equals_memory_and_sparse_equals_dense(tmp_path, monkeypatch):
    b = parameters(tmp_path)
    table = table_of(np.array([[z, x] for z in range(12) for x in range(12)]), nside=1)
    ev = random_events(n=6000, seed=2)
    path = write_events(tmp_path / "ev.fits.gz", ev)
    b.cosi_dataset = ev
    mem = table.get_binned_data(b)
    streamed = table.get_binned_data(b, unbinned_data=str(path), chunk_size=700, sparse=True)
    np.testing.assert_array_equal(streamed.to_dense().contents, mem.contents)
    monkeypatch.setattr(binning_mod, "DENSE_LIMIT", 0)
    pairs_acc = table.get_binned_data(b, unbinned_data=str(path), chunk_size=500)
    np.testing.assert_array_equal(pairs_acc.contents, mem.contents)
    # every event with a finite pointing is in some bin of this complete table
    inside = (ev["Energies"] >= 100) & (ev["Energies"] < 600)
    assert mem.contents.sum() == inside[5:].sum()


def test_time_range_cut(tmp_path):
    b = parameters(tmp_path)
    table = table_of(np.array([[z, x] for z in range(12) for x in range(12)]), nside=1)
    ev = random_events(n=3000, seed=3)
    b.cosi_dataset = ev
    full = table.get_binned_data(b)
    keep = (ev["TimeTags"] >= 20) & (ev["TimeTags"] < 60)
    b.cosi_dataset = {k: v[keep] for k, v in ev.items()}
    want = table.get_binned_data(b)
    b.cosi_dataset = ev
    got = table.get_binned_data(b, tmin=20, tmax=60)
    np.testing.assert_array_equal(got.contents, want.contents)
    assert got.contents.sum() < full.contents.sum()


def test_time_intervals_follow_cosipy_rule(tmp_path):
    b = parameters(tmp_path)
    ev = random_events(n=2000, seed=4)
    ev["TimeTags"][:6] = [10.0, 20.0, 30.0, 50.0, 70.0, 5.0]   # on the interval ends
    tstart, tstop = np.array([10.0, 20.0, 50.0]), np.array([20.0, 40.0, 70.0])
    table = TimeBinnedExposureTable(pd.DataFrame({
        "time_binning_index": np.arange(3), "tstart": tstart, "tstop": tstop}))
    b.cosi_dataset = ev
    got = table.get_binned_data(b, psichi_binning="local")
    # the rule written out: the last interval with tstart <= t <= tstop
    k = np.full(ev["TimeTags"].size, -1)
    for i in range(3):
        k[(ev["TimeTags"] >= tstart[i]) & (ev["TimeTags"] <= tstop[i])] = i
    assert k[0] == 0 and k[1] == 1 and k[3] == 2 and k[4] == 2 and k[5] == -1
    per_bin = got.contents.sum(axis=(1, 2, 3))
    good = (ev["Energies"] >= 100) & (ev["Energies"] < 600)
    np.testing.assert_array_equal(per_bin, [np.sum(good & (k == i)) for i in range(3)])
    # intervals with a gap: the axis numbers them (cosipy's layout)
    np.testing.assert_array_equal(got.axes["Time"].edges, [0, 1, 2, 3])
    contiguous = TimeBinnedExposureTable(pd.DataFrame({
        "time_binning_index": np.arange(2), "tstart": [0.0, 50.0], "tstop": [50.0, 100.0]}))
    h = contiguous.get_binned_data(b)
    np.testing.assert_array_equal(h.axes["Time"].edges.to_value(u.s), [0, 50, 100])


def test_unbinned_data_reads_fits_with_cosipy_names(tmp_path):
    ev = random_events(n=300, seed=5)
    path = write_events(tmp_path / "ev.fits.gz", ev)
    d = UnBinnedData.get_dict_from_fits(None, str(path))
    np.testing.assert_array_equal(d["Zpointings (glon,glat)"], ev["Zpointings"])
    assert d["Xpointings (glon,glat)"] is d["Xpointings"]
    np.testing.assert_allclose(d["Energies"], ev["Energies"])
    h5 = write_events(tmp_path / "ev.hdf5", ev)
    d5 = BinnedData().get_dict_from_hdf5(str(h5))
    np.testing.assert_array_equal(d5["Zpointings (glon,glat)"], ev["Zpointings"])


def test_errors_name_the_problem(tmp_path, caplog):
    b = parameters(tmp_path)
    table = table_of(np.array([[0, 1]]), nside=1)
    with pytest.raises(InvalidParameterError, match="UnBinnedData or BinnedData"):
        table.get_binned_data("events.fits")
    with pytest.raises(InvalidParameterError, match="no events"):
        table.get_binned_data(b)
    ev = random_events(n=200, seed=6)
    ev["Zpointings"][:] = [[0.0, np.pi / 2], ] * 200  # every z pointing at the pole: pixel 0..3
    ev["Xpointings"][:] = [[np.pi, -np.pi / 2], ] * 200  # every x at the south pole
    b.cosi_dataset = ev
    with pytest.raises(InvalidDataError, match="none of the 200 events can be binned by ScAtt"):
        table.get_binned_data(b)
    no_pointing = {k: v for k, v in ev.items() if k not in ("Zpointings", "Xpointings")}
    path = write_events(tmp_path / "nopointing.fits", no_pointing)
    with pytest.raises(FileFormatError, match="Zpointings"):
        table.get_binned_data(b, unbinned_data=str(path))
    with pytest.raises(InvalidParameterError, match="appears in two bins"):
        table_of(np.array([[0, 1], [0, 1]]), nside=1).get_binned_data(b)
    with pytest.raises(InvalidParameterError, match="overlap"):
        TimeBinnedExposureTable(pd.DataFrame({"time_binning_index": [0, 1], "tstart": [0.0, 5.0],
                                              "tstop": [10.0, 20.0]})).get_binned_data(b)
    # events in no bin are reported
    ev = random_events(n=500, seed=7)
    b.cosi_dataset = ev
    with caplog.at_level(logging.WARNING):
        table_of(np.array([[z, x] for z in range(6) for x in range(12)]), nside=1
                 ).get_binned_data(b)
    assert "with a pointing in no ScAtt bin of the exposure table" in caplog.text
    assert "with non-finite pointings" in caplog.text


def test_cli_bin_scatt_and_time_bins(tmp_path, capsys):
    b = parameters(tmp_path)
    ev = random_events(n=3000, seed=8)
    events = write_events(tmp_path / "ev.fits.gz", ev)
    table = table_of(np.array([[z, x] for z in range(12) for x in range(12)]), nside=1)
    table_path = table.save_as_fits(tmp_path / "table.fits")
    yaml_path = tmp_path / "inputs_ring.yaml"
    out = tmp_path / "scatt.hdf5"
    assert cli_main(["bin", str(yaml_path), str(events), "--psichi", "local", "galactic",
                     "--scatt", str(table_path), "-o", str(out), str(tmp_path / "g.hdf5"),
                     "--no-progress"]) == 0
    assert "ScAtt axis" in capsys.readouterr().out
    b.cosi_dataset = ev
    want = table.get_binned_data(b, tmin=0.0, tmax=100.0)
    got = open_histogram(out)
    assert list(got.axes.labels) == ["ScAtt", "Em", "Phi", "PsiChi"]
    np.testing.assert_array_equal(got.to_dense().contents, want.contents)
    gal = open_histogram(tmp_path / "g.hdf5")
    np.testing.assert_array_equal(gal.to_dense().contents,
                                  table.get_binned_data(b, "galactic").contents)
    # time intervals, as edges and as START:STOP pairs
    t_out = tmp_path / "time.hdf5"
    assert cli_main(["bin", str(yaml_path), str(events), "--psichi", "local",
                     "--time-bins", "0", "40", "100", "-o", str(t_out), "--no-progress"]) == 0
    h = open_histogram(t_out)
    np.testing.assert_array_equal(h.axes["Time"].edges.to_value(u.s), [0, 40, 100])
    good = (ev["Energies"] >= 100) & (ev["Energies"] < 600)
    t = ev["TimeTags"]
    np.testing.assert_array_equal(h.to_dense().contents.sum(axis=(1, 2, 3)),
                                  [np.sum(good & (t < 40)), np.sum(good & (t >= 40))])
    assert cli_main(["bin", str(yaml_path), str(events), "--psichi", "local", "--overwrite",
                     "--time-bins", "0:10", "50:60", "-o", str(t_out), "--no-progress"]) == 0
    h = open_histogram(t_out)
    np.testing.assert_array_equal(h.to_dense().contents.sum(axis=(1, 2, 3)),
                                  [np.sum(good & (t <= 10)), np.sum(good & (t >= 50) & (t <= 60))])
    assert cli_main(["bin", str(yaml_path), str(events), "--psichi", "local", "--overwrite",
                     "--time-bins", "0", "x", "-o", str(t_out), "--no-progress"]) != 0
    assert "--time-bins: 'x' is not a number of seconds" in capsys.readouterr().err
    assert cli_main(["bin", str(yaml_path), str(events), "--psichi", "local", "--overwrite",
                     "--scatt", str(tmp_path / "missing.fits"), "-o", str(t_out),
                     "--no-progress"]) != 0
    assert "missing.fits: no such file" in capsys.readouterr().err


def test_assignment_by_time_agrees_with_pointing_rule(tmp_path):
    """Events whose pointing columns hold their interval's midpoint attitude fall in the same
    bins by either rule; by time, events outside the orientation are left out."""
    from comptonsky.attitude.samples import lonlat_deg, pair_midpoints

    from .test_exposure_table import random_orbit

    o = random_orbit(2000, seed=3)
    full = SpacecraftAttitudeExposureTable.from_orientation(o, nside=2)
    table = SpacecraftAttitudeExposureTable.from_orientation(
        o, nside=2, min_exposure=float(np.median(full["exposure"])))
    assert 0 < len(table) < len(full)
    s = pair_midpoints(o)
    rng = np.random.default_rng(9)
    n = 5000
    k = rng.integers(0, len(s), n)
    t = s.time[k] + rng.uniform(0, 1, n) * (o.time[k + 1] - o.time[k])
    ev = random_events(n=n, seed=9)
    ev["TimeTags"] = t
    ev["Zpointings"] = np.radians(lonlat_deg(s.z[k]))
    ev["Xpointings"] = np.radians(lonlat_deg(s.x[k]))
    b = parameters(tmp_path)
    b.cosi_dataset = ev
    by_pointing = table.get_binned_data(b)
    by_time = table.get_binned_data(b, orientation=o)
    np.testing.assert_array_equal(by_time.contents, by_pointing.contents)
    assert by_time.contents.sum() < ((ev["Energies"] >= 100) & (ev["Energies"] < 600)).sum()
    late = dict(ev, TimeTags=t + 1e6)   # after the last time stamp: in no bin
    b.cosi_dataset = late
    with pytest.raises(InvalidDataError, match="at a time in no ScAtt bin"):
        table.get_binned_data(b, orientation=o)
    # the command line: --scatt with --ori
    ori_path = tmp_path / "o.ori"
    from comptonsky.io.orientation import write_ori

    write_ori(ori_path, o)
    events = write_events(tmp_path / "ev.hdf5", {c: v for c, v in ev.items()
                                                 if c not in ("Zpointings", "Xpointings")})
    table.save_as_fits(tmp_path / "t.fits")
    out = tmp_path / "by_time.hdf5"
    assert cli_main(["bin", str(tmp_path / "inputs_ring.yaml"), str(events), "--psichi", "local",
                     "--scatt", str(tmp_path / "t.fits"), "--ori", str(ori_path), "-o", str(out),
                     "--no-progress"]) == 0
    np.testing.assert_array_equal(open_histogram(out).to_dense().contents, by_time.contents)
