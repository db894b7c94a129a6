"""What a run leaves behind: HEALPix FITS maps, results.fits headers, parameters.yml that
repeats the run, provenance in summary.json and FITS headers, the stopping reason, the report."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import healpy as hp
import numpy as np
import pytest
from astropy import units as u
from astropy.io import fits
from histpy import Axis, HealpixAxis, Histogram

from comptonsky.cli import main
from comptonsky.config import Parameters, load_yaml
from comptonsky.deconvolution.results import save_results
from comptonsky.errors import FileFormatError, InvalidDataError
from comptonsky.io.healpix_fits import write_healpix_fits
from comptonsky.io.histogram import open_histogram, write_histogram
from comptonsky.jobs import effective_parameters, run_files
from comptonsky.provenance import collect, file_identity, fits_cards

from .conftest import prepared_deconvolution, write_parfile

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def finished(small_problem, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fit")
    deconv = prepared_deconvolution(small_problem, write_parfile(tmp, iterations=4, accel=True))
    deconv.initialize()
    deconv.run_deconvolution(progress=False)
    return deconv


@pytest.fixture(scope="module")
def run_dir(small_problem, tmp_path_factory):
    """A `comptonsky deconvolve` run directory (files in, 3 iterations) and its inputs."""
    tmp = tmp_path_factory.mktemp("run")
    inputs = {"event": write_histogram(small_problem.event, tmp / "event.h5"),
              "bkg": write_histogram(small_problem.background, tmp / "bkg.h5"),
              "rsp": write_histogram(small_problem.response, tmp / "rsp.h5"),
              "parfile": write_parfile(tmp, iterations=10)}
    args = ["--event", str(inputs["event"]), "--background", f"albedo={inputs['bkg']}",
            "--response", str(inputs["rsp"]), "--no-progress"]
    status = main(["deconvolve", str(inputs["parfile"]), *args, "--output", str(tmp / "out"),
                   "--override", "deconvolution:parameter:iteration_max = 3",
                   "--override", "deconvolution:parameter:acceleration:activate = True",
                   "--dtype", "float32"])
    assert status == 0
    return tmp / "out", args


# --- HEALPix FITS -----------------------------------------------------------------------------
def test_healpix_fits_maps_read_back_with_healpy(finished, tmp_path):
    files = save_results(finished.results, tmp_path, healpix_fits=True,
                         parameters=finished.parameter)
    assert {p.name for p in files} >= {"model_itr4.fits", "delta_model_itr4.fits",
                                       "processed_delta_model_itr4.fits"}
    for key in ("model", "delta_model"):
        hist = open_histogram(tmp_path / f"{key}_itr4.hdf5")
        values, header = hp.read_map(tmp_path / f"{key}_itr4.fits", field=0, h=True,
                                     dtype=np.float64)
        np.testing.assert_array_equal(values, hist.contents.value[:, 0])
        header = dict(header)
        assert header["COORDSYS"] == "G" and header["PIXTYPE"] == "HEALPIX"
        assert header["ORDERING"] == "RING" and header["NSIDE"] == 4
        assert header["INDXSCHM"] == "IMPLICIT" and header["LASTPIX"] == 191
        assert header["BUNIT"] == "cm-2 s-1 sr-1" and header["TUNIT1"] == "cm-2 s-1 sr-1"
        assert (header["E_MIN1"], header["E_MAX1"]) == (509.0, 513.0)
    with fits.open(tmp_path / "model_itr4.fits") as hdul:
        hdul.verify("exception")
        assert hdul["SKYMAP"].header["ALGORITH"] == "RL"


def test_healpix_fits_nested_bands_and_wrong_axes(tmp_path):
    lb = HealpixAxis(nside=2, scheme="nested", coordsys="galactic", label="lb")
    energy = Axis([100.0, 200.0, 500.0] * u.keV, label="Ei")
    values = np.random.default_rng(1).random((48, 2))
    image = Histogram([lb, energy], contents=values, unit="cm-2 s-1 sr-1")
    path = write_healpix_fits(image, tmp_path / "m.fits", [("TESTKEY", 7, "a card")])
    for k in range(2):
        np.testing.assert_array_equal(hp.read_map(path, field=k, nest=True, dtype=np.float64),
                                      values[:, k])
    header = fits.getheader(path, 1)
    assert header["ORDERING"] == "NESTED" and header["TESTKEY"] == 7
    assert (header["E_MIN2"], header["E_MAX2"]) == (200.0, 500.0)
    with pytest.raises(InvalidDataError, match="HEALPix, Ei"):
        write_healpix_fits(Histogram([energy], contents=[1.0, 2.0]), tmp_path / "x.fits")
    local = Histogram([HealpixAxis(nside=1, coordsys="spacecraftframe", label="lb"), energy],
                      contents=np.ones((12, 2)))
    with pytest.raises(InvalidDataError, match="spacecraftframe"):
        write_healpix_fits(local, tmp_path / "y.fits")


def test_results_fits_has_units_and_settings(finished, tmp_path):
    save_results(finished.results, tmp_path, parameters=finished.parameter,
                 cards=[("STOPREAS", "iteration_max reached", "")])
    with fits.open(tmp_path / "results.fits") as hdul:
        primary = hdul[0].header
        assert primary["ALGORITH"] == "RL" and primary["NITER"] == 4
        assert primary["ACCELERATION ALPHA_MAX"] == 10.0
        assert primary["ITERATION_MAX"] == 4
        assert primary["STOPREAS"] == "iteration_max reached"
        assert "iteration_max: 4" in str(primary["COMMENT"])
        table = hdul["ITERATIONS"]
        units = {table.columns[k].name: table.columns[k].unit for k in range(len(table.columns))}
        assert u.Unit(units["flux_E0"]) == u.Unit("cm-2 s-1")
        fluxes = table.data["flux_E0"]
    model = finished.results[-1]["model"]
    expected = model.contents.value[:, 0].sum() * hp.nside2pixarea(4)
    assert fluxes[-1] == pytest.approx(expected)


# --- provenance -------------------------------------------------------------------------------
def test_file_identity_full_and_partial(tmp_path):
    path = tmp_path / "f.bin"
    data = np.random.default_rng(0).bytes(3 << 20)
    path.write_bytes(data)
    import hashlib

    full = file_identity(path)
    assert full["sha256"] == hashlib.sha256(data).hexdigest()
    assert full["bytes"] == len(data) and "whole" in full["method"]
    partial = file_identity(path, full_limit=1 << 20)
    mib = 1 << 20
    assert partial["sha256"] == hashlib.sha256(data[:mib] + data[-mib:]).hexdigest()
    assert "first and last MiB" in partial["method"] and partial["seconds"] >= 0


def test_collect_and_fits_cards(tmp_path):
    path = tmp_path / "p.yml"
    path.write_text("a: 1\n")
    prov = collect({"parameter file": path, "event": None})
    assert prov["inputs"]["event"] == "in memory"
    for name in ("comptonsky", "numpy", "scipy", "astropy", "healpy", "histpy", "numba",
                 "h5py"):
        assert prov["versions"][name]
    header = fits.Header()
    for key, value, comment in fits_cards(prov):
        header[key] = (value, comment)
    assert header["INROLE1"] == "parameter file" and header["INFILE1"] == "p.yml"
    assert len(header["INSHA1"]) == 64 and header["INHASH1"] == "FULL"
    assert header["V_NUMPY"] == np.__version__


def test_effective_parameters_read_back_the_same(tmp_path):
    params = Parameters.from_file(write_parfile(tmp_path, accel=True))
    params.override("deconvolution:parameter:acceleration:accel_factor_max = 2.5")
    eff = effective_parameters(params, {"dtype": "float32", "storage": None,
                                        "memory_budget": "1 GiB"})
    assert eff["response:dtype"] == "float32" and "storage" not in eff["response"]
    again = Parameters(load_yaml(eff.dump()))
    assert again.to_dict() == eff.to_dict()
    assert again["deconvolution:parameter:acceleration:alpha_max"] == 2.5


# --- a run directory --------------------------------------------------------------------------
@pytest.mark.slow  # end-to-end
def test_run_directory_records_how_it_was_made(run_dir):
    out, _ = run_dir
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopping"]["reason"] == "iteration_max reached"
    prov = summary["provenance"]
    assert set(prov["inputs"]) == {"parameter file", "event", "background albedo", "response"}
    for item in prov["inputs"].values():
        assert len(item["sha256"]) == 64 and item["bytes"] > 0
    assert prov["versions"]["histpy"] and prov["host"]["hostname"]
    assert summary["response"]["options"] == {"dtype": "float32"}
    params = Parameters.from_file(out / "parameters.yml")
    assert params["deconvolution:parameter:iteration_max"] == 3
    assert params["deconvolution:parameter:acceleration:activate"] is True
    assert params["response:dtype"] == "float32"
    header = fits.getheader(out / "model_itr3.fits", 1)
    assert header["STOPREAS"] == "iteration_max reached" and header["CREATOR"].startswith(
        "comptonsky")
    assert header["V_HEALPY"] == prov["versions"]["healpy"]
    assert header["RESPONSE DTYPE"] == "float32"
    shas = {header[f"INROLE{n}"]: header[f"INSHA{n}"] for n in range(1, 5)}
    assert shas["response"] == prov["inputs"]["response"]["sha256"]
    assert (out / "report.html").exists()


@pytest.mark.slow  # end-to-end
def test_effective_parameter_file_repeats_the_run(run_dir, tmp_path):
    out, args = run_dir
    again = tmp_path / "again"
    assert main(["deconvolve", str(out / "parameters.yml"), *args, "--output", str(again),
                 "--no-plots", "--no-report"]) == 0
    for key in ("model", "delta_model"):
        np.testing.assert_array_equal(open_histogram(again / f"{key}_itr3.hdf5").contents,
                                      open_histogram(out / f"{key}_itr3.hdf5").contents)
    first = json.loads((out / "summary.json").read_text())
    second = json.loads((again / "summary.json").read_text())
    assert second["log_likelihood"] == first["log_likelihood"]
    assert second["response"]["dtype"] == "float32"


def test_stopping_reasons_threshold_and_interrupted(small_problem, tmp_path, monkeypatch):
    from comptonsky.deconvolution.algorithms.base import DeconvolutionAlgorithm

    parfile = write_parfile(tmp_path, iterations=50, threshold=1e30)
    summary = run_files(parfile, small_problem.event, {"albedo": small_problem.background},
                        small_problem.response, tmp_path / "t", progress=False, plots=False,
                        report=False).summary
    assert summary["stopping"]["reason"] == "threshold" and summary["iterations"] == 2
    assert summary["provenance"]["inputs"]["response"] == "in memory"

    iterate = DeconvolutionAlgorithm.iterate

    def interrupt_at_third(self, n=1):
        if self.state is not None and self.state.iteration >= 2:
            raise KeyboardInterrupt
        return iterate(self, n)

    monkeypatch.setattr(DeconvolutionAlgorithm, "iterate", interrupt_at_third)
    parfile = write_parfile(tmp_path, iterations=10)
    with pytest.raises(KeyboardInterrupt):
        run_files(parfile, small_problem.event, {"albedo": small_problem.background},
                  small_problem.response, tmp_path / "i", progress=False, plots=False,
                  report=False)
    summary = json.loads((tmp_path / "i" / "summary.json").read_text())
    assert summary["stopping"]["reason"] == "interrupted" and summary["iterations"] == 2
    assert (tmp_path / "i" / "model_itr2.fits").exists()
    assert any("interrupted" in w for w in summary["warnings"])


# --- report -----------------------------------------------------------------------------------
def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no chromium on PATH (apt-get install chromium) to open the report in")


#: Appended to a copy of the page: on load, the natural width of every image into the DOM.
_IMAGE_CHECK = ("<script>window.addEventListener('load',function(){var r=[];"
                "for(const i of document.images){r.push(i.complete?i.naturalWidth:0)}"
                "var d=document.createElement('pre');d.id='imgcheck';"
                "d.textContent=JSON.stringify(r);document.body.appendChild(d);});</script>")


@pytest.mark.slow  # end-to-end, a browser
def test_report_opens_in_a_headless_browser(run_dir, small_problem, tmp_path):
    browser = _chromium()
    out, _ = run_dir
    axes = open_histogram(out / "model_itr3.hdf5").axes
    truth = write_histogram(Histogram(axes, contents=small_problem.truth, unit="cm-2 s-1 sr-1"),
                            tmp_path / "truth.h5")
    assert main(["report", str(out), "--truth", str(truth), "--output",
                 str(tmp_path / "r.html")]) == 0
    page = (tmp_path / "r.html").read_text()
    assert "src=\"http" not in page and "href=\"http" not in page  # self-contained
    for text in ("Convergence", "Region fluxes", "iteration_max: 3", "sha256", "histpy",
                 "iteration_max reached", "Warnings", "truth"):
        assert text in page, text
    n_images = page.count("<img ")
    assert n_images >= 4
    checked = tmp_path / "checked.html"
    checked.write_text(page.replace("</body>", _IMAGE_CHECK + "</body>"))
    proc = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom",
         checked.as_uri()], capture_output=True, text=True, timeout=120)
    found = re.search(r'<pre id="imgcheck">([^<]*)</pre>', proc.stdout)
    assert found, proc.stderr[-2000:]
    widths = json.loads(found.group(1))
    assert len(widths) == n_images and all(w > 100 for w in widths), widths


def test_report_needs_a_run_directory(tmp_path):
    with pytest.raises(FileFormatError, match="summary.json"):
        from comptonsky.report import write_report

        write_report(tmp_path)


# --- the command line -------------------------------------------------------------------------
HEAVY = ("numba", "healpy", "histpy", "matplotlib")


@pytest.mark.parametrize("command", [[], ["deconvolve"], ["simulate"], ["uncertainty"],
                                     ["report"], ["bin"], ["plot"], ["demo"]])
def test_help_imports_no_numerical_stack(command):
    code = ("import sys\nfrom comptonsky.cli import main\ntry:\n    main(sys.argv[1:])\n"
            "except SystemExit:\n    pass\n"
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-c", code, *command, "--help"], capture_output=True,
                          text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[-1] == "[]", lines[-1]
    assert "usage: comptonsky" in proc.stdout


def test_importtime_of_help_lists_no_numerical_stack():
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "comptonsky", "--help"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines()
                if line.startswith("import time:")}
    assert not {m for m in imported if m.split(".")[0] in HEAVY}


def test_version(capsys):
    from comptonsky import __version__

    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"comptonsky {__version__}"


@pytest.mark.slow  # end-to-end
def test_uncertainty_run_directory(run_dir, tmp_path):
    _, args = run_dir
    parfile = write_parfile(tmp_path, iterations=3)
    assert main(["uncertainty", str(parfile), *args, "--output", str(tmp_path / "u"),
                 "--samples", "20", "--workers", "1"]) == 0
    out = tmp_path / "u"
    header = fits.getheader(out / "std.fits", 1)
    assert header["NSAMPLES"] == 20 and header["MAPKEY"] == "std" and header["INSHA1"]
    assert header["BOOTSTRT"] == "initial" and header["BOOTITER"] == 3
    for name in ("std", "significance"):
        contents = open_histogram(out / f"{name}.hdf5").contents[:, 0]
        np.testing.assert_array_equal(hp.read_map(out / f"{name}.fits", dtype=np.float64),
                                      getattr(contents, "value", contents))
        assert (out / f"{name}_E0.png").stat().st_size > 1000
    summary = json.loads((out / "summary.json").read_text())
    assert summary["uncertainty"]["n_samples"] == 20 and (out / "parameters.yml").exists()
    assert str(out / "std_E0.png") in summary["files"]
    page = (out / "report.html").read_text()
    assert "bootstrap standard deviation" in page and "No error bars" not in page
    assert "bias (replicate mean − flux)" in page and "68 % interval" in page
    assert "±1σ from the bootstrap replicates&#x27; profiles" in page


@pytest.mark.slow  # end-to-end
def test_demo_runs_the_parameter_file_it_writes(tmp_path, capsys):
    from comptonsky.demo import DEMO_PARFILE, run_demo

    out = tmp_path / "demo"
    summary = run_demo(out, nside=4, phi_bin_deg=30.0, iterations=3, duration_s=2e5,
                       progress=False)
    written = Parameters.from_file(out / DEMO_PARFILE)
    assert written["deconvolution:parameter:iteration_max"] == 3
    assert written["deconvolution:parameter:acceleration:alpha_max"] == 2.0
    assert written["deconvolution:parameter:response_weighting:activate"] is False
    assert Parameters.from_file(out / "results" / "parameters.yml").to_dict() == \
        written.to_dict()
    run = json.loads((out / "results" / "summary.json").read_text())
    assert run["provenance"]["inputs"]["parameter file"]["path"] == str(
        (out / DEMO_PARFILE).resolve())
    assert run["iterations"] == summary["iterations"] == 3
    page = (out / "results" / "report.html").read_text()
    assert "truth" in page and "model − truth" in page
    err = capsys.readouterr().err
    assert "demo: simulation: written" in err and "demo: binning" in err
    run_demo(out, nside=4, phi_bin_deg=30.0, iterations=3, duration_s=2e5, progress=False)
    err = capsys.readouterr().err
    assert "found in the cache" in err
    assert "from the cache" in err or "from the file itself" in err  # no conversion again


def test_osem_subsets_are_named_n_subsets_not_an_acceleration_factor(small_problem, tmp_path):
    inputs = {k: write_histogram(h, tmp_path / f"{k}.h5") for k, h in
              (("event", small_problem.event), ("bkg", small_problem.background),
               ("rsp", small_problem.response))}
    job = run_files(write_parfile(tmp_path, algorithm="OSEM", iterations=12, accel=True,
                                  method="line_search"),
                    inputs["event"], {"albedo": inputs["bkg"]}, inputs["rsp"], tmp_path / "o",
                    overrides=["deconvolution:parameter:n_subsets = 2"], progress=False,
                    report=False)
    results = job.deconvolution.results
    subsets = [r["n_subsets"] for r in results]
    assert subsets[0] == 2 and subsets[-1] == 1 and subsets == sorted(subsets, reverse=True)
    # subset cycles make no accelerated step; α differs from 1 only once the accelerator runs
    assert all(r["accel_factor"] == 1.0 for r in results if r["n_subsets"] > 1)
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["n_subsets"] == 1 and summary["accel_factor"] == results[-1]["accel_factor"]
    from astropy.table import Table

    table = Table.read(tmp_path / "o" / "results.fits", hdu="ITERATIONS")
    assert list(table["n_subsets"]) == subsets
    np.testing.assert_array_equal(table["accel_factor"], [r["accel_factor"] for r in results])
    from comptonsky.deconvolution.results import read_results_table

    assert [r["n_subsets"] for r in read_results_table(tmp_path / "o" / "results.fits")] == \
        subsets
    rl = run_files(write_parfile(tmp_path, iterations=2, accel=True), inputs["event"],
                   {"albedo": inputs["bkg"]}, inputs["rsp"], tmp_path / "r", progress=False,
                   plots=False, report=False)
    assert "n_subsets" not in rl.summary and "n_subsets" not in rl.deconvolution.results[-1]


@pytest.mark.slow  # end-to-end report with comparison figures (~9 s)
def test_report_shows_profiles_and_bootstrap_bias(run_dir, small_problem, tmp_path):
    out, _ = run_dir
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    from comptonsky.deconvolution.uncertainty import summarize, write_uncertainty
    from comptonsky.report import write_report

    model = open_histogram(copy / "model_itr3.hdf5")
    values = np.asarray(model.contents.value)
    rng = np.random.default_rng(0)
    samples = values[None] * (1.0 + 0.05 * rng.standard_normal((20,) + values.shape))
    result = summarize(model, samples * 1.5, {})  # a bias of 50 %: warned
    write_uncertainty(result, copy)
    truth = write_histogram(Histogram(model.axes, contents=small_problem.truth,
                                      unit="cm-2 s-1 sr-1"), tmp_path / "truth.h5")
    page = write_report(copy, truth=truth).read_text()
    assert "Profiles" in page and "longitude and latitude profiles" in page
    assert "differs from the estimate" in page  # the bias warning reaches the page
    assert "and their profiles" in page  # the comparison figure has its profile row
    (copy / "profiles.json").write_text(json.dumps({"profiles_cm-2_s-1": {
        "longitude": {"centres_deg": [0, 30], "band_deg": 10, "std": [[1, 2]]},
        "latitude": {"centres_deg": [0, 30], "band_deg": 30, "std": [[1, 2]]}}}))
    page = write_report(copy).read_text()
    assert "profiles.json does not match the model map" in page
