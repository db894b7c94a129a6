"""Benchmark: the detector-frame (ScAtt) data reduction at DC2 shape.

Generates (or reuses, ``--ori``) a DC2-like orientation file: 3 months at 1 s (7 979 956 rows,
about 1 GB of text with 17-digit angles), zenith pointing on a 0°-inclination 95.5-min orbit at
550 km. Then measures, after a warm-up that compiles the kernels:

- ``SpacecraftFile.parse_from_file`` (with the time to read the file's bytes as a floor);
- ``SpacecraftAttitudeExposureTable.from_orientation`` at nside 16;
- ``CoordsysConversionMatrix.spacecraft_attitude_binning_ccm`` at nside 16 with averaged
  pointing (the tutorial's setting), without and with Earth occultation;
- the exact per-sample matrix (``use_averaged_pointing=False``) on the first bins, extrapolated
  to all samples;

and prints them next to cosipy's published times for the same steps on an Apple M2 Max
(docs/design.md §8): 10.7 s, 37 s, 8 min 21 s.

Usage::

    python benchmarks/bench_detector_frame.py [--ori FILE] [--rows N] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

COSIPY_M2MAX = {"parse": 10.7, "table": 37.0, "ccm": 8 * 60 + 21.0}
DC2_ROWS = 7_979_956
T0, PERIOD = 1835487300.0, 5730.7137  # no two 1-s attitudes of the 3 months repeat


def dc2_like_table(n: int) -> np.ndarray:
    """.ori rows: zenith pointing, x along the Galactic-north tangent of z (as in DC2)."""
    from comptonsky.geometry import equatorial_to_galactic_matrix, vec_to_lonlat

    t = T0 + np.arange(n, dtype=np.float64)
    ph = 2 * np.pi * (t - T0) / PERIOD
    z = np.stack([np.cos(ph), np.sin(ph), np.zeros_like(ph)], -1) @ \
        equatorial_to_galactic_matrix().T
    zl, zb = vec_to_lonlat(z)
    xl = np.where(zb >= 0, zl + 180.0, zl) % 360.0
    xb = 90.0 - np.abs(zb)
    live = np.ones(n)
    live[-1] = 0.0
    return np.column_stack([t, xb, xl, zb, zl, np.full(n, 550.0), zb, zl, live])


def write_ori(path: Path, table: np.ndarray) -> None:
    with open(path, "w") as fh:
        fh.write("Type OrientationsGalactic\n")
        for i in range(0, len(table), 200_000):
            fh.write("\n".join("OG {:.1f} {!r} {!r} {!r} {!r} {:.1f} {!r} {!r} {:.1f}".format(*r)
                               for r in table[i: i + 200_000].tolist()))
            fh.write("\n")
        fh.write("EN\n")


def drm_nside16(path: Path):
    import astropy.units as u
    from histpy import Axes, Axis, HealpixAxis

    from comptonsky.io.drm import FullDetectorResponse, write_full_detector_response

    axes = Axes([HealpixAxis(nside=16, coordsys="spacecraftframe", label="NuLambda"),
                 Axis([509.0, 513.0] * u.keV, scale="log", label="Ei"),
                 Axis([509.0, 513.0] * u.keV, scale="log", label="Em"),
                 Axis([0.0, 180.0] * u.deg, label="Phi"),
                 HealpixAxis(nside=1, coordsys="spacecraftframe", label="PsiChi")])
    write_full_detector_response(path, axes, np.zeros(tuple(axes.nbins)))
    return FullDetectorResponse.open(path)


CPU = {}


def timed(fn, repeat=1, key=None):
    """Best wall time of ``repeat`` runs (and the CPU time of that run, in ``CPU[key]``)."""
    best, out = np.inf, None
    for _ in range(repeat):
        t, c = time.perf_counter(), time.process_time()
        out = fn()
        wall = time.perf_counter() - t
        if wall < best:
            best = wall
            CPU[key] = time.process_time() - c
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ori", type=Path, help="reuse this .ori file instead of generating one")
    ap.add_argument("--rows", type=int, default=DC2_ROWS)
    ap.add_argument("--keep", type=Path, help="directory for the generated files")
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()

    from comptonsky import CoordsysConversionMatrix, SpacecraftAttitudeExposureTable, SpacecraftFile

    work = Path(args.keep or tempfile.mkdtemp(prefix="bench_detector_"))
    work.mkdir(parents=True, exist_ok=True)
    ori_path = args.ori
    if ori_path is None:
        ori_path = work / "dc2_like.ori"
        print(f"writing {args.rows} rows to {ori_path} ...", flush=True)
        write_ori(ori_path, dc2_like_table(args.rows))
    small = work / "warmup.ori"
    write_ori(small, dc2_like_table(5000))
    fdr = drm_nside16(work / "drm16.h5")

    # warm-up: compile and load every kernel once
    w = SpacecraftFile.parse_from_file(small)
    wt = SpacecraftAttitudeExposureTable.from_orientation(w, nside=16)
    for occ in (False, True):
        for avg in (False, True):
            CoordsysConversionMatrix.spacecraft_attitude_binning_ccm(
                fdr, wt, use_averaged_pointing=avg, earth_occ=occ)

    size = os.path.getsize(ori_path)
    floor, _ = timed(lambda: np.fromfile(ori_path, dtype=np.uint8), args.repeat)
    t_parse, ori = timed(lambda: SpacecraftFile.parse_from_file(ori_path), args.repeat, "parse")
    t_table, table = timed(lambda: SpacecraftAttitudeExposureTable.from_orientation(
        ori, nside=16), args.repeat, "table")
    t_ccm, ccm = timed(lambda: CoordsysConversionMatrix.spacecraft_attitude_binning_ccm(
        fdr, table, use_averaged_pointing=True, earth_occ=False), args.repeat, "ccm")
    t_occ, ccm_occ = timed(lambda: CoordsysConversionMatrix.spacecraft_attitude_binning_ccm(
        fdr, table, use_averaged_pointing=True, earth_occ=True), args.repeat, "occ")
    # exact per-sample matrix on the first bins, extrapolated by sample count
    head = table.iloc[:3].reset_index(drop=True)
    n_head = int(head["num_pointings"].sum())
    t_exact, _ = timed(lambda: CoordsysConversionMatrix.spacecraft_attitude_binning_ccm(
        fdr, head, use_averaged_pointing=False, earth_occ=True))
    n_all = int(table["num_pointings"].sum())

    print(f"\nDC2-like orientation: {len(ori)} rows, {size / 1e6:.0f} MB; {len(table)} ScAtt bins "
          f"(nside 16); {os.cpu_count()} CPUs\n")
    load = os.getloadavg()[0]
    print(f"{'step':54s} {'wall':>7s} {'CPU':>7s} {'cosipy M2 Max':>14s} {'floor':>7s}")
    print(f"{'.ori parse (SpacecraftFile.parse_from_file)':54s} {t_parse:6.2f}s "
          f"{CPU['parse']:6.2f}s {COSIPY_M2MAX['parse']:13.1f}s {floor:6.2f}s  (read the bytes)")
    print(f"{'exposure table (from_orientation, nside 16)':54s} {t_table:6.2f}s "
          f"{CPU['table']:6.2f}s {COSIPY_M2MAX['table']:13.1f}s")
    print(f"{'conversion matrix, averaged pointing, earth_occ=False':54s} {t_ccm:6.2f}s "
          f"{CPU['ccm']:6.2f}s {COSIPY_M2MAX['ccm']:13.1f}s")
    print(f"{'conversion matrix, averaged pointing, earth_occ=True':54s} {t_occ:6.2f}s "
          f"{CPU['occ']:6.2f}s {'-':>14s}")
    print(f"{'conversion matrix, exact per sample (extrapolated)':54s} "
          f"{t_exact * n_all / n_head:6.0f}s {'':7s} {'-':>14s}   "
          f"({t_exact:.2f} s for {n_head} samples)")
    print(f"\nnon-zeros: {ccm.contents.nnz} (averaged), {ccm_occ.contents.nnz} (with occultation); "
          f"load average {load:.1f} (other processes share the CPUs when it exceeds the count)")


if __name__ == "__main__":
    main()
