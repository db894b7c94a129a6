"""``comptonsky bin``: bin unbinned event files into a Compton-data-space histogram.

Example::

    comptonsky bin inputs_511keV_DC2.yaml 511_thin_disk.fits.gz albedo.fits.gz \\
        --psichi galactic --output 511keV_dc2_galactic_event.hdf5

Several files are added together. ``--psichi galactic local`` with two ``--output`` names bins
both frames in one pass over the data.

Detector-frame imaging bins per spacecraft-attitude bin of an exposure table (each event by its own
z/x pointing columns, as cosipy does) or per time interval::

    comptonsky bin inputs_511keV.yaml 511_thin_disk.fits.gz --psichi local \
        --scatt exposure_table_dc2.fits --output 511keV_dc2_scatt_event.hdf5
    comptonsky bin inputs_511keV.yaml events.fits.gz --psichi local \
        --time-bins 1835487300:1835490900 1835494500:1835498100 --output time_binned.hdf5
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

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
    first = p.add_mutually_exclusive_group()
    first.add_argument("--scatt", type=Path, default=None, metavar="TABLE.fits",
                       help="bin per ScAtt bin of this exposure table (SpacecraftAttitudeExposure"
                       "Table FITS): axes ScAtt, Em, Phi, PsiChi; the parameter file's tmin/tmax, "
                       "if given, cut the events' times")
    p.add_argument("--ori", type=Path, default=None, metavar="FILE.ori",
                   help="with --scatt: assign events to ScAtt bins by their time in this "
                   "orientation file instead of by their pointing columns (for events without "
                   "pointings)")
    first.add_argument("--time-bins", nargs="+", default=None, metavar="T",
                       help="bin per time interval: a TimeBinnedExposureTable FITS file, bin "
                       "edges T0 T1 ... (s), or intervals START:STOP ... (s; gaps allowed); axes "
                       "Time, Em, Phi, PsiChi")
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


def _time_intervals(values: list[str]) -> tuple:
    """(tstart, tstop) from ``--time-bins``: edges, or START:STOP intervals."""
    from ..errors import InvalidParameterError

    def number(text: str) -> float:
        try:
            return float(text)
        except ValueError:
            raise InvalidParameterError(
                f"--time-bins: {text!r} is not a number of seconds") from None

    if all(":" in v for v in values):
        pairs = [v.split(":", 1) for v in values]
        return (np.array([number(a) for a, _ in pairs]), np.array([number(b) for _, b in pairs]))
    if any(":" in v for v in values):
        raise InvalidParameterError(
            f"--time-bins: give either edges T0 T1 ... or intervals START:STOP ..., found "
            f"{values}")
    edges = np.array([number(v) for v in values])
    if edges.size < 2:
        raise InvalidParameterError(f"--time-bins: at least two edges are needed, found {values}")
    return edges[:-1], edges[1:]


def _first_axis(args: argparse.Namespace, binned):
    """The ScAtt or time-interval axis of ``--scatt``/``--time-bins`` (None without them),
    checked before any event is read."""
    from ..binning import IntervalAxis, ScAttAxis

    if args.scatt is not None:
        from ..attitude import SpacecraftAttitudeExposureTable

        table = SpacecraftAttitudeExposureTable.from_fits(args.scatt)
        if args.ori is not None:
            return table.scatt_by_time(args.ori)
        pairs = np.array([tuple(p) for p in table["healpix_index"]], dtype=np.int64)
        tmin, tmax = binned.tmin, binned.tmax
        time_range = None if tmin is None and tmax is None else (
            -np.inf if tmin is None else float(tmin), np.inf if tmax is None else float(tmax))
        return ScAttAxis(pairs.reshape(-1, 2), nside=int(table.nside),
                         scheme=str(table.scheme), time_range=time_range)
    if args.ori is not None:
        from ..errors import InvalidParameterError

        raise InvalidParameterError("--ori assigns ScAtt bins by time: give it with --scatt")
    if args.time_bins is not None:
        values = list(args.time_bins)
        if len(values) == 1 and Path(values[0]).is_file():
            from ..attitude import TimeBinnedExposureTable

            tstart, tstop = TimeBinnedExposureTable.from_fits(values[0]).time_edges()
        else:
            tstart, tstop = _time_intervals(values)
        return IntervalAxis(tstart, tstop)
    return None


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
    first_axis = _first_axis(args, binned)
    if first_axis is None:
        binnings = [binned.binning(f) for f in frames]
    else:
        binnings = [binned.cds_binning(f).with_first_axis(first_axis) for f in frames]
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
            first = str(hist.axes.labels[0])
            print(f"{out}: {total:.0f} counts, {frame} PsiChi, {first} axis, shape {shape}")
    except BaseException:
        for out in written:  # all outputs or none
            out.unlink(missing_ok=True)
        raise
    return 0
