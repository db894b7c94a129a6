"""``comptonsky simulate``: write a synthetic DC2-like data set (response, events, truth, inputs).

Example::

    comptonsky simulate --preset dc2-511-thin-disk --nside 16 --phi-bin 3 --seed 1 \\
        --output sim-dc2
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

logger = logging.getLogger(__name__)


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``simulate`` subcommand."""
    p = subparsers.add_parser(
        "simulate",
        help="simulate a DC2-like data set (a model of COSI, not the team's Monte Carlo)",
        description="Simulate COSI-like data from a physical model of the orbit, instrument, "
        "sky and Earth albedo, and write the Galactic response (psr_gal_511.h5), the "
        "spacecraft-frame response (detector_response_511.h5, FullDetectorResponse layout), "
        "source and albedo event lists, the albedo template, the truth map, orientation.ori "
        "(1 s cadence by default), inputs.yaml and imagedeconvolution_parfile.yml into the "
        "output directory. The presets are "
        "described in docs/simulator.md; an unknown --preset name lists them.",
    )
    p.add_argument("--preset", default="dc2-511-thin-disk", help="simulation preset "
                   "(default dc2-511-thin-disk)")
    p.add_argument("--nside", type=int, default=16, help="HEALPix nside (default 16)")
    p.add_argument("--phi-bin", type=float, default=3.0,
                   help="Compton-angle bin width in deg, dividing 180 (default 3)")
    p.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    p.add_argument("--duration", type=float, default=None,
                   help="observation length in s (default: the preset's, 3 months)")
    p.add_argument("--format", choices=("fits", "hdf5"), default="fits",
                   help="event-list format (default fits, gzipped)")
    p.add_argument("--attitude-step", type=float, default=20.0,
                   help="attitude sampling step in s of the Galactic response (default 20)")
    p.add_argument("--ori-cadence", type=float, default=1.0, metavar="SECONDS",
                   help="cadence of orientation.ori in s (default 1, as the COSI files; a "
                   "3-month file then has 8 M rows, 0.9 GB; e.g. 60 for a small file)")
    p.add_argument("--sky-sampling", choices=("pixel", "continuous"), default="pixel",
                   help="draw source photons from the truth map (pixel, default: events agree "
                   "with response x truth) or from the analytic sky components (continuous)")
    p.add_argument("--background-rate", default="preset", metavar="RATE|preset|line",
                   help="albedo count rate in the energy window, counts/s: 'preset' (default; "
                   "0.185, the DC2 level of all background components), 'line' (the physical "
                   "albedo line flux alone, ~6e-4 counts/s) or a number")
    p.add_argument("--psichi-oversample", type=int, default=1,
                   help="tabulate the detector-frame response at nside*2**N in PsiChi before "
                   "rotating it to the Galactic grid (default 1; 0 is faster but blurs the "
                   "Compton cone by up to a pixel)")
    p.add_argument("--force", action="store_true",
                   help="recompute even if the output directory holds this simulation")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("-o", "--output", type=Path, required=True, help="output directory")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Execute ``comptonsky simulate``."""
    from ..simulate.pipeline import simulate_dataset

    paths = simulate_dataset(args.output, preset=args.preset, nside=args.nside,
                             phi_bin_deg=args.phi_bin, duration_s=args.duration, seed=args.seed,
                             format=args.format, attitude_step_s=args.attitude_step,
                             ori_cadence_s=args.ori_cadence,
                             sky_sampling=args.sky_sampling,
                             psichi_oversample=args.psichi_oversample,
                             background_rate_hz=args.background_rate,
                             force=args.force, progress=not args.no_progress)
    summary = json.loads(paths["manifest"].read_text()).get("summary", {})
    for key, path in paths.items():
        print(f"{key:16s} {path}")
    for key, value in summary.items():
        print(f"{key:28s} {value}")
    return 0
