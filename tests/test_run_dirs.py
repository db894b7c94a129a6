"""Run directories that cannot mislead, and parameter files that cannot silently mean
something else: hostile inputs for both."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from comptonsky.cli import main
from comptonsky.config import Parameters
from comptonsky.deconvolution.algorithms.base import DeconvolutionAlgorithm
from comptonsky.errors import (
    FileFormatError,
    InvalidParameterError,
    OutputError,
    OutputExistsError,
)
from comptonsky.io.histogram import write_histogram
from comptonsky.jobs import run_files
from comptonsky.rundir import TEMPORARY, RunDirectory, sweep_temporary
from comptonsky.testing import toy_problem

from .conftest import PARFILE_TEXT, prepared_deconvolution, write_parfile


@pytest.fixture(scope="module")
def problem():
    return toy_problem(nside=2, phi_bin_deg=30.0, seed=4)


def _run(problem, parfile, output, **kwargs):
    return run_files(parfile, problem.event, {"albedo": problem.background}, problem.response,
                     output, progress=False, plots=False, report=False, **kwargs)


def _summary(folder):
    return json.loads((folder / "summary.json").read_text())


def test_summary_says_running_first_and_complete_last(problem, tmp_path, monkeypatch):
    out = tmp_path / "run"
    seen = []
    iterate = DeconvolutionAlgorithm.iterate

    def watching(self, n=1):
        seen.append(_summary(out)["status"])
        return iterate(self, n)

    monkeypatch.setattr(DeconvolutionAlgorithm, "iterate", watching)
    summary = _run(problem, write_parfile(tmp_path, nside=2, iterations=3), out).summary
    assert seen and set(seen) == {"running"}
    on_disk = _summary(out)
    assert on_disk["status"] == summary["status"] == "complete"
    assert on_disk["stopping"]["reason"] == "iteration_max reached"
    assert on_disk["ended"] >= on_disk["started"]
    assert not (out / "checkpoint.npz").exists()
    assert not [p for p in out.iterdir() if TEMPORARY.match(p.name)]


def test_a_used_folder_is_refused_and_overwrite_clears_only_the_runs_files(problem, tmp_path):
    out = tmp_path / "run"
    _run(problem, write_parfile(tmp_path, nside=2, iterations=5), out, only_final_result=False)
    assert (out / "model_itr5.hdf5").exists()
    (out / "my notes.txt").write_text("keep me")
    with pytest.raises(OutputExistsError, match=r"run: holds a comptonsky run \(complete\); use "
                                                "--overwrite"):
        _run(problem, write_parfile(tmp_path, nside=2, iterations=2), out)
    assert (out / "model_itr5.hdf5").exists()       # nothing touched by the refusal
    _run(problem, write_parfile(tmp_path, nside=2, iterations=2), out, overwrite=True)
    names = {p.name for p in out.iterdir()}
    assert "my notes.txt" in names
    assert not {n for n in names if "itr5" in n or "itr3" in n}   # no stale maps
    assert "model_itr2.hdf5" in names and _summary(out)["iterations"] == 2


def test_a_foreign_folder_is_never_cleared(problem, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    parfile = write_parfile(tmp_path, nside=2, iterations=2)
    with pytest.raises(OutputExistsError, match="mine: is not empty"):
        _run(problem, parfile, out)
    with pytest.raises(OutputExistsError, match="holds no comptonsky summary.json; refusing"):
        _run(problem, parfile, out, overwrite=True)
    assert [p.name for p in out.iterdir()] == ["thesis.tex"]
    (out / "summary.json").write_text("{not json")
    with pytest.raises(OutputExistsError, match="refusing"):
        _run(problem, parfile, out, overwrite=True)


def test_output_that_is_a_file_or_empty_or_both_modes(problem, tmp_path):
    parfile = write_parfile(tmp_path, nside=2, iterations=2)
    afile = tmp_path / "a.txt"
    afile.write_text("x")
    with pytest.raises(OutputError, match="a.txt: is a file; expected a folder"):
        _run(problem, parfile, afile)
    with pytest.raises(OutputError, match="either overwrite or resume"):
        RunDirectory.check(tmp_path / "x", overwrite=True, resume=True)
    with pytest.raises(OutputError, match="expected a folder"):
        RunDirectory.check("")


def test_resume_needs_an_unfinished_run_with_a_checkpoint(problem, tmp_path):
    parfile = write_parfile(tmp_path, nside=2, iterations=2)
    with pytest.raises(OutputError, match="no comptonsky run to resume"):
        _run(problem, parfile, tmp_path / "none", resume=True)
    assert not (tmp_path / "none").exists()
    _run(problem, parfile, tmp_path / "done")
    with pytest.raises(OutputError, match="complete; nothing to resume"):
        _run(problem, parfile, tmp_path / "done", resume=True)
    summary = _summary(tmp_path / "done")
    summary["status"] = "failed"
    (tmp_path / "done" / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(OutputError, match="left no checkpoint.npz"):
        _run(problem, parfile, tmp_path / "done", resume=True)


def test_a_folder_another_process_writes_is_refused(problem, tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / "summary.json").write_text(json.dumps(
            {"status": "running", "pid": sleeper.pid, "host": socket.gethostname()}))
        with pytest.raises(OutputError, match=f"process {sleeper.pid} is writing a run there"):
            RunDirectory.check(out, overwrite=True)
    finally:
        sleeper.kill()
        sleeper.wait()
    # once it is gone the run is an abandoned one: overwrite (or resume) may take it
    assert RunDirectory.check(out, overwrite=True).mode == "overwrite"


def test_stale_temporary_files_are_swept_and_others_kept(problem, tmp_path):
    out = tmp_path / "run"
    _run(problem, write_parfile(tmp_path, nside=2, iterations=2), out)
    stale = [out / ".model_itr2.hdf5.k2j_9x0a.part", out / ".checkpoint.npz.abcdefgh.part"]
    keep = [out / "data.part", out / ".hidden.part", out / ".x.ABCDEFGH.part"]
    for p in stale + keep:
        p.write_bytes(b"\0" * 10)
    assert sorted(sweep_temporary(out)) == sorted(stale)
    assert all(p.exists() for p in keep)
    for p in stale:
        p.write_bytes(b"\0")
    _run(problem, write_parfile(tmp_path, nside=2, iterations=2), out, overwrite=True)
    assert not any(p.exists() for p in stale) and all(p.exists() for p in keep)


def test_failures_leave_no_empty_folder_and_a_failed_fit_says_so(problem, tmp_path,
                                                                  monkeypatch, capsys):
    bad = write_parfile(tmp_path, nside=2, iterations=2)
    bad.write_text(bad.read_text().replace("value: [1e-4]", "value: [0.0]"))
    out = tmp_path / "a" / "b" / "c"
    with pytest.raises(InvalidParameterError, match="must be finite and > 0"):
        _run(problem, bad, out)
    assert not (tmp_path / "a").exists()
    event = write_histogram(problem.event, tmp_path / "event.h5")
    status = main(["deconvolve", str(bad), "--event", str(event), "--response",
                   str(tmp_path / "none.h5"), "--output", str(out)])
    assert status == 1 and not (tmp_path / "a").exists()
    assert len(capsys.readouterr().err.strip().splitlines()) == 1

    def broken(self, n=1):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(DeconvolutionAlgorithm, "iterate", broken)
    with pytest.raises(RuntimeError):
        _run(problem, write_parfile(tmp_path, nside=2, iterations=2), out)
    summary = _summary(out)
    assert summary["status"] == "failed" and summary["error"] == "disk on fire"


def test_interrupted_run_keeps_its_partial_results_and_a_checkpoint(problem, tmp_path,
                                                                     monkeypatch):
    iterate = DeconvolutionAlgorithm.iterate

    def stop_at_third(self, n=1):
        if self.state is not None and self.state.iteration >= 2:
            raise KeyboardInterrupt
        return iterate(self, n)

    monkeypatch.setattr(DeconvolutionAlgorithm, "iterate", stop_at_third)
    out = tmp_path / "i"
    with pytest.raises(KeyboardInterrupt, match="interrupted at iteration 2"):
        _run(problem, write_parfile(tmp_path, nside=2, iterations=10), out)
    summary = _summary(out)
    assert summary["status"] == "interrupted" and summary["iterations"] == 2
    assert summary["checkpoint"] == str(out / "checkpoint.npz")
    assert (out / "checkpoint.npz").exists() and (out / "model_itr2.hdf5").exists()
    with pytest.raises(OutputExistsError, match=r"\(interrupted\); use --overwrite to replace "
                                                "it, --resume to continue it"):
        _run(problem, write_parfile(tmp_path, nside=2, iterations=10), out)


def test_cli_options_and_their_errors(problem, tmp_path, capsys):
    event = write_histogram(problem.event, tmp_path / "event.h5")
    bkg = write_histogram(problem.background, tmp_path / "bkg.h5")
    rsp = write_histogram(problem.response, tmp_path / "rsp.h5")
    args = ["deconvolve", str(write_parfile(tmp_path, nside=2, iterations=2)), "--event",
            str(event), "--background", f"albedo={bkg}", "--response", str(rsp), "--output",
            str(tmp_path / "o"), "--no-progress", "--no-plots", "--no-report"]
    assert main(args) == 0
    capsys.readouterr()
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "use --overwrite" in err and len(err.strip().splitlines()) == 1
    assert main([*args, "--overwrite", "--checkpoint-every", "1"]) == 0
    with pytest.raises(SystemExit):
        main([*args, "--checkpoint-every", "-2"])
    assert "expected 0 or more iterations" in capsys.readouterr().err


# --- parameter files ---------------------------------------------------------------------------
def test_duplicate_keys_are_refused_with_key_and_line(tmp_path):
    path = tmp_path / "dup.yml"
    path.write_text(PARFILE_TEXT.format(
        nside=2, algorithm="RL", iterations=5, accel=False, alpha_max=1.0, weighting=False,
        smoothing=False, threshold=0.0, bkg=True, method="max_step").replace(
        "    iteration_max: 5\n", "    iteration_max: 5\n    iteration_max: 500\n"))
    with pytest.raises(FileFormatError, match=r"dup.yml: .*duplicate key 'iteration_max' at "
                                              r"line \d+ \(first at line \d+\)"):
        Parameters.from_file(path)
    top = tmp_path / "top.yml"
    top.write_text("deconvolution:\n  algorithm: RL\ndeconvolution:\n  algorithm: MAP_RL\n")
    with pytest.raises(FileFormatError, match="duplicate key 'deconvolution' at line 3 "
                                              r"\(first at line 1\)"):
        Parameters.from_file(top)
    merged = tmp_path / "merge.yml"   # a YAML merge key is not a duplicate
    merged.write_text("base: &b {iteration_max: 3}\ndeconvolution:\n  algorithm: RL\n"
                      "  parameter:\n    <<: *b\n")
    with pytest.raises(Exception, match="base"):   # 'base' is not a parameter key
        Parameters.from_file(merged)


def test_binning_files_refuse_duplicate_keys_too(tmp_path):
    from comptonsky.binning.spec import load_yaml_mapping

    path = tmp_path / "inputs.yaml"
    path.write_text("nside: 8\nphi_pix_size: 6\nnside: 16\n")
    with pytest.raises(FileFormatError, match="inputs.yaml: not valid YAML .duplicate key "
                                              "'nside' at line 3 .first at line 1.."):
        load_yaml_mapping(path, "binning parameter file")


def test_a_parameter_file_without_deconvolution_section_is_refused(problem, tmp_path):
    path = tmp_path / "model_only.yml"
    text = write_parfile(tmp_path, nside=2).read_text()
    path.write_text(text[:text.index("deconvolution:")])
    ds_fit = prepared_deconvolution
    with pytest.raises(InvalidParameterError, match="model_only.yml: no deconvolution: section"):
        ds_fit(problem, path)
    path.write_text(text[:text.index("deconvolution:")] + "deconvolution:\n")
    with pytest.raises(InvalidParameterError, match="no deconvolution: section"):
        ds_fit(problem, path)


@pytest.mark.parametrize("value", ["[0.0]", "[-1e-4]", "[.nan]", "[.inf]"])
def test_flat_start_must_be_positive(problem, tmp_path, value):
    parfile = write_parfile(tmp_path, nside=2)
    parfile.write_text(parfile.read_text().replace("value: [1e-4]", f"value: {value}"))
    deconv = prepared_deconvolution(problem, parfile)
    with pytest.raises(InvalidParameterError, match=r"parfile_RL.yml: model_definition:"
                                                    r"initialization:parameter:value must be "
                                                    r"finite and > 0"):
        deconv.initialize()


def test_save_results_directory_is_relative_to_the_parameter_file(problem, tmp_path,
                                                                  monkeypatch, caplog):
    folder = tmp_path / "analysis"
    folder.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    parfile = write_parfile(folder, nside=2, iterations=2)
    parfile.write_text(parfile.read_text().replace("activate: False\n        directory",
                                                   "activate: True\n        directory"))
    monkeypatch.chdir(elsewhere)
    deconv = prepared_deconvolution(problem, parfile)
    deconv.initialize()
    deconv.run_deconvolution(progress=False)
    assert (folder / "results" / "model_itr2.hdf5").exists()
    assert not (elsewhere / "results").exists()
    assert "read from the parameter file's folder" in caplog.text
    params = Parameters({"deconvolution": {"algorithm": "RL"}})
    assert params.resolve_path("out", "x") == params.resolve_path("out", "x")  # cwd-relative
    assert str(params.resolve_path("out", "x")) == "out"
    assert params.resolve_path("/abs/out", "x") == params.resolve_path("/abs/out", "y")
    with pytest.raises(InvalidParameterError, match="directory: expected a folder"):
        Parameters.from_file(parfile).resolve_path(" ", "save_results:directory")
    assert np.isfinite(deconv.results[-1]["log-likelihood"][0])
    assert os.getcwd() == str(elsewhere)
