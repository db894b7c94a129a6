"""How a bootstrapped regional flux moves with the iteration count (a table for the docs).

On the built-in synthetic problem (:func:`comptonsky.testing.toy_problem`: cone response, disk
plus bulge sky of known flux, smooth background), for each iteration count N: fit the observed
counts with RL (background norm fitted, no acceleration) for N iterations, bootstrap B replicates
fitted the same way, and fit the noiseless expected counts for N iterations too. Printed per
region: the estimate ± the replicates' std, their bias (mean − estimate), the value on the
noiseless counts (the estimator's own target) and the injected flux.

Usage::

    python benchmarks/uncertainty_iterations.py [--nside 4] [--iterations 5,10,20,40,80]
        [--samples 50] [--regions inner_galaxy,disk,bulge]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import healpy as hp
from histpy import Histogram

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from comptonsky import DataIF_COSI_DC2, ImageDeconvolution  # noqa: E402
from comptonsky.deconvolution.uncertainty import bootstrap_uncertainty  # noqa: E402
from comptonsky.regions import region_mask  # noqa: E402
from comptonsky.testing import toy_problem  # noqa: E402
from tests.conftest import write_parfile  # noqa: E402


def fit(problem, counts, iterations, workdir):
    event = Histogram(problem.event.axes, contents=counts.reshape(problem.event.contents.shape))
    ds = DataIF_COSI_DC2.load("toy", event, {"albedo": problem.background}, problem.response)
    deconv = ImageDeconvolution()
    deconv.set_dataset([ds])
    nside = hp.npix2nside(problem.truth.shape[0])
    deconv.read_parameterfile(write_parfile(Path(workdir), nside=nside, iterations=iterations))
    deconv.initialize()
    deconv.run_deconvolution(progress=False)
    return deconv


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nside", type=int, default=4)
    parser.add_argument("--iterations", default="5,10,20,40,80")
    parser.add_argument("--samples", type=int, default=50)
    parser.add_argument("--regions", default="inner_galaxy,disk,bulge")
    parser.add_argument("--seed", type=int, default=3, help="seed of the observed counts")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    problem = toy_problem(nside=args.nside, phi_bin_deg=15.0, seed=args.seed)
    workdir = tempfile.mkdtemp(prefix="unc-iter-")
    expected = problem.signal_expectation + problem.background.contents.reshape(-1)
    pixarea = hp.nside2pixarea(args.nside)
    regions = args.regions.split(",")
    masks = {r: region_mask(r, args.nside) for r in regions}
    injected = {r: float(problem.truth[masks[r], 0].sum() * pixarea) for r in regions}
    print(f"toy problem nside {args.nside}, counts seed {args.seed}, "
          f"{int(problem.event.contents.sum())} counts; {args.samples} replicates per row")
    print("\n| iterations | region | estimate ± std (cm⁻² s⁻¹) | bias / std | "
          "on noiseless counts | injected |")
    print("|---|---|---|---|---|---|")
    start = time.perf_counter()
    for n in (int(v) for v in args.iterations.split(",")):
        deconv = fit(problem, problem.event.contents.reshape(-1).astype(float), n, workdir)
        result = bootstrap_uncertainty(deconv, n_samples=args.samples, progress=False)
        noiseless = fit(problem, expected.copy(), n, workdir).results[-1]["model"]
        values = noiseless.contents.value
        for r in regions:
            entry = result.region_fluxes[r]
            target = float(values[masks[r], 0].sum() * pixarea)
            print(f"| {n} | {r} | {entry['flux'][0]:.4e} ± {entry['std'][0]:.2e} | "
                  f"{entry['bias_over_std'][0]:+.2f} | {target:.4e} | {injected[r]:.4e} |")
    print(f"\n({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
