"""OSEM: restricted products, equivalence with RL for one subset, speed-up per response pass."""

from __future__ import annotations

import numpy as np
import pytest

from comptonsky.deconvolution.subsets import DataSubsets
from comptonsky.errors import InvalidParameterError
from comptonsky.response.dense import DenseResponse
from comptonsky.response.operator import ResponseOperator

from .test_acceleration import loglikes, run


class _WrappedResponse(ResponseOperator):
    """A non-dense backend (exercises the fallback path)."""

    storage = "test"

    def __init__(self, dense: DenseResponse):
        super().__init__(dense.model_axes, dense.data_axes, dense.pixel_solid_angle, dense.unit)
        self._m = dense.matrix

    def _matvec(self, x):
        return x @ self._m

    def _rmatvec(self, y):
        return self._m @ y

    def _row_sums(self):
        return self._m.sum(axis=1)


@pytest.fixture(scope="module")
def dense(small_problem):
    from comptonsky import DataIF_COSI_DC2

    ds = DataIF_COSI_DC2.load("toy", small_problem.event, {"albedo": small_problem.background},
                              small_problem.response)
    return ds.response


@pytest.mark.parametrize("axis,n", [("Phi", 5), ("PsiChi", 7), ("Phi", 1)])
@pytest.mark.parametrize("backend", ["dense", "wrapped"])
def test_subset_products_match_full_products(dense, axis, n, backend):
    response = dense if backend == "dense" else _WrappedResponse(dense)
    subsets = DataSubsets(response, n, axis)
    assert subsets.mode == ("fallback" if backend == "wrapped" else
                            "views" if axis == "Phi" else "permuted")
    all_idx = np.sort(np.concatenate(subsets.indices))
    np.testing.assert_array_equal(all_idx, np.arange(response.n_data))  # a partition
    rng = np.random.default_rng(0)
    x, y = rng.random(response.n_model), rng.random(response.n_data)
    full_fwd = response.forward(x)
    total_back = np.zeros(response.n_model)
    for k, idx in enumerate(subsets.indices):
        np.testing.assert_allclose(subsets.forward(k, x), full_fwd[idx], rtol=1e-12)
        masked = np.zeros_like(y)
        masked[idx] = y[idx]
        np.testing.assert_allclose(subsets.adjoint(k, y[idx]), response.adjoint(masked),
                                   rtol=1e-12)
        total_back += subsets.subset_exposure(k)
    np.testing.assert_allclose(total_back, response.exposure, rtol=1e-12)
    blocks = list(range(0, n, 2))
    np.testing.assert_allclose(subsets.forward_group(blocks, x),
                               full_fwd[subsets.group_indices(blocks)], rtol=1e-12)


@pytest.mark.parametrize("axis", ["Phi", "PsiChi"])
@pytest.mark.parametrize("shape,n", [((3, 12, 48), 5), ((1, 60, 3072), 48), ((2, 1, 7), 7)])
def test_subset_indices_are_the_interleaved_bins(shape, n, axis):
    """Subset k holds, ascending, the flat indices of the bins whose axis index is ≡ k mod n
    (against a grid of every bin); together the subsets cover every bin once."""
    from comptonsky.response.operator import subset_indices

    along = 1 if axis == "Phi" else 2
    n = min(n, shape[along])
    grid = np.arange(int(np.prod(shape))).reshape(shape)
    seen = []
    for k in range(n):
        got = subset_indices(shape, k, n, axis)
        want = np.take(grid, np.arange(k, shape[along], n), axis=along).reshape(-1)
        np.testing.assert_array_equal(got, want)
        assert got.dtype == np.int64
        seen.append(got)
    np.testing.assert_array_equal(np.sort(np.concatenate(seen)), grid.reshape(-1))


def test_too_many_subsets_is_an_error(dense):
    with pytest.raises(InvalidParameterError, match="n_subsets"):
        DataSubsets(dense, 13, "Phi")  # 12 Phi bins


@pytest.mark.parametrize("settings", [
    dict(weighting=False, smoothing=False, bkg=True),
    dict(weighting=True, smoothing=True, bkg=True),
])
def test_one_subset_is_rl(small_problem, tmp_path, settings):
    rl, _ = run(small_problem, tmp_path, iterations=6, accel=False, **settings)
    osem, _ = run(small_problem, tmp_path, algorithm="OSEM", iterations=6, accel=False,
                  overrides=["deconvolution:parameter:n_subsets = 1"], **settings)
    for a, b in zip(rl.results, osem.results):
        np.testing.assert_allclose(b["model"].contents.value, a["model"].contents.value,
                                   rtol=1e-9, atol=1e-15)
        assert b["background_normalization"]["albedo"] == pytest.approx(
            a["background_normalization"]["albedo"], rel=1e-10)
        assert b["log-likelihood"][0] == pytest.approx(a["log-likelihood"][0], rel=1e-12)


def test_osem_reaches_tutorial_likelihood_in_a_fifth_of_the_passes(small_problem, tmp_path):
    ref, ref_passes = run(small_problem, tmp_path, iterations=50, accel=True, alpha_max=2.0,
                          method="max_step")
    target = loglikes(ref)[-1]
    osem, passes = run(small_problem, tmp_path, algorithm="OSEM", iterations=3,
                       overrides=["deconvolution:parameter:n_subsets = 48"])
    assert passes.total <= ref_passes.total / 5
    assert loglikes(osem)[-1] >= target


def test_adaptive_schedule_goes_down_to_one_subset_and_converges(small_problem, tmp_path):
    osem, _ = run(small_problem, tmp_path, algorithm="OSEM", iterations=40, accel=True,
                  method="line_search", overrides=["deconvolution:parameter:n_subsets = 16"])
    algo = osem.algorithm
    assert algo.levels == [16, 8, 4, 2, 1]
    assert algo.current_subsets == 1
    values = loglikes(osem)
    # at one subset the safe line search runs: monotone from there on
    assert np.all(np.diff(values[-10:]) >= -1e-9 * abs(values[-1]))
    const, _ = run(small_problem, tmp_path, algorithm="OSEM", iterations=3, accel=False,
                   overrides=["deconvolution:parameter:n_subsets = 16",
                              "deconvolution:parameter:subset_schedule = constant"])
    assert const.algorithm.levels == [16]


def test_osem_respects_mask_and_minimum_flux(small_problem, tmp_path):
    from comptonsky import DataIF_COSI_DC2, ImageDeconvolution

    from .conftest import write_parfile

    ds = DataIF_COSI_DC2.load("toy", small_problem.event, {"albedo": small_problem.background},
                              small_problem.response)
    deconv = ImageDeconvolution()
    deconv.set_dataset([ds])
    deconv.read_parameterfile(write_parfile(tmp_path, algorithm="OSEM", iterations=3))
    deconv.override_parameter("deconvolution:parameter:n_subsets = 4",
                              "deconvolution:parameter:minimum_flux = {value: 1.0e-7, unit: "
                              "'cm-2 s-1 sr-1'}")
    mask = np.ones(192, dtype=bool)
    mask[:20] = False
    deconv.set_mask(mask)
    deconv.initialize()
    deconv.run_deconvolution(progress=False, keep_maps="all")
    final = deconv.results[-1]["model"].contents.value[:, 0]
    assert np.all(final[:20] == 0)
    assert np.all(final[20:] >= 1e-7)


def test_subsets_shared_between_runs_on_one_response(dense, small_problem, tmp_path):
    from comptonsky.deconvolution.subsets import subsets_for

    first = subsets_for(dense, 4, "PsiChi")
    assert subsets_for(dense, 4, "PsiChi") is first  # one permuted copy per response
    assert subsets_for(dense, 8, "PsiChi") is not first
    osem, _ = run(small_problem, tmp_path, algorithm="OSEM", iterations=30, overrides=[
        "deconvolution:parameter:n_subsets = 8",
        "deconvolution:parameter:stopping_criteria:statistics = cross-validation"])
    assert 1 <= osem.algorithm.cross_validation["best_iteration"] <= 30
    assert len(osem.results) == osem.algorithm.cross_validation["best_iteration"]


def _fit(problem, tmp_path, algorithm, overrides=(), **response_options):
    from comptonsky import DataIF_COSI_DC2, ImageDeconvolution

    from .conftest import write_parfile

    ds = DataIF_COSI_DC2.load("toy", problem.event, {"albedo": problem.background},
                              problem.response, **response_options)
    deconv = ImageDeconvolution()
    deconv.set_dataset([ds])
    deconv.read_parameterfile(write_parfile(tmp_path, algorithm=algorithm, iterations=6,
                                            accel=algorithm == "RL", alpha_max=3.0))
    deconv.override_parameter(*overrides)
    deconv.initialize()
    deconv.run_deconvolution(progress=False, keep_maps="all")
    return deconv, np.array([r["model"].contents.value for r in deconv.results])


@pytest.mark.parametrize("axis", ["Phi", "PsiChi"])
def test_osem_maps_agree_on_every_storage(small_problem, tmp_path, axis):
    over = ["deconvolution:parameter:n_subsets = 4",
            f"deconvolution:parameter:subset_axis = {axis}",
            "deconvolution:parameter:subset_schedule = constant"]
    _, dense = _fit(small_problem, tmp_path, "OSEM", over)
    for storage, opts in (("sparse", {"sparse_threshold": 0.0}),
                          ("out-of-core", {"memory_budget": "64 kB",
                                           "cache_dir": str(tmp_path)})):
        deconv, maps = _fit(small_problem, tmp_path, "OSEM", over, storage=storage, **opts)
        assert deconv.dataset[0].response.storage == storage
        assert np.abs(maps - dense).max() <= 1e-10 * np.abs(dense).max()


def test_reused_products_give_the_same_maps(small_problem, tmp_path):
    deconv, reused = _fit(small_problem, tmp_path, "RL")
    assert deconv.algorithm.data.operators[0].products_reused > 0
    plain_deconv, plain = _fit(small_problem, tmp_path, "RL", reuse_products=False)
    assert not hasattr(plain_deconv.algorithm.data.operators[0], "products_reused")
    assert np.abs(reused - plain).max() <= 1e-13 * np.abs(plain).max()
