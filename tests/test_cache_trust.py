"""Converted-response caches that cannot give a wrong answer: tampered, truncated, planted or
unwritable caches, orphan temporary files, and files changed under a running job."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from comptonsky.response import cache as cache_mod
from comptonsky.response.cache import _TRAILER, CacheFile, part_in_use, sweep_orphans
from comptonsky.response.load import load_response
from comptonsky.response.synthetic import cone_response

from .conftest import same_products

REPO = Path(__file__).resolve().parents[1]
CACHE_LOG = "comptonsky.response"


def _same(op, ref, tol=2e-6):
    same_products(op, ref, tol)


def _load(path, cdir, storage="dense", **kw):
    op = load_response(path, dtype="float32", storage=storage, cache_dir=cdir,
                       sparse_threshold=0.0, **kw)
    fut = op.load_info.get("cache_pending")
    if fut is not None:
        fut.result()
    return op


def _footer(path: Path) -> tuple[dict, int]:
    data = path.read_bytes()
    n, _ = _TRAILER.unpack(data[-_TRAILER.size:])
    start = len(data) - _TRAILER.size - n
    return json.loads(data[start:start + n]), start


def _write_footer(path: Path, footer: dict, start: int) -> None:
    raw = json.dumps(footer).encode()
    with open(path, "r+b") as fh:
        fh.seek(start)
        fh.write(raw + _TRAILER.pack(len(raw), cache_mod.MAGIC))
        fh.truncate()


def _tamper(path: Path, name: str, change, fix_crc: bool = False) -> None:
    """Apply ``change`` (in place) to array ``name`` of cache file ``path``; with ``fix_crc``
    the footer's checksum is recomputed, as a deliberate forger would."""
    path.chmod(0o644)
    footer, start = _footer(path)
    info = footer["arrays"][name]
    mm = np.memmap(path, dtype=np.dtype(info["dtype"]), mode="r+", offset=info["offset"],
                   shape=tuple(info["shape"]))
    change(mm)
    mm.flush()
    if fix_crc:
        info["crc32"] = zlib.crc32(memoryview(np.ascontiguousarray(mm)).cast("B"))
    del mm
    if fix_crc:
        _write_footer(path, footer, start)


def _cache_path(op) -> Path:
    return Path(op.load_info["cache_path"])


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def _reload_after(rsp_file, cdir, caplog, storage="dense", **kw):
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=CACHE_LOG):
        op = _load(rsp_file, cdir, storage, **kw)
    return op, _warnings(caplog)


def test_nan_planted_in_dense_cache_is_rejected_and_rebuilt(rsp_file, reference, tmp_path,
                                                            caplog):
    cdir = tmp_path / "c"
    path = _cache_path(_load(rsp_file, cdir))
    _tamper(path, "matrix", lambda m: m.__setitem__((17, 100), np.nan))
    op, warned = _reload_after(rsp_file, cdir, caplog)
    assert op.load_info["cached"] is False
    assert len(warned) == 1 and str(path) in warned[0] and "checksum" in warned[0]
    _same(op, reference)
    again = _load(rsp_file, cdir)                 # the rebuilt cache is good
    assert again.load_info["cached"] is True
    _same(again, reference)


def test_nan_with_forged_checksum_is_caught_by_quick_and_full_checks(rsp_file, reference,
                                                                      tmp_path, caplog):
    cdir = tmp_path / "c"
    for verify in ("quick", "full"):
        path = _cache_path(_load(rsp_file, cdir))
        _tamper(path, "matrix", lambda m: m.__setitem__((5, 3), np.nan), fix_crc=True)
        op, warned = _reload_after(rsp_file, cdir, caplog, verify_cache=verify)
        assert op.load_info["cached"] is False, verify
        assert len(warned) == 1 and str(path) in warned[0]
        _same(op, reference)


def test_rows_scaled_by_50_are_detected(rsp_file, reference, tmp_path, caplog):
    cdir = tmp_path / "c"
    path = _cache_path(_load(rsp_file, cdir))

    def scale(m):
        m[40:50] *= 50
    _tamper(path, "matrix", scale)
    op, warned = _reload_after(rsp_file, cdir, caplog)
    assert op.load_info["cached"] is False and len(warned) == 1
    assert "'matrix' fails its checksum" in warned[0]
    _same(op, reference)


def test_sparse_rows_scaled_with_forged_checksums_are_detected(rsp_file, reference, tmp_path,
                                                               caplog):
    """Every stored row ×50 (checksums recomputed): the sampled rows differ from the file."""
    cdir = tmp_path / "c"
    path = _cache_path(_load(rsp_file, cdir, "sparse"))
    _tamper(path, "rows_val", lambda v: v.__setitem__(slice(None), v * 50), fix_crc=True)
    op, warned = _reload_after(rsp_file, cdir, caplog, "sparse")
    assert op.load_info["cached"] is False and len(warned) == 1
    assert "differs from the response file" in warned[0]
    _same(op, reference)


SPARSE_SCRIPT = """
import logging, sys
import numpy as np
from comptonsky.response.load import load_response
logging.basicConfig(level=logging.WARNING)
op = load_response(sys.argv[1], dtype="float32", storage="sparse", cache_dir=sys.argv[2],
                   sparse_threshold=0.0, verify_cache=sys.argv[3])
x = np.ones(op.n_model)
print("cached", op.load_info["cached"], "sum", float(op.forward(x).sum()))
"""


@pytest.mark.parametrize("array,bad", [("rows_ptr", 10 ** 9), ("cols_ptr", -5),
                                       ("cols_idx", 60000)])
def test_sparse_bad_index_arrays_are_detected_without_a_crash(rsp_file, reference, tmp_path,
                                                              array, bad):
    """A bad row pointer or column index, with its checksum forged so that only the index
    checks stand between it and the kernels: a warning, a rebuild, the right products; the
    kernels run in a subprocess so that a crash would show as a signal."""
    cdir = tmp_path / "c"
    path = _cache_path(_load(rsp_file, cdir, "sparse"))

    def plant(a):
        a.reshape(-1)[a.size // 2] = bad
    _tamper(path, array, plant, fix_crc=True)
    done = subprocess.run([sys.executable, "-c", SPARSE_SCRIPT, str(rsp_file), str(cdir),
                           "quick"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "cached False" in done.stdout
    assert str(path) in done.stderr and ("pointer" in done.stderr or "index" in done.stderr)
    expected = float(reference.forward(np.ones(reference.n_model)).sum())
    assert float(done.stdout.split()[-1]) == pytest.approx(expected, rel=1e-5)


def test_footer_claiming_a_larger_matrix_is_rebuilt(rsp_file, reference, tmp_path, caplog):
    cdir = tmp_path / "c"
    for storage in ("dense", "out-of-core"):
        path = _cache_path(_load(rsp_file, cdir, storage))
        path.chmod(0o644)
        footer, start = _footer(path)
        footer["arrays"]["matrix"]["shape"][0] *= 2
        _write_footer(path, footer, start)
        op, warned = _reload_after(rsp_file, cdir, caplog, storage)
        assert op.load_info["cached"] is False and len(warned) == 1
        assert "beyond the data" in warned[0] and str(path) in warned[0]
        _same(op, reference)
        assert _load(rsp_file, cdir, storage).load_info["cached"] is True


def test_footer_with_other_shapes_is_rebuilt(rsp_file, reference, tmp_path, caplog):
    """A consistent cache of another shape (the footer's meta edited to match)."""
    cdir = tmp_path / "c"
    path = _cache_path(_load(rsp_file, cdir))
    path.chmod(0o644)
    footer, start = _footer(path)
    footer["arrays"]["matrix"]["shape"] = [96, 2 * 2304]
    _write_footer(path, footer, start)
    op, warned = _reload_after(rsp_file, cdir, caplog)
    assert op.load_info["cached"] is False and len(warned) == 1
    assert "expected" in warned[0]
    _same(op, reference)


def test_planted_cache_with_matching_key_is_rejected(cone, rsp_file, reference, tmp_path,
                                                     caplog):
    """A valid cache of another response (×2), its footer given the right key: rejected."""
    other = tmp_path / "other"
    other.mkdir()
    twice = cone * 2
    twice.write(other / "rsp.h5")
    cdir, odir = tmp_path / "c", tmp_path / "oc"
    for storage in ("dense", "sparse"):
        good = _cache_path(_load(rsp_file, cdir, storage))
        key_footer, _ = _footer(good)
        planted = _cache_path(_load(other / "rsp.h5", odir, storage))
        footer, start = _footer(planted)
        footer["meta"].update(key=key_footer["meta"]["key"],
                              fingerprint=key_footer["meta"]["fingerprint"])
        good.chmod(0o644)
        good.write_bytes(planted.read_bytes())
        _write_footer(good, footer, start)
        for verify in ("quick", "full"):
            op, warned = _reload_after(rsp_file, cdir, caplog, storage, verify_cache=verify)
            assert op.load_info["cached"] is False and len(warned) == 1, (storage, verify)
            assert "differs from the response file" in warned[0]
            _same(op, reference)
            if verify == "quick":                   # plant it again for the full check
                good.chmod(0o644)
                good.write_bytes(planted.read_bytes())
                _write_footer(good, footer, start)


def test_key_follows_content_not_only_size_and_mtime(cone, rsp_file, reference, tmp_path):
    """The response file replaced by another of the same size and modification time."""
    cdir = tmp_path / "c"
    first = _load(rsp_file, cdir)
    st = rsp_file.stat()
    rsp_file.unlink()
    (cone * 3).write(rsp_file)
    os.utime(rsp_file, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert rsp_file.stat().st_size == st.st_size
    op = _load(rsp_file, cdir)
    assert op.load_info["cached"] is False and op.load_info["cache_path"] != \
        first.load_info["cache_path"]
    assert op.exposure.sum() == pytest.approx(3 * reference.exposure.sum(), rel=1e-5)


def test_unwritable_cache_location_runs_uncached_with_one_warning(rsp_file, reference,
                                                                  tmp_path, caplog,
                                                                  monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    for storage in ("dense", "sparse", "out-of-core"):
        op, warned = _reload_after(rsp_file, blocker / "cache", caplog, storage)
        assert op.load_info["cached"] is False and op.load_info["cache_path"] is None
        assert len(warned) == 1 and "running without a cache" in warned[0], (storage, warned)
        _same(op, reference)
    # the default location: an unwritable home (XDG_CACHE_HOME under a file) and no option
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker / "xdg"))
    monkeypatch.delenv(cache_mod.CACHE_ENV, raising=False)
    monkeypatch.setattr(cache_mod.os, "access", lambda *a, **k: False)  # source dir too
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=CACHE_LOG):
        op = load_response(rsp_file, dtype="float32")
    assert op.load_info["cached"] is False and len(_warnings(caplog)) == 1
    _same(op, reference)


def test_orphan_part_files_are_swept(rsp_file, tmp_path):
    cdir = tmp_path / "c"
    cdir.mkdir()
    old = cdir / ".rsp.h5.comptonsky-dense-float32-0123456789abcdef0123.cache.x1y2.part"
    old.write_bytes(b"\0" * 1000)
    past = cache_mod.PROCESS_START - 60
    os.utime(old, (past, past))
    young = cdir / ".rsp.h5.comptonsky-dense-float32-0123456789abcdef0123.cache.zzzz.part"
    young.write_bytes(b"\0" * 10)                  # newer than this process: maybe a writer's
    locked = cdir / ".rsp.h5.comptonsky-sparse-float32-0123456789abcdef0123.cache.lock.part"
    locked.write_bytes(b"\0")
    os.utime(locked, (past, past))
    import fcntl
    with open(locked, "rb") as holder:
        fcntl.flock(holder.fileno(), fcntl.LOCK_EX)
        assert part_in_use(locked) and not part_in_use(old)
        dead = cdir / "comptonsky-response-999999999-abcdef.cache"
        dead.write_bytes(b"\0")
        removed = sweep_orphans(cdir)
        assert sorted(removed) == sorted([old, dead])
        assert young.exists() and locked.exists()
    # a conversion into that folder sweeps the orphans first
    os.utime(young, (past, past))
    _load(rsp_file, cdir)
    assert not young.exists() and not locked.exists()
    assert not list(cdir.glob("*.part")) and not list(cdir.glob(".*.part"))


def test_cache_clean_removes_unlocked_parts(tmp_path, capsys):
    from comptonsky.cli import main as cli_main
    part = tmp_path / ".rsp.h5.comptonsky-dense-float32-0123456789abcdef0123.cache.abcd.part"
    part.write_bytes(b"\0" * 100)
    past = time.time() - 120
    os.utime(part, (past, past))
    assert cli_main(["cache", "clean", "--cache-dir", str(tmp_path)]) == 0
    assert not part.exists()


def test_written_cache_is_read_only_and_verified_once_per_process(rsp_file, tmp_path):
    cdir = tmp_path / "c"
    path = _cache_path(_load(rsp_file, cdir))
    assert path.stat().st_mode & 0o777 == 0o444
    cf = CacheFile(path)
    assert cf.verify                                # not yet verified in this process
    cf["matrix"], cf["row_sums"]
    assert cf._ident in cache_mod._VERIFIED
    again = CacheFile(path)
    assert again.verify is False                    # this process checked it already
    assert CacheFile(path, map_files="never").mapped is False
    assert CacheFile(path, map_files="always").mapped is True


RUN_SCRIPT = """
import sys, time
import numpy as np
from comptonsky.response.load import load_response
kw = dict(storage=sys.argv[2], cache_dir=sys.argv[3], sparse_threshold=0.0)
if sys.argv[4] != "-":
    kw["dtype"] = sys.argv[4]
if sys.argv[5] != "-":
    kw["map_files"] = sys.argv[5]
op = load_response(sys.argv[1], **kw)
x = np.random.default_rng(0).random(op.n_model)
first = op.forward(x)
print("ready", flush=True)
sys.stdin.readline()                 # the parent changes the files, then says go
for _ in range(20):
    y = op.forward(x)
    z = op.adjoint(y)
print("same", bool(np.array_equal(y, first)), flush=True)
"""


def _run_and_change(rsp_file, cone, cdir, storage, dtype, map_files):
    """Start a process that holds the response, truncate the file it reads in place, rename
    a new file over it, let the process go on; returns (returncode, stdout)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", RUN_SCRIPT, str(rsp_file), storage, str(cdir), dtype, map_files],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()[-2000:]
        targets = [rsp_file, *cdir.glob("*.cache")]
        for path in targets:                         # in-place truncation (root ignores 0444)
            try:
                os.truncate(path, 4096)
            except PermissionError:
                pass
        new = rsp_file.with_name("new.h5")
        (cone * 2).write(new)
        os.replace(new, rsp_file)                    # replacement by rename
        out, err = proc.communicate("go\n", timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, out, err


@pytest.mark.parametrize("storage,dtype", [("dense", "-"), ("dense", "float32"),
                                           ("sparse", "float32")])
def test_files_changed_under_a_running_job_give_no_signal(cone, tmp_path, storage, dtype):
    rsp_file = tmp_path / "rsp.h5"
    cone.write(rsp_file)
    cdir = tmp_path / "c"
    if dtype != "-":                                 # the cache exists before the job starts
        _load(rsp_file, cdir, storage)
    rc, out, err = _run_and_change(rsp_file, cone, cdir, storage, dtype, "-")
    assert rc == 0, (rc, err[-2000:])
    assert "same True" in out


@pytest.mark.parametrize("dtype", ["-", "float32"])
def test_out_of_core_file_truncated_under_a_job_is_a_clear_error(cone, tmp_path, dtype):
    """Out-of-core reads the file at each product: a truncation there is a one-line error."""
    rsp_file = tmp_path / "rsp.h5"
    cone.write(rsp_file)
    cdir = tmp_path / "c"
    if dtype != "-":
        _load(rsp_file, cdir, "out-of-core")
    rc, out, err = _run_and_change(rsp_file, cone, cdir, "out-of-core", dtype, "-")
    assert rc == 1 and "truncated while in use" in err, (rc, err[-2000:])


def test_mapping_anyway_would_die_with_sigbus(cone, tmp_path):
    """What the default protects against: ``map_files='always'`` and an in-place truncation."""
    rsp_file = tmp_path / "rsp.h5"
    cone.write(rsp_file)
    rc, out, err = _run_and_change(rsp_file, cone, tmp_path / "c", "dense", "-", "always")
    assert rc == -signal.SIGBUS, (rc, out, err[-500:])


def test_map_files_read_only_rule(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"\0" * 8192)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert not cache_mod.may_map(fd, path, "read-only")      # write permission bits
        assert cache_mod.may_map(fd, path, "always")
        assert not cache_mod.may_map(fd, path, "never")
        path.chmod(0o444)
        assert cache_mod.may_map(fd, path, "read-only") is (not os.access(path, os.W_OK))
    finally:
        os.close(fd)


def test_out_of_core_cache_checked_before_use(rsp_file, reference, tmp_path, caplog):
    cdir = tmp_path / "c"
    path = _cache_path(_load(rsp_file, cdir, "out-of-core"))
    _tamper(path, "matrix", lambda m: m.__setitem__((100, 7), -1.0))
    op, warned = _reload_after(rsp_file, cdir, caplog, "out-of-core")
    assert op.load_info["cached"] is False and len(warned) == 1 and "checksum" in warned[0]
    _same(op, reference)


def test_old_format_cache_is_replaced(rsp_file, reference, tmp_path, caplog):
    cdir = tmp_path / "c"
    path = _cache_path(_load(rsp_file, cdir))
    path.chmod(0o644)
    footer, start = _footer(path)
    footer["version"] = 1
    _write_footer(path, footer, start)
    op, warned = _reload_after(rsp_file, cdir, caplog)
    assert op.load_info["cached"] is False and len(warned) == 1 and "version" in warned[0]
    _same(op, reference)


def test_writer_lock_is_held_while_writing(tmp_path):
    w = cache_mod.CacheWriter(tmp_path / "x.cache", {"key": "k"})
    w.add("a", np.arange(10.0))
    w.wait()
    assert part_in_use(w.tmp)
    w.close()
    assert not list(tmp_path.glob("*.part")) and (tmp_path / "x.cache").exists()


@pytest.fixture(scope="module")
def tiny_caches(tmp_path_factory):
    """A small response file with its dense and sparse caches (bytes kept to restore them)."""
    root = tmp_path_factory.mktemp("tiny")
    rsp = cone_response(nside=2, n_phi=6, ring_width_deg=20.0)
    path = root / "rsp.h5"
    rsp.write(path)
    out = {"path": path, "root": root, "reference": load_response(rsp)}
    for storage in ("dense", "sparse"):
        cpath = _cache_path(_load(path, root / "c", storage))
        out[storage] = (cpath, cpath.read_bytes())
    return out


MUTATION = st.tuples(st.sampled_from(["dense", "sparse"]),
                     st.sampled_from(["flip", "truncate", "zero-block", "append"]),
                     st.floats(0.0, 1.0), st.integers(1, 255))


@given(MUTATION)
@settings(max_examples=40, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_damaged_cache_gives_the_right_operator(tiny_caches, mutation):
    """A byte changed, the file cut short, a block zeroed or junk appended, anywhere: the load
    either uses a cache that is still right or converts again; never a crash or a wrong map."""
    storage, kind, where, byte = mutation
    cpath, good = tiny_caches[storage]
    data = bytearray(good)
    pos = min(int(where * len(data)), len(data) - 1)
    if kind == "flip":
        data[pos] ^= byte
    elif kind == "truncate":
        data = data[:pos]
    elif kind == "zero-block":
        data[pos:pos + 4096] = bytes(len(data[pos:pos + 4096]))
    else:
        data += bytes([byte]) * 100
    if cpath.exists():
        cpath.chmod(0o644)
    cpath.write_bytes(bytes(data))
    cache_mod._VERIFIED.clear()
    op = _load(tiny_caches["path"], tiny_caches["root"] / "c", storage)
    _same(op, tiny_caches["reference"])
    if cpath.exists():
        cpath.chmod(0o644)
    cpath.write_bytes(good)                        # the next example starts from a good cache


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("nbytes", [1, 4096, 10_000, 3 * 4096 + 17])
def test_checksum_taken_beside_the_reads_equals_one_crc_of_the_bytes(tmp_path, monkeypatch,
                                                                     nbytes, threads):
    """Blocks read on several threads and checksummed in file order as they arrive give the
    bytes and zlib's CRC-32 of all of them, and a file cut short is still an error."""
    monkeypatch.setattr(cache_mod, "_READ_BLOCK", 4096)
    monkeypatch.setattr(cache_mod, "default_threads", lambda: threads)
    data = np.random.default_rng(nbytes).integers(0, 256, nbytes + 100, dtype=np.uint8)
    path = tmp_path / "blob"
    path.write_bytes(data.tobytes())
    fd = os.open(path, os.O_RDONLY)
    try:
        out = np.empty(nbytes, dtype=np.uint8)
        crc = cache_mod._pread_into(fd, 100, memoryview(out).cast("B"), path, 7)
        assert crc == zlib.crc32(data[100:].tobytes(), 7)
        np.testing.assert_array_equal(out, data[100:])
        assert cache_mod._pread_into(fd, 100, memoryview(out).cast("B"), path) is None
        with pytest.raises(cache_mod.InvalidCacheError, match="truncated"):
            cache_mod._pread_into(fd, 101, memoryview(out).cast("B"), path, 0)
    finally:
        os.close(fd)
