"""Benchmark: the cost of running on a local Dask cluster, and the per-block costs that model a
large cluster (docs/scaling.md).

1. A synthetic cone response (:mod:`comptonsky.response.synthetic`, DC2 shape by default:
   nside 16, Phi 3° → 3072 × 184 320, float32, 2.3 GB) is written to a histpy HDF5 file; counts
   are Poisson draws of a smooth sky plus a flat background.
2. Per-block cost: one block (``--blocks`` per dataset) built here from its description, its
   forward and adjoint products timed on one thread; bytes held per block.
3. RL (max-step acceleration, background norm) for ``--iterations`` iterations in one process
   (BLAS on every core), then on a local cluster of 2 single-threaded worker processes, each
   holding half the blocks read from the file; printed: seconds per iteration after the first,
   the overhead of the cluster, and the largest map difference.
4. Galactic response generation over sky-pixel blocks (the in-process engine as the per-block
   function) on 1 and 2 workers: seconds and speed-up.

The machine's load average is printed first and last: other work on the machine changes the
figures.

Usage::

    python benchmarks/bench_distributed.py [--nside 16] [--phi 3] [--iterations 10]
                                           [--blocks 8] [--quick]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import healpy as hp
import numpy as np
from histpy import Axes, Histogram

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from comptonsky import DataIF_COSI_DC2, ImageDeconvolution  # noqa: E402
from comptonsky.response.synthetic import cone_axes, fill_cone_rows  # noqa: E402

PARFILE = """\
model_definition:
  class: "AllSkyImage"
  property: {{coordinate: "galactic", nside: {nside}, scheme: "ring",
              energy_edges: {{value: [509.0, 513.0], unit: "keV"}}, unit: "cm-2 s-1 sr-1"}}
  initialization: {{algorithm: "flat", parameter: {{value: [1e-4], unit: "cm-2 s-1 sr-1"}}}}
deconvolution:
  algorithm: "RL"
  parameter:
    iteration_max: {iterations}
    acceleration: {{activate: true, alpha_max: 2.0, method: max_step}}
    response_weighting: {{activate: false}}
    smoothing: {{activate: false}}
    stopping_criteria: {{statistics: "log-likelihood", threshold: -1.0e+30}}
    background_normalization_optimization: {{activate: true, range: {{"bkg": [0.01, 10.0]}}}}
    save_results: {{activate: false}}
"""


def load() -> str:
    return "load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def write_response(path: Path, nside: int, n_phi: int) -> Axes:
    import h5py

    axes = cone_axes(nside, n_phi)
    npix = hp.nside2npix(nside)
    with h5py.File(path, "w") as f:
        g = f.create_group("hist")
        g.attrs["format"] = "dense"
        g.attrs["unit"] = "cm2 s"
        axes.write(g.create_group("axes"))
        ds = g.create_dataset("contents", shape=(npix, 1, 1, n_phi, npix), dtype="float32")
        step = 128
        buf = np.empty((step, n_phi, npix), dtype=np.float32)
        for j0 in range(0, npix, step):
            j1 = min(j0 + step, npix)
            fill_cone_rows(buf[:j1 - j0], slice(j0, j1), nside, n_phi, 2.0, 4.0)
            ds[j0:j1, 0, 0] = buf[:j1 - j0]
    return axes


def make_data(axes: Axes, response_path: Path, seed: int = 0):
    from comptonsky.response.load import load_response

    op = load_response(response_path, storage="dense")
    npix = axes["NuLambda"].nbins
    b = np.array(hp.pix2ang(axes["NuLambda"].nside, np.arange(npix), lonlat=True))[1]
    sky = 1e-3 * (0.2 + np.exp(-0.5 * (b / 5.0) ** 2))
    data_axes = Axes([axes["Em"], axes["Phi"], axes["PsiChi"]])
    signal = op.forward(sky)
    bkg = np.full(op.n_data, 1.5e6 / op.n_data)
    rng = np.random.default_rng(seed)
    counts = rng.poisson(signal + bkg).astype(np.float64)
    shape = tuple(op.data_shape)
    return (Histogram(data_axes, contents=counts.reshape(shape)),
            Histogram(data_axes, contents=bkg.reshape(shape)))


def run_fit(event, bkg, response_path, parfile, client=None, n_blocks=None):
    ds = DataIF_COSI_DC2.load("bench", event, {"bkg": bkg}, response_path, storage="dense")
    d = ImageDeconvolution()
    d.set_dataset([ds])
    d.read_parameterfile(parfile)
    t0 = time.perf_counter()
    d.initialize(client, n_blocks)
    setup = time.perf_counter() - t0
    d.algorithm.iterate(1)                 # warm-up: compiled kernels, first products
    t0 = time.perf_counter()
    n = d.algorithm.iteration_max - 1
    d.algorithm.iterate(n)
    per_it = (time.perf_counter() - t0) / max(n, 1)
    return d, setup, per_it


def block_cost(event, bkg, response_path, n_blocks):
    from threadpoolctl import threadpool_limits

    from comptonsky.distributed.blocks import split_dataset

    ds = DataIF_COSI_DC2.load("bench", event, {"bkg": bkg}, response_path, storage="dense")
    spec = split_dataset(ds, n_blocks)[0]
    t0 = time.perf_counter()
    block = spec.build()
    build = time.perf_counter() - t0
    x = np.random.default_rng(0).random(block.op.n_model)
    y = np.random.default_rng(1).random(block.op.n_data)
    with threadpool_limits(1):
        block.op.forward(x)
        t0 = time.perf_counter()
        for _ in range(3):
            block.op.forward(x)
        fwd = (time.perf_counter() - t0) / 3
        t0 = time.perf_counter()
        for _ in range(3):
            block.op.adjoint(y)
        adj = (time.perf_counter() - t0) / 3
    return spec, block, build, fwd, adj


def response_generation(quick: bool):
    from comptonsky.distributed.cluster import client_context
    from comptonsky.distributed.tasks import EngineBlock, galactic_response_on
    from comptonsky.response.attitude import AttitudeBins
    from comptonsky.response.detector import DetectorResponse

    nside = 4 if quick else 8
    npix = hp.nside2npix(nside)
    n_phi = 6 if quick else 12
    rng = np.random.default_rng(0)
    a = rng.random((npix, 1, 1, n_phi, npix)).astype(np.float32)
    a[a < 0.7] = 0.0
    det = DetectorResponse.from_dense(a)
    n_t = 20 if quick else 60
    rot = []
    for t in range(n_t):
        c, s = np.cos(2 * np.pi * t / n_t), np.sin(2 * np.pi * t / n_t)
        rot.append(np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]))
    rot = np.array(rot)
    bins = AttitudeBins(rot, rot[:, :, 2], np.full(n_t, 180.0), np.full(n_t, 10.0))
    import numba

    engine = EngineBlock(det, bins, occultation=False)
    engine(0, 1)
    t0 = time.perf_counter()
    engine(0, npix)
    out = {"in-process": time.perf_counter() - t0}      # numba on every core
    for workers in (1, 2):
        with client_context(workers=workers) as client:
            client.run(numba.set_num_threads, 1)          # one core per worker
            galactic_response_on(client, engine, npix, block=32, progress=False)  # warm-up
            t0 = time.perf_counter()
            galactic_response_on(client, engine, npix, block=32, progress=False)
            out[workers] = time.perf_counter() - t0
    return nside, n_phi, n_t, npix, out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nside", type=int, default=16)
    p.add_argument("--phi", type=float, default=3.0, help="Phi bin width (deg)")
    p.add_argument("--iterations", type=int, default=10)
    p.add_argument("--blocks", type=int, default=8)
    p.add_argument("--quick", action="store_true", help="nside 8, Phi 6°, 6 iterations")
    p.add_argument("--response-only", action="store_true",
                   help="only the response-generation figures")
    args = p.parse_args()
    if args.quick:
        args.nside, args.phi, args.iterations = 8, 6.0, 6
    logging.basicConfig(level=logging.WARNING)
    print(load())
    n_phi = int(round(180.0 / args.phi))
    with tempfile.TemporaryDirectory() as tmp:
        if args.response_only:
            return response_figures(args.quick)
        tmp = Path(tmp)
        t0 = time.perf_counter()
        rsp = tmp / "rsp.h5"
        axes = write_response(rsp, args.nside, n_phi)
        npix = hp.nside2npix(args.nside)
        print(f"response {npix} × {n_phi * npix} float32 ({rsp.stat().st_size / 1e9:.2f} GB) "
              f"written in {time.perf_counter() - t0:.1f} s")
        event, bkg = make_data(axes, rsp)
        parfile = tmp / "par.yml"
        parfile.write_text(PARFILE.format(nside=args.nside, iterations=args.iterations))

        spec, block, build, fwd, adj = block_cost(event, bkg, rsp, args.blocks)
        print(f"per block ({args.blocks} blocks, {spec.label}): {block.op.nbytes / 1e6:.1f} MB "
              f"response, {block.counts.size} data bins; read in {build:.2f} s; forward "
              f"{fwd * 1e3:.1f} ms, adjoint {adj * 1e3:.1f} ms (1 thread) = "
              f"{block.op.nbytes / max(fwd, 1e-9) / 1e9:.2f} GB/s")
        del block

        ref, setup1, it1a = run_fit(event, bkg, rsp, parfile)
        ref_map = ref.results[-1]["model"].contents.value.copy()
        del ref

        from comptonsky.distributed.cluster import client_context

        runs = {}
        with client_context(workers=2) as client:
            for n_blocks in dict.fromkeys((args.blocks, 2)):
                d, setup2, it2 = run_fit(event, bkg, rsp, parfile, client, n_blocks)
                diff = float(np.max(np.abs(d.results[-1]["model"].contents.value - ref_map))
                             / np.max(np.abs(ref_map)))
                runs[n_blocks] = (setup2, it2, diff)
                del d
        _, _, it1b = run_fit(event, bkg, rsp, parfile)   # again: the load on the machine moves
        it1 = 0.5 * (it1a + it1b)
        print(f"1 process: {it1:.3f} s per RL iteration (before {it1a:.3f}, after {it1b:.3f}; "
              f"setup {setup1:.1f} s)")
        for n_blocks, (setup2, it2, diff) in runs.items():
            print(f"2 workers × 1 thread ({n_blocks} blocks): {it2:.3f} s per RL iteration "
                  f"(setup {setup2:.1f} s); overhead {100 * (it2 / it1 - 1):+.1f} % against one "
                  f"process; max |Δλ| / max λ = {diff:.2e} (float32 response)")

    return response_figures(args.quick)


def response_figures(quick: bool) -> int:
    nside, nphi, n_t, npix, gen = response_generation(quick)
    print(f"Galactic response generation (nside {nside}, {nphi} Phi bins, {n_t} attitude bins, "
          f"{npix} sky pixels in blocks of 32): in one process (numba on every core) "
          f"{gen['in-process']:.2f} s; 1 worker × 1 thread {gen[1]:.2f} s "
          f"({1e3 * gen[1] / npix:.2f} ms/pixel), 2 workers × 1 thread {gen[2]:.2f} s; "
          f"speed-up {gen[1] / gen[2]:.2f}×")
    print(load())
    return 0


if __name__ == "__main__":
    sys.exit(main())
