"""``comptonsky report``: one self-contained HTML page about a run directory."""

from __future__ import annotations

import argparse

from . import COMMANDS

HELP = COMMANDS["report"]


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "report", help=HELP, description=HELP + " (written by deconvolve, uncertainty or the "
        "demo): maps, convergence, region fluxes (with bootstrap error bars when present, and "
        "the truth when given), the effective parameters, provenance and warnings, with the "
        "images embedded. `comptonsky deconvolve` and the demo write it themselves.")
    p.add_argument("run_dir", help="run directory (holds summary.json and model_itr<N>.hdf5)")
    p.add_argument("--truth", default=None, metavar="MAP",
                   help="true map (histpy HDF5, axes lb, Ei) to compare with")
    p.add_argument("--output", default=None, help="HTML file (default: RUN_DIR/report.html)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..report import write_report

    print(f"wrote {write_report(args.run_dir, truth=args.truth, output=args.output)}")
    return 0
