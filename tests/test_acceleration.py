"""Safe acceleration (line search, SQUAREM): monotone by construction, faster than RL."""

from __future__ import annotations

import numpy as np
import pytest

from comptonsky.deconvolution.algorithms.acceleration import line_maximum
from comptonsky.errors import UnknownChoiceError

from .conftest import prepared_deconvolution, write_parfile


def run(problem, tmp_path, algorithm="RL", overrides=(), **settings):
    nside = problem.response.axes[0].nside
    deconv = prepared_deconvolution(
        problem, write_parfile(tmp_path, nside=nside, algorithm=algorithm, **settings), overrides)
    deconv.initialize()
    deconv.run_deconvolution(progress=False, keep_maps="all")
    return deconv, deconv.passes


def loglikes(deconv, key="log-likelihood"):
    return np.array([np.sum(r[key]) for r in deconv.results])


@pytest.mark.parametrize("method", ["line_search", "SQUAREM"])
@pytest.mark.parametrize("smoothing", [False, True])
def test_safe_methods_are_monotone_with_tutorial_defaults(small_problem, tmp_path, method,
                                                          smoothing):
    """alpha_max 10 with response weighting (the tutorial's file), with and without smoothing."""
    deconv, _ = run(small_problem, tmp_path, iterations=40 if smoothing else 100, accel=True,
                    alpha_max=10.0, weighting=True, smoothing=smoothing, method=method)
    values = loglikes(deconv)
    start = deconv.algorithm.data.total_log_likelihood(
        deconv.algorithm.data.expectations(deconv.initial_model.contents.value.reshape(-1),
                                           {"albedo": 1.0}))
    steps = np.diff(np.concatenate([[start], values]))
    assert np.all(steps >= -1e-9 * np.abs(values).max()), steps.min()
    if not smoothing:  # simulated with norm 1 (the converged ML norm of this toy is 0.968)
        assert deconv.results[-1]["background_normalization"]["albedo"] == pytest.approx(
            1.0, abs=0.05)


@pytest.mark.parametrize("method", ["line_search", "SQUAREM"])
def test_safe_methods_beat_rl_per_pass(small_problem, tmp_path, method):
    """The tutorial's RL (alpha_max 2, 50 iterations) vs the safe methods with half its passes
    (OSEM reaches it with a fifth: test_osem)."""
    ref, ref_passes = run(small_problem, tmp_path, iterations=50, accel=True, alpha_max=2.0,
                          method="max_step")
    target = loglikes(ref)[-1]
    budget = ref_passes.total / 2
    iterations = int(budget // (2 if method == "line_search" else 5))
    fast, passes = run(small_problem, tmp_path, iterations=iterations, accel=True,
                       alpha_max=10.0, method=method)
    assert passes.total <= budget + 1e-9
    assert loglikes(fast)[-1] >= target


def test_map_rl_with_squarem_is_monotone_in_log_posterior(small_problem, tmp_path):
    path = write_parfile(tmp_path, algorithm="MAP_RL", iterations=15, accel=True,
                         alpha_max=10.0, method="SQUAREM")
    text = path.read_text().replace(
        "    save_results:",
        "    prior:\n        TSV:\n            coefficient: 1.0e+3\n"
        "        gamma:\n            model:\n                theta: {value: .inf, unit: "
        "\"cm-2 s-1 sr-1\"}\n                k: {value: 0.9}\n            background:\n"
        "                theta: {value: .inf}\n                k: {value: 1.0}\n"
        "    save_results:").replace('statistics: "log-likelihood"',
                                    'statistics: "log-posterior"')
    path.write_text(text)
    deconv = prepared_deconvolution(small_problem, path)
    deconv.initialize()
    deconv.run_deconvolution(progress=False)
    post = np.array([r["log-posterior"] for r in deconv.results])
    assert np.all(np.diff(post) >= -1e-9 * np.abs(post).max())
    assert len(deconv.results) >= 2


def test_line_maximum_matches_a_grid():
    rng = np.random.default_rng(4)
    eps0 = rng.random(500) + 0.5
    slope = rng.normal(0, 0.2, 500)
    counts = rng.poisson(eps0 * 1.3).astype(float)
    hi = float(np.min(eps0[slope < 0] / -slope[slope < 0])) * 0.999
    alpha = line_maximum([counts], [eps0], [slope], hi)
    grid = np.linspace(0, hi, 20001)
    values = [np.dot(counts, np.log(eps0 + a * slope)) - np.sum(eps0 + a * slope) for a in grid]
    assert alpha == pytest.approx(grid[int(np.argmax(values))], abs=2 * hi / 20000)
    # a descending line gives 0, a line ascending to the end gives the end
    assert line_maximum([counts], [eps0], [-np.abs(slope) * 0 - 1e-3 * eps0], hi) >= 0
    assert line_maximum([eps0 * 10], [eps0], [eps0], 2.0) == 2.0
    assert line_maximum([eps0 * 0.5], [eps0], [eps0], 2.0) == 0.0


def test_unknown_acceleration_method_lists_choices(small_problem, tmp_path):
    with pytest.raises(UnknownChoiceError, match="SQUAREM"):
        run(small_problem, tmp_path, iterations=1, accel=True, method="squarred")


def test_default_max_step_unchanged_by_safe_machinery(small_problem, tmp_path):
    """method max_step keeps the published rule: α is the max-step or 1 after a rejection."""
    deconv, passes = run(small_problem, tmp_path, iterations=5, accel=True, alpha_max=2.0,
                         method="max_step")
    assert deconv.algorithm.accelerator is None
    assert passes.total == 5 * 3  # per iteration: adjoint, trial forward, final forward


def test_unchecked_rule_fails_where_safe_methods_do_not(small_problem, tmp_path):
    """The contrast the safe methods exist for: α always applied (cosipy 0.3) with the tutorial
    defaults lowers log L and lets the background norm collapse on this toy."""
    unchecked, _ = run(small_problem, tmp_path, iterations=30, accel=True, alpha_max=10.0,
                       weighting=True, method="max_step_unchecked")
    values = loglikes(unchecked)
    assert np.sum(np.diff(values) < 0) >= 5
    assert unchecked.results[-1]["background_normalization"]["albedo"] < 0.5


MAP_PRIOR = ("    prior:\n        TSV:\n            coefficient: 1.0e+3\n"
             "        gamma:\n            model:\n                theta: {value: .inf, unit: "
             "\"cm-2 s-1 sr-1\"}\n                k: {value: 0.9}\n            background:\n"
             "                theta: {value: .inf}\n                k: {value: 1.0}\n"
             "    save_results:")


@pytest.mark.parametrize("algorithm, settings, overrides", [
    ("RL", dict(accel=True, alpha_max=10.0, weighting=True, method="max_step"), []),
    ("RL", dict(accel=True, method="max_step_unchecked", alpha_max=1.5), []),
    ("RL", dict(accel=True, smoothing=True, method="SQUAREM"), []),
    ("RL", dict(accel=True, weighting=True, method="line_search"), []),
    ("RLsimple", dict(bkg=False), []),
    ("MAP_RL", dict(accel=True, method="SQUAREM"), []),
    ("MAP_RL", dict(weighting=True), []),
    ("OSEM", dict(accel=True, method="line_search"),
     ["deconvolution:parameter:n_subsets = 8"]),
])
def test_warm_start_continues_the_fit_exactly(small_problem, tmp_path, algorithm, settings,
                                              overrides):
    """10 iterations == 5 iterations, then 5 more by another object started from the state."""
    path = write_parfile(tmp_path, algorithm=algorithm, **settings)
    if algorithm == "MAP_RL":
        path.write_text(path.read_text().replace("    save_results:", MAP_PRIOR))

    def algorithm_object():
        deconv = prepared_deconvolution(small_problem, path, overrides)
        deconv.initialize()
        return deconv.algorithm

    first = algorithm_object()
    straight = first.iterate(10)
    first.start()
    half = first.iterate(5)
    second = algorithm_object()
    second.start(half)
    continued = second.iterate(5)
    assert continued.iteration == straight.iteration == 10
    np.testing.assert_allclose(continued.model, straight.model, rtol=1e-12, atol=0)
    for key, value in straight.norms.items():
        assert continued.norms[key] == pytest.approx(value, rel=1e-12)
    assert continued.objective == pytest.approx(straight.objective, rel=1e-12)
    assert continued.alpha == pytest.approx(straight.alpha, rel=1e-12)
    assert continued.memory == straight.memory  # OSEM's subset schedule
    assert [r["iteration"] for r in second.results] == list(range(6, 11))
    if algorithm == "OSEM":
        assert straight.memory["level"] > half.memory["level"] > 0


def test_algorithm_keys_are_checked_when_the_fit_is_built(small_problem, tmp_path):
    from comptonsky.errors import InvalidParameterError

    deconv = prepared_deconvolution(small_problem, write_parfile(tmp_path, accel=True),
                                    ["deconvolution:algorithm = RLsimple"])
    with pytest.raises(InvalidParameterError, match="acceleration is not a parameter of "
                                                    "algorithm 'RLsimple'"):
        deconv.initialize()
