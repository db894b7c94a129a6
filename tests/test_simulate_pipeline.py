"""simulate_dataset and ``comptonsky simulate``: files, formats, reproducibility, caching."""

from __future__ import annotations

import json

import healpy as hp
import numpy as np
import pytest
import yaml
from histpy import Histogram

from comptonsky.cli import main
from comptonsky.errors import InvalidParameterError
from comptonsky.io.events import read_events
from comptonsky.io.orientation import read_ori
from comptonsky.simulate import simulate_dataset

pytestmark = pytest.mark.slow  # end-to-end

KW = dict(nside=4, phi_bin_deg=10.0, duration_s=4 * 3600.0, progress=False)
FILES = ["psr_gal_511.h5", "511_thin_disk_events.fits.gz", "albedo_events.fits.gz",
         "albedo_model.hdf5", "truth_511_thin_disk.hdf5", "orientation.ori", "inputs.yaml",
         "imagedeconvolution_parfile.yml", "simulation.json"]


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim")
    return out, simulate_dataset(out, seed=3, **KW)


def test_files_and_formats(sim):
    out, paths = sim
    for name in FILES:
        assert (out / name).exists(), name
    rsp = Histogram.open(paths["response"])
    assert list(rsp.axes.labels) == ["NuLambda", "Ei", "Em", "Phi", "PsiChi"]
    assert rsp.contents.shape == (192, 1, 1, 18, 192)
    assert rsp.unit == "cm2 s"
    np.testing.assert_allclose(rsp.axes["Ei"].edges.value, [509.0, 513.0])
    assert rsp.axes["PsiChi"].coordsys.name == "galactic"
    truth = Histogram.open(paths["truth"])
    assert list(truth.axes.labels) == ["lb", "Ei"]
    assert truth.unit == "cm-2 s-1 sr-1"
    lam = truth.contents.value[:, 0]
    assert lam.sum() * hp.nside2pixarea(4) == pytest.approx(2.83e-3, rel=1e-6)
    model = Histogram.open(paths["albedo_model"])
    assert list(model.axes.labels) == ["Time", "Em", "Phi", "PsiChi"]
    np.testing.assert_allclose(model.axes["Phi"].edges.value, rsp.axes["Phi"].edges.value)
    ori = read_ori(paths["orientation"])
    assert ori.total_livetime == pytest.approx(4 * 3600.0)
    inputs = yaml.safe_load(paths["inputs"].read_text())
    assert inputs["nside"] == 4 and inputs["phi_pix_size"] == 10
    assert inputs["energy_bins"] == [509.0, 513.0]
    assert inputs["tmax"] - inputs["tmin"] == pytest.approx(4 * 3600.0)
    assert inputs["time_bins"] == 4 * 3600
    par = yaml.safe_load(paths["parfile"].read_text())
    assert par["model_definition"]["property"]["nside"] == 4
    assert par["deconvolution"]["algorithm"] == "RL"
    assert "albedo" in par["deconvolution"]["parameter"][
        "background_normalization_optimization"]["range"]
    ev = read_events(paths["source_events"])
    assert ev["Xpointings"].shape[1] == 2 and len(ev["Energies"]) > 0
    # expected counts: response applied to the truth, as the deconvolution computes them
    mu = np.tensordot(lam * hp.nside2pixarea(4), rsp.contents.value, axes=(0, 0)).sum()
    n = np.sum((ev["Energies"] >= 509) & (ev["Energies"] < 513))
    assert abs(n - mu) < 5 * np.sqrt(mu)
    summary = json.loads(paths["manifest"].read_text())["summary"]
    assert summary["expected_source_counts"] == pytest.approx(mu, rel=1e-3)
    assert summary["source_events_in_window"] == n
    # the albedo is scaled to the DC2 background level: 0.185 counts/s in the window
    b = model.contents.sum()
    assert b == pytest.approx(0.185 * 4 * 3600.0, rel=1e-9)
    assert summary["expected_albedo_counts"] == pytest.approx(b, rel=1e-9)
    assert summary["albedo_scale_over_line_flux"] * summary["albedo_line_counts"] == \
        pytest.approx(b, rel=1e-9)
    assert abs(summary["albedo_events_in_window"] - b) < 5 * np.sqrt(b)


def test_reproducible_and_cached(sim, tmp_path):
    out, paths = sim
    again = simulate_dataset(tmp_path / "b", seed=3, **KW)
    for key, p in paths.items():
        assert p.read_bytes() == again[key].read_bytes(), key
    stamp = {k: p.stat().st_mtime_ns for k, p in again.items()}
    simulate_dataset(tmp_path / "b", seed=3, **KW)  # cached: nothing rewritten
    assert stamp == {k: p.stat().st_mtime_ns for k, p in again.items()}
    other = simulate_dataset(tmp_path / "b", seed=4, **KW)  # new seed: recomputed
    assert other["source_events"].read_bytes() != paths["source_events"].read_bytes()


def test_cli_hdf5_thick_disk(tmp_path, capsys):
    rc = main(["simulate", "--preset", "dc2-511-thick-disk", "--nside", "4", "--phi-bin", "20",
               "--duration", "3600", "--format", "hdf5", "--no-progress",
               "--output", str(tmp_path)])
    assert rc == 0
    assert (tmp_path / "511_thick_disk_events.hdf5").exists()
    assert (tmp_path / "truth_511_thick_disk.hdf5").exists()
    assert "gc_exposure_cm2_s" in capsys.readouterr().out
    assert main(["simulate", "--preset", "nope", "--output", str(tmp_path)]) == 1


def test_bad_parameters(tmp_path):
    with pytest.raises(InvalidParameterError, match="divide 180"):
        simulate_dataset(tmp_path, nside=4, phi_bin_deg=7.0)
    with pytest.raises(InvalidParameterError, match="power of 2"):
        simulate_dataset(tmp_path, nside=6)


def test_dc3_rocking_preset(tmp_path):
    paths = simulate_dataset(tmp_path, preset="dc3-511-thin-disk", nside=4, phi_bin_deg=20.0,
                             duration_s=2 * 3600.0, progress=False)
    ori = read_ori(paths["orientation"])
    tilt = np.degrees(np.arccos(np.clip(np.sum(ori.z_axis * ori.zenith, axis=1), -1, 1)))
    np.testing.assert_allclose(tilt, 22.0, atol=1e-4)
    assert ori.altitude[0] == 530.0
    model = Histogram.open(paths["albedo_model"])
    assert model.contents.sum() > 0


def test_background_rate_options(tmp_path):
    kw = dict(KW, nside=4, phi_bin_deg=20.0, duration_s=3600.0, seed=2)
    paths = simulate_dataset(tmp_path / "line", background_rate_hz="line", **kw)
    summary = json.loads(paths["manifest"].read_text())["summary"]
    b = Histogram.open(paths["albedo_model"]).contents.sum()
    # the physical albedo line flux alone: ~6e-4 counts/s through the bottom shield
    assert summary["albedo_flux_ph_cm2_s"] == pytest.approx(4.4e-4, rel=1e-9)
    assert b == pytest.approx(summary["albedo_line_counts"], rel=1e-9)
    assert 1e-4 < b / 3600.0 < 3e-3
    assert "albedo_scale_over_line_flux" not in summary
    paths = simulate_dataset(tmp_path / "rate", background_rate_hz=0.05, **kw)
    b = Histogram.open(paths["albedo_model"]).contents.sum()
    assert b == pytest.approx(0.05 * 3600.0, rel=1e-9)
    for bad in ("loud", -1.0, float("nan")):
        with pytest.raises(InvalidParameterError, match="background rate"):
            simulate_dataset(tmp_path / "bad", background_rate_hz=bad, **kw)
    with pytest.raises(InvalidParameterError, match="psichi_oversample"):
        simulate_dataset(tmp_path / "bad", psichi_oversample=5, **kw)
