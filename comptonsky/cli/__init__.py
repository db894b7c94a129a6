"""Command-line interface: ``comptonsky <command> ...``.

Each subcommand lives in its own module in this package and exposes ``add_parser(subparsers)``
(registering its options and setting ``func``) so commands can grow independently.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

__all__ = ["main", "build_parser"]

#: Subcommand modules, in the order shown by ``comptonsky --help``.
COMMAND_MODULES = ("demo", "simulate", "bin", "deconvolve", "uncertainty", "plot")


def build_parser() -> argparse.ArgumentParser:
    """Return the top-level argument parser with all subcommands registered."""
    parser = argparse.ArgumentParser(
        prog="comptonsky",
        description="Compton-telescope imaging: simulate COSI-like data, bin event lists into the "
        "Compton data space, and deconvolve sky images (Richardson-Lucy family).",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more log output (-v info, -vv debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:  # a command whose module is not written yet
            if exc.name != f"{__name__}.{name}":
                raise
            continue
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the process exit status."""
    from ..errors import ComptonskyError

    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("comptonsky").setLevel(logging.INFO if args.verbose < 2 else logging.DEBUG)
    if args.verbose == 0:
        logging.getLogger("comptonsky").setLevel(logging.WARNING)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except ComptonskyError as exc:
        print(f"comptonsky {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
