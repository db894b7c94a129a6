"""Loading responses from files: block-wise HDF5 reads, the converted cache, options, errors."""

from __future__ import annotations

import logging
import os
import time
import tracemalloc

import numpy as np
import pytest
from histpy import Histogram

from comptonsky.errors import (
    FileFormatError,
    InvalidDataError,
    InvalidParameterError,
    UnknownChoiceError,
)
from comptonsky.response.cache import CACHE_ENV
from comptonsky.response.load import choose_storage, load_response
from comptonsky.response.options import parse_memory
from comptonsky.response.source import open_source
from comptonsky.response.synthetic import cone_response

from .conftest import same_products


def _same(op, ref, tol=1e-12):
    same_products(op, ref, tol)


def _done(op):
    """Wait for the cache the load is writing in the background (if any)."""
    fut = op.load_info.get("cache_pending")
    if fut is not None:
        fut.result()
    return op


def _caches(directory):
    return sorted(p.name for p in directory.glob("*.cache"))


def test_file_load_matches_histogram(rsp_file, reference):
    op = load_response(rsp_file, cache=False)
    _same(op, reference)
    assert op.model_axes.labels.tolist() == ["lb", "Ei"]
    assert op.unit.to_string().replace(" ", "") in ("cm2s", "scm2")
    assert _caches(rsp_file.parent) == []


def test_file_with_overflow_bins_and_chunked_gzip(cone, reference, tmp_path):
    padded = Histogram(cone.axes, contents=cone.contents, track_overflow=True)
    p1 = tmp_path / "padded.h5"
    padded.write(p1)
    _same(load_response(p1, cache=False), reference)
    p2 = tmp_path / "chunked.h5"
    cone.write(p2, h5_dataset_kw={"chunks": (7, 1, 1, 12, 192), "compression": "gzip"})
    src = open_source(p2)
    try:
        assert src.row_align == 7
        assert src.block_rows(4, 10 * 2304 * 4) == 7
    finally:
        src.close()
    for storage in ("dense", "sparse", "out-of-core"):
        _same(load_response(p2, storage=storage, dtype="float32", sparse_threshold=0,
                            cache=False), reference, 2e-6)


def _multiband(cone, n_e=3):
    """The cone response with ``n_e`` Ei and Em bands (a lower-triangular redistribution),
    axes (NuLambda, Ei, Em, Phi, PsiChi)."""
    from astropy import units as u
    from histpy import Axes, Axis

    edges = np.geomspace(100.0, 1000.0, n_e + 1) * u.keV
    axes = Axes([cone.axes["NuLambda"], Axis(edges, label="Ei", scale="log"),
                 Axis(edges, label="Em", scale="log"), cone.axes["Phi"], cone.axes["PsiChi"]])
    redist = np.tril(np.full((n_e, n_e), 0.2)) + 0.5 * np.eye(n_e)
    values = np.asarray(cone.contents.value)[:, 0, 0]             # (pix, phi, psi)
    contents = redist[None, :, :, None, None] * values[:, None, None]
    return Histogram(axes, contents=contents, unit=cone.unit)


@pytest.mark.parametrize("chunks", [None, (5, 1, 3, 12, 192)], ids=["contiguous", "chunked"])
def test_multiband_file_loads_match_histogram(cone, tmp_path, chunks):
    hist = _multiband(cone)
    ref = load_response(hist)
    path = tmp_path / "multiband.h5"
    hist.write(path, h5_dataset_kw={} if chunks is None else {"chunks": chunks})
    src = open_source(path)
    try:
        assert src.row_align % 3 == 0                       # blocks hold whole sky pixels
        rows = np.empty((4, src.n_data))
        src.read(4, 8, rows)                                # splits pixels 1 and 2
        np.testing.assert_array_equal(rows, np.asarray(hist.contents.value).reshape(
            ref.n_model, ref.n_data)[4:8])
    finally:
        src.close()
    for storage in ("dense", "sparse", "out-of-core", "auto"):
        op = load_response(path, storage=storage, dtype="float32", sparse_threshold=0,
                           cache=False)
        assert op.model_shape == (192, 3)
        _same(op, ref, 2e-6)


def test_sparse_histogram_contents(cone, reference):
    sparse_hist = Histogram(cone.axes, contents=cone.contents, sparse=True)
    op = load_response(sparse_hist, storage="sparse", sparse_threshold=0.0)
    _same(op, reference)
    _same(load_response(sparse_hist), reference)


def test_cache_is_written_then_memory_mapped(rsp_file, reference, tmp_path):
    cdir = tmp_path / "cache"
    for storage in ("dense", "sparse"):
        first = load_response(rsp_file, dtype="float32", storage=storage, cache_dir=cdir,
                              sparse_threshold=0.0)
        assert first.load_info["cached"] is False
        _done(first)
        second = load_response(rsp_file, dtype="float32", storage=storage, cache_dir=cdir,
                               sparse_threshold=0.0)
        assert second.load_info["cached"] is True
        _same(second, reference, 2e-6)
        arr = second.matrix if storage == "dense" else second.rows.val
        assert not arr.flags.writeable
        cache_path = second.load_info["cache_path"]
        assert os.stat(cache_path).st_mode & 0o222 == 0                 # written read-only
        # mapped unless this process could truncate it anyway (root): then read into memory
        assert second.load_info["mapped"] is (not os.access(cache_path, os.W_OK))
    # out-of-core shares the dense cache file
    ooc = load_response(rsp_file, dtype="float32", storage="out-of-core", cache_dir=cdir)
    assert ooc.load_info["cached"] is True
    _same(ooc, reference, 2e-6)
    names = _caches(cdir)
    assert len(names) == 2 and all(n.startswith("rsp.h5.comptonsky-") for n in names)
    assert not [p for p in cdir.iterdir() if p.name.endswith(".part")]


def test_second_load_waits_for_the_cache_being_written(rsp_file, tmp_path):
    first = load_response(rsp_file, dtype="float32", cache_dir=tmp_path)
    second = load_response(rsp_file, dtype="float32", cache_dir=tmp_path)
    assert first.load_info["cached"] is False and second.load_info["cached"] is True


def test_cache_beside_file_by_default_and_env_var(rsp_file, tmp_path, monkeypatch):
    monkeypatch.delenv(CACHE_ENV, raising=False)
    _done(load_response(rsp_file, dtype="float32"))
    assert len(_caches(rsp_file.parent)) == 1
    env_dir = tmp_path / "env-cache"
    monkeypatch.setenv(CACHE_ENV, str(env_dir))
    op = _done(load_response(rsp_file, dtype="float32"))
    assert op.load_info["cached"] is False and len(_caches(env_dir)) == 1


def test_cache_invalidated_when_file_changes(rsp_file, cone, tmp_path):
    cdir = tmp_path / "c"
    _done(load_response(rsp_file, dtype="float32", cache_dir=cdir))
    old = _caches(cdir)
    st = rsp_file.stat()
    os.utime(rsp_file, ns=(st.st_atime_ns, st.st_mtime_ns + 10 ** 9))
    op = _done(load_response(rsp_file, dtype="float32", cache_dir=cdir))
    assert op.load_info["cached"] is False
    new = _caches(cdir)
    assert len(new) == 1 and new != old          # the stale cache was removed


def test_corrupt_cache_is_ignored(rsp_file, reference, tmp_path, caplog):
    cdir = tmp_path / "c"
    op = _done(load_response(rsp_file, dtype="float32", cache_dir=cdir))
    path = cdir / os.path.basename(op.load_info["cache_path"])
    data = path.read_bytes()
    path.write_bytes(data[:-5])
    with caplog.at_level(logging.WARNING, logger="comptonsky.response.cache"):
        again = _done(load_response(rsp_file, dtype="float32", cache_dir=cdir))
    assert again.load_info["cached"] is False
    assert "ignoring" in caplog.text
    _same(again, reference, 2e-6)


def test_float64_contiguous_file_is_used_in_place(rsp_file, reference, tmp_path):
    writable = os.access(rsp_file, os.W_OK)
    for map_files, mapped in (("always", True), ("never", False), ("read-only", False)):
        op = load_response(rsp_file, cache_dir=tmp_path, map_files=map_files)
        assert op.load_info["in_place"] is True and op.load_info["mapped_source"] is mapped
        assert not op.matrix.flags.writeable
        _same(op, reference)
    rsp_file.chmod(0o444)
    op = load_response(rsp_file, cache_dir=tmp_path)          # mapped unless we are root
    assert op.load_info["mapped_source"] is (not os.access(rsp_file, os.W_OK))
    rsp_file.chmod(0o644 if writable else 0o444)
    ooc = load_response(rsp_file, storage="out-of-core", memory_budget="200 kB",
                        cache_dir=tmp_path)
    assert ooc.load_info["in_place"] is True and ooc.path == str(rsp_file)
    _same(ooc, reference)
    assert _caches(tmp_path) == []


def test_cached_load_is_fast(rsp_file, tmp_path):
    cdir = tmp_path / "c"
    _done(load_response(rsp_file, dtype="float32", storage="sparse", cache_dir=cdir))
    t = time.perf_counter()
    load_response(rsp_file, dtype="float32", storage="sparse", cache_dir=cdir)
    assert time.perf_counter() - t < 1.0


def test_float32_load_makes_no_float64_copy(tmp_path):
    """Reading a float64 file into float32 allocates the float32 matrix and little else."""
    rsp = cone_response(nside=8, n_phi=12, ring_width_deg=6.0)
    path = tmp_path / "big.h5"
    rsp.write(path)
    nbytes32 = rsp.contents.size * 4
    del rsp
    tracemalloc.start()
    op = load_response(path, dtype="float32", cache=False)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert op.nbytes == nbytes32
    assert peak < 1.1 * nbytes32


def test_auto_picks_by_memory(rsp_file, tmp_path):
    small = load_response(rsp_file, storage="auto", memory_budget="100 kB", cache_dir=tmp_path)
    assert small.storage == "out-of-core"
    big = load_response(rsp_file, storage="auto", dtype="float32", cache_dir=tmp_path)
    assert big.storage in ("dense", "sparse")
    assert "reason" in big.load_info
    assert choose_storage(3072, 184320, "float32", 0.09, 20 * 2 ** 30, 3072)[0] == "sparse"
    assert choose_storage(3072, 184320, "float32", 0.5, 20 * 2 ** 30, 3072)[0] == "dense"
    assert choose_storage(3072, 184320, "float64", 0.5, 2 ** 30, 3072)[0] == "out-of-core"


def test_storage_aliases_and_none(rsp_file, tmp_path):
    assert load_response(rsp_file, storage=None, cache=False).storage == "dense"
    assert load_response(rsp_file, storage="outofcore", cache_dir=tmp_path).storage == \
        "out-of-core"


@pytest.mark.parametrize("kwargs,exc,words", [
    ({"storage": "sparce"}, UnknownChoiceError, ["sparse", "out-of-core", "auto"]),
    ({"dtype": "float16"}, UnknownChoiceError, ["float32", "float64"]),
    ({"sparse_treshold": 1e-3}, UnknownChoiceError, ["sparse_threshold"]),
    ({"memory_budget": "lots"}, InvalidParameterError, ["memory_budget", "lots", "GiB"]),
    ({"sparse_threshold": 2.0}, InvalidParameterError, ["sparse_threshold", "2.0"]),
])
def test_bad_options(rsp_file, kwargs, exc, words):
    with pytest.raises(exc) as info:
        load_response(rsp_file, cache=False, **kwargs)
    for w in words:
        assert w in str(info.value)


def test_bad_files(tmp_path, cone):
    with pytest.raises(FileFormatError, match="not found"):
        load_response(tmp_path / "missing.h5")
    junk = tmp_path / "junk.h5"
    junk.write_text("not hdf5")
    with pytest.raises(FileFormatError, match="junk.h5"):
        load_response(junk)
    zero = Histogram(cone.axes, contents=np.zeros(cone.contents.shape), unit="cm2 s")
    with pytest.raises(InvalidDataError, match="no exposure"):
        load_response(zero)


def test_gpu_device_choices(rsp_file):
    from comptonsky.response.gpu import gpu_backend
    auto = load_response(rsp_file, device="auto", cache=False)
    if gpu_backend() is None:
        assert auto.load_info["device"] == "cpu"
        with pytest.raises(InvalidParameterError, match="CuPy or PyTorch"):
            load_response(rsp_file, device="gpu", cache=False)
    with pytest.raises(UnknownChoiceError, match="'gpu'"):
        load_response(rsp_file, device="cuda", cache=False)


def test_parse_memory():
    assert parse_memory("1 GiB") == 2 ** 30
    assert parse_memory("512MB") == 512 * 10 ** 6
    assert parse_memory("2.5G") == int(2.5e9)
    assert parse_memory(1000) == 1000
    assert parse_memory(None) is None
    with pytest.raises(InvalidParameterError):
        parse_memory("-1 GB")


def test_cache_file_roundtrip_and_abort(tmp_path):
    from comptonsky.response.cache import CacheFile, CacheWriter
    path = tmp_path / "x.cache"
    w = CacheWriter(path, {"key": "k"})
    w.begin("a", np.float32, (3,))
    w.append(np.ones((2, 3), np.float32))
    w.append(np.full((1, 3), 2, np.float32))
    w.end()
    w.add("b", np.arange(5))
    w.close()
    cf = CacheFile(path)
    assert cf.meta == {"key": "k"}
    assert cf["a"].shape == (3, 3) and cf["a"][2, 0] == 2
    assert cf["b"].tolist() == [0, 1, 2, 3, 4]
    assert cf.offset("a") % 4096 == 0 and cf.offset("b") % 4096 == 0
    aborted = CacheWriter(tmp_path / "y.cache", {"key": "k"})
    aborted.add("a", np.ones(10))
    aborted.abort()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.cache"]
    with pytest.raises(FileFormatError, match="not a comptonsky response cache"):
        (tmp_path / "z.cache").write_bytes(b"0" * 64)
        CacheFile(tmp_path / "z.cache")
