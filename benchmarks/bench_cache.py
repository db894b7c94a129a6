"""What trusting a converted-response cache costs: checksums, value checks, sampled rows.

Builds a cone-model response (``--nside``, ``--phi``; default nside 16, 16 Phi bins: a
3072 × 49 152 matrix, 0.6 GB in float32), writes it as a float64 HDF5 file, converts it to a
dense float32 cache and times each step of opening it again, in this process::

    python benchmarks/bench_cache.py [--nside 16] [--phi 16] [--dir /tmp]
"""

from __future__ import annotations

import argparse
import functools
import logging
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
from histpy import Histogram

from comptonsky.response import cache as cache_mod
from comptonsky.response.load import load_response
from comptonsky.response.source import open_source
from comptonsky.response.synthetic import cone_axes, fill_cone_rows


def _crc(m: np.ndarray, crc32=cache_mod._crc32) -> int:  # noqa: SLF001 - the cache's own
    mv = memoryview(m).cast("B")
    crc = 0
    for i in range(0, mv.nbytes, 2 ** 25):
        crc = crc32(mv[i:i + 2 ** 25], crc)
    return crc


def _minmax(m: np.ndarray) -> tuple:
    return m.min(), m.max()


def _t(f, repeat=3):
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = f()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nside", type=int, default=16)
    ap.add_argument("--phi", type=int, default=16)
    ap.add_argument("--dir", default=tempfile.gettempdir())
    a = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    work = Path(tempfile.mkdtemp(prefix="bench-cache-", dir=a.dir))
    axes = cone_axes(a.nside, a.phi)
    npix = 12 * a.nside ** 2
    contents = np.zeros((npix, 1, 1, a.phi, npix))
    for s in range(0, npix, 256):
        fill_cone_rows(contents[s:s + 256, 0, 0], slice(s, s + 256), a.nside, a.phi, 2.0)
    path = work / "rsp.h5"
    Histogram(axes, contents=contents, unit="cm2 s").write(path)
    del contents
    cdir = work / "cache"
    t0 = time.perf_counter()
    op = load_response(path, dtype="float32", cache_dir=cdir)
    convert = time.perf_counter() - t0
    op.load_info["cache_pending"].result()
    written = time.perf_counter() - t0
    gb = op.nbytes / 1e9
    print(f"matrix {op.n_model} x {op.n_data} float32, {gb:.2f} GB")
    print(f"convert (first load) {convert:.2f} s; cache written after {written:.2f} s")
    t_crc, _ = _t(functools.partial(_crc, np.asarray(op.matrix)))
    t_zlib, _ = _t(functools.partial(_crc, np.asarray(op.matrix), zlib.crc32))
    t_val, _ = _t(functools.partial(_minmax, np.asarray(op.matrix)))
    print(f"CRC-32 of the matrix {t_crc:.3f} s ({t_crc / gb:.3f} s/GB; zlib.crc32 "
          f"{t_zlib:.3f} s); value check (min, max) {t_val:.3f} s ({t_val / gb:.3f} s/GB)")
    with open_source(path) as src:
        t_fp, _ = _t(src.fingerprint)
    print(f"content fingerprint (8 rows of the file) {t_fp * 1e3:.1f} ms")
    del op
    for verify in ("full", "quick"):
        for map_files in ("never", "always"):
            def load(verify=verify, map_files=map_files):
                cache_mod._VERIFIED.clear()          # as a fresh process
                return load_response(path, dtype="float32", cache_dir=cdir, verify_cache=verify,
                                     map_files=map_files)
            t, op = _t(load)
            assert op.load_info["cached"]
            print(f"cached load verify_cache={verify:5s} map_files={map_files:6s} {t:.3f} s")
            del op
    t_sp, op = _t(lambda: load_response(path, dtype="float32", storage="sparse",
                                        cache_dir=cdir), 1)
    op.load_info["cache_pending"].result()
    for verify in ("full", "quick"):
        def sload(verify=verify):
            cache_mod._VERIFIED.clear()
            return load_response(path, dtype="float32", storage="sparse", cache_dir=cdir,
                                 verify_cache=verify, map_files="never")
        t, sp = _t(sload)
        assert sp.load_info["cached"]
        print(f"sparse ({sp.nbytes / 1e9:.2f} GB held) convert {t_sp:.2f} s, cached load "
              f"verify_cache={verify} {t:.3f} s")
    for map_files in ("always", "never"):
        t, op = _t(functools.partial(load_response, path, map_files=map_files))
        print(f"float64 file in place ({op.nbytes / 1e9:.2f} GB) map_files={map_files}: "
              f"{t:.3f} s (mapped: {op.load_info['mapped_source']})")
        del op


if __name__ == "__main__":
    main()
