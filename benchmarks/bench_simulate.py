"""Benchmark of the simulator at DC2 shape: detector response, attitude binning, Galactic response
(3072 × 60 × 3072 streamed to disk), event sampling. Prints wall times, the attitude-bin count
and the process's peak memory.

Usage::

    python benchmarks/bench_simulate.py                # nside 16, Phi 3°, 3 months (DC2 shape)
    python benchmarks/bench_simulate.py --nside 8 --phi-bin 6 --duration 86400   # quick
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from comptonsky.response.galactic import bin_attitudes, write_galactic_response
from comptonsky.simulate import InstrumentModel, attitude_history, get_preset
from comptonsky.simulate.events import simulate_background_events, simulate_sky_events


def _peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="dc2-511-thin-disk")
    ap.add_argument("--nside", type=int, default=16)
    ap.add_argument("--phi-bin", type=float, default=3.0)
    ap.add_argument("--duration", type=float, default=None, help="s (default: 3 months)")
    ap.add_argument("--attitude-resolution", type=float, default=None, help="deg")
    ap.add_argument("--psichi-oversample", type=int, default=1,
                    help="detector-frame PsiChi at nside * 2**N (default 1, as simulate_dataset)")
    args = ap.parse_args(argv)

    pre = get_preset(args.preset)
    orbit = pre.orbit.with_duration(args.duration)
    inst: InstrumentModel = pre.instrument()
    phi_edges = np.arange(0.0, 180.0 + args.phi_bin / 2, args.phi_bin)
    window = np.asarray(pre.energy_window_kev)
    import healpy as hp

    res = args.attitude_resolution or 0.5 * np.degrees(hp.nside2resol(args.nside))
    rows = []

    t0 = time.perf_counter()
    det = inst.detector_response(args.nside, args.nside * 2**args.psichi_oversample, phi_edges,
                                 window)
    rows.append(("detector-frame response", time.perf_counter() - t0,
                 f"nnz {det.nnz:.3g} ({det.nnz * 12 / 1e6:.0f} MB)"))
    t0 = time.perf_counter()
    ori = attitude_history(orbit, 20.0)
    bins = bin_attitudes(ori, res)
    rows.append(("attitude history + binning", time.perf_counter() - t0,
                 f"{len(ori)} samples -> {len(bins)} bins at {res:.2f} deg"))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "psr.h5"
        t0 = time.perf_counter()
        write_galactic_response(out, det, bins, window, window, phi_edges, nside=args.nside,
                                progress=False)
        npix = hp.nside2npix(args.nside)
        rows.append(("Galactic response -> HDF5", time.perf_counter() - t0,
                     f"shape ({npix}, 1, 1, {len(phi_edges) - 1}, {npix}), "
                     f"{out.stat().st_size / 1e9:.2f} GB"))
    t0 = time.perf_counter()
    ev = simulate_sky_events(pre.sky(), inst, orbit, np.random.default_rng(1), progress=False)
    rows.append(("source events", time.perf_counter() - t0, f"{len(ev['Energies'])} events"))
    t0 = time.perf_counter()
    bkg = pre.backgrounds()[0]
    if pre.background_rate_hz:  # as simulate_dataset: the albedo at the preset's count rate
        rate = bkg.local_rate(det, np.array([0.0, 0.0, 1.0]), orbit.horizon_deg)
        scale = pre.background_rate_hz / rate.sum()
        bkg = type(bkg)(bkg.intensity * scale, bkg.region, bkg.name)
    ev = simulate_background_events(bkg, inst, orbit, np.random.default_rng(2), progress=False)
    rows.append(("albedo events", time.perf_counter() - t0, f"{len(ev['Energies'])} events"))

    print(f"bench_simulate: preset {pre.name}, nside {args.nside}, Phi {args.phi_bin} deg, "
          f"duration {orbit.duration_s:.0f} s")
    for name, sec, info in rows:
        print(f"  {name:28s} {sec:8.1f} s   {info}")
    print(f"  {'peak memory (RSS)':28s} {_peak_gb():8.2f} GB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
