"""Benchmark: a Galactic response at DC2 shape from a dense detector-response (DRM) file.

``comptonsky response galactic`` end to end, in one process: open a dense ``DRM`` file
(NuLambda nside 16, one Ei and Em bin at 511 keV, Phi 3°, PsiChi nside 16; gzip-chunked as the
team writes them), read it into the sparse detector response, bin 3 months of attitudes (cosipy's
scatt map at nside 16, per-sample Earth occultation; or ``--method binned``) and stream the
3072 × 1 × 1 × 60 × 3072 float32 response (2.3 GB) to a histpy HDF5 file.

The DRM file is made first (not timed) from the simulator's instrument model, one NuLambda row at
a time, unless ``--drm`` names one; the orientation is the simulator's DC2 orbit sampled every
``--step`` s unless ``--ori`` names a file. Printed: each stage's wall time, the time per sky
pixel, the bytes written per second, the peak memory (RSS), the load average, and the floor: the
bytes streamed (DRM file read + response written) divided by the disk bandwidth measured in the
same run (writing and re-reading a file of the output's size ÷ 4 in the output's folder).

Usage::

    python benchmarks/bench_galactic_response.py                   # DC2 shape
    python benchmarks/bench_galactic_response.py --nside 8 --phi-bin 6 --duration 86400  # quick
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def make_dense_drm(path: Path, nside: int, phi_bin: float) -> tuple[float, int]:
    """A dense DRM file from the simulator's instrument model, written one row at a time.

    Returns (seconds, non-zero entries)."""
    import astropy.units as u
    import h5py
    import healpy as hp

    from comptonsky.simulate import get_preset

    t0 = time.perf_counter()
    pre = get_preset("dc2-511-thin-disk")
    inst = pre.instrument()
    window = np.asarray(pre.energy_window_kev)
    phi_edges = np.arange(0.0, 180.0 + phi_bin / 2, phi_bin)
    det = inst.detector_response(nside, nside, phi_edges, window)
    npix = hp.nside2npix(nside)
    nphi = len(phi_edges) - 1
    with h5py.File(path, "w") as f:
        drm = f.create_group("DRM")
        drm.attrs["UNIT"] = "cm2"
        drm.attrs["SPARSE"] = False
        axes = drm.create_group("AXES", track_order=True)
        for label, data, attrs in (
                ("NuLambda", np.arange(npix + 1), {"TYPE": "healpix", "NSIDE": nside,
                                                   "SCHEME": "ring"}),
                ("Ei", window, {"TYPE": "log", "UNIT": "keV"}),
                ("Em", window, {"TYPE": "log", "UNIT": "keV"}),
                ("Phi", phi_edges, {"TYPE": "linear", "UNIT": "deg"}),
                ("PsiChi", np.arange(npix + 1), {"TYPE": "healpix", "NSIDE": nside,
                                                 "SCHEME": "ring"})):
            ds = axes.create_dataset(label, data=data)
            for k, v in attrs.items():
                ds.attrs[k] = v
            ds.attrs["DESCRIPTION"] = label
        ds = drm.create_dataset("CONTENTS", shape=(npix, 1, 1, nphi, npix), dtype="f8",
                                chunks=(1, 1, 1, nphi, npix), compression="gzip")
        for i in range(npix):
            ds[i] = det.row(i).reshape(1, 1, nphi, npix)
    del u
    return time.perf_counter() - t0, det.nnz


def disk_bandwidth(folder: Path, nbytes: int) -> tuple[float, float]:
    """(write, read) bytes per second of a plain file of ``nbytes`` in ``folder``."""
    buf = np.random.default_rng(0).random(min(nbytes, 256 * 2**20) // 8)
    path = folder / "bandwidth.bin"
    t0 = time.perf_counter()
    with open(path, "wb") as fh:
        written = 0
        while written < nbytes:
            fh.write(buf.data)
            written += buf.nbytes
        fh.flush()
        os.fsync(fh.fileno())
    tw = time.perf_counter() - t0
    t0 = time.perf_counter()
    with open(path, "rb") as fh:
        while fh.readinto(buf.data):
            pass
    tr = time.perf_counter() - t0
    path.unlink()
    return written / tw, written / tr


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nside", type=int, default=16)
    ap.add_argument("--phi-bin", type=float, default=3.0)
    ap.add_argument("--duration", type=float, default=None, help="s (default: 3 months)")
    ap.add_argument("--step", type=float, default=20.0, help="attitude sampling step, s")
    ap.add_argument("--method", choices=("scatt_map", "binned"), default="scatt_map")
    ap.add_argument("--drm", type=Path, default=None, help="reuse this dense DRM file")
    ap.add_argument("--ori", type=Path, default=None, help="use this .ori file")
    ap.add_argument("--block", type=int, default=64)
    ap.add_argument("--keep", type=Path, default=None, help="folder to keep the files in")
    args = ap.parse_args(argv)

    import healpy as hp

    from comptonsky.io.drm import FullDetectorResponse
    from comptonsky.io.orientation import write_ori
    from comptonsky.io.spacecraft import SpacecraftFile
    from comptonsky.response.detector import DetectorResponse
    from comptonsky.response.extended import galactic_inputs, write_extended_source_response
    from comptonsky.simulate import attitude_history, get_preset

    tmp = tempfile.TemporaryDirectory(dir=args.keep) if args.keep is None else None
    folder = Path(tmp.name) if tmp else args.keep
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    drm = args.drm
    if drm is None:
        drm = folder / f"drm_dense_nside{args.nside}.h5"
        sec, nnz = make_dense_drm(drm, args.nside, args.phi_bin)
        print(f"made {drm.name} ({drm.stat().st_size / 1e6:.0f} MB, {nnz:.3g} non-zero) in "
              f"{sec:.0f} s (not timed below)")
    ori_path = args.ori
    if ori_path is None:
        orbit = get_preset("dc2-511-thin-disk").orbit.with_duration(args.duration)
        ori_path = folder / "orbit.ori"
        write_ori(ori_path, attitude_history(orbit, args.step))

    # warm-up: compile the kernels on a tiny problem (not timed)
    with FullDetectorResponse.open(drm) as fdr:
        small = SpacecraftFile.parse_from_file(ori_path).source_interval(
            *(lambda t: (t[0], t[0] + 600.0))(SpacecraftFile.parse_from_file(ori_path)
                                              .orientation.time))
        det0, bins0, opt0 = galactic_inputs(fdr, small, method=args.method)
        from comptonsky.response.galactic import galactic_response_block

        galactic_response_block(det0, bins0, np.arange(2), dtype="float32", **opt0)
        del det0, bins0

    t0 = time.perf_counter()
    ori = SpacecraftFile.parse_from_file(ori_path)
    t_ori = time.perf_counter() - t0
    rows.append(("read orientation", t_ori, f"{len(ori)} samples"))
    out = folder / "psr_gal.h5"
    with FullDetectorResponse.open(drm) as fdr:
        t0 = time.perf_counter()
        det = DetectorResponse.from_full_detector_response(fdr)
        rows.append(("  of which: read DRM -> sparse", time.perf_counter() - t0,
                     f"nnz {det.nnz:.3g} ({det.nnz * 12 / 2**20:.0f} MiB held; measured "
                     "apart, the command reads it again)"))
        del det
        t0 = time.perf_counter()
        _, bins, _ = galactic_inputs(DetectorResponse(fdr.nside, fdr.nside, (1, 1, 1),
                                                      np.zeros(fdr.npix + 1, np.int64),
                                                      *(np.zeros(0, dt) for dt in
                                                        (np.int32, np.int32, np.float32))),
                                     ori, nside_scatt_map=args.nside, method=args.method)
        rows.append(("  of which: attitude bins", time.perf_counter() - t0,
                     f"{len(bins)} bins ({args.method}, measured apart)"))
        t_write = time.perf_counter()
        write_extended_source_response(out, fdr, ori, nside_image=args.nside,
                                       nside_scatt_map=args.nside, method=args.method,
                                       block=args.block, dtype="float32", progress=False)
        t_write = time.perf_counter() - t_write
    total = t_ori + t_write
    nbytes = out.stat().st_size
    npix = hp.nside2npix(args.nside)
    rows.insert(1, ("read DRM + bin + stream (the command)", t_write,
                    f"{nbytes / 2**30:.2f} GiB written"))
    load = os.getloadavg()
    bw_w, bw_r = disk_bandwidth(folder, max(nbytes // 4, 64 * 2**20))
    floor = drm.stat().st_size / bw_r + nbytes / bw_w
    print(f"bench_galactic_response: nside {args.nside}, Phi {args.phi_bin} deg, method "
          f"{args.method}, {os.cpu_count()} cores, load average {load[0]:.1f} {load[1]:.1f} "
          f"{load[2]:.1f}")
    for name, sec, info in rows:
        print(f"  {name:36s} {sec:8.1f} s   {info}")
    print(f"  {'total':36s} {total:8.1f} s   (target <= 180 s)")
    print(f"  {'time per sky pixel':36s} {1e3 * t_write / npix:8.2f} ms")
    print(f"  {'bytes written per second':36s} {nbytes / t_write / 2**20:8.1f} MiB/s")
    print(f"  {'floor (bytes streamed / bandwidth)':36s} {floor:8.1f} s   disk write "
          f"{bw_w / 2**20:.0f} MiB/s, read {bw_r / 2**20:.0f} MiB/s")
    print(f"  {'peak memory (RSS)':36s} {_peak_gib():8.2f} GiB (target <= 4 GiB)")
    if tmp:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
