"""``comptonsky uncertainty``: deconvolve, then bootstrap the counts for error maps and fluxes."""

from __future__ import annotations

import argparse

from ..errors import InvalidParameterError
from . import COMMANDS
from ._dask import add_dask_options, client_from_args
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
        "file, then N bootstrap replicates (counts redrawn from Poisson(X)), each fitted like the "
        "main run (same initial map, settings and number of iterations), in parallel. Prints "
        "each region's flux ± the replicates' std, their bias (mean − flux) and, with enough "
        "replicates, percentile intervals (68 % from 20, 95 % from 100); warns when the bias "
        "exceeds the std. Writes mean, std, significance (from 20 replicates) and solution maps "
        "(histpy .hdf5, HEALPix .fits and PNG), region_fluxes.json, profiles.json, the main "
        "run's results, parameters.yml, summary.json and report.html into --output. These are "
        "statistical errors at fixed settings (iteration count, prior), not of the sky itself.")
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
    p.add_argument("--executor", choices=("process", "thread", "dask"), default="process",
                   help="parallel replicates as forked processes (default), threads, or tasks "
                   "on a local Dask cluster of --workers processes (the main fit runs there "
                   "too)")
    p.add_argument("--iterations", type=int, default=None,
                   help="iterations per replicate (default: as many as the main run; another "
                   "count defines another estimator, whose value is then quoted)")
    p.add_argument("--start", choices=("initial", "solution"), default="initial",
                   help="replicates start from the initial map like the main run (default), or "
                   "from its solution (the estimate is then the main run continued)")
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
    add_dask_options(p, workers=False)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..deconvolution.uncertainty import bootstrap_uncertainty, disc_region, write_uncertainty
    from ..jobs import run_files, write_summary
    from ..plotting import write_uncertainty_images
    from ..report import write_report

    names = [name for name, _ in args.background]
    if len(set(names)) != len(names):
        raise InvalidParameterError(f"--background: a name is given twice in {names}")
    if args.samples < 2:
        raise InvalidParameterError(f"--samples: expected at least 2, found {args.samples}")
    if args.iterations is not None and args.iterations < 1:
        raise InvalidParameterError(f"--iterations: expected at least 1, found {args.iterations}")
    if args.workers < 1:
        raise InvalidParameterError(f"--workers: expected at least 1, found {args.workers}")
    dask = argparse.Namespace(workers=None, scheduler=args.scheduler)
    if args.executor == "dask" and args.scheduler is None:
        dask.workers = args.workers
    with client_from_args(dask) as client:
        job = run_files(args.parfile, args.event, dict(args.background), args.response,
                        args.output, overrides=args.override, name=args.name, dtype=args.dtype,
                        storage=args.storage, progress=not args.no_progress, plots=False,
                        report=False, overwrite=args.overwrite, client=client)
        lb = job.dataset.model_axes[0]
        nest = str(lb.scheme).lower() == "nested"
        regions = {name: disc_region(lb.nside, lon, lat, radius, nest)
                   for name, (lon, lat, radius) in args.region}
        result = bootstrap_uncertainty(job.deconvolution, n_samples=args.samples,
                                       iterations=args.iterations, workers=args.workers,
                                       executor="process" if client else args.executor,
                                       seed=args.seed, regions=regions,
                                       progress=not args.no_progress, start=args.start,
                                       client=client)
    files = write_uncertainty(result, args.output, samples=args.save_samples, cards=job.cards)
    files += write_uncertainty_images(job.output, sources={"GC": (0.0, 0.0)})
    summary = job.summary
    summary["uncertainty"] = {"timing_s": result.timing_s, **result.info}
    summary["warnings"] = list(summary.get("warnings", [])) + [
        f"warning: {text}" for text in result.warnings]
    summary["files"] += [str(p) for p in files] + [str(job.output / "report.html")]
    summary["timing_s"]["bootstrap"] = result.timing_s
    write_summary(summary, job.output / "summary.json")
    write_report(job.output)
    print(f"{result.info['estimator']}; {args.samples} replicates of {result.info['iterations']} "
          f"iterations (start: {args.start}):")
    for line in flux_lines(result):
        print(line)
    print(significance_line(result))
    if result.warnings:
        print(f"{len(result.warnings)} warning(s), also in summary.json")
    print(f"{args.samples} replicates in {result.timing_s:.1f} s; outputs in {args.output}")
    return 0


def flux_lines(result) -> list[str]:
    """One line per region and band: flux ± std, the replicates' bias and the intervals given."""
    lines = []
    for region, values in result.region_fluxes.items():
        for k, (flux, std) in enumerate(zip(values["flux"], values["std"])):
            ratio = values["bias_over_std"][k]
            text = (f"{region}: flux {flux:.4g} ± {std:.2g} cm-2 s-1 (band {k}, "
                    f"{values['pixels']} pixels); bias {values['bias'][k]:+.2g}"
                    + (f" ({ratio:+.2f} σ)" if ratio is not None else ""))
            for key in ("interval_68", "interval_95"):
                if key in values:
                    lo, hi = values[key][k]
                    text += f"; {key[-2:]} % interval [{lo:.4g}, {hi:.4g}]"
            lines.append(text)
    return lines


def significance_line(result) -> str:
    """The largest pixel significance, or why none is quoted (too few replicates)."""
    from ..deconvolution.uncertainty import MIN_SAMPLES_SIGNIFICANCE

    n = len(result.samples)
    if not result.info.get("significance_map", n >= MIN_SAMPLES_SIGNIFICANCE):
        return (f"pixel significance: not quoted with {n} replicates (at least "
                f"{MIN_SAMPLES_SIGNIFICANCE})")
    values = result.significance.contents
    values = getattr(values, "value", values)
    return (f"pixel significance (estimate / std): max {float(values.max()):.3g} over "
            f"{values.shape[0]} pixels, {n} replicates")
