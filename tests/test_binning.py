"""CDS binning: exact against numpy.histogramdd + healpy.ang2pix and the reference tool's files."""

from __future__ import annotations

import logging
from pathlib import Path

import healpy as hp
import numpy as np
import pytest
import sparse
from histpy import Histogram

from comptonsky.binning import (
    BinnedData,
    CDSBinning,
    bin_events,
    phi_bin_edges,
    read_binning_parameters,
    time_bin_edges,
)
from comptonsky.binning import kernel as binning_mod
from comptonsky.cli import main as cli_main
from comptonsky.errors import (
    FileFormatError,
    InvalidDataError,
    InvalidParameterError,
    UnknownChoiceError,
)
from comptonsky.io.events import write_events

from .conftest import reference_file as reference

TEST_YAML = """\
unbinned_output: 'hdf5'
time_bins: 10
tmin: 1835478000.0
tmax: 1835478010.0
energy_bins: [150., 220., 325., 480., 520., 765., 1120., 1650., 2350., 3450., 5000.]
phi_pix_size: 6
nside: 1
scheme: 'ring'
"""

T0 = 1000.0




@pytest.fixture
def test_yaml(tmp_path) -> Path:
    p = tmp_path / "inputs.yaml"
    p.write_text(TEST_YAML)
    return p


# --------------------------------------------------------------------------- the reference


def numpy_reference(ev, b: CDSBinning) -> np.ndarray:
    """Plain numpy.histogramdd + healpy.ang2pix, with every upper edge excluded."""
    t, e, ph = ev["TimeTags"], ev["Energies"], np.rad2deg(ev["Phi"])
    keep = (np.isfinite(t) & np.isfinite(e) & np.isfinite(ph)
            & (t < b.time_edges[-1]) & (e < b.energy_edges[-1]) & (ph < b.phi_edges[-1]))
    if b.psichi_binning == "galactic":
        lon, lat = ev["Chi galactic"], ev["Psi galactic"]
        keep &= (lat >= -90) & (lat <= 90) & np.isfinite(lon)
        pix = hp.ang2pix(b.nside, lon[keep], lat[keep], lonlat=True, nest=b.scheme == "nested")
    else:
        theta, phi = ev["Psi local"], ev["Chi local"]
        keep &= (theta >= 0) & (theta <= np.pi) & np.isfinite(phi)
        pix = hp.ang2pix(b.nside, theta[keep], phi[keep], nest=b.scheme == "nested")
    sample = np.column_stack([t[keep], e[keep], ph[keep], pix])
    counts, _ = np.histogramdd(sample, bins=[b.time_edges, b.energy_edges, b.phi_edges,
                                             np.arange(b.npix + 1)])
    return counts


def edge_case_events(b: CDSBinning, n: int = 20000, seed: int = 0) -> dict[str, np.ndarray]:
    """Random events over and beyond every range, plus events exactly on every edge, NaNs,
    the poles and the longitude seam."""
    rng = np.random.default_rng(seed)
    te, ee, pe = b.time_edges, b.energy_edges, b.phi_edges
    span_t, span_e = te[-1] - te[0], ee[-1] - ee[0]
    t = rng.uniform(te[0] - 0.1 * span_t, te[-1] + 0.1 * span_t, n)
    e = rng.uniform(ee[0] - 0.1 * span_e, ee[-1] + 0.1 * span_e, n)
    phi = rng.uniform(0, np.pi, n)
    # exact edges on each axis (others random, in range)
    k = max(te.size, ee.size, pe.size) * 4
    t_edge = np.resize(te, k)
    e_edge = np.resize(ee, k)
    phi_edge = np.resize(np.deg2rad(pe), k)
    t = np.concatenate([t, t_edge, rng.uniform(te[0], te[-1], 2 * k)])
    e = np.concatenate([e, rng.uniform(ee[0], ee[-1], k), e_edge, rng.uniform(ee[0], ee[-1], k)])
    phi = np.concatenate([phi, rng.uniform(0, np.pi, 2 * k), phi_edge])
    m = t.size
    psi = np.arccos(rng.uniform(-1, 1, m))
    chi = rng.uniform(0, 2 * np.pi, m)
    lon = rng.uniform(-180, 360, m)
    lat = np.degrees(np.arcsin(rng.uniform(-1, 1, m)))
    # specials: poles, seam, NaN, off-sphere directions
    special = np.arange(12)
    psi[special] = [0, np.pi, np.pi / 2, np.pi / 2, 0, np.pi, -0.1, 3.5, np.nan, 1, 1, 1]
    chi[special] = [0, 2 * np.pi, 0, 2 * np.pi, np.pi, 0, 1, 1, 1, np.nan, 1, 1]
    lon[special] = [0, 360, -180, 180, 0, 0, 1, 1, 1, np.nan, 1, 1]
    lat[special] = [90, -90, 0, 0, 0, 0, 95, -91, np.nan, 0, 0, 0]
    t[special[10]] = np.nan
    e[special[11]] = np.nan
    phi[m - 1] = np.nan
    ev = {"TimeTags": t, "Energies": e, "Phi": phi, "Psi local": psi, "Chi local": chi,
          "Chi galactic": lon, "Psi galactic": lat}
    return ev


def make_binning(frame="galactic", scheme="ring", nside=4, time_bins=25.0):
    return CDSBinning(time_edges=time_bin_edges(time_bins, T0, T0 + 100.0),
                      energy_edges=np.array([100.0, 200.0, 300.0, 509.0, 513.0, 800.0]),
                      phi_edges=phi_bin_edges(6), nside=nside, scheme=scheme,
                      psichi_binning=frame)


# --------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("frame", ["galactic", "local"])
@pytest.mark.parametrize("scheme, chunk_size", [("ring", 7777), ("nested", 1 << 14)])
def test_exact_against_histogramdd(frame, scheme, chunk_size):
    b = make_binning(frame, scheme)
    ev = edge_case_events(b)
    (h,) = bin_events(ev, [b], chunk_size=chunk_size, progress=False)
    expected = numpy_reference(ev, b)
    got = h.contents.todense()
    assert got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)
    assert expected.sum() > 10000


def test_edge_semantics_lower_included_upper_excluded():
    b = make_binning("local", time_bins=[T0, T0 + 10, T0 + 20])
    ev = {"TimeTags": np.array([T0, T0 + 10, T0 + 20, T0 + 5, T0 + 5, T0 + 5]),
          "Energies": np.array([100.0, 509.0, 300.0, 800.0, 513.0, 799.999]),
          "Phi": np.array([0.0, 0.5, 0.5, 0.5, 0.5, np.pi]),
          "Psi local": np.full(6, 1.0), "Chi local": np.full(6, 1.0)}
    (h,) = bin_events(ev, [b], progress=False)
    c = h.contents.todense().sum(axis=(2, 3))
    # t=T0 and E=100 (lower edges) counted; t=T0+20, E=800 (upper edges) and Phi=180 deg not
    expected = np.zeros((2, 5))
    expected[0, 0] = 1   # t = T0, E = 100 (Phi = 0, the lower Phi edge, included)
    expected[1, 3] = 1   # t = T0 + 10, E = 509 -> bin [509, 513)
    expected[0, 4] = 1   # E = 513 -> bin [513, 800)
    np.testing.assert_array_equal(c, expected)


def test_sparse_accumulation_matches_dense(monkeypatch):
    b = make_binning("galactic", nside=8, time_bins=10.0)
    ev = edge_case_events(b, n=30000, seed=3)
    (dense,) = bin_events(ev, [b], chunk_size=5000, progress=False)
    monkeypatch.setattr(binning_mod, "DENSE_LIMIT", 0)
    (sparse_h,) = bin_events(ev, [b], chunk_size=5000, progress=False)
    np.testing.assert_array_equal(sparse_h.contents.todense(), dense.contents.todense())


def test_off_sphere_directions_skipped_with_warning(caplog):
    b = make_binning("galactic")
    ev = edge_case_events(b, n=100)
    with caplog.at_level(logging.WARNING):
        bin_events(ev, [b], progress=False)
    assert "direction off the sphere were not binned" in caplog.text


# --------------------------------------------------------------------------- reference files


@pytest.mark.parametrize("frame, name", [("local", "test_event_histogram_localCDS.hdf5"),
                                         ("galactic", "test_event_histogram_galacticCDS.hdf5")])
def test_reproduces_reference_tool_histograms(test_yaml, frame, name):
    """The reference histograms were binned by the reference tool from
    unbinned_data_MEGAlib_calc.hdf5 with these parameters (its Galactic columns, in rad, were
    read as degrees — no unit is stored in that file — which puts every event in pixel 4)."""
    ref = Histogram.open(reference(name))
    bd = BinnedData(input_yaml=test_yaml)
    h = bd.get_binned_data(unbinned_data=reference("unbinned_data_MEGAlib_calc.hdf5"),
                           psichi_binning=frame, progress=False)
    assert h is bd.binned_data
    assert isinstance(h.contents, sparse.COO)
    assert list(h.axes.labels) == ["Time", "Em", "Phi", "PsiChi"]
    for a, r in zip(h.axes, ref.axes):
        np.testing.assert_array_equal(np.asarray(a.edges), np.asarray(r.edges))
        assert a.unit == r.unit and a.label == r.label
    assert h.axes["PsiChi"].coordsys.name == ref.axes["PsiChi"].coordsys.name
    assert h.axes["PsiChi"].scheme == ref.axes["PsiChi"].scheme
    np.testing.assert_array_equal(h.to_dense().contents, ref.contents.todense())


def test_tutorial_flow_dc2_binning(tmp_path):
    """Section 1 of the tutorial with the real DC2 parameter file on synthetic DC2-range data."""
    yaml_path = reference("inputs_511keV_DC2.yaml")
    pars = read_binning_parameters(yaml_path)
    rng = np.random.default_rng(5)
    files = []
    for i, n in enumerate((3000, 5000)):
        ev = {"TimeTags": rng.uniform(pars["tmin"], pars["tmax"], n),
              "Energies": rng.normal(511, 2, n), "Phi": rng.uniform(0, np.pi, n),
              "Chi galactic": rng.uniform(0, 360, n),
              "Psi galactic": np.degrees(np.arcsin(rng.uniform(-1, 1, n))),
              "Chi local": rng.uniform(0, 2 * np.pi, n),
              "Psi local": np.arccos(rng.uniform(-1, 1, n))}
        files.append(write_events(tmp_path / f"part{i}.fits.gz", ev))
    binned_signal = BinnedData(input_yaml=yaml_path)
    binned_signal.get_binned_data(unbinned_data=str(files[0]), psichi_binning="galactic",
                                  progress=False)
    binned_bkg = BinnedData(input_yaml=yaml_path)
    binned_bkg.get_binned_data(unbinned_data=str(files[1]), psichi_binning="galactic",
                               progress=False)
    signal = binned_signal.binned_data.to_dense()
    bkg = binned_bkg.binned_data.to_dense()
    event = signal + bkg
    assert event.contents.shape == (1, 1, 60, 3072)
    np.testing.assert_array_equal(bkg.axes["Time"].edges.value, [1835487300.0, 1843467255.0])
    event.write(tmp_path / "event.hdf5", overwrite=True)
    again = Histogram.open(tmp_path / "event.hdf5")
    np.testing.assert_array_equal(again.contents, event.contents)
    both = BinnedData(input_yaml=yaml_path).get_binned_data(
        unbinned_data=[str(f) for f in files], progress=False)
    np.testing.assert_array_equal(both.contents.todense(), event.contents)


# --------------------------------------------------------------------------- several inputs


def test_several_files_and_configurations_in_one_pass(tmp_path):
    b_gal = make_binning("galactic")
    b_loc = make_binning("local", scheme="nested", nside=2, time_bins=[T0, T0 + 50, T0 + 100])
    parts = [edge_case_events(b_gal, n=4000, seed=s) for s in (1, 2, 3)]
    # no NaN/off-sphere rows in files (those are covered above); keep the rest
    paths = [write_events(tmp_path / "a.fits.gz", parts[0]),
             write_events(tmp_path / "b.hdf5", parts[1])]
    h_gal, h_loc = bin_events([*paths, parts[2]], [b_gal, b_loc], chunk_size=3000,
                              progress=False)
    allev = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    np.testing.assert_array_equal(h_gal.contents.todense(), numpy_reference(allev, b_gal))
    np.testing.assert_array_equal(h_loc.contents.todense(), numpy_reference(allev, b_loc))
    assert h_loc.axes["PsiChi"].coordsys.name == "spacecraftframe"
    assert str(h_loc.axes["PsiChi"].scheme).upper() == "NESTED"


def test_event_range(tmp_path):
    b = make_binning("local")
    ev = edge_case_events(b, n=3000)
    path = write_events(tmp_path / "ev.fits", ev)
    (h,) = bin_events(path, [b], event_range=(100, 2100), chunk_size=999, progress=False)
    sub = {k: v[100:2100] for k, v in ev.items()}
    np.testing.assert_array_equal(h.contents.todense(), numpy_reference(sub, b))


# --------------------------------------------------------------------------- bad input


def test_output_written_only_after_success(tmp_path, test_yaml):
    ev = edge_case_events(make_binning(), n=2000)
    ev["TimeTags"] = np.linspace(1835478000.0, 1835478009.0, ev["TimeTags"].size)
    good = write_events(tmp_path / "good.fits.gz", ev)
    raw = bytearray(write_events(tmp_path / "tmp.fits.gz", edge_case_events(
        make_binning(), n=50000)).read_bytes())
    raw[len(raw) // 2: len(raw) // 2 + 64] = bytes(64)
    bad = tmp_path / "bad.fits.gz"
    bad.write_bytes(bytes(raw))
    bd = BinnedData(input_yaml=test_yaml)
    with pytest.raises(FileFormatError, match="bad.fits.gz: cannot decompress"):
        bd.get_binned_data([good, bad], output_name=tmp_path / "out", psichi_binning="local",
                           progress=False)
    assert not (tmp_path / "out.hdf5").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".part")]
    h = bd.get_binned_data(good, output_name=tmp_path / "out", psichi_binning="local",
                           progress=False)
    back = BinnedData().load_binned_data_from_hdf5(tmp_path / "out.hdf5")
    np.testing.assert_array_equal(back.contents.todense(), h.contents.todense())


def test_times_outside_range(tmp_path, test_yaml, caplog):
    ev = edge_case_events(make_binning(), n=500)  # times around T0, far before the yaml's tmin
    path = write_events(tmp_path / "early.hdf5", ev)
    bd = BinnedData(input_yaml=test_yaml)
    with pytest.raises(InvalidDataError, match=r"early.hdf5: all \d+ events are outside the "
                                               r"requested time range \[1835478000.0, "):
        bd.get_binned_data(path, progress=False)
    ev["TimeTags"][:100] = 1835478005.0
    path = write_events(tmp_path / "partly.hdf5", ev)
    with caplog.at_level(logging.WARNING):
        h = bd.get_binned_data(path, progress=False)
    assert "partly.hdf5" in caplog.text and "outside the requested time range" in caplog.text
    assert 0 < h.contents.sum() <= 100


def test_missing_column_and_wrong_unit(tmp_path, test_yaml):
    ev = edge_case_events(make_binning(), n=100)
    del ev["Psi galactic"]
    path = write_events(tmp_path / "nogal.fits", ev)
    bd = BinnedData(input_yaml=test_yaml)
    with pytest.raises(FileFormatError,
                       match=r"nogal.fits: missing column\(s\) \['Psi galactic'\]"):
        bd.get_binned_data(path, psichi_binning="galactic", progress=False)
    ev = edge_case_events(make_binning(), n=100)
    path = write_events(tmp_path / "badunit.hdf5", ev)
    import h5py

    with h5py.File(path, "r+") as f:
        f["Phi"].attrs["unit"] = "keV"
    with pytest.raises(FileFormatError, match=r"badunit.hdf5: column 'Phi' is stored in 'keV'"):
        bd.get_binned_data(path, psichi_binning="local", progress=False)
    with pytest.raises(FileFormatError, match="nothere.fits.gz: no such file"):
        bd.get_binned_data(tmp_path / "nothere.fits.gz", progress=False)


# --------------------------------------------------------------------------- parameters


def test_parameters(tmp_path, test_yaml):
    bd = BinnedData(input_yaml=test_yaml)
    assert bd.nside == 1 and bd.time_bins == 10 and bd.unbinned_output == "hdf5"
    b = bd.binning("local")
    assert b.shape == (1, 10, 30, 12)
    np.testing.assert_array_equal(time_bin_edges(3.0, 0.0, 10.0), np.linspace(0, 10, 4))
    np.testing.assert_array_equal(time_bin_edges([0, 1, 5]), [0.0, 1.0, 5.0])
    assert phi_bin_edges(3).size == 61 and phi_bin_edges(3)[-1] == 180.0
    bad = tmp_path / "bad.yaml"
    bad.write_text(TEST_YAML + "energy_bin: [1, 2]\n")
    with pytest.raises(UnknownChoiceError, match="'energy_bin'.*did you mean 'energy_bins'"):
        BinnedData(input_yaml=bad)
    with pytest.raises(InvalidParameterError, match="does not divide 180"):
        BinnedData(input_yaml=test_yaml, phi_pix_size=7).binning()
    with pytest.raises(InvalidParameterError, match="power of 2"):
        BinnedData(input_yaml=test_yaml, nside=3).binning()
    with pytest.raises(InvalidParameterError, match="increase strictly"):
        BinnedData(input_yaml=test_yaml, energy_bins=[5, 1]).binning()
    with pytest.raises(InvalidParameterError, match="needs tmin and tmax"):
        BinnedData(time_bins=10, energy_bins=[1, 2], phi_pix_size=6, nside=1).binning()
    with pytest.raises(UnknownChoiceError, match="psichi_binning"):
        bd.binning("galatic")
    with pytest.raises(UnknownChoiceError, match="scheme"):
        BinnedData(input_yaml=test_yaml, scheme="nest-ring").binning()
    with pytest.raises(FileFormatError, match="no such binning parameter file"):
        BinnedData(input_yaml=tmp_path / "none.yaml")


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")  # inside healpy's mollview
def test_info_and_plots(tmp_path, test_yaml):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bd = BinnedData(input_yaml=test_yaml)
    b = bd.binning("galactic")
    ev = edge_case_events(b, n=3000)
    ev["TimeTags"] = np.linspace(1835478000.0, 1835478009.0, ev["TimeTags"].size)
    bd.get_binned_data(ev, output_name=tmp_path / "h.hdf5", progress=False)
    info = BinnedData().get_binning_info(tmp_path / "h.hdf5")
    assert info["PsiChi"]["nside"] == 1 and info["PsiChi"]["coordsys"] == "galactic"
    assert info["Phi"]["nbins"] == 30 and info["Em"]["unit"] == "keV"
    assert info["total_counts"] == bd.binned_data.contents.sum()
    figs = bd.plot_binned_data(output_name=str(tmp_path / "plot"))
    assert sorted(figs) == ["Em", "Phi", "PsiChi", "Time"]
    for label in figs:
        assert (tmp_path / f"plot_{label}.png").stat().st_size > 1000
    ax = figs["Em"].axes[0]
    assert ax.get_xlabel() == "Em [keV]"
    plt.close("all")


def test_cli_bin(tmp_path, test_yaml, capsys):
    b = BinnedData(input_yaml=test_yaml)
    ev = edge_case_events(b.binning(), n=3000)
    ev["TimeTags"] = np.linspace(1835478000.0, 1835478009.0, ev["TimeTags"].size)
    f1 = write_events(tmp_path / "e1.fits.gz", {k: v[:1500] for k, v in ev.items()})
    f2 = write_events(tmp_path / "e2.hdf5", {k: v[1500:] for k, v in ev.items()})
    rc = cli_main(["bin", str(test_yaml), str(f1), str(f2), "--psichi", "galactic", "local",
                   "--output", str(tmp_path / "g.hdf5"), str(tmp_path / "l"), "--no-progress"])
    assert rc == 0
    assert "g.hdf5" in capsys.readouterr().out
    for frame, name in (("galactic", "g.hdf5"), ("local", "l.hdf5")):
        got = Histogram.open(tmp_path / name)
        np.testing.assert_array_equal(got.contents.todense(),
                                      numpy_reference(ev, b.binning(frame)))
    rc = cli_main(["bin", str(test_yaml), str(tmp_path / "missing.fits"), "-o",
                   str(tmp_path / "x.hdf5"), "--no-progress"])
    assert rc == 1
    assert "missing.fits: no such file" in capsys.readouterr().err
    assert not (tmp_path / "x.hdf5").exists()
    rc = cli_main(["bin", str(test_yaml), str(f1), "-o", str(tmp_path / "g.hdf5"),
                   "--no-progress"])
    assert rc == 1 and "exists" in capsys.readouterr().err


def _uniform_events(n, seed):
    rng = np.random.default_rng(seed)
    return {"TimeTags": rng.uniform(T0, T0 + 100, n), "Energies": rng.uniform(100, 800, n),
            "Phi": rng.uniform(0, np.pi, n), "Chi galactic": rng.uniform(0, 360, n),
            "Psi galactic": rng.uniform(-90, 90, n), "Chi local": rng.uniform(0, 6, n),
            "Psi local": rng.uniform(0, 3, n), "Distance": rng.uniform(0, 5, n),
            "Xpointings": rng.uniform(0, 1, (n, 2)), "Ypointings": rng.uniform(0, 1, (n, 2)),
            "Zpointings": rng.uniform(0, 1, (n, 2))}


def test_binning_memory_is_bounded(tmp_path):
    """Peak allocations while binning do not grow with the file: a few chunks at a time."""
    import tracemalloc

    b = make_binning("galactic")
    peaks = {}
    for n in (60_000, 240_000):
        path = write_events(tmp_path / f"ev{n}.fits.gz", _uniform_events(n, seed=n))
        bin_events(path, [b], progress=False, event_range=(0, 1000))  # compile outside tracing
        tracemalloc.start()
        try:
            (h,) = bin_events(path, [b], progress=False, chunk_size=4096)
            _, peaks[n] = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert h.contents.sum() == n
    inflated = 240_000 * 14 * 8  # 27 MB of rows
    assert peaks[240_000] < 1.25 * peaks[60_000] + 1e6, peaks
    assert peaks[240_000] < inflated / 2, peaks


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")  # inside healpy's mollview
def test_select_combine_and_plots_through_binned_data(tmp_path, test_yaml):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    b = make_binning("local")
    ev_a, ev_b = edge_case_events(b, n=500, seed=1), edge_case_events(b, n=700, seed=2)
    for ev in (ev_a, ev_b):
        ev["TimeTags"] = np.linspace(1835477990.0, 1835478020.0, ev["TimeTags"].size)
    pa = write_events(tmp_path / "a.hdf5", ev_a)
    pb = write_events(tmp_path / "b.fits", ev_b)
    bd = BinnedData(input_yaml=test_yaml)  # unbinned_output: hdf5
    out = bd.combine_unbinned_data([pa, pb], output_name=tmp_path / "combined")
    assert out == tmp_path / "combined.hdf5"
    sel = bd.select_data(unbinned_data=out, emin=300.0)  # tmin/tmax from the parameters
    both = {k: np.concatenate([ev_a[k], ev_b[k]]) for k in ev_a}
    t, e = both["TimeTags"], both["Energies"]
    keep = (t >= 1835478000.0) & (t < 1835478010.0) & (e >= 300.0)
    for k in both:
        np.testing.assert_array_equal(sel[k], both[k][keep])
    assert bd.cosi_dataset is sel
    h = bd.get_binned_data(psichi_binning="local", make_binning_plots=True, progress=False)
    np.testing.assert_array_equal(h.contents.todense(), numpy_reference(sel, bd.binning("local")))
    assert len(plt.get_fignums()) >= 4
    plt.close("all")


@pytest.mark.parametrize("edges", [np.linspace(0.1, 7.3, 73), np.arange(61) * 3.0,
                                   np.linspace(1835487300.0, 1843467255.0, 2218),
                                   np.array([150., 220., 325., 480., 520., 765., 5000.])])
def test_find_bin_equals_searchsorted(edges):
    """The arithmetic guess for equally spaced edges is corrected to the exact search result,
    also for values one ulp around every edge."""
    inv = binning_mod._uniform_inverse_width(edges)
    assert (inv > 0) == (edges.size > 7)
    rng = np.random.default_rng(0)
    x = np.concatenate([edges, np.nextafter(edges, -np.inf), np.nextafter(edges, np.inf),
                        rng.uniform(edges[0] - 1, edges[-1] + 1, 5000), [np.nan]])
    expected = np.searchsorted(edges, x, side="right") - 1
    expected[(x >= edges[-1]) | np.isnan(x)] = -1
    got = np.array([binning_mod._find_bin(edges, v, inv) for v in x])
    np.testing.assert_array_equal(got, expected)


def test_data_file_relative_to_parameter_file(tmp_path, monkeypatch):
    sub = tmp_path / "run"
    sub.mkdir()
    ev = edge_case_events(make_binning(), n=300)
    ev["TimeTags"] = np.linspace(1835478000.0, 1835478009.0, ev["TimeTags"].size)
    write_events(sub / "events.hdf5", ev)
    (sub / "inputs.yaml").write_text('data_file: "events.hdf5"\n' + TEST_YAML)
    monkeypatch.chdir(tmp_path)
    h = BinnedData(input_yaml="run/inputs.yaml").get_binned_data(psichi_binning="local",
                                                                  progress=False)
    ref = BinnedData(input_yaml=sub / "inputs.yaml").binning("local")
    np.testing.assert_array_equal(h.contents.todense(), numpy_reference(ev, ref))
