"""Starting maps: flat, from a map file, back-projection."""

from __future__ import annotations

import numpy as np
import pytest
from astropy import units as u

from comptonsky.deconvolution.model import AllSkyImageModel
from comptonsky.errors import AxisMismatchError, InvalidParameterError, UnknownChoiceError
from comptonsky.io.histogram import write_histogram

from .conftest import prepared_deconvolution, write_parfile


def _deconv(problem, tmp_path, overrides=(), iterations=1):
    return prepared_deconvolution(problem, write_parfile(tmp_path, iterations=iterations),
                                  overrides)


def test_start_from_map_file(small_problem, tmp_path):
    start = AllSkyImageModel(4, [509, 513] * u.keV, contents=small_problem.truth * 1e4,
                             unit="m-2 s-1 sr-1")
    path = write_histogram(start, tmp_path / "start.hdf5")
    deconv = _deconv(small_problem, tmp_path, [
        "model_definition:initialization:algorithm = map",
        f"model_definition:initialization:file = '{path}'"])
    deconv.initialize()
    np.testing.assert_allclose(deconv.initial_model.contents.value, small_problem.truth)
    np.testing.assert_allclose(deconv.algorithm.model, small_problem.truth[:, 0])


def test_map_file_errors(small_problem, tmp_path):
    wrong = write_histogram(AllSkyImageModel(2, [509, 513] * u.keV), tmp_path / "n2.hdf5")
    deconv = _deconv(small_problem, tmp_path, [
        "model_definition:initialization:algorithm = map",
        f"model_definition:initialization:file = '{wrong}'"])
    with pytest.raises(AxisMismatchError, match="nside"):
        deconv.initialize()
    deconv = _deconv(small_problem, tmp_path, ["model_definition:initialization:algorithm = map"])
    with pytest.raises(InvalidParameterError, match="initialization:file"):
        deconv.initialize()
    with pytest.raises(UnknownChoiceError, match="backprojection"):
        _deconv(small_problem, tmp_path, ["model_definition:initialization:algorithm = bp"])


def test_backprojection_start(small_problem, tmp_path):
    deconv = _deconv(small_problem, tmp_path,
                     ["model_definition:initialization:algorithm = backprojection"])
    deconv.initialize()
    algo = deconv.algorithm
    lam = algo.model
    assert np.all(lam > 0)
    ds = deconv.dataset[0]
    excess = np.maximum(ds.counts - ds.background("albedo"), 0).sum()
    assert np.dot(algo.data.exposure, lam) == pytest.approx(excess, rel=1e-9)
    # it starts closer to the data than the flat map of the parameter file
    flat = _deconv(small_problem, tmp_path)
    flat.initialize()
    assert np.sum(algo.log_likelihoods) > np.sum(flat.algorithm.log_likelihoods)
    # and correlates with the truth
    assert np.corrcoef(lam, small_problem.truth[:, 0])[0, 1] > 0.5
