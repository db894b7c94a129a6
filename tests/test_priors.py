"""Priors: gradients against finite differences, maxima, reference maps from files."""

from __future__ import annotations

import numpy as np
import pytest
from astropy import units as u

from comptonsky.deconvolution.model import AllSkyImageModel
from comptonsky.deconvolution.priors import (
    EnergyTSVPrior,
    EntropyPrior,
    reference_map_from_file,
)
from comptonsky.errors import AxisMismatchError
from comptonsky.io.histogram import write_histogram


def _finite_difference(prior, model, h=1e-7):
    grad = np.zeros_like(model)
    for idx in np.ndindex(model.shape):
        up, down = model.copy(), model.copy()
        up[idx] += h
        down[idx] -= h
        grad[idx] = (prior.log_prior(up) - prior.log_prior(down)) / (2 * h)
    return grad


def test_energy_tsv_gradient_and_value():
    rng = np.random.default_rng(0)
    model = rng.random((12, 4))
    prior = EnergyTSVPrior(3.0)
    np.testing.assert_allclose(prior.grad_log_prior(model), _finite_difference(prior, model),
                               rtol=1e-6, atol=1e-6)
    expected = -3.0 * sum((model[j, k + 1] - model[j, k]) ** 2 for j in range(12)
                          for k in range(3))
    assert prior.log_prior(model) == pytest.approx(expected)
    flat_spectrum = np.repeat(rng.random((12, 1)), 4, axis=1)
    assert prior.log_prior(flat_spectrum) == 0.0  # no penalty without spectral structure
    np.testing.assert_array_equal(prior.grad_log_prior(flat_spectrum), 0.0)
    np.testing.assert_array_equal(prior.grad_log_prior(model[:, :1]), 0.0)  # one band


def test_entropy_gradient_and_maximum_at_reference():
    rng = np.random.default_rng(1)
    reference = rng.random((12, 2)) + 0.5
    prior = EntropyPrior(2.0, reference)
    model = rng.random((12, 2)) + 0.1
    np.testing.assert_allclose(prior.grad_log_prior(model), _finite_difference(prior, model),
                               rtol=1e-5)
    best = prior.log_prior(reference)
    for scale in (0.5, 0.9, 1.1, 2.0):
        assert prior.log_prior(reference * scale) < best
    np.testing.assert_allclose(prior.grad_log_prior(reference), 0.0, atol=1e-15)


def test_reference_map_from_file(tmp_path):
    values = np.arange(48.0).reshape(48, 1) + 1
    image = AllSkyImageModel(2, [509, 513] * u.keV, contents=values, unit="cm-2 s-1 sr-1")
    path = write_histogram(image, tmp_path / "ref.hdf5")
    got = reference_map_from_file(path, image.axes, u.Unit("m-2 s-1 sr-1"))
    np.testing.assert_allclose(got, values * 1e4)
    other = AllSkyImageModel(4, [509, 513] * u.keV)
    with pytest.raises(AxisMismatchError, match="nside"):
        reference_map_from_file(path, other.axes, u.Unit("cm-2 s-1 sr-1"))


def test_map_rl_with_entropy_reference_file_and_energy_tsv(small_problem, tmp_path):

    from .conftest import prepared_deconvolution, write_parfile

    truth = AllSkyImageModel(4, [509, 513] * u.keV, contents=small_problem.truth + 1e-6,
                             unit="cm-2 s-1 sr-1")
    ref = write_histogram(truth, tmp_path / "reference.hdf5")
    path = write_parfile(tmp_path, algorithm="MAP_RL", iterations=5)
    path.write_text(path.read_text().replace(
        "    save_results:",
        f"    prior:\n        entropy:\n            coefficient: 1.0e+3\n"
        f"            reference_map: {{file: '{ref}'}}\n"
        f"        energy_TSV:\n            coefficient: 1.0\n    save_results:"))
    deconv = prepared_deconvolution(small_problem, path)
    deconv.initialize()
    deconv.run_deconvolution(progress=False)
    final = deconv.results[-1]
    assert set(final["log-prior"]) >= {"entropy", "energy_TSV"}
    assert final["log-prior"]["energy_TSV"] == 0.0  # one energy band
    assert np.all(np.isfinite(final["model"].contents.value))
