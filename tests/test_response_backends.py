"""Every response backend against the float64 dense reference: adjointness and equivalence."""

from __future__ import annotations

import numpy as np
import pytest

from comptonsky.errors import AxisMismatchError, InvalidDataError, InvalidParameterError
from comptonsky.response.dense import DenseResponse
from comptonsky.response.load import load_response
from comptonsky.response.outofcore import OutOfCoreResponse
from comptonsky.response.reuse import ReusedProducts
from comptonsky.response.sparse import SparseResponse, index_dtype
from comptonsky.response.synthetic import cone_response

BACKENDS = [
    ("dense", "float64", {}),
    ("dense", "float32", {}),
    ("sparse", "float64", {"sparse_threshold": 0.0}),
    ("sparse", "float32", {"sparse_threshold": 0.0}),
    ("out-of-core", "float64", {"memory_budget": 40_000}),   # a few rows per block
    ("out-of-core", "float32", {"memory_budget": "1 MiB"}),
]
TOL = {"float64": 1e-12, "float32": 2e-6}


@pytest.fixture(scope="module", params=[12, 2], ids=["phi12", "phi2"])
def cone(request):
    """Small cone response (nside 4); n_phi=2 exercises row-chunked kernel tiles."""
    return cone_response(nside=4, n_phi=request.param, ring_width_deg=10.0)


@pytest.fixture(scope="module")
def reference(cone):
    op = load_response(cone)
    assert isinstance(op, DenseResponse) and op.dtype == np.float64
    return op


@pytest.fixture(scope="module")
def vectors(reference):
    rng = np.random.default_rng(3)
    return rng.random(reference.n_model), rng.random(reference.n_data)


def _rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("storage,dtype,opts", BACKENDS,
                         ids=[f"{s}-{d}" for s, d, _ in BACKENDS])
def test_backend_matches_dense_float64(cone, reference, vectors, tmp_path, storage, dtype, opts):
    op = load_response(cone, dtype=dtype, storage=storage, cache_dir=tmp_path, **opts)
    assert op.dtype == np.dtype(dtype)
    assert op.storage == storage
    x, y = vectors
    tol = TOL[dtype]
    assert op.check_adjointness() < tol
    assert _rel(op.forward(x), reference.forward(x)) < tol
    assert _rel(op.adjoint(y), reference.adjoint(y)) < tol
    assert _rel(op.exposure, reference.exposure) < tol
    # model- and data-shaped inputs are accepted, outputs are flat float64
    f = op.forward(x.reshape(op.model_shape))
    assert f.shape == (op.n_data,) and f.dtype == np.float64
    a = op.adjoint(y.reshape(op.data_shape))
    assert a.shape == (op.n_model,) and a.dtype == np.float64


def test_out_of_core_streams_in_blocks(cone, tmp_path):
    op = load_response(cone, storage="out-of-core", memory_budget=40_000, cache_dir=tmp_path)
    assert isinstance(op, OutOfCoreResponse)
    assert 1 <= op.block_rows < op.n_model
    assert op.nbytes <= 40_000
    # a private temporary file: nothing is left in the directory
    assert list(tmp_path.iterdir()) == []


def test_sparse_threshold_reports_dropped_flux(cone, reference):
    op = load_response(cone, storage="sparse", sparse_threshold=1e-2)
    assert isinstance(op, SparseResponse)
    m = reference.matrix
    keep = m > 1e-2 * m.max(axis=1, keepdims=True)
    assert op.nnz == np.count_nonzero(keep)
    assert op.density == pytest.approx(keep.mean())
    dropped = 1.0 - m[keep].sum() / m.sum()
    assert op.dropped_flux_fraction == pytest.approx(dropped, rel=1e-9)
    assert 0 < op.dropped_flux_fraction <= op.max_row_dropped_fraction < 0.05
    # the operator is its stored elements exactly (and so stays self-consistent)
    kept = np.where(keep, m, 0.0)
    x = np.random.default_rng(0).random(op.n_model)
    ref_fwd = (x * op.pixel_solid_angle) @ kept
    assert _rel(op.forward(x), ref_fwd) < 1e-12
    assert _rel(op.exposure, kept.sum(axis=1) * op.pixel_solid_angle) < 1e-12
    assert op.check_adjointness() < 1e-12


def test_sparse_threshold_zero_keeps_every_nonzero(cone, reference):
    op = load_response(cone, storage="sparse", sparse_threshold=0.0)
    assert op.nnz == np.count_nonzero(reference.matrix)
    assert op.dropped_flux_fraction == 0.0
    assert op.bytes_per_product < reference.bytes_per_product


def test_index_dtype():
    assert index_dtype(3072) == np.uint16
    assert index_dtype(65536) == np.uint16
    assert index_dtype(65537) == np.int32


def test_float32_rl_map_matches_float64(tmp_path):
    """The tutorial's RL on a small problem: float32 and sparse maps agree with float64."""
    from histpy import Axes, Histogram

    from comptonsky import DataIF_COSI_DC2, ImageDeconvolution

    rsp = cone_response(nside=4, n_phi=12, ring_width_deg=10.0)
    ref = load_response(rsp)
    rng = np.random.default_rng(5)
    sky = np.full(ref.n_model, 2e-4)
    sky[:10] = 5e-3
    bkg = ref.forward(np.full(ref.n_model, 1e-4))
    counts = rng.poisson(ref.forward(sky) + bkg).astype(float)
    data_axes = Axes([rsp.axes["Em"], rsp.axes["Phi"], rsp.axes["PsiChi"]])
    shape = tuple(int(n) for n in data_axes.nbins)
    event = Histogram(data_axes, contents=counts.reshape(shape))
    background = Histogram(data_axes, contents=bkg.reshape(shape))
    par = tmp_path / "par.yml"
    par.write_text(
        "model_definition:\n  class: AllSkyImage\n  property:\n    coordinate: galactic\n"
        "    nside: 4\n    scheme: ring\n    energy_edges: {value: [509.0, 513.0], unit: keV}\n"
        "    unit: cm-2 s-1 sr-1\n  initialization:\n    algorithm: flat\n"
        "    parameter: {value: [1e-4], unit: cm-2 s-1 sr-1}\n"
        "deconvolution:\n  algorithm: RL\n  parameter:\n    iteration_max: 20\n"
        "    acceleration: {activate: True, alpha_max: 2.0}\n"
        "    response_weighting: {activate: False, index: 0.5}\n"
        "    smoothing: {activate: False, FWHM: {value: 2.0, unit: deg}}\n"
        "    stopping_criteria: {statistics: log-likelihood, threshold: 0.0}\n"
        "    background_normalization_optimization: {activate: True, range: {albedo: [0.01, 10.0]}}\n"
        "    save_results: {activate: False, directory: ./results, only_final_result: True}\n")

    def run(**opts):
        data = DataIF_COSI_DC2.load("t", event, {"albedo": background}, rsp=rsp, **opts)
        deco = ImageDeconvolution()
        deco.set_dataset([data])
        deco.read_parameterfile(par)
        deco.initialize()
        deco.run_deconvolution(progress=False)
        return np.asarray(deco.results[-1]["model"].contents.value).reshape(-1)

    m64 = run()
    m32 = run(dtype="float32")
    msp = run(dtype="float64", storage="sparse", sparse_threshold=0.0)
    mooc = run(dtype="float32", storage="out-of-core", memory_budget="64 kB",
               cache_dir=str(tmp_path))
    assert _rel(m32, m64) < 1e-3
    assert _rel(msp, m64) < 1e-9
    assert _rel(mooc, m64) < 1e-3


@pytest.mark.parametrize("storage,dtype,opts", BACKENDS,
                         ids=[f"{s}-{d}" for s, d, _ in BACKENDS])
def test_forward_reuses_products_on_a_line(cone, reference, tmp_path, storage, dtype, opts):
    """An accelerated step x0 + α(x1 − x0), clipped on a few pixels, costs no full product."""
    op = ReusedProducts(load_response(cone, dtype=dtype, storage=storage, cache_dir=tmp_path,
                                      **opts))
    rng = np.random.default_rng(7)
    x0 = rng.random(op.n_model)
    x1 = x0 + 0.3 * rng.standard_normal(op.n_model)
    op.forward(x0)
    op.forward(x1)
    x2 = x0 + 1.7 * (x1 - x0)
    x2[[3, 50]] = 0.0                       # clipped pixels
    before = op.products_computed
    got = op.forward(x2)
    assert op.products_computed == before and op.products_reused == 1
    tol = max(TOL[dtype], 1e-10)
    assert _rel(got, reference.forward(x2)) < tol
    again = op.forward(x2)                  # the same model again: reused, not recomputed
    assert op.products_computed == before and np.array_equal(again, got)
    got[:] = -1                              # callers may modify results in place
    assert _rel(op.forward(x2), reference.forward(x2)) < tol
    # an unrelated model is computed in full
    x3 = rng.random(op.n_model)
    assert _rel(op.forward(x3), reference.forward(x3)) < tol
    assert op.products_computed == before + 1
    op.reuse_products = False
    op.forward(x3)
    assert op.products_computed == before + 2


# --- operator contract: composition, subsets, options --------------------------------------

def _dense_of(op):
    """The operator's matrix (n_model, n_data) from products with the unit vectors."""
    return np.array([op.forward(e) for e in np.eye(op.n_model)])


def test_compositions_are_adjoint_and_match_dense_products(reference):
    from comptonsky.response.linear import (
        BlockStack,
        DiagonalOperator,
        MatrixOperator,
        ProductOperator,
        adjointness_test,
    )

    rng = np.random.default_rng(11)
    n, m = reference.n_model, reference.n_data
    conv = MatrixOperator(rng.random((n, n)))            # e.g. a sky → detector conversion
    scale = DiagonalOperator(rng.random(m) + 0.5)
    product = scale @ reference @ conv
    assert isinstance(product, ProductOperator) and product.shape == (n, m)
    stack = BlockStack([reference, reference @ conv, scale @ reference])
    assert stack.shape == (n, 3 * m)
    r = reference.matrix * reference.pixel_solid_angle[:, None]
    c = conv.matrix
    expected = {"product": (c @ r) * scale.diagonal,
                "stack": np.hstack([r, c @ r, r * scale.diagonal])}
    x, y = rng.random(n), rng.random(3 * m)
    for name, op in (("product", product), ("stack", stack)):
        assert adjointness_test(op, seed=2) < 1e-12
        want = expected[name]
        assert _rel(op.forward(x), x @ want) < 1e-12
        assert _rel(op.adjoint(y[:op.n_data]), want @ y[:op.n_data]) < 1e-12
        assert _rel(op.exposure, want.sum(axis=1)) < 1e-12
        rows = np.array([1, 7, 30])
        assert _rel(op.forward_partial(rows, x[rows]), x[rows] @ want[rows]) < 1e-12
    with pytest.raises(AxisMismatchError, match="model elements"):
        conv @ reference


@pytest.mark.parametrize("storage,dtype,opts", BACKENDS,
                         ids=[f"{s}-{d}" for s, d, _ in BACKENDS])
@pytest.mark.parametrize("axis", ["Phi", "PsiChi"])
def test_subsets_are_the_restricted_products(cone, reference, vectors, tmp_path, storage, dtype,
                                             opts, axis):
    op = load_response(cone, dtype=dtype, storage=storage, cache_dir=tmp_path, **opts)
    x, y = vectors
    tol = TOL[dtype]
    n_subsets = min(3, op.data_shape[1 if axis == "Phi" else 2])
    full_fwd, total = reference.forward(x), np.zeros(op.n_model)
    covered = []
    for k in range(n_subsets):
        sub = op.subset(k, n_subsets, axis)
        idx = sub.data_indices
        covered.append(idx)
        assert sub.shape == (op.n_model, len(idx)) and sub.dtype == op.dtype
        assert sub.check_adjointness() < tol
        assert _rel(sub.forward(x), full_fwd[idx]) < tol
        masked = np.zeros(op.n_data)
        masked[idx] = y[idx]
        assert _rel(sub.adjoint(y[idx]), reference.adjoint(masked)) < tol
        rows = np.array([0, 5, 40])
        assert _rel(sub.forward_partial(rows, x[rows]),
                    reference.forward_partial(rows, x[rows])[idx]) < tol
        total += sub.exposure
    np.testing.assert_array_equal(np.sort(np.concatenate(covered)), np.arange(op.n_data))
    assert _rel(total, reference.exposure) < tol


@pytest.mark.parametrize("threads", [1, 3, 1000])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_sparse_products_on_any_number_of_threads(cone, reference, vectors, tmp_path, threads,
                                                  dtype):
    """Full and subset products equal the dense reference whatever the row ranges per thread
    (more threads than rows included), with PsiChi subsets of unequal widths (192 pixels in 5
    or 7 subsets) and 16 subsets (three contiguous runs of the grouped forward rows each)."""
    from comptonsky.response.sparse import kernel_threads, set_kernel_threads

    op = load_response(cone, dtype=dtype, storage="sparse", sparse_threshold=0.0,
                       cache_dir=tmp_path)
    x, y = vectors
    tol = TOL[dtype]
    try:
        set_kernel_threads(threads)
        assert kernel_threads() == threads
        assert _rel(op.forward(x), reference.forward(x)) < tol
        assert _rel(op.adjoint(y), reference.adjoint(y)) < tol
        full = reference.forward(x)
        for n_subsets in (5, 7, 16):
            back = np.zeros(op.n_model)
            for k in range(n_subsets):
                sub = op.subset(k, n_subsets, "PsiChi")
                assert sub.mode == "rows"
                idx = sub.data_indices
                assert _rel(sub.forward(x), full[idx]) < tol
                back += sub.adjoint(y[idx])
            assert _rel(back, reference.adjoint(y)) < tol
    finally:
        set_kernel_threads(None)
    with pytest.raises(InvalidParameterError):
        set_kernel_threads(0)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_sparse_psichi_subset_adjoint_of_mostly_empty_data(cone, reference, tmp_path, dtype):
    """The strided PsiChi subsets skip the zero data (OSEM's ratios on empty bins): with 90 %
    zeros, negative values and one subset holding only zeros, the adjoint still equals the
    dense reference's on the masked data, and the forward rows it uses are the subset's."""
    op = load_response(cone, dtype=dtype, storage="sparse", sparse_threshold=0.0,
                       cache_dir=tmp_path)
    rng = np.random.default_rng(3)
    y = rng.normal(size=op.n_data) * (rng.random(op.n_data) < 0.1)
    n_subsets = 4
    y[op.subset(2, n_subsets, "PsiChi").data_indices] = 0.0
    back = np.zeros(op.n_model)
    for k in range(n_subsets):
        sub = op.subset(k, n_subsets, "PsiChi")
        assert sub.mode == "rows" and sub.extra_bytes == 0
        idx = sub.data_indices
        masked = np.zeros(op.n_data)
        masked[idx] = y[idx]
        got = sub.adjoint(y[idx])
        if k == 2:
            np.testing.assert_array_equal(got, 0.0)
        else:
            assert _rel(got, reference.adjoint(masked)) < TOL[dtype]
        back += got
    assert _rel(back, reference.adjoint(y)) < TOL[dtype]


def test_sparse_forward_grouping_is_a_relayout(cone, reference, vectors, tmp_path):
    """The forward orientation grouped by PsiChi pixel mod 48 (the default for 192 pixels) holds
    the elements of the ungrouped one, row by row; both give the reference's products, in full
    and on Phi and PsiChi subsets, and a shape that does not fit the grouping is refused."""
    from comptonsky.response.sparse import PSI_GROUPS, SparseResponse, transpose

    op = load_response(cone, dtype="float64", storage="sparse", sparse_threshold=0.0,
                       cache_dir=tmp_path)
    assert op.psi_groups == PSI_GROUPS and op.n_psi % PSI_GROUPS == 0
    flat = transpose(op.rows, 1)
    n_seg, w = op.n_seg, op.n_psi // PSI_GROUPS
    for k, p in [(0, 0), (1, 47), (n_seg - 1, op.n_psi - 1), (n_seg // 2, 100)]:
        a = slice(flat.ptr[k, p], flat.ptr[k, p + 1])
        s, r = (p % PSI_GROUPS) * n_seg + k, p // PSI_GROUPS
        b = slice(op.cols.ptr[s, r], op.cols.ptr[s, r + 1])
        np.testing.assert_array_equal(flat.idx[a], op.cols.idx[b])
        np.testing.assert_array_equal(flat.val[a], op.cols.val[b])
    assert op.cols.ptr.shape == (PSI_GROUPS * n_seg, w + 1)
    x, y = vectors
    args = (op.model_axes, op.data_axes, op.pixel_solid_angle, op.unit)
    plain = SparseResponse(op.rows, flat, *args, psi_groups=1)
    for o in (op, plain):
        assert _rel(o.forward(x), reference.forward(x)) < 1e-12
        for axis, n in (("Phi", 2), ("PsiChi", 48), ("PsiChi", 3)):
            sub = o.subset(1, n, axis)
            assert _rel(sub.forward(x), reference.forward(x)[sub.data_indices]) < 1e-12
            masked = np.zeros(o.n_data)
            masked[sub.data_indices] = y[sub.data_indices]
            assert _rel(sub.adjoint(y[sub.data_indices]), reference.adjoint(masked)) < 1e-12
    with pytest.raises(InvalidDataError, match="PsiChi groups"):
        SparseResponse(op.rows, flat, *args, psi_groups=PSI_GROUPS)
    with pytest.raises(InvalidParameterError, match="PsiChi groups"):
        transpose(op.rows, 7)


def test_row_splits_balance_the_stored_elements():
    from comptonsky.response.sparse import row_splits

    lengths = np.array([[5, 0, 0, 5], [1, 1, 1, 7]])
    ptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    start, end = ptr[:-1].reshape(2, 4), ptr[1:].reshape(2, 4)
    cuts = row_splits(start, end, 2)
    assert cuts[0] == 0 and cuts[-1] == 8 and np.all(np.diff(cuts) >= 0)
    halves = [lengths.reshape(-1)[a:b].sum() for a, b in zip(cuts[:-1], cuts[1:])]
    assert halves == [10, 10]
    assert row_splits(start, end, 20).tolist()[-1] == 8


def test_reused_products_wrapper_keeps_the_operator():
    from comptonsky.response.reuse import ReusedProducts

    op = load_response(cone_response(nside=2, n_phi=4, ring_width_deg=20.0))
    wrapped = ReusedProducts(op)
    assert wrapped.matrix is op.matrix and wrapped.storage == "dense"
    assert wrapped.backend == "DenseResponse" and wrapped.info is op.info
    assert wrapped.check_adjointness() < 1e-12
    np.testing.assert_array_equal(wrapped.exposure, op.exposure)


@pytest.mark.parametrize("mapping,exc,words", [
    ({"storrage": "dense"}, "UnknownChoiceError", ["storrage", "storage", "test.yml"]),
    ({"storage": "fast"}, "UnknownChoiceError", ["fast", "sparse"]),
    ({"device": 1}, "UnknownChoiceError", ["'gpu'"]),
    ({"cache": "yes"}, "InvalidParameterError", ["cache", "yes", "true or false"]),
    ({"sparse_threshold": -0.5}, "InvalidParameterError", ["sparse_threshold", "-0.5"]),
    ({"memory_budget": "2 parsecs"}, "InvalidParameterError", ["memory_budget", "2 parsecs"]),
    ({"cache_dir": 3}, "InvalidParameterError", ["cache_dir", "3"]),
])
def test_response_options_errors_name_the_key(mapping, exc, words):
    from comptonsky import errors
    from comptonsky.response.options import ResponseOptions

    with pytest.raises(getattr(errors, exc)) as info:
        ResponseOptions.from_mapping(mapping, "test.yml")
    assert "\n" not in str(info.value)
    for w in words:
        assert w in str(info.value)


def test_response_options_values_and_fields():
    from comptonsky.response.options import ResponseOptions

    opts = ResponseOptions.from_mapping({"memory_budget": "1 GiB", "storage": "ooc",
                                         "dtype": np.float32, "cache": None})
    assert (opts.memory_budget, opts.storage, opts.dtype, opts.cache) == \
        (2 ** 30, "out-of-core", "float32", True)
    again = ResponseOptions.from_mapping({"cache": False}, base=opts)
    assert again.memory_budget == 2 ** 30 and again.cache is False
    fields = ResponseOptions.fields()
    assert set(fields) == set(opts.to_dict())
    assert fields["storage"]["choices"] == ("dense", "sparse", "out-of-core", "auto")
