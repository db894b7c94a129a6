"""Checkpoints and resume: a fit stopped anywhere continues to the same bits; checkpoints are
checked before use; memory does not grow with the iteration count; Ctrl-C stops cleanly."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from histpy import Histogram

from comptonsky.deconvolution.algorithms import base
from comptonsky.deconvolution.checkpoint import read_checkpoint
from comptonsky.deconvolution.results import map_flux
from comptonsky.errors import CheckpointError, MapsNotKeptError, OutputError, RunInterrupted
from comptonsky.io.histogram import open_histogram, write_histogram
from comptonsky.jobs import run_files
from comptonsky.response.reuse import ReusedProducts
from comptonsky.testing import toy_problem

from .conftest import REPO, prepared_deconvolution, write_parfile

#: (algorithm, parameter-file settings, overrides): every accelerator, OSEM's schedule, MAP_RL
CASES = {
    "RL max_step": ("RL", dict(accel=True, alpha_max=10.0), ()),
    "RL SQUAREM": ("RL", dict(accel=True, method="SQUAREM", weighting=True), ()),
    "RL line_search": ("RL", dict(accel=True, method="line_search"), ()),
    "RLsimple": ("RLsimple", dict(bkg=False), ()),
    "OSEM adaptive": ("OSEM", dict(), ("deconvolution:parameter:n_subsets = 4",)),
}


@pytest.fixture(scope="module")
def problem():
    return toy_problem(nside=2, phi_bin_deg=30.0, seed=7)


def _parfile(tmp_path: Path, algorithm: str, iterations: int, **settings) -> Path:
    return write_parfile(tmp_path, nside=2, algorithm=algorithm, iterations=iterations,
                         **settings)


def _fit(problem, parfile, overrides=()):
    deconv = prepared_deconvolution(problem, parfile, overrides)
    deconv.initialize()
    return deconv


def _final(deconv) -> np.ndarray:
    return deconv.results[-1]["model"].contents.value


def _interrupt_at_forward(monkeypatch, call: int, how=None):
    """Make the ``call``-th forward product through product reuse stop the process (after
    the product was made and remembered: the middle of an iteration)."""
    real = ReusedProducts._forward
    count = {"n": 0}

    def forward(self, x):
        y = real(self, x)
        count["n"] += 1
        if count["n"] == call:
            if how is None:
                raise KeyboardInterrupt
            how()
        return y

    monkeypatch.setattr(ReusedProducts, "_forward", forward)
    return count


@pytest.mark.parametrize("case", list(CASES))
def test_resume_after_an_interrupt_is_bit_identical(problem, tmp_path, monkeypatch, case):
    algorithm, settings, overrides = CASES[case]
    parfile = _parfile(tmp_path, algorithm, 40, **settings)
    reference = _fit(problem, parfile, overrides)
    reference.run_deconvolution(progress=False)
    passes = reference.passes.total

    checkpoint = tmp_path / "fit.npz"
    rng = random.Random(case)
    first = _fit(problem, parfile, overrides)
    _interrupt_at_forward(monkeypatch, rng.randint(8, 40))
    with pytest.raises(RunInterrupted) as info:
        first.run_deconvolution(progress=False, checkpoint=checkpoint, checkpoint_every=3)
    monkeypatch.undo()
    stopped = info.value.iteration
    assert 0 < stopped < 40 and info.value.checkpoint == checkpoint
    assert read_checkpoint(checkpoint).iteration == stopped
    assert "interrupted at iteration" in str(info.value)

    second = _fit(problem, parfile, overrides)
    second.run_deconvolution(progress=False, checkpoint=checkpoint, resume=True)
    assert np.array_equal(_final(second), _final(reference))
    assert [r["iteration"] for r in second.results] == list(range(1, 41))
    assert [r["log-likelihood"] for r in second.results] == \
        [r["log-likelihood"] for r in reference.results]
    assert [r["background_normalization"] for r in second.results] == \
        [r["background_normalization"] for r in reference.results]
    assert [r["accel_factor"] for r in second.results] == \
        [r["accel_factor"] for r in reference.results]
    assert second.passes.total == passes
    for key in ("delta_model", "processed_delta_model"):
        assert np.array_equal(second.results[-1][key].contents, reference.results[-1][key].contents)


def test_resume_of_map_rl_and_of_a_sigterm(problem, tmp_path, monkeypatch):
    """MAP_RL (log-posterior stopping, prior filter map); SIGTERM writes the checkpoint too."""
    parfile = write_parfile(tmp_path, nside=2, algorithm="MAP_RL", iterations=25,
                            accel=True, method="SQUAREM")
    text = parfile.read_text().replace(
        "    save_results:",
        "    prior:\n        TSV:\n            coefficient: 1.0e+3\n"
        "        gamma:\n            model:\n                theta: {value: 1.0e+3, unit: "
        "\"cm-2 s-1 sr-1\"}\n                k: {value: 1.0}\n            background:\n"
        "                theta: {value: 1.0e+3}\n                k: {value: 1.0}\n"
        "    save_results:").replace("statistics: \"log-likelihood\"",
                                    "statistics: \"log-posterior\"")
    parfile.write_text(text)
    reference = _fit(problem, parfile)
    reference.run_deconvolution(progress=False)
    checkpoint = tmp_path / "map.npz"
    first = _fit(problem, parfile)
    _interrupt_at_forward(monkeypatch, 23, lambda: os.kill(os.getpid(), signal.SIGTERM))
    with pytest.raises(RunInterrupted) as info:
        first.run_deconvolution(progress=False, checkpoint=checkpoint, checkpoint_every=0)
    monkeypatch.undo()
    assert info.value.signum == signal.SIGTERM and info.value.exit_status == 143
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL or callable(
        signal.getsignal(signal.SIGTERM))
    second = _fit(problem, parfile)
    second.run_deconvolution(progress=False, checkpoint=checkpoint, resume=True)
    assert np.array_equal(_final(second), _final(reference))
    assert np.array_equal(second.results[-1]["prior_filter"].contents,
                          reference.results[-1]["prior_filter"].contents)
    assert [r["log-posterior"] for r in second.results] == \
        [r["log-posterior"] for r in reference.results]


def test_resume_at_the_end_does_not_iterate_again(problem, tmp_path):
    parfile = _parfile(tmp_path, "RL", 6, accel=True)
    checkpoint = tmp_path / "end.npz"
    first = _fit(problem, parfile)
    first.run_deconvolution(progress=False, checkpoint=checkpoint)
    again = _fit(problem, parfile)
    again.run_deconvolution(progress=False, checkpoint=checkpoint, resume=True)
    assert len(again.results) == 6 and again.passes.total == first.passes.total
    assert np.array_equal(_final(again), _final(first))


def test_resume_of_the_threshold_and_cross_validation_rules(problem, tmp_path, monkeypatch):
    parfile = _parfile(tmp_path, "RL", 60, accel=True, threshold=5.0)
    reference = _fit(problem, parfile)
    reference.run_deconvolution(progress=False)
    n = len(reference.results)
    assert 3 < n < 60
    checkpoint = tmp_path / "t.npz"
    _interrupt_at_forward(monkeypatch, 2 * n - 3)
    with pytest.raises(RunInterrupted):
        _fit(problem, parfile).run_deconvolution(progress=False, checkpoint=checkpoint,
                                                 checkpoint_every=1)
    monkeypatch.undo()
    second = _fit(problem, parfile)
    second.run_deconvolution(progress=False, checkpoint=checkpoint, resume=True)
    assert len(second.results) == n and np.array_equal(_final(second), _final(reference))

    cv = ["deconvolution:parameter:stopping_criteria:statistics = 'cross-validation'",
          "deconvolution:parameter:iteration_max = 30"]
    reference = _fit(problem, parfile, cv)
    reference.run_deconvolution(progress=False)
    best = reference.algorithm.cross_validation["best_iteration"]
    assert best > 2
    checkpoint = tmp_path / "cv.npz"
    first = _fit(problem, parfile, cv)
    real = type(first.algorithm).iterate

    def iterate(self, k=1):
        if self is first.algorithm and self.state.iteration >= best - 1:
            raise KeyboardInterrupt
        return real(self, k)

    monkeypatch.setattr(type(first.algorithm), "iterate", iterate)
    with pytest.raises(RunInterrupted):
        first.run_deconvolution(progress=False, checkpoint=checkpoint, checkpoint_every=1)
    monkeypatch.undo()

    def no_second_search(*args, **kwargs):
        raise AssertionError("cross-validation run again on resume")

    monkeypatch.setattr(base, "choose_iterations", no_second_search)
    second = _fit(problem, parfile, cv)
    second.run_deconvolution(progress=False, checkpoint=checkpoint, resume=True)
    assert second.algorithm.cross_validation == reference.algorithm.cross_validation
    assert np.array_equal(_final(second), _final(reference))
    assert [r["validation-log-likelihood"] for r in second.results] == \
        [r["validation-log-likelihood"] for r in reference.results]


# --- a checkpoint is checked before it is used -------------------------------------------------
@pytest.fixture
def written(problem, tmp_path):
    parfile = _parfile(tmp_path, "RL", 8, accel=True)
    checkpoint = tmp_path / "c.npz"
    fit = _fit(problem, parfile)
    fit.algorithm.iteration_max = 4  # stop early; the parameter file still says 8
    fit.run_deconvolution(progress=False, checkpoint=checkpoint)
    return parfile, checkpoint


def test_checkpoint_of_other_parameters_is_refused(problem, written):
    parfile, checkpoint = written
    fit = _fit(problem, parfile, ["deconvolution:parameter:acceleration:alpha_max = 3.0"])
    with pytest.raises(CheckpointError, match=r"c\.npz.*iteration 4.*other parameters"):
        fit.run_deconvolution(progress=False, checkpoint=checkpoint, resume=True)


def test_checkpoint_of_other_data_is_refused(problem, written):
    parfile, checkpoint = written
    other = toy_problem(nside=2, phi_bin_deg=30.0, seed=8)
    fit = _fit(other, parfile)
    with pytest.raises(CheckpointError, match="counts of dataset 'toy'"):
        fit.run_deconvolution(progress=False, checkpoint=checkpoint, resume=True)
    scaled = toy_problem(nside=2, phi_bin_deg=30.0, seed=7)
    scaled.response[:] = scaled.response.contents * 1.5
    with pytest.raises(CheckpointError, match="response of dataset 'toy'"):
        _fit(scaled, parfile).run_deconvolution(progress=False, checkpoint=checkpoint,
                                                resume=True)


def test_tampered_damaged_or_missing_checkpoints_are_refused(problem, written, tmp_path):
    parfile, checkpoint = written
    with np.load(checkpoint) as npz:
        arrays = {k: npz[k] for k in npz.files}
    tampered = tmp_path / "tampered.npz"
    model = arrays["model"].copy()
    model[5] *= 1.001
    np.savez(tampered, **{**arrays, "model": model})
    with pytest.raises(CheckpointError, match="map does not give its expected counts"):
        _fit(problem, parfile).run_deconvolution(progress=False, checkpoint=tampered,
                                                 resume=True)
    sources = arrays["sources_0"].copy()
    sources[3] *= 1 + 1e-12     # within the products' rounding, but not the stored log L
    np.savez(tampered, **{**arrays, "sources_0": sources})
    with pytest.raises(CheckpointError, match="does not reproduce its log-likelihood"):
        _fit(problem, parfile).run_deconvolution(progress=False, checkpoint=tampered,
                                                 resume=True)
    damaged = tmp_path / "damaged.npz"
    damaged.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="damaged.npz: not a readable comptonsky "
                                              "checkpoint"):
        _fit(problem, parfile).run_deconvolution(progress=False, checkpoint=damaged,
                                                 resume=True)
    with pytest.raises(CheckpointError, match="none.npz: no checkpoint there"):
        _fit(problem, parfile).run_deconvolution(progress=False,
                                                 checkpoint=tmp_path / "none.npz", resume=True)
    with pytest.raises(OutputError, match="is a folder"):
        _fit(problem, parfile).run_deconvolution(progress=False, checkpoint=tmp_path)
    with pytest.raises(CheckpointError, match="keeps only the last iteration's maps"):
        _fit(problem, parfile).run_deconvolution(progress=False, checkpoint=checkpoint,
                                                 resume=True, keep_maps="all")
    junk = tmp_path / "junk.npz"
    np.savez(junk, model=np.zeros(3))
    with pytest.raises(CheckpointError, match="junk.npz"):
        _fit(problem, parfile).run_deconvolution(progress=False, checkpoint=junk, resume=True)


# --- memory flat in the iteration count ---------------------------------------------------------
def _held_maps(deconv) -> int:
    return sum(isinstance(v, Histogram) for r in deconv.results for v in r.values())


def test_only_the_last_iterations_maps_are_held(problem, tmp_path):
    held = {}
    for n in (3, 30):
        fit = _fit(problem, _parfile(tmp_path, "RL", n, accel=True))
        fit.run_deconvolution(progress=False)
        held[n] = _held_maps(fit)
        assert len(fit.results) == n
        assert len(fit.algorithm.data.operators[0].inner._history) <= 2
    assert held[3] == held[30] == 3      # the last iteration's three maps, whatever n
    everything = _fit(problem, _parfile(tmp_path, "RL", 30, accel=True))
    everything.run_deconvolution(progress=False, keep_maps="all")
    assert _held_maps(everything) == 90
    for kept, lean in zip(everything.results[:-1], fit.results[:-1]):
        assert lean["model_flux"] == map_flux(kept["model"])
    saving = _fit(problem, _parfile(tmp_path, "RL", 5, accel=True),
                  ["deconvolution:parameter:save_results:activate = true",
                   "deconvolution:parameter:save_results:only_final_result = false",
                   f"deconvolution:parameter:save_results:directory = '{tmp_path / 'all'}'"])
    saving.run_deconvolution(progress=False)
    assert _held_maps(saving) == 15 and (tmp_path / "all" / "model_itr1.hdf5").exists()


def test_a_map_not_kept_says_how_to_keep_it(problem, tmp_path):
    fit = _fit(problem, _parfile(tmp_path, "RL", 3))
    fit.run_deconvolution(progress=False)
    with pytest.raises(MapsNotKeptError, match="iteration 1 were not kept.*keep_maps='all'"):
        fit.results[0]["model"]
    with pytest.raises(KeyError):
        fit.results[0]["no such key"]
    with pytest.raises(MapsNotKeptError, match="only_final_result=False"):
        fit.save_results(tmp_path / "x", only_final_result=False)
    assert fit.results[0].get("model") is None


def test_checkpoint_of_all_maps_round_trips(problem, tmp_path, monkeypatch):
    parfile = _parfile(tmp_path, "RL", 12, accel=True)
    reference = _fit(problem, parfile)
    reference.run_deconvolution(progress=False, keep_maps="all")
    checkpoint = tmp_path / "all.npz"
    _interrupt_at_forward(monkeypatch, 15)
    with pytest.raises(RunInterrupted):
        _fit(problem, parfile).run_deconvolution(progress=False, checkpoint=checkpoint,
                                                 keep_maps="all", checkpoint_every=2)
    monkeypatch.undo()
    second = _fit(problem, parfile)
    second.run_deconvolution(progress=False, checkpoint=checkpoint, resume=True,
                             keep_maps="all")
    for a, b in zip(second.results, reference.results):
        assert np.array_equal(a["model"].contents, b["model"].contents)
        assert a["model"].unit == b["model"].unit


# --- the command line: kill -9 and Ctrl-C -------------------------------------------------------
def _inputs(problem, folder: Path, iterations: int) -> list[str]:
    folder.mkdir(exist_ok=True)
    event = write_histogram(problem.event, folder / "event.h5")
    bkg = write_histogram(problem.background, folder / "bkg.h5")
    rsp = write_histogram(problem.response, folder / "rsp.h5")
    nside = problem.response.axes[0].nside
    parfile = write_parfile(folder, nside=nside, iterations=iterations, accel=True)
    return [str(parfile), "--event", str(event), "--background", f"albedo={bkg}",
            "--response", str(rsp)]


def _start(args: list[str], output: Path, every: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "comptonsky", "deconvolve", *args,
                             "--output", str(output), "--no-progress", "--no-plots",
                             "--no-report", "--checkpoint-every", str(every)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"the run ended before its first checkpoint: " \
                                    f"{proc.communicate()}"
        assert time.monotonic() < end, "no checkpoint written"
        time.sleep(0.01)


def _run_args(args: list[str]) -> dict:
    """run_files keyword arguments for the command-line arguments of :func:`_inputs`."""
    return dict(parfile=args[0], event=args[2], backgrounds={"albedo": args[4].split("=")[1]},
                response=args[6], progress=False, plots=False, report=False)


@pytest.mark.slow  # three 300-iteration runs, one of them killed
def test_kill_minus_9_then_resume_equals_an_uninterrupted_run(small_problem, tmp_path):
    args = _inputs(small_problem, tmp_path / "in", 300)
    reference = run_files(output=tmp_path / "reference", **_run_args(args))
    expected = open_histogram(tmp_path / "reference" / "model_itr300.hdf5").contents
    out = tmp_path / "killed"
    rng = random.Random()
    for delay in (rng.uniform(0.0, 0.6), rng.uniform(0.0, 0.1), 0.0, 0.0):
        proc = _start([*args, "--overwrite"] if out.exists() else args, out, 7)
        _wait_for(out / "checkpoint.npz", proc)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        # killed before the run completed (else it was too quick for this delay: again)
        if json.loads((out / "summary.json").read_text())["status"] == "running":
            break
    else:
        pytest.fail("the run always completed before it could be killed")
    assert proc.returncode == -signal.SIGKILL
    killed_at = read_checkpoint(out / "checkpoint.npz").iteration
    assert killed_at >= 7
    run = run_files(output=out, resume=True, **_run_args(args))
    assert run.summary["status"] == "complete"
    assert run.summary["resumed_from_iteration"] == killed_at
    assert not (out / "checkpoint.npz").exists()
    resumed = open_histogram(out / "model_itr300.hdf5").contents
    assert resumed.dtype == np.float64 and np.array_equal(resumed, expected)
    assert run.summary["log_likelihood_per_iteration"] == \
        reference.summary["log_likelihood_per_iteration"]


@pytest.mark.slow  # a command-line run in a subprocess, then two more in-process
def test_ctrl_c_stops_with_one_line_and_resumes(tmp_path):
    problem = toy_problem(nside=2, phi_bin_deg=30.0, seed=7)
    args = _inputs(problem, tmp_path / "in", 600)
    out = tmp_path / "out"
    proc = _start(args, out, 1)
    _wait_for(out / "checkpoint.npz", proc)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    last = lines[-1]
    assert "Traceback" not in stderr
    assert last.startswith("comptonsky deconvolve: interrupted at iteration ")
    assert f"checkpoint written to {out / 'checkpoint.npz'}; rerun with --resume" in last
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "interrupted"
    stopped = read_checkpoint(out / "checkpoint.npz").iteration
    assert summary["iterations"] == stopped and summary["stopping"]["reason"] == "interrupted"
    assert (out / f"model_itr{stopped}.hdf5").exists()
    run = run_files(output=out, resume=True, **_run_args(args))
    reference = run_files(output=tmp_path / "reference", **_run_args(args))
    assert np.array_equal(open_histogram(out / "model_itr600.hdf5").contents,
                          open_histogram(tmp_path / "reference" / "model_itr600.hdf5").contents)
    assert not (out / f"model_itr{stopped}.hdf5").exists()  # the partial maps are gone
    assert run.summary["log_likelihood"] == reference.summary["log_likelihood"]
