"""Saving results (histpy HDF5 maps + FITS table), plots, and the deconvolve command line."""

from __future__ import annotations

import json

import numpy as np
import pytest
from astropy.io import fits

from comptonsky import DataIF_COSI_DC2, ImageDeconvolution, plot_convergence, plot_image
from comptonsky.cli import main
from comptonsky.errors import InvalidParameterError, UnknownChoiceError
from comptonsky.io.histogram import open_histogram, write_histogram

from .conftest import prepared_deconvolution, write_parfile


@pytest.fixture
def finished(small_problem, tmp_path):
    deconv = prepared_deconvolution(small_problem,
                                    write_parfile(tmp_path, iterations=5, accel=True))
    deconv.initialize()
    deconv.run_deconvolution(progress=False, keep_maps="all")
    return deconv


def test_save_results_round_trip(finished, tmp_path):
    out = tmp_path / "all"
    files = finished.save_results(out, only_final_result=False)
    assert len(files) == 5 * 3 + 1
    for result in finished.results:
        model = open_histogram(out / f"model_itr{result['iteration']}.hdf5")
        np.testing.assert_array_equal(model.contents.value, result["model"].contents.value)
        assert list(model.axes.labels) == ["lb", "Ei"]
    with fits.open(out / "results.fits") as hdul:
        table = hdul["ITERATIONS"].data
        np.testing.assert_array_equal(table["iteration"], [1, 2, 3, 4, 5])
        np.testing.assert_allclose(table["accel_factor"],
                                   [r["accel_factor"] for r in finished.results])
        np.testing.assert_allclose(table["bkg_norm_albedo"],
                                   [r["background_normalization"]["albedo"]
                                    for r in finished.results])
        np.testing.assert_allclose(table["log-likelihood_toy"],
                                   [r["log-likelihood"][0] for r in finished.results])
    final = finished.save_results(tmp_path / "final", only_final_result=True)
    assert sorted(p.name for p in final) == sorted(
        ["model_itr5.hdf5", "delta_model_itr5.hdf5", "processed_delta_model_itr5.hdf5",
         "results.fits"])


def test_save_results_from_parameter_file(small_problem, tmp_path):
    ds = DataIF_COSI_DC2.load("toy", small_problem.event, {"albedo": small_problem.background},
                              small_problem.response)
    deconv = ImageDeconvolution()
    deconv.set_dataset([ds])
    deconv.read_parameterfile(write_parfile(tmp_path, iterations=2))
    deconv.override_parameter("deconvolution:parameter:save_results:activate = True",
                              f"deconvolution:parameter:save_results:directory = '{tmp_path}/r'")
    deconv.initialize()
    deconv.run_deconvolution(progress=False)
    assert (tmp_path / "r" / "model_itr2.hdf5").exists()
    assert (tmp_path / "r" / "results.fits").exists()


def test_plots(finished, tmp_path):
    model = finished.results[-1]["model"]
    fig = plot_image(model, scale="log", sources={"GC": (0, 0)}, title="x",
                     output=tmp_path / "m.png")
    assert "509" in fig.axes[0].get_title()
    assert (tmp_path / "m.png").stat().st_size > 1000
    plot_convergence(finished.results, output=tmp_path / "c.png")
    assert (tmp_path / "c.png").stat().st_size > 1000
    with pytest.raises(UnknownChoiceError, match="'linear', 'log'"):
        plot_image(model, scale="sqrt")
    with pytest.raises(InvalidParameterError, match="energy_index 3"):
        plot_image(model, energy_index=3)


def _deconvolve_args(problem, tmp_path) -> list[str]:
    """``comptonsky deconvolve`` arguments for ``problem`` written into ``tmp_path``."""
    event = write_histogram(problem.event, tmp_path / "event.h5")
    bkg = write_histogram(problem.background, tmp_path / "bkg.h5")
    rsp = write_histogram(problem.response, tmp_path / "rsp.h5")
    parfile = write_parfile(tmp_path, iterations=3)
    return ["deconvolve", str(parfile), "--event", str(event), "--background",
            f"albedo={bkg}", "--response", str(rsp), "--output", str(tmp_path / "out")]


@pytest.mark.slow  # end-to-end
def test_deconvolve_command(small_problem, tmp_path, capsys):
    out = tmp_path / "out"
    status = main([*_deconvolve_args(small_problem, tmp_path),
                   "--override", "deconvolution:parameter:iteration_max = 4", "--no-progress"])
    assert status == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["iterations"] == 4
    assert set(summary["background_normalization"]) == {"albedo"}
    for name in ("model_itr4.hdf5", "results.fits", "model_E0_log.png", "convergence.png"):
        assert (out / name).exists(), name
    assert "4 iterations" in capsys.readouterr().out


def test_deconvolve_command_reports_bad_input(small_problem, tmp_path, capsys):
    parfile = write_parfile(tmp_path)
    status = main(["deconvolve", str(parfile), "--event", str(tmp_path / "none.h5"),
                   "--response", str(tmp_path / "none.h5"), "--output", str(tmp_path / "o")])
    assert status == 1
    err = capsys.readouterr().err
    assert "none.h5" in err and "no such file" in err
    assert not (tmp_path / "o" / "summary.json").exists()


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "deconvolve" in capsys.readouterr().out


def test_plot_command_for_maps_and_tables(finished, tmp_path):
    from comptonsky.deconvolution.results import read_results_table

    finished.save_results(tmp_path, only_final_result=True)
    rows = read_results_table(tmp_path / "results.fits")
    assert [r["iteration"] for r in rows] == [1, 2, 3, 4, 5]
    assert rows[-1]["background_normalization"]["albedo"] == pytest.approx(
        finished.results[-1]["background_normalization"]["albedo"])
    assert main(["plot", str(tmp_path / "model_itr5.hdf5"), "--scale", "log",
                 "--source", "GC=0,0"]) == 0
    assert (tmp_path / "model_itr5.png").exists()
    assert main(["plot", str(tmp_path / "results.fits"), "--output",
                 str(tmp_path / "conv.png")]) == 0
    assert (tmp_path / "conv.png").exists()
    with pytest.raises(SystemExit):
        main(["plot", "x.h5", "--source", "GC=0"])


def test_deconvolve_command_with_sparse_float32_response(small_problem, tmp_path):
    out = tmp_path / "out"
    status = main([*_deconvolve_args(small_problem, tmp_path),
                   "--dtype", "float32", "--storage", "sparse", "--sparse-threshold", "1e-3",
                   "--cache-dir", str(tmp_path / "cache"), "--no-plots", "--no-progress"])
    assert status == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["response"]["dtype"] == "float32"
    assert "Sparse" in summary["response"]["storage"]


def test_response_section_options_are_validated():
    from comptonsky.config import Parameters

    p = Parameters({"response": {"storage": "sparse", "memory_budget": "1 GiB", "cache": False,
                                 "device": "cpu", "reuse_products": True}})
    assert p["response:memory_budget"] == "1 GiB"
    p.override("response:memory_budget = 1073741824")
    assert p["response:memory_budget"] == 1073741824
    with pytest.raises(UnknownChoiceError, match="sparse"):
        p.override("response:storage = sparce")
    with pytest.raises(UnknownChoiceError, match="sparse_threshold"):
        p.override("response:sparse_treshold = 1e-3")


def _aged(path, days: float, size: int = 100):
    import os
    import time

    path.write_bytes(b"\0" * size)
    t = time.time() - days * 86400
    os.utime(path, (t, t))
    return path


def test_cache_command_lists_and_cleans(tmp_path, capsys, monkeypatch):
    cache = tmp_path / "cache"
    cache.mkdir()
    old = _aged(cache / "rsp.h5.comptonsky-dense-float32-0123456789abcdef0123.cache", 10, 3000)
    new = _aged(cache / "rsp.h5.comptonsky-sparse-float64-aaaaaaaaaaaaaaaaaaaa.cache", 0.5)
    orphan = _aged(cache / ".rsp.h5.comptonsky-dense-float32-bbbbbbbbbbbbbbbbbbbb.cache.x1.part",
                   2, 500)
    writing = _aged(cache / ".rsp.h5.comptonsky-dense-float32-cccccccccccccccccccc.cache.x2"
                            ".part", 0.0)
    other = _aged(cache / "rsp.h5", 30)
    assert main(["cache", "list", "--cache-dir", str(cache)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:4] == ["3.0", "kB", "10.0", "d"] and out[0].endswith(".cache")
    assert sum(".part" in line and "(unfinished)" in line for line in out) == 2
    assert out[-1].startswith("2 cache file(s), 3.1 kB; 2 .part file(s)")
    assert not [line for line in out if line.endswith(str(other))]

    assert main(["cache", "list", "--cache-dir", str(cache), "--older-than", "5"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and str(old) in out[0]

    assert main(["cache", "clean", "--cache-dir", str(cache), "--older-than", "1"]) == 0
    assert capsys.readouterr().out.startswith("removed 2 file(s), 3.5 kB freed")
    assert not old.exists() and not orphan.exists() and new.exists() and writing.exists()

    assert main(["cache", "clean", "--cache-dir", str(cache)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("removed 1 file(s), 100 B freed") and "kept 1" in out
    assert sorted(p.name for p in cache.iterdir()) == sorted(["rsp.h5", writing.name])

    monkeypatch.delenv("COMPTONSKY_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert main(["cache", "list"]) == 0
    assert capsys.readouterr().out.strip() == (
        f"0 cache file(s), 0 B; 0 .part file(s), 0 B in {tmp_path / 'xdg' / 'comptonsky'}")
    with pytest.raises(SystemExit):
        main(["cache", "clean", "--older-than", "-1"])
