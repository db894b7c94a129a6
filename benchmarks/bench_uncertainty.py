"""Benchmark: calibration and parallel speed of the Poisson-bootstrap uncertainties.

Same data model as ``bench_algorithms.py`` (synthetic cone response, DC2 511 keV thin-disk sky,
1.5e6-count background) at a smaller shape by default (nside 8, Phi 6°), because the calibration
needs many independent simulations.

1. Calibration: for S seeds, draw counts, deconvolve (RL with the safe line search, background
   norm; ``--iterations``), bootstrap B replicates (fitted from the initial map like the main
   run, or warm-started from the solution with ``--start solution``); compare the mean
   bootstrap standard deviation of the inner-Galaxy (and bulge, disk) flux with the standard
   deviation of the quoted fluxes over the seeds. Ratio 1 = calibrated; with S seeds the
   scatter itself is uncertain by ≈ 1/√(2(S−1)).
2. Parallel speed: one bootstrap of B replicates with 1 worker, 2 forked processes (one BLAS
   thread each) and 2 threads.

Usage::

    python benchmarks/bench_uncertainty.py [--nside 8] [--phi 6] [--seeds 40] [--samples 16]
        [--start initial|solution]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from histpy import Histogram

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_algorithms import PARFILE, build, make_dataset  # noqa: E402

from comptonsky import DataIF_COSI_DC2, ImageDeconvolution  # noqa: E402
from comptonsky.deconvolution.uncertainty import bootstrap_uncertainty  # noqa: E402

REGIONS = ("inner_galaxy", "bulge", "disk")


def deconvolve(ds, nside, iterations, workdir):
    path = Path(workdir) / "parfile.yml"
    path.write_text(PARFILE.format(nside=nside))
    deconv = ImageDeconvolution()
    deconv.set_dataset([ds])
    deconv.read_parameterfile(path)
    P = "deconvolution:parameter"
    deconv.override_parameter(f"{P}:acceleration:method = line_search",
                              f"{P}:acceleration:alpha_max = 10.0",
                              f"{P}:iteration_max = {iterations}")
    deconv.initialize()
    deconv.run_deconvolution(progress=False)
    return deconv


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nside", type=int, default=8)
    parser.add_argument("--phi", type=float, default=6.0)
    parser.add_argument("--seeds", type=int, default=40)
    parser.add_argument("--seed-offset", type=int, default=0,
                        help="first simulation seed (runs can be combined)")
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--iterations", type=int, default=25)
    parser.add_argument("--bootstrap-iterations", type=int, default=None,
                        help="iterations per replicate (default: --iterations)")
    parser.add_argument("--start", choices=("initial", "solution"), default="initial",
                        help="replicates start like the main run (default) or from its solution")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--no-speed", action="store_true", help="skip the parallel-speed part")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    workdir = tempfile.mkdtemp(prefix="bench-unc-")
    response, truth, background, data_axes, _ = build(args.nside, args.phi, 0)
    ds0, _, _ = make_dataset(response, truth, background, data_axes, 0)
    expected = ds0.response.forward(truth[:, 0]) + background.contents.reshape(-1)
    shape = background.contents.shape

    # parallel speed on the first seed
    deconv = None if args.no_speed else deconvolve(ds0, args.nside, args.iterations, workdir)
    speed = {}
    boot_iterations = args.bootstrap_iterations or args.iterations
    for workers, executor in (() if args.no_speed else
                              ((1, "process"), (args.workers, "process"),
                               (args.workers, "thread"))):
        result = bootstrap_uncertainty(deconv, n_samples=args.samples, workers=workers,
                                       executor=executor, iterations=boot_iterations,
                                       progress=False, start=args.start)
        speed[f"{workers} {executor}"] = result.timing_s
        print(f"bootstrap {args.samples} × {boot_iterations} iterations: {workers} worker(s), "
              f"{executor}: {result.timing_s:.2f} s")

    fluxes = {r: [] for r in REGIONS}
    stds = {r: [] for r in REGIONS}
    start = time.perf_counter()
    for seed in range(args.seed_offset, args.seed_offset + args.seeds):
        counts = np.random.default_rng(1000 + seed).poisson(expected).astype(float)
        ds = DataIF_COSI_DC2("dc2", Histogram(data_axes, contents=counts.reshape(shape)),
                             {"albedo": background}, ds0.response)
        deconv = deconvolve(ds, args.nside, args.iterations, workdir)
        result = bootstrap_uncertainty(deconv, n_samples=args.samples, workers=args.workers,
                                       iterations=boot_iterations, progress=False,
                                       start=args.start)
        for r in REGIONS:
            fluxes[r].append(result.region_fluxes[r]["flux"][0])
            stds[r].append(result.region_fluxes[r]["std"][0])
        # one line per seed, so that an interrupted run can still be pooled with others
        print(f"seed {seed}: " + ", ".join(f"{r} {fluxes[r][-1]:.5e} ± {stds[r][-1]:.3e}"
                                           for r in REGIONS), flush=True)
    elapsed = time.perf_counter() - start
    print(f"\ncalibration over {args.seeds} simulations ({elapsed:.0f} s); scatter of the "
          f"scatter ≈ {100 / np.sqrt(2 * (args.seeds - 1)):.0f} %")
    out = {"speed_s": speed, "seeds": args.seeds, "samples": args.samples,
           "iterations": args.iterations, "bootstrap_iterations": boot_iterations,
           "start": args.start, "nside": args.nside, "phi_deg": args.phi}
    for r in REGIONS:
        scatter = float(np.std(fluxes[r], ddof=1))
        boot = float(np.mean(stds[r]))
        out[r] = {"mean_flux": float(np.mean(fluxes[r])), "scatter": scatter,
                  "bootstrap_std": boot, "ratio": boot / scatter,
                  "fluxes": [float(v) for v in fluxes[r]], "stds": [float(v) for v in stds[r]]}
        print(f"  {r:13s} mean flux {np.mean(fluxes[r]):.4e}, scatter over seeds {scatter:.3e}, "
              f"mean bootstrap std {boot:.3e}, ratio {boot / scatter:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
