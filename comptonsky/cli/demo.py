"""``comptonsky demo``: the main job end to end on built-in data (what ``make demo`` runs)."""

from __future__ import annotations

import argparse

from . import COMMANDS

HELP = COMMANDS["demo"]


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("demo", help=HELP, description=HELP + ".")
    p.add_argument("--output", default="demo-output", help="output directory (default: "
                   "demo-output)")
    p.add_argument("--nside", type=int, default=None,
                   help="HEALPix NSIDE of model and PsiChi (default 16, the DC2 value)")
    p.add_argument("--phi-bin", type=float, default=None,
                   help="Compton-angle bin width in degrees (default 6)")
    p.add_argument("--preset", default="dc2-511-thin-disk",
                   help="simulator preset (dc2-511-thin-disk, dc2-511-thick-disk, ...)")
    p.add_argument("--iterations", type=int, default=50, help="RL iterations (default 50)")
    p.add_argument("--seed", type=int, default=1, help="random seed of the simulation")
    p.add_argument("--frame", choices=("galactic", "detector"), default="galactic",
                   help="galactic (default): the precomputed Galactic response; detector: the "
                   "ScAtt path (orientation, exposure table, conversion matrix, spacecraft-frame "
                   "response), results in OUTPUT/detector")
    p.add_argument("--scatt-nside", type=int, default=None,
                   help="HEALPix nside of the ScAtt bins with --frame detector (default 16)")
    p.add_argument("--duration", type=float, default=None,
                   help="observation length in s (default: the preset's, 3 months)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..demo import run_demo, run_detector_demo

    common = dict(nside=args.nside, iterations=args.iterations, seed=args.seed,
                  progress=not args.no_progress, preset=args.preset, phi_bin_deg=args.phi_bin,
                  duration_s=args.duration)
    if args.frame == "detector":
        summary = run_detector_demo(args.output, scatt_nside=args.scatt_nside, **common)
        print(f"detector-frame demo finished: {summary['scatt_bins']} ScAtt bins, "
              f"{summary['iterations']} iterations; outputs in {args.output}/detector/")
    else:
        summary = run_demo(args.output, **common)
        print(f"demo finished: {summary['iterations']} iterations; outputs in {args.output}/, "
              f"report {summary['report']}")
    for name, row in summary.get("regions", {}).items():
        print(f"  {name:>12}: recovered {row['recovered']:.3e}  injected {row['injected']:.3e} "
              f"ph cm-2 s-1")
    for name, norm in summary.get("background_normalization", {}).items():
        print(f"  {'bkg ' + name:>12}: normalisation {norm:.3f}  (simulated at 1)")
    return 0
