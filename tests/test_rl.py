"""The RL family against a slow, literal implementation of docs/design.md §4, and its invariants."""

from __future__ import annotations

import math

import healpy as hp
import numpy as np
import pytest

from comptonsky import DataIF_COSI_DC2, ImageDeconvolution
from comptonsky.deconvolution.algorithms.acceleration import step_bound
from comptonsky.deconvolution.steps import (
    acceleration_factor,
    background_steps,
    clip_norms,
    constrain,
    em_delta,
    filter_delta,
    map_background_norms,
    map_em,
    prior_filter,
    response_weighting_filter,
    shift_norms,
)

from .conftest import prepared_deconvolution, write_parfile


def slow_rl(response, counts, background, lam0, iterations, accel=False, alpha_max=1.0,
            weighting=False, beta=0.5, smoothing_fwhm=None, bkg=False, bkg_range=(0.0, np.inf),
            minimum_flux=0.0, mask=None):
    """docs/design.md §4 written with explicit loops over i and j (tiny problems only)."""
    R = np.asarray(response, dtype=float)  # (J, I), ΔΩ folded in
    J, I = R.shape  # noqa: E741 (the design's index names)
    lam = [float(v) for v in lam0]
    if mask is not None:
        lam = [lam[j] if mask[j] else 0.0 for j in range(J)]
    n = 1.0
    E = [sum(R[j, i] for i in range(I)) for j in range(J)]
    history = []

    def expectation(lam, n):
        return [sum(R[j, i] * lam[j] for j in range(J)) + 1e-12 + n * background[i]
                for i in range(I)]

    eps = expectation(lam, n)
    for _ in range(iterations):
        r = [counts[i] / eps[i] for i in range(I)]
        delta = []
        for j in range(J):
            if E[j] == 0 or (mask is not None and not mask[j]):
                delta.append(0.0)
                continue
            back = sum(r[i] * R[j, i] for i in range(I))
            delta.append(lam[j] * (back / E[j] - 1.0))
        if bkg:
            n_new = n * sum(r[i] * background[i] for i in range(I)) / sum(background)
            n = min(max(n_new, bkg_range[0]), bkg_range[1])
        proc = list(delta)
        if weighting:
            emax = max(E)
            proc = [proc[j] * (E[j] / emax) ** beta for j in range(J)]
        if smoothing_fwhm is not None:
            proc = list(hp.smoothing(np.array(proc), fwhm=smoothing_fwhm))
        alpha = 1.0
        if accel:
            candidates = [-lam[j] / proc[j] for j in range(J)
                          if proc[j] != 0 and -lam[j] / proc[j] > 0
                          and (mask is None or mask[j]) and E[j] > 0]
            alpha = max(min(min(candidates, default=math.inf), alpha_max), 1.0)
        lam = [max(lam[j] + alpha * proc[j], minimum_flux) for j in range(J)]
        lam = [0.0 if (E[j] == 0 or (mask is not None and not mask[j])) else lam[j]
               for j in range(J)]
        eps = expectation(lam, n)
        logl = sum(counts[i] * math.log(eps[i]) - eps[i] for i in range(I))
        history.append(dict(model=np.array(lam), delta=np.array(delta), processed=np.array(proc),
                            alpha=alpha, norm=n, logl=logl))
    return history


def _run(problem, tmp_path, mask=None, **settings):
    nside = problem.response.axes[0].nside
    deconv = prepared_deconvolution(problem, write_parfile(tmp_path, nside=nside, **settings),
                                    mask=mask)
    deconv.initialize()
    deconv.run_deconvolution(progress=False, keep_maps="all")
    return deconv.dataset[0], deconv


# alpha_max stays moderate here: once a pixel is driven to ~0, α = 1/(1 − back_j/E_j) for that
# pixel no longer depends on λ_j, so a pixel at exactly 0 (excluded) and one at 1e-18 (rounding,
# included) give different α. That is the published rule's own sensitivity, not a discrepancy.
@pytest.mark.parametrize("settings", [
    dict(accel=False, weighting=False, smoothing=False, bkg=False),
    dict(accel=True, alpha_max=1.5, weighting=True, smoothing=False, bkg=True),
    dict(accel=True, alpha_max=2.0, weighting=False, smoothing=True, bkg=True),
])
def test_fast_rl_matches_slow_loop(tiny_problem, tmp_path, settings):
    """The unchecked max-step rule (docs/design.md §4 as written) against explicit loops."""
    ds, deconv = _run(tiny_problem, tmp_path, iterations=6, method="max_step_unchecked",
                      **settings)
    R = ds.response.matrix * ds.response.pixel_solid_angle[:, None]
    lam0 = deconv.initial_model.contents.value.reshape(-1)
    slow = slow_rl(R, ds.counts, ds.background("albedo"), lam0, 6,
                   accel=settings["accel"], alpha_max=settings.get("alpha_max", 1.0),
                   weighting=settings["weighting"],
                   smoothing_fwhm=np.radians(30.0) if settings["smoothing"] else None,
                   bkg=settings["bkg"], bkg_range=(0.01, 10.0))
    assert len(deconv.results) == 6
    for fast, ref in zip(deconv.results, slow):
        np.testing.assert_allclose(fast["delta_model"].contents.value.reshape(-1), ref["delta"],
                                   rtol=1e-10, atol=1e-12 * np.abs(ref["delta"]).max())
        np.testing.assert_allclose(fast["model"].contents.value.reshape(-1), ref["model"],
                                   rtol=1e-10, atol=1e-14)
        assert fast["accel_factor"] == pytest.approx(ref["alpha"], rel=1e-12)
        assert fast["background_normalization"]["albedo"] == pytest.approx(ref["norm"], rel=1e-12)
        assert fast["log-likelihood"][0] == pytest.approx(ref["logl"], rel=1e-12)


def test_step_functions_against_loops():
    rng = np.random.default_rng(1)
    lam, back, exposure = rng.random(50), rng.random(50), rng.random(50)
    exposure[3] = 0.0
    delta = em_delta(lam, back, exposure)
    for j in range(50):
        expected = 0.0 if exposure[j] == 0 else lam[j] * (back[j] / exposure[j] - 1)
        assert delta[j] == pytest.approx(expected, rel=1e-14)
    mask = rng.random(50) > 0.2
    alpha = acceleration_factor(lam, delta, 100.0, mask)
    cands = [-lam[j] / delta[j] for j in range(50) if mask[j] and delta[j] < 0]
    assert alpha == pytest.approx(max(min(min(cands), 100.0), 1.0))
    assert acceleration_factor(lam, np.abs(delta), 7.0) == 7.0  # no pixel limits the step
    assert acceleration_factor(lam, -10 * lam, 7.0) == 1.0  # floored at 1


def test_more_step_functions_against_loops():
    rng = np.random.default_rng(2)
    n = 40
    lam, back, exposure = rng.random(n), rng.random(n) * 2, rng.random(n)
    exposure[[0, 7]] = 0.0
    mask = rng.random(n) > 0.2
    # M-step constraints
    out = constrain(lam - 0.3, 0.05, mask)
    for j in range(n):
        assert out[j] == (0.0 if not mask[j] else max(lam[j] - 0.3, 0.05))
    assert clip_norms({"a": 20.0, "b": 0.5, "c": -1.0}, {"a": (0, 10), "c": (0.1, 5)}) == {
        "a": 10.0, "b": 0.5, "c": 0.1}
    assert shift_norms({"a": 1.0, "b": 2.0}, {"a": 0.5, "b": -1.0}, 2.0) == {"a": 2.0, "b": 0.0}
    # background EM steps: n (Σ r B / Σ B − 1), 0 without template counts
    steps = background_steps({"a": 2.0, "b": 1.0}, {"a": 3.0, "b": 5.0}, {"a": 4.0, "b": 0.0})
    assert steps == {"a": pytest.approx(2.0 * (3.0 / 4.0 - 1.0)), "b": 0.0}
    # MAP: EM map under a gamma prior, background update and the prior filter
    k, inv_theta = 0.9, 0.5
    em_map, denominator = map_em(lam, back, exposure, k, inv_theta, 0.01)
    for j in range(n):
        expected = (lam[j] * back[j] + k - 1.0) / (exposure[j] + inv_theta)
        assert denominator[j] == exposure[j] + inv_theta
        assert em_map[j] == pytest.approx(max(expected, 0.01), rel=1e-14)
    flat, _ = map_em(lam, back, exposure, 1.0, 0.0, 0.0)
    assert flat[0] == 0.0 and flat[7] == 0.0  # no exposure, flat prior: no information
    norms = map_background_norms({"a": 2.0}, {"a": 3.0}, {"a": 4.0}, 1.5, 0.25)
    assert norms["a"] == pytest.approx((2.0 * 3.0 + 0.5) / 4.25)
    gradient = rng.normal(size=n)
    factor = prior_filter(gradient, np.where(mask, exposure, 0.0))
    for j in range(n):
        d = exposure[j] if mask[j] else 0.0
        assert factor[j] == pytest.approx(math.exp(gradient[j] / d) if d > 0 else 1.0, rel=1e-14)
    # filters: weighting then smoothing
    weight = response_weighting_filter(exposure, 0.5)
    for j in range(n):
        assert weight[j] == pytest.approx((exposure[j] / exposure.max()) ** 0.5, rel=1e-14)
    delta = rng.normal(size=n)
    processed = filter_delta(delta, weight, lambda m: 2.0 * m[::-1], (n, 1))
    np.testing.assert_allclose(processed, 2.0 * (delta * weight)[::-1], rtol=1e-15)
    assert filter_delta(delta) is not delta and np.array_equal(filter_delta(delta), delta)
    # safe-accelerator step bound: map ≥ 0 on free pixels, norms in range, ≤ alpha_max
    d = rng.normal(size=n)
    bound = step_bound(lam, {"a": 1.0}, d, {"a": 0.5}, 50.0, mask, {"a": (0.0, 2.0)})
    limits = [lam[j] / -d[j] for j in range(n) if mask[j] and d[j] < 0] + [(2.0 - 1.0) / 0.5]
    assert bound == pytest.approx(min(min(limits), 50.0), rel=1e-14)


def test_plain_rl_likelihood_never_decreases(small_problem, tmp_path):
    for algorithm in ("RLsimple", "RL"):
        _, deconv = _run(small_problem, tmp_path, algorithm=algorithm, iterations=40,
                         bkg=algorithm == "RL")  # RLsimple does not fit background norms
        logl = np.array([r["log-likelihood"][0] for r in deconv.results])
        assert np.all(np.diff(logl) >= -1e-9 * np.abs(logl[1:])), algorithm


def test_flux_conservation_at_convergence(small_problem, tmp_path):
    """At an EM fixed point with free background norm, Σ ε = Σ X."""
    ds, deconv = _run(small_problem, tmp_path, algorithm="RL", iterations=400, bkg=True)
    final = deconv.algorithm.expectations[0]
    assert final.sum() == pytest.approx(ds.counts.sum(), rel=2e-3)


def test_em_conserves_counts_each_iteration_without_background(small_problem, tmp_path):
    """Plain ML-EM, no background: Σ_j E_j λ_j^{k+1} = Σ_i X_i ε_i^sig/ε_i exactly."""
    ds, deconv = _run(small_problem, tmp_path, algorithm="RLsimple", iterations=3, bkg=False)
    alg = deconv.algorithm
    model = deconv.results[-2]["model"].contents.value.reshape(-1)
    eps = ds.expectation(model, {"albedo": 1.0})
    signal = ds.response.forward(model)
    expected = float(np.sum(ds.counts * signal / eps))
    assert float(np.dot(alg.data.exposure, alg.model)) == pytest.approx(expected, rel=1e-10)


def test_masks_hold_pixels_at_zero(tmp_path):
    from comptonsky.testing import toy_problem
    problem = toy_problem(nside=2, phi_bin_deg=30.0, n_dead_pixels=3, seed=2)
    user_mask = np.ones(48, dtype=bool)
    user_mask[:5] = False
    ds, deconv = _run(problem, tmp_path, mask=user_mask, accel=False, iterations=5)
    dead = ds.response.exposure == 0
    assert dead.sum() == 3
    for result in deconv.results:
        model = result["model"].contents.value[:, 0]
        assert np.all(model[~user_mask] == 0) and np.all(model[dead] == 0)
        assert np.all(model[user_mask & ~dead] > 0)


def test_stopping_threshold_stops_early(small_problem, tmp_path):
    _, deconv = _run(small_problem, tmp_path, algorithm="RL", iterations=200,
                     threshold=10.0, bkg=False)
    results = deconv.results
    assert 2 < len(results) < 200
    gains = np.diff([r["log-likelihood"][0] for r in results])
    assert gains[-1] < 10.0 and np.all(gains[:-1] >= 10.0)


def test_two_datasets_share_background_norm(small_problem, tmp_path):
    """Two halves of the same data fitted jointly equal the whole data fitted alone."""
    from histpy import Histogram
    counts = small_problem.event.contents
    half = np.floor(counts / 2)
    ev1 = Histogram(small_problem.event.axes, contents=half)
    ev2 = Histogram(small_problem.event.axes, contents=counts - half)
    bkg_half = Histogram(small_problem.background.axes,
                         contents=small_problem.background.contents / 2)
    rsp_half = Histogram(small_problem.response.axes,
                         contents=small_problem.response.contents.value / 2,
                         unit=small_problem.response.unit)
    d1 = DataIF_COSI_DC2.load("a", ev1, {"albedo": bkg_half}, rsp_half)
    d2 = DataIF_COSI_DC2.load("b", ev2, {"albedo": bkg_half}, rsp_half)
    joint = ImageDeconvolution()
    joint.set_dataset([d1, d2])
    joint.read_parameterfile(write_parfile(tmp_path, iterations=5, accel=True))
    joint.initialize()
    joint.run_deconvolution(progress=False, keep_maps="all")
    _, single = _run(small_problem, tmp_path, iterations=5, accel=True)
    for a, b in zip(joint.results, single.results):
        np.testing.assert_allclose(a["model"].contents.value, b["model"].contents.value,
                                   rtol=1e-9)
        assert a["background_normalization"]["albedo"] == pytest.approx(
            b["background_normalization"]["albedo"], rel=1e-9)
        assert len(a["log-likelihood"]) == 2
