"""Command-line interface: ``comptonsky <command> ...``.

Each subcommand lives in its own module in this package and exposes ``add_parser(subparsers)``
(registering its options and setting ``func``) so commands can grow independently. Only the
module of the command being run is imported (``comptonsky --help`` lists the commands from
:data:`COMMANDS`), so help and argument errors come back without loading the numerical stack.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

__all__ = ["main", "build_parser", "COMMANDS"]

#: Subcommand modules and their one-line help, in the order shown by ``comptonsky --help``.
COMMANDS = {
    "demo": "run the main job end to end on built-in data: maps, images, summary.json and "
            "report.html",
    "simulate": "simulate a DC2-like data set (a model of COSI, not the team's Monte Carlo)",
    "bin": "bin unbinned events (DC2 FITS/HDF5, MEGAlib .tra) into a CDS histogram",
    "deconvolve": "deconvolve binned data into sky maps (RL, RLsimple, MAP_RL, ...)",
    "uncertainty": "per-pixel uncertainty maps and region fluxes with errors (Poisson "
                   "bootstrap)",
    "plot": "plot a saved map (histpy HDF5, axes lb × Ei) or a results.fits convergence table",
    "report": "write one self-contained HTML page about a run directory",
    "response": "make responses: 'response galactic' carries a detector response (DRM) over "
                "an orientation into a Galactic response",
    "cache": "list or remove converted response caches (and files left by interrupted writes)",
}


def _chosen_command(argv: Sequence[str]) -> str | None:
    """The subcommand named in ``argv`` (the first argument that is not an option)."""
    for arg in argv:
        if not arg.startswith("-"):
            return arg if arg in COMMANDS else None
    return None


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The top-level argument parser.

    Parameters
    ----------
    argv : sequence of str, optional
        The arguments to be parsed: only the subcommand they name gets its full parser (the
        others are listed with their help). None registers every subcommand in full.
    """
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="comptonsky",
        description="Compton-telescope imaging: simulate COSI-like data, bin event lists into the "
        "Compton data space, and deconvolve sky images (Richardson-Lucy family).",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more log output (-v info, -vv debug)")
    parser.add_argument("--version", action="version", version=f"comptonsky {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = None if argv is None else _chosen_command(argv)
    for name, help_text in COMMANDS.items():
        if argv is None or name == chosen:
            importlib.import_module(f"{__name__}.{name}").add_parser(sub)
        else:
            sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the process exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("comptonsky").setLevel(logging.INFO if args.verbose < 2 else logging.DEBUG)
    if args.verbose == 0:
        logging.getLogger("comptonsky").setLevel(logging.WARNING)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from ..errors import ComptonskyError

    try:
        return int(args.func(args) or 0)
    except ComptonskyError as exc:
        print(f"comptonsky {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"comptonsky {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
