"""``comptonsky bin``: bin unbinned event files into a Compton-data-space histogram.

Example::

    comptonsky bin inputs_511keV_DC2.yaml 511_thin_disk.fits.gz albedo.fits.gz \\
        --psichi galactic --output 511keV_dc2_galactic_event.hdf5

Several files are added together. ``--psichi galactic local`` with two ``--output`` names bins
both frames in one pass over the data.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

logger = logging.getLogger(__name__)


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``bin`` subcommand."""
    p = subparsers.add_parser(
        "bin",
        help="bin unbinned events (DC2 FITS/HDF5, MEGAlib .tra) into a CDS histogram",
        description="Bin unbinned COSI events into a (Time, Em, Phi, PsiChi) histogram with the "
        "binning of a parameter file (the tutorial's inputs_*.yaml), streaming the files in "
        "chunks. Several files are added together. Events that are not binned are counted and "
        "reported by reason. The output appears only once binning succeeded.",
    )
    p.add_argument("inputs_yaml", type=Path, help="binning parameter file (YAML)")
    p.add_argument("files", type=Path, nargs="+", help="event files (.fits[.gz], .hdf5, .tra[.gz])")
    p.add_argument("--psichi", nargs="+", choices=("galactic", "local"), default=["galactic"],
                   help="PsiChi frame(s); give several to bin them in one pass (default galactic)")
    p.add_argument("-o", "--output", nargs="+", required=True,
                   help="output HDF5 file(s), one per --psichi frame")
    p.add_argument("--dense", action="store_true",
                   help="write dense contents instead of sparse (COO)")
    p.add_argument("--event-range", type=int, nargs=2, metavar=("START", "STOP"), default=None,
                   help="bin only events START <= index < STOP of each file")
    p.add_argument("--chunk-size", type=int, default=None, help="events per chunk")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.set_defaults(func=run)
    return p


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and a.samefile(b))
    except OSError:
        return False


def _outputs(args: argparse.Namespace, frames: list[str]) -> list[Path]:
    """The output files, checked before any event is read."""
    from ..binning import hdf5_output_path
    from ..errors import InvalidParameterError
    from ..io.atomic import check_output_path

    if len(args.output) != len(frames):
        raise InvalidParameterError(
            f"give one --output per --psichi frame: {len(frames)} frame(s) {frames}, "
            f"{len(args.output)} output(s)")
    outputs = [hdf5_output_path(o) for o in args.output]
    for i, out in enumerate(outputs):
        if any(_same_file(out, other) for other in outputs[:i]):
            raise InvalidParameterError(f"{out}: given twice as --output")
        for source in (args.inputs_yaml, *args.files):
            if _same_file(out, source):
                raise InvalidParameterError(
                    f"{out}: is also an input; choose another --output name")
        if out.exists() and not args.overwrite:
            raise InvalidParameterError(f"{out} exists; pass --overwrite to replace it")
        check_output_path(out, overwrite=True)
    return outputs


def run(args: argparse.Namespace) -> int:
    """Execute ``comptonsky bin``."""
    from ..binning import BinnedData, bin_events
    from ..io.events import DEFAULT_CHUNK_SIZE, check_event_range
    from ..io.histogram import write_histogram

    frames = list(dict.fromkeys(args.psichi))
    event_range = (None if args.event_range is None
                   else check_event_range(tuple(args.event_range), "--event-range"))
    outputs = _outputs(args, frames)
    binned = BinnedData(input_yaml=args.inputs_yaml)
    binnings = [binned.binning(f) for f in frames]
    hists = bin_events([str(f) for f in args.files], binnings, event_range=event_range,
                       chunk_size=DEFAULT_CHUNK_SIZE if args.chunk_size is None
                       else args.chunk_size,
                       progress=not args.no_progress)
    written = []
    try:
        for frame, hist, out in zip(frames, hists, outputs):
            if args.dense:
                hist = hist.to_dense()
            write_histogram(hist, out, overwrite=True)
            written.append(out)
            total = float(hist.contents.sum())
            shape = tuple(int(n) for n in hist.axes.nbins)
            print(f"{out}: {total:.0f} counts, {frame} PsiChi, shape {shape}")
    except BaseException:
        for out in written:  # all outputs or none
            out.unlink(missing_ok=True)
        raise
    return 0
