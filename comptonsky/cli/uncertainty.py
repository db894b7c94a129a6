"""``comptonsky uncertainty``: deconvolve, then bootstrap the counts for error maps and fluxes."""

from __future__ import annotations

import argparse

from ..errors import InvalidParameterError
from . import COMMANDS
from .deconvolve import _background

HELP = COMMANDS["uncertainty"]


def _region(text: str) -> tuple[str, tuple[float, float, float]]:
    name, sep, spec = text.partition("=")
    try:
        lon, lat, radius = (float(v) for v in spec.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected NAME=L,B,RADIUS (degrees), found {text!r}") from None
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=L,B,RADIUS (degrees), found {text!r}")
    return name, (lon, lat, radius)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "uncertainty", help=HELP, description=HELP + ". Runs the deconvolution of the parameter "
        "file, then N bootstrap replicates (counts redrawn from Poisson(X), warm-started from the "
        "solution) in parallel. Writes mean, std, significance and solution maps (histpy .hdf5 and "
        "HEALPix .fits, axes lb, Ei), region_fluxes.json, the main run's results, "
        "parameters.yml, summary.json and report.html into --output.")
    p.add_argument("parfile", help="parameter file (YAML, the tutorial's layout)")
    p.add_argument("--event", required=True,
                   help="binned events, histpy HDF5 with axes [Time,] Em, Phi, PsiChi")
    p.add_argument("--background", action="append", type=_background, default=[],
                   metavar="NAME=FILE", help="background template (repeatable)")
    p.add_argument("--response", required=True,
                   help="Galactic response, histpy HDF5 (NuLambda, Ei, Em, Phi, PsiChi)")
    p.add_argument("--output", required=True, help="output directory")
    p.add_argument("--samples", type=int, default=50, help="bootstrap replicates (default 50)")
    p.add_argument("--workers", type=int, default=2, help="parallel replicates (default 2)")
    p.add_argument("--executor", choices=("process", "thread"), default="process",
                   help="parallel replicates as forked processes (default) or threads")
    p.add_argument("--iterations", type=int, default=None,
                   help="iterations per replicate (default: as many as the main run)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--region", action="append", type=_region, default=[],
                   metavar="NAME=L,B,RADIUS", help="extra disc region for fluxes, degrees "
                   "(repeatable); bulge, disk and inner_galaxy are always reported")
    p.add_argument("--override", action="append", default=[], metavar="'a:b:c = v'",
                   help="override a parameter (repeatable)")
    p.add_argument("--name", default="data", help="dataset name (default: data)")
    p.add_argument("--dtype", choices=("float64", "float32"), default=None,
                   help="precision of the response in memory (default: as stored)")
    p.add_argument("--storage", default=None,
                   help="how the response is held: dense, sparse, out-of-core, auto")
    p.add_argument("--save-samples", action="store_true", help="also write samples.npz")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the comptonsky run in --output (its files are removed first)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..deconvolution.uncertainty import bootstrap_uncertainty, disc_region, write_uncertainty
    from ..jobs import run_files, write_summary
    from ..report import write_report

    names = [name for name, _ in args.background]
    if len(set(names)) != len(names):
        raise InvalidParameterError(f"--background: a name is given twice in {names}")
    if args.samples < 2:
        raise InvalidParameterError(f"--samples: expected at least 2, found {args.samples}")
    if args.workers < 1:
        raise InvalidParameterError(f"--workers: expected at least 1, found {args.workers}")
    job = run_files(args.parfile, args.event, dict(args.background), args.response, args.output,
                    overrides=args.override, name=args.name, dtype=args.dtype,
                    storage=args.storage, progress=not args.no_progress, plots=False,
                    report=False, overwrite=args.overwrite)
    lb = job.dataset.model_axes[0]
    nest = str(lb.scheme).lower() == "nested"
    regions = {name: disc_region(lb.nside, lon, lat, radius, nest)
               for name, (lon, lat, radius) in args.region}
    result = bootstrap_uncertainty(job.deconvolution, n_samples=args.samples,
                                   iterations=args.iterations, workers=args.workers,
                                   executor=args.executor, seed=args.seed, regions=regions,
                                   progress=not args.no_progress)
    files = write_uncertainty(result, args.output, samples=args.save_samples, cards=job.cards)
    summary = job.summary
    summary["uncertainty"] = {"timing_s": result.timing_s, **result.info}
    summary["files"] += [str(p) for p in files] + [str(job.output / "report.html")]
    summary["timing_s"]["bootstrap"] = result.timing_s
    write_summary(summary, job.output / "summary.json")
    write_report(job.output)
    for region, values in result.region_fluxes.items():
        print(f"{region}: flux {values['flux'][0]:.4g} ± {values['std'][0]:.2g} cm-2 s-1 "
              f"(band 0, {values['pixels']} pixels)")
    print(f"{args.samples} replicates in {result.timing_s:.1f} s; outputs in {args.output}")
    return 0
