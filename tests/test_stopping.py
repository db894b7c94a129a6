"""Cross-validation stopping by binomial thinning."""

from __future__ import annotations

import numpy as np
import pytest

from comptonsky.deconvolution.stopping import dataset_with_counts, thin_counts
from comptonsky.errors import InvalidParameterError
from comptonsky.testing import toy_problem

from .test_acceleration import run


def test_thinning_splits_counts_binomially():
    rng = np.random.default_rng(0)
    counts = rng.poisson(20.0, 20000).astype(float)
    fit, val = thin_counts(counts, 0.3, rng)
    np.testing.assert_array_equal(fit + val, counts)
    assert fit.min() >= 0 and val.min() >= 0
    assert fit.sum() / counts.sum() == pytest.approx(0.3, abs=0.005)
    # thinned Poisson counts are Poisson: variance ≈ mean in each part, parts uncorrelated
    assert fit.var() / fit.mean() == pytest.approx(1.0, abs=0.05)
    assert abs(np.corrcoef(fit, val)[0, 1]) < 0.03
    with pytest.raises(InvalidParameterError, match="integer"):
        thin_counts(counts + 0.5, 0.3, rng)


def test_dataset_with_counts_shares_the_response(small_problem):
    from comptonsky import DataIF_COSI_DC2

    ds = DataIF_COSI_DC2.load("toy", small_problem.event, {"albedo": small_problem.background},
                              small_problem.response)
    copy = dataset_with_counts(ds, ds.counts * 0 + 1, background_scale=0.5)
    assert copy.response is ds.response
    np.testing.assert_array_equal(copy.counts, 1.0)
    np.testing.assert_allclose(copy.background("albedo"), 0.5 * ds.background("albedo"))


@pytest.fixture(scope="module")
def faint_problem():
    """Few counts: RL starts fitting noise after some iterations."""
    return toy_problem(nside=4, phi_bin_deg=15.0, exposure_cm2s=2e6, background_counts=3000.0,
                       seed=11)


def test_cross_validation_stops_at_the_validation_peak(faint_problem, tmp_path):
    overrides = ["deconvolution:parameter:stopping_criteria:statistics = cross-validation",
                 "deconvolution:parameter:stopping_criteria:patience = 3"]
    deconv, _ = run(faint_problem, tmp_path, iterations=200, accel=True, method="line_search",
                    overrides=overrides)
    cv = deconv.algorithm.cross_validation
    history = np.array(cv["validation_log_likelihood"])
    best = cv["best_iteration"]
    assert 1 <= best < 200  # the peak is found before iteration_max
    assert history[best] == history.max()
    assert len(history) == best + 4  # stopped `patience` iterations after the peak
    assert len(deconv.results) == best  # the final run on all counts stops there
    assert deconv.results[-1]["validation-log-likelihood"] == pytest.approx(history[best])
    # the fit to all counts keeps rising with more iterations; the chosen map is less noisy
    longer, _ = run(faint_problem, tmp_path, iterations=200, accel=True, method="line_search")
    truth = faint_problem.truth
    err_cv = np.abs(deconv.results[-1]["model"].contents.value - truth).sum()
    err_long = np.abs(longer.results[-1]["model"].contents.value - truth).sum()
    assert err_cv < err_long


def test_cross_validation_needs_a_valid_fraction(faint_problem, tmp_path):
    with pytest.raises(InvalidParameterError, match="validation_fraction"):
        run(faint_problem, tmp_path, iterations=5, overrides=[
            "deconvolution:parameter:stopping_criteria:statistics = cross-validation",
            "deconvolution:parameter:stopping_criteria:validation_fraction = 1.0"])
