"""``comptonsky response galactic``: a Galactic response from a detector response and an orientation.

Reads the team's ``DRM`` file (sparse or dense) and an ``.ori`` attitude history, and streams
the Galactic response (axes NuLambda, Ei, Em, Phi, PsiChi; cm² s; the layout of
``psr_gal_511_DC2.h5``) into a histpy HDF5 file one block of sky pixels at a time. Every input is
checked before any work starts.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from . import COMMANDS
from ._dask import add_dask_options, client_from_args

HELP = COMMANDS["response"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``response`` subcommand and its ``galactic`` sub-subcommand."""
    p = subparsers.add_parser("response", help=HELP, description=HELP)
    sub = p.add_subparsers(dest="response_command", metavar="SUBCOMMAND")
    g = sub.add_parser(
        "galactic", help="Galactic response from a detector response (DRM) and an orientation",
        description="Carry a spacecraft-frame detector response over an attitude history "
        "(live-time weighted, with Earth occultation) into a Galactic response, written as a "
        "histpy HDF5 file that DataIF_COSI_DC2.load and Histogram.open read. The same as "
        "cosipy's FullDetectorResponse.get_extended_source_response.")
    g.add_argument("--drm", required=True, type=Path, help="detector response file (DRM "
                   "HDF5, sparse or dense)")
    g.add_argument("--ori", required=True, type=Path, help="orientation file (.ori)")
    g.add_argument("--nside", type=int, default=None, help="HEALPix nside of the sky axis "
                   "(default: the response's); PsiChi keeps the response's nside")
    g.add_argument("--nside-scatt", type=int, default=None, help="nside of the attitude "
                   "pixels (scatt-map method; default the response's), or the attitude "
                   "resolution as that pixel size (binned method; default 1 deg)")
    g.add_argument("--earth-occ", action=argparse.BooleanOptionalAction, default=True,
                   help="zero each sky pixel while the Earth hides it (default on)")
    g.add_argument("--method", choices=("scatt_map", "binned"), default="scatt_map",
                   help="attitude discretisation: scatt_map (cosipy's, default) or binned "
                   "(clustered attitudes, overlap interpolation)")
    g.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                   help="stored precision (default float32, as psr_gal_511_DC2.h5)")
    g.add_argument("--block", type=int, default=64, help="sky pixels per block (memory: "
                   "block x Ei x Em x Phi x PsiChi x itemsize, twice; default 64)")
    g.add_argument("--output", "-o", required=True, type=Path, help="output .h5 file")
    g.add_argument("--overwrite", action="store_true", help="replace an existing output")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_dask_options(g)
    g.set_defaults(func=run_galactic)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])
    return p


def run_galactic(args: argparse.Namespace) -> int:
    """Check the inputs, then write the response; prints one summary line."""
    from ..errors import FileFormatError, InvalidParameterError
    from ..io.drm import FullDetectorResponse
    from ..io.spacecraft import SpacecraftFile
    from ..response.extended import write_extended_source_response
    from ..response.galactic import _check_nside

    for flag, path in (("--drm", args.drm), ("--ori", args.ori)):
        if not path.is_file():
            raise FileFormatError(f"{flag} {path}: no such file")
    if args.output.exists() and not args.overwrite:
        raise InvalidParameterError(f"--output {args.output} exists; pass --overwrite to "
                                    "replace it")
    if args.block < 1:
        raise InvalidParameterError(f"--block must be at least 1, got {args.block}")
    for flag, n in (("--nside", args.nside), ("--nside-scatt", args.nside_scatt)):
        if n is not None:
            _check_nside(flag, n)
    t0 = time.perf_counter()
    orientation = SpacecraftFile.parse_from_file(args.ori)
    with FullDetectorResponse.open(args.drm) as fdr:
        if args.nside is not None and args.nside > 4 * fdr.nside:
            raise InvalidParameterError(
                f"--nside {args.nside} is finer than 4 x the response's NuLambda nside "
                f"{fdr.nside} ({args.drm}); the response cannot resolve it")
        options = dict(nside_image=args.nside, nside_scatt_map=args.nside_scatt,
                       Earth_occ=args.earth_occ, method=args.method, block=args.block,
                       dtype=args.dtype, overwrite=True, progress=not args.no_progress)
        with client_from_args(args) as client:
            if client is None:
                path = write_extended_source_response(args.output, fdr, orientation,
                                                      **options)
            else:
                from ..distributed.tasks import write_extended_source_response_on

                path = write_extended_source_response_on(client, args.output, fdr,
                                                         orientation, **options)
    size = path.stat().st_size
    print(f"wrote {path} ({size / 2**20:.1f} MiB) in {time.perf_counter() - t0:.1f} s")
    return 0
