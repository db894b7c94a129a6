"""The compiled sparse product kernels against plain Python loops and their numba twins, their
argument checks, and the numba-free hot path they give."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from comptonsky.errors import UnknownChoiceError
from comptonsky.response import sparse
from comptonsky.response.load import load_response
from comptonsky.response.synthetic import cone_response

C = sparse._c_kernels
IDX = [np.uint16, np.int32]
VAL = [np.float32, np.float64]


def test_compiled_kernels_are_built_and_in_use():
    """The package's install builds the C module; the products use it by default."""
    assert C is not None, "comptonsky.response._sparse_kernels was not built (pip install -e .)"
    assert sparse.kernels_in_use() == "c"


def _segments(rng, n_seg, n_rows, n_cols, idx_dtype, val_dtype):
    """Random segmented CSR with empty rows, plus bounds as the strided views the operators
    pass (``ptr[:, :-1]``, ``ptr[:, 1:]``)."""
    lengths = rng.integers(0, 9, size=(n_seg, n_rows))
    lengths[rng.random((n_seg, n_rows)) < 0.2] = 0
    cum = np.concatenate([[0], np.cumsum(lengths.reshape(-1))])
    ptr = np.stack([cum[k * n_rows:(k + 1) * n_rows + 1] for k in range(n_seg)])
    nnz = int(lengths.sum())
    idx = rng.integers(0, n_cols, size=nnz).astype(idx_dtype)
    val = rng.random(nnz).astype(val_dtype)
    return ptr, idx, val


def _gather_ref(start, end, idx, val, vec, stride, q0, q1, out):
    n_rows = start.shape[1]
    for q in range(q0, q1):
        k, r = divmod(q, n_rows)
        for n in range(start[k, r], end[k, r]):
            out[k, r] += float(val[n]) * float(vec[k * stride + int(idx[n])])


@pytest.mark.parametrize("idx_dtype", IDX)
@pytest.mark.parametrize("val_dtype", VAL)
@pytest.mark.parametrize("q0,q1", [(0, 60), (7, 41), (13, 14), (20, 20)])
def test_gather_matches_python_loops_and_numba(idx_dtype, val_dtype, q0, q1):
    rng = np.random.default_rng(1)
    n_seg, n_rows, width = 4, 15, 37
    ptr, idx, val = _segments(rng, n_seg, n_rows, width, idx_dtype, val_dtype)
    vec = rng.standard_normal(n_seg * width + 5).astype(val_dtype)
    start, end = ptr[:, :-1], ptr[:, 1:]            # non-contiguous views
    ref = np.zeros((n_seg, n_rows))
    _gather_ref(start, end, idx, val, vec, width, q0, q1, ref)
    got = np.zeros((n_seg, n_rows), dtype=val_dtype)
    C.gather(start, end, idx, val, vec, width, width, np.array([q0, q1]), got)
    twin = np.zeros_like(got)
    sparse._gather(start, end, idx, val, vec, width, width, q0, q1, twin)
    tol = 1e-5 if val_dtype == np.float32 else 1e-13
    np.testing.assert_allclose(got, ref, rtol=tol, atol=tol)
    np.testing.assert_allclose(got, twin, rtol=tol, atol=tol)
    outside = np.ones(n_seg * n_rows, dtype=bool)
    outside[q0:q1] = False
    assert not got.reshape(-1)[outside].any()        # rows outside q0:q1 untouched


@pytest.mark.parametrize("idx_dtype", IDX)
@pytest.mark.parametrize("val_dtype", VAL)
def test_scatter_matches_python_loops_and_skips_zero_data(idx_dtype, val_dtype):
    rng = np.random.default_rng(2)
    n_seg, w, n_cols = 3, 11, 29
    ptr, idx, val = _segments(rng, n_seg, w, n_cols, idx_dtype, val_dtype)
    vec = rng.standard_normal(n_seg * w).astype(val_dtype)
    vec[rng.random(vec.size) < 0.5] = 0
    start, end = ptr[:, :-1], ptr[:, 1:]
    q0, q1 = 4, 30
    ref = np.zeros(n_cols)
    for q in range(q0, q1):
        k, t = divmod(q, w)
        for n in range(start[k, t], end[k, t]):
            ref[int(idx[n])] += float(val[n]) * float(vec[q])
    got = np.zeros((1, n_cols))
    C.scatter(start, end, idx, val, vec, np.array([q0, q1]), got)
    got = got[0]
    twin = np.zeros(n_cols)
    sparse._scatter(start, end, idx, val, vec, q0, q1, twin)
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12)
    # the numba twin rounds each float32 product to float32 before the float64 sum
    tol = 1e-6 if val_dtype == np.float32 else 1e-12
    np.testing.assert_allclose(got, twin, rtol=tol, atol=tol)


@pytest.mark.parametrize("idx_dtype", IDX)
@pytest.mark.parametrize("val_dtype", VAL)
def test_scatter_rows_matches_python_loops(idx_dtype, val_dtype):
    rng = np.random.default_rng(3)
    n_seg, n_rows, width = 3, 10, 23
    ptr, idx, val = _segments(rng, n_seg, n_rows, width, idx_dtype, val_dtype)
    rows = np.array([0, 9, 4, 4], dtype=np.int64)    # repeated rows add up
    coef = rng.standard_normal(rows.size)
    ref = np.zeros((n_seg, width))
    for j, c in zip(rows, coef):
        for k in range(n_seg):
            for n in range(ptr[k, j], ptr[k, j + 1]):
                ref[k, int(idx[n])] += float(val[n]) * c
    got = np.zeros((n_seg, width))
    C.scatter_rows(ptr, idx, val, rows, coef, got)
    twin = np.zeros((n_seg, width))
    sparse._scatter_rows(ptr, idx, val, rows, coef, twin)
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got, twin, rtol=1e-12, atol=1e-12)


def _gather_args():
    rng = np.random.default_rng(4)
    ptr, idx, val = _segments(rng, 2, 5, 8, np.uint16, np.float32)
    vec = np.ones(16, np.float32)
    out = np.zeros((2, 5), np.float32)
    return [ptr[:, :-1], ptr[:, 1:], idx, val, vec, 8, 8, np.array([0, 4, 10]), out]


@pytest.mark.parametrize("position,bad,kind,message", [
    (0, np.zeros((2, 5), np.int32), TypeError, "start: expected int64, found int32"),
    (2, np.zeros(3, np.int64), TypeError, "idx: expected uint16 or int32, found int64"),
    (3, None, TypeError, "val: expected"),
    (4, np.ones(16, np.float64), TypeError, "val is float32 but vec is float64"),
    (4, np.ones(12, np.float32), ValueError, "vec has 12 elements"),
    (7, np.array([0, 11]), ValueError, "splits: expected non-decreasing row boundaries in "
                                       "0:10, found 11 at position 1"),
    (7, np.array([0, 6, 4]), ValueError, "found 4 at position 2"),
    (7, np.array([3]), ValueError, "splits: expected at least 2 boundaries, found 1"),
    (7, np.array([0, 10], np.int32), TypeError, "splits: expected int64, found int32"),
    (8, np.zeros((2, 4), np.float32), ValueError, "differ in shape"),
    (8, np.zeros((5, 2), np.float32).T, TypeError, "out: expected a writable array, C-cont"),
    (8, np.zeros(10, np.float32), ValueError, "out: expected 2 dimensions, found 1"),
])
def test_gather_rejects_bad_arguments(position, bad, kind, message):
    """Wrong dtypes, shapes, ranges and a non-contiguous or read-only output raise a one-line
    error naming the argument, before any element is read."""
    args = _gather_args()
    args[position] = bad
    with pytest.raises(kind, match=message.replace("(", r"\(")):
        C.gather(*args)


def test_kernels_reject_row_bounds_outside_the_elements():
    """A damaged pointer array (beyond the stored elements, or decreasing) raises instead of
    reading outside the arrays."""
    args = _gather_args()
    ptr = np.concatenate([args[0], args[1][:, -1:]], axis=1)
    ptr[1, 3] = 10_000
    args[0], args[1] = ptr[:, :-1], ptr[:, 1:]
    with pytest.raises(ValueError, match="row bounds outside"):
        C.gather(*args)
    out = np.zeros((2, 8))
    with pytest.raises(ValueError, match="row bounds outside"):
        C.scatter(args[0], args[1], args[2], args[3], np.ones(10, np.float32),
                  np.array([0, 5, 10]), out)
    with pytest.raises(ValueError, match="out has 2 rows, expected one per range"):
        C.scatter(args[0], args[1], args[2], args[3], np.ones(10, np.float32),
                  np.array([0, 10]), out)
    with pytest.raises(ValueError, match="row bounds outside"):
        C.scatter_rows(ptr, args[2], args[3], np.array([2], np.int64), np.ones(1),
                       np.zeros((2, 8)))
    with pytest.raises(ValueError, match="row 5 outside 0:5"):
        C.scatter_rows(ptr, args[2], args[3], np.array([5], np.int64), np.ones(1),
                       np.zeros((2, 8)))
    read_only = np.zeros((2, 5), np.float32)
    read_only.flags.writeable = False
    args = _gather_args()
    args[8] = read_only
    with pytest.raises(TypeError, match="out: expected a writable array"):
        C.gather(*args)


@pytest.mark.parametrize("splits", [[0, 60], [0, 30, 60], [0, 1, 2, 59, 60], [0, 0, 0, 60, 60],
                                    list(range(61))], ids=["1", "2", "4", "empty", "60"])
def test_results_do_not_depend_on_the_ranges_per_thread(splits):
    """Any split of the rows (more ranges than threads, empty ranges, one row each) gives the
    serial result bit for bit (gather: each row summed by one thread; scatter: one output row
    per range, summed afterwards in range order)."""
    rng = np.random.default_rng(6)
    ptr, idx, val = _segments(rng, 4, 15, 37, np.uint16, np.float32)
    vec = rng.standard_normal(4 * 37).astype(np.float32)
    start, end = ptr[:, :-1], ptr[:, 1:]
    serial = np.zeros((4, 15), np.float32)
    C.gather(start, end, idx, val, vec, 37, 37, np.array([0, 60]), serial)
    got = np.zeros((4, 15), np.float32)
    C.gather(start, end, idx, val, vec, 37, 37, np.array(splits), got)
    np.testing.assert_array_equal(got, serial)
    data = rng.standard_normal(60).astype(np.float32)
    per_range = np.zeros((len(splits) - 1, 37))
    C.scatter(start, end, idx, val, data, np.array(splits), per_range)
    one = np.zeros((1, 37))
    C.scatter(start, end, idx, val, data, np.array([0, 60]), one)
    np.testing.assert_allclose(per_range.sum(axis=0), one[0], rtol=1e-12, atol=1e-12)


def test_products_from_several_python_threads_at_once(tmp_path):
    """Products called from several threads at once (a Dask worker's threads) are each right:
    one runs on the kernel's pool, the others run their ranges in their own thread."""
    from concurrent.futures import ThreadPoolExecutor

    op = load_response(cone_response(nside=4, n_phi=6, ring_width_deg=10.0), dtype="float64",
                       storage="sparse", sparse_threshold=0.0, cache_dir=tmp_path)
    rng = np.random.default_rng(7)
    xs = [rng.random(op.n_model) for _ in range(8)]
    want = [op.forward(x) for x in xs]
    sparse.set_kernel_threads(3)
    try:
        with ThreadPoolExecutor(4) as pool:
            for _ in range(5):
                got = list(pool.map(op.forward, xs))
                for g, w in zip(got, want):
                    np.testing.assert_allclose(g, w, rtol=1e-13)
    finally:
        sparse.set_kernel_threads(None)


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork (POSIX)")
def test_products_after_fork(tmp_path):
    """A child forked after products ran (its parent's kernel threads do not exist there) still
    runs them, on new threads."""
    import os

    op = load_response(cone_response(nside=4, n_phi=6, ring_width_deg=10.0), dtype="float64",
                       storage="sparse", sparse_threshold=0.0, cache_dir=tmp_path)
    x = np.random.default_rng(8).random(op.n_model)
    want = op.forward(x)
    sparse.set_kernel_threads(2)
    try:
        op.forward(x)            # the pool's worker exists in the parent
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child reports through the pipe
            ok = b"0"
            try:
                ok = b"1" if np.allclose(op.forward(x), want, rtol=1e-13) else b"0"
            finally:
                os.write(write, ok)
                os._exit(0)
        os.close(write)
        status = os.read(read, 1)
        os.close(read)
        os.waitpid(pid, 0)
    finally:
        sparse.set_kernel_threads(None)
    assert status == b"1"


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_operator_products_equal_with_either_kernels(tmp_path, dtype):
    """Full, subset and few-row products of a sparse response are the same with the C kernels
    and with the numba kernels."""
    op = load_response(cone_response(nside=4, n_phi=6, ring_width_deg=10.0), dtype=dtype,
                       storage="sparse", sparse_threshold=0.0, cache_dir=tmp_path)
    rng = np.random.default_rng(5)
    x, y = rng.random(op.n_model), rng.random(op.n_data)
    rows = np.array([3, 100, 7])

    def products():
        subs = [op.subset(k, 16, "PsiChi") for k in (0, 5)] + [op.subset(1, 3, "Phi")]
        return [op.forward(x), op.adjoint(y), op.forward_partial(rows, x[rows])] + [
            p for s in subs for p in (s.forward(x), s.adjoint(y[s.data_indices]))]

    with_c = products()
    try:
        sparse.use_kernels("numba")
        assert sparse.kernels_in_use() == "numba"
        with_numba = products()
    finally:
        sparse.use_kernels("c")
    tol = 2e-6 if dtype == "float32" else 1e-12
    for a, b in zip(with_c, with_numba):
        assert float(np.abs(a - b).max()) <= tol * float(np.abs(b).max())
    with pytest.raises(UnknownChoiceError, match="fortran"):
        sparse.use_kernels("fortran")


def test_sparse_products_compile_nothing(tmp_path):
    """In a fresh process, loading a sparse response from its cache and running its products
    (full, subset, few-row) compiles or loads no numba kernel: the hot path pays no numba
    start-up."""
    cone = cone_response(nside=4, n_phi=6, ring_width_deg=10.0)
    path = tmp_path / "cone.h5"
    cone.write(path)
    built = load_response(path, storage="sparse", dtype="float32", cache_dir=tmp_path)
    pending = built.load_info.get("cache_pending")
    if pending is not None:  # the cache is written in the background
        pending.result()
    code = f"""
import numpy as np
from comptonsky.response.load import load_response
from comptonsky.response import sparse
op = load_response({str(path)!r}, storage="sparse", dtype="float32",
                   cache_dir={str(tmp_path)!r})
assert op.load_info.get("cached"), op.load_info
x = np.ones(op.n_model)
op.forward(x); op.adjoint(np.ones(op.n_data)); op.forward_partial([1, 2], [1.0, 2.0])
sub = op.subset(0, 16, "PsiChi"); sub.forward(x); sub.adjoint(np.ones(sub.n_data))
compiled = {{k: len(f.overloads) for k, f in vars(sparse).items() if hasattr(f, "overloads")}}
print("COMPILED", sorted(compiled.items()))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    compiled = dict(eval(out.split("COMPILED ", 1)[1]))
    assert {"_gather", "_scatter", "_scatter_rows"} <= set(compiled)
    assert set(compiled.values()) == {0}, compiled
