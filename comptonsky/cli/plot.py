"""``comptonsky plot``: PNG images of saved maps and of convergence tables."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "plot a saved map (histpy HDF5, axes lb × Ei) or a results.fits convergence table"


def _source(text: str) -> tuple[str, tuple[float, float]]:
    name, sep, pos = text.partition("=")
    try:
        lon, lat = (float(v) for v in pos.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected NAME=L,B in degrees, found {text!r}") from None
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=L,B in degrees, found {text!r}")
    return name, (lon, lat)


def _algorithm(path: Path) -> str | None:
    """The ``ALGORITH`` card of a results table's primary header (None without one)."""
    from astropy.io import fits

    try:
        return fits.getheader(path, 0).get("ALGORITH")
    except (OSError, KeyError, IndexError):
        return None


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("plot", help=HELP, description=HELP + ".")
    p.add_argument("file", help="map file (.hdf5/.h5) or results table (.fits)")
    p.add_argument("--output", help="PNG to write (default: FILE with .png)")
    p.add_argument("--energy-index", type=int, default=0, help="energy band of a map")
    p.add_argument("--scale", choices=("linear", "log"), default="linear", help="colour scale")
    p.add_argument("--vmin", type=float, default=None, help="lower colour limit")
    p.add_argument("--vmax", type=float, default=None, help="upper colour limit")
    p.add_argument("--source", action="append", type=_source, default=[],
                   metavar="NAME=L,B", help="mark a position in Galactic degrees (repeatable)")
    p.add_argument("--title", default=None, help="title (the energy band is appended)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import InvalidDataError, InvalidParameterError
    from ..io.atomic import check_output_path
    from ..plotting import colour_limits, image_format, plot_convergence, plot_image

    path = Path(args.file)
    output = Path(args.output) if args.output else path.with_suffix(".png")
    # fail before reading anything on options and outputs that cannot work
    colour_limits(args.vmin, args.vmax, args.scale, names=("--vmin", "--vmax"), where="")
    image_format(output)
    check_output_path(output)
    if output.exists() and output.resolve() == path.resolve():
        raise InvalidParameterError(f"{output}: is the input file; choose another --output")
    if path.suffix.lower() in (".fits", ".fit"):
        from ..deconvolution.results import read_results_table

        plot_convergence(read_results_table(path), output=output, algorithm=_algorithm(path))
    else:
        from ..io.histogram import open_histogram

        try:
            plot_image(open_histogram(path), energy_index=args.energy_index, scale=args.scale,
                       vmin=args.vmin, vmax=args.vmax, sources=dict(args.source) or None,
                       title=args.title or path.stem, output=output)
        except InvalidDataError as exc:
            raise InvalidDataError(f"{path}: {exc}") from exc
    print(f"wrote {output}")
    return 0
