"""``comptonsky deconvolve``: parameter file + binned data + response → maps and a summary."""

from __future__ import annotations

import argparse
import sys

from ..errors import InvalidParameterError, RunInterrupted
from . import COMMANDS
from ._dask import add_dask_options, client_from_args

HELP = COMMANDS["deconvolve"]


def _background(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=FILE, found {text!r}")
    return name, path


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "deconvolve", help=HELP, description=HELP + ". Writes model/delta maps (histpy HDF5 and "
        "HEALPix FITS), results.fits (per-iteration table), PNG images, parameters.yml (the "
        "effective parameters: give it as PARFILE to repeat the run), summary.json (with "
        "versions, input checksums and the stopping reason) and report.html into --output.")
    p.add_argument("parfile", help="parameter file (YAML, the tutorial's layout)")
    p.add_argument("--event", required=True,
                   help="binned events, histpy HDF5 with axes [Time,] Em, Phi, PsiChi")
    p.add_argument("--background", action="append", type=_background, default=[],
                   metavar="NAME=FILE", help="background template (repeatable); NAME is the "
                   "key used in background_normalization_optimization:range")
    p.add_argument("--response", required=True,
                   help="Galactic response, histpy HDF5 (NuLambda, Ei, Em, Phi, PsiChi); with "
                   "--ccm the detector response (FullDetectorResponse file)")
    p.add_argument("--ccm", default=None, metavar="FILE",
                   help="coordinate conversion matrix (CoordsysConversionMatrix HDF5): image in "
                   "the detector frame, --event and --background binned per ScAtt or Time bin "
                   "with a local PsiChi axis")
    p.add_argument("--output", required=True, help="output directory")
    p.add_argument("--override", action="append", default=[], metavar="'a:b:c = v'",
                   help="override a parameter (repeatable), e.g. "
                   "'deconvolution:parameter:iteration_max = 50'")
    p.add_argument("--name", default="data", help="dataset name (default: data)")
    p.add_argument("--dtype", choices=("float64", "float32"), default=None,
                   help="precision of the response in memory (default: as stored)")
    p.add_argument("--storage", default=None,
                   help="how the response is held: dense, sparse, out-of-core, auto "
                   "(default dense)")
    p.add_argument("--sparse-threshold", type=float, default=None,
                   help="sparse storage: keep elements above this fraction of each sky "
                   "pixel's maximum (default 1e-4)")
    p.add_argument("--memory-budget", default=None,
                   help="out-of-core buffer size / auto's memory limit, e.g. '1 GiB'")
    p.add_argument("--cache-dir", default=None,
                   help="where converted response caches go (default: beside the file)")
    p.add_argument("--no-cache", action="store_true",
                   help="do not write or use a converted response cache")
    p.add_argument("--device", choices=("cpu", "gpu", "auto"), default=None,
                   help="where the response products run (gpu needs CuPy or PyTorch)")
    p.add_argument("--all-iterations", action="store_true",
                   help="write maps of every iteration, not only the last")
    p.add_argument("--no-plots", action="store_true", help="skip PNG images")
    p.add_argument("--no-report", action="store_true", help="skip report.html")
    p.add_argument("--truth", default=None, metavar="MAP",
                   help="true map (histpy HDF5, axes lb, Ei) for the report to compare with")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the comptonsky run in --output (its files are removed first; "
                   "other files are kept)")
    p.add_argument("--resume", action="store_true",
                   help="continue the interrupted run in --output from its checkpoint (give "
                   "the same parameter file, inputs and options); the result equals an "
                   "uninterrupted run's bit for bit")
    p.add_argument("--checkpoint-every", type=_iterations, default=None, metavar="N",
                   help="write a checkpoint every N iterations (default 10; 0: only on "
                   "Ctrl-C or SIGTERM)")
    add_dask_options(p, blocks=True)
    p.set_defaults(func=run)


def _iterations(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of iterations, found {text!r}") \
            from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or more iterations, found {value}")
    return value


def _response_options(args: argparse.Namespace) -> dict:
    from ..response.options import ResponseOptions

    options = {"sparse_threshold": args.sparse_threshold, "memory_budget": args.memory_budget,
               "cache_dir": args.cache_dir, "device": args.device,
               "cache": False if args.no_cache else None}
    options = {k: v for k, v in options.items() if v is not None}
    ResponseOptions.from_mapping(options, "command line")     # one-line errors, before loading
    return options


def run(args: argparse.Namespace) -> int:
    from ..jobs import deconvolve_files

    names = [name for name, _ in args.background]
    if len(set(names)) != len(names):
        raise InvalidParameterError(f"--background: a name is given twice in {names}")
    from ..deconvolution.driver import DEFAULT_CHECKPOINT_EVERY

    every = DEFAULT_CHECKPOINT_EVERY if args.checkpoint_every is None else args.checkpoint_every
    try:
        with client_from_args(args) as client:
            summary = deconvolve_files(
                args.parfile, args.event, dict(args.background), args.response, args.output,
                overrides=args.override, name=args.name, dtype=args.dtype,
                storage=args.storage, response_options=_response_options(args),
                coordsys_conv_matrix=args.ccm, only_final_result=not args.all_iterations,
                progress=not args.no_progress, plots=not args.no_plots,
                report=not args.no_report, truth=args.truth, overwrite=args.overwrite,
                resume=args.resume, checkpoint_every=every, client=client,
                n_blocks=args.blocks)
    except RunInterrupted as exc:
        hint = "; rerun with --resume" if exc.checkpoint is not None else ""
        print(f"comptonsky deconvolve: {exc}{hint}", file=sys.stderr, flush=True)
        return exc.exit_status
    print(f"{summary['algorithm']}: {summary['iterations']} iterations, "
          f"log L = {sum(summary['log_likelihood']):.6g}, "
          f"background norms {summary['background_normalization']} "
          f"(stopped: {summary['stopping']['reason']}); outputs in {args.output}")
    return 0
