"""Benchmark: the detector-frame (ScAtt) path at DC2 shape, step by step.

Generates (or reuses, ``--ori``) a DC2-like orientation file: 3 months at 1 s (7 979 956 rows,
about 1.1 GB of text with 17-digit angles), zenith pointing on a 0°-inclination orbit of
5730.71 s at 550 km (no two 1-s attitudes repeat), and a dense DC2-shape response (NuLambda and
PsiChi nside 16, one Ei and Em bin, Phi in 6° bins: 2.8e8 float32 values). Then measures,
after a warm-up that compiles the kernels, the best of ``--repeat`` runs of:

- ``SpacecraftFile.parse_from_file``;
- ``SpacecraftAttitudeExposureTable.from_orientation`` at nside 16;
- ``CoordsysConversionMatrix.spacecraft_attitude_binning_ccm`` at nside 16, averaged pointing
  and per interval (``use_averaged_pointing=False``), without and with Earth occultation; the
  interval-by-interval sum without grouping (``attitude_nside=None``) on three bins,
  extrapolated, and the grouped matrix's error on those bins;
- ``DataIF_COSI_DC2.load(rsp=FullDetectorResponse, coordsys_conv_matrix=ccm)`` on simulated
  counts (about 1.7e6 occupied bins) and a background template;
- 30 RL iterations (background normalisation fitted);

with the peak resident memory of each step, and prints each figure next to cosipy's published
time on an Apple M2 Max and next to its floor: the bytes the step must stream divided by the
bandwidth measured in the same run (file reads: the read speed of the file's bytes; memory: a
large ``np.copyto``). The data-interface load is also printed next to the time libhdf5 (h5py)
takes to read the response dataset, and its floor is the larger of reading the file's bytes and
inflating its gzip chunks on every core (with the reader's inflater).

Usage::

    python benchmarks/bench_detector_frame.py [--ori FILE] [--rows N] [--keep DIR] [--repeat N]
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

COSIPY_M2MAX = {"parse": 10.7, "table": 37.0, "ccm": 8 * 60 + 21.0, "load": 10.0,
                "rl30": 4 * 60 + 9.0}
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


def drm_dc2(path: Path, phi_deg: float = 6.0):
    """A dense DC2-shape response: NuLambda and PsiChi nside 16, Phi bins of ``phi_deg``, one
    Ei and Em bin; effective area on Compton cones (float32, written block by block)."""
    import astropy.units as u
    import healpy as hp
    from histpy import Axes, Axis, HealpixAxis

    from comptonsky.io.drm import FullDetectorResponse, write_full_detector_response

    phi = np.arange(0.0, 180.0 + phi_deg / 2, phi_deg)
    axes = Axes([HealpixAxis(nside=16, coordsys="spacecraftframe", label="NuLambda"),
                 Axis([509.0, 513.0] * u.keV, scale="log", label="Ei"),
                 Axis([509.0, 513.0] * u.keV, scale="log", label="Em"),
                 Axis(phi * u.deg, label="Phi"),
                 HealpixAxis(nside=16, coordsys="spacecraftframe", label="PsiChi")])
    if not path.exists():
        vec = np.array(hp.pix2vec(16, np.arange(3072))).T
        mid = np.radians(0.5 * (phi[1:] + phi[:-1]))

        def rows(a, b):
            ang = np.arccos(np.clip(vec[a:b] @ vec.T, -1, 1))  # (rows, PsiChi)
            cone = np.exp(-0.5 * ((ang[:, None, :] - mid[None, :, None]) / 0.15) ** 2)
            area = 50.0 * (np.clip(vec[a:b, 2], 0, None) + 0.1)[:, None, None] * cone
            return area.astype(np.float32)[:, None, None]

        write_full_detector_response(path, axes, rows, dtype=np.float32)
    return FullDetectorResponse.open(path)


CPU = {}
PEAK = {}


class PeakRSS:
    """Samples the resident memory every 20 ms in a thread; ``with`` resets the peak."""

    def __init__(self):
        import threading

        import psutil

        self.proc = psutil.Process()
        self.peak = 0
        self.alive = True
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while self.alive:
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.02)

    def reset(self) -> None:
        self.peak = self.proc.memory_info().rss


RSS: PeakRSS | None = None


def timed(fn, repeat=1, key=None):
    """Best wall time of ``repeat`` runs (the CPU time of that run in ``CPU[key]``, the peak
    resident memory over the runs in ``PEAK[key]``)."""
    best, out = np.inf, None
    RSS.reset()
    for _ in range(repeat):
        out = None
        t, c = time.perf_counter(), time.process_time()
        out = fn()
        wall = time.perf_counter() - t
        if wall < best:
            best = wall
            CPU[key] = time.process_time() - c
    PEAK[key] = max(RSS.peak, RSS.proc.memory_info().rss)
    return best, out


def read_bandwidth(path: Path, repeat: int) -> tuple[float, float]:
    """Best time to read the file's bytes (64 MB at a time) and the bytes per second."""
    buf = bytearray(64 << 20)
    best = np.inf
    for _ in range(repeat):
        t = time.perf_counter()
        with open(path, "rb", buffering=0) as fh:
            while fh.readinto(buf):
                pass
        best = min(best, time.perf_counter() - t)
    return best, os.path.getsize(path) / best


def evict(path: Path) -> None:
    """Drop the file's pages from the page cache (``POSIX_FADV_DONTNEED``), so that the next
    read comes from the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def hdf5_read_time(path: Path, repeat: int) -> float:
    """Best time for h5py (libhdf5) to read the whole ``DRM/CONTENTS`` dataset: the time any
    reader of the file through libhdf5 pays."""
    import h5py

    best = np.inf
    with h5py.File(path, "r") as f:
        ds = f["DRM/CONTENTS"]
        out = np.empty(ds.shape, dtype=ds.dtype)
        for _ in range(repeat):
            t = time.perf_counter()
            ds.read_direct(out)
            best = min(best, time.perf_counter() - t)
    return best


def inflate_time(path: Path, sample: int = 8) -> float:
    """Single-thread time to inflate every stored chunk of ``DRM/CONTENTS`` with the inflater
    the reader uses (ISA-L when installed; measured on every ``sample``-th chunk, scaled up):
    the CPU work a dense gzip response needs however it is read."""
    import h5py

    from comptonsky.io.hdf5_chunks import inflate

    with h5py.File(path, "r") as f:
        ds = f["DRM/CONTENTS"]
        n = ds.id.get_num_chunks()
        infos = [ds.id.get_chunk_info(i) for i in range(0, n, sample)]
        size = int(np.prod(ds.chunks)) * ds.dtype.itemsize
    with open(path, "rb") as fh:
        raw = []
        for info in infos:
            fh.seek(info.byte_offset)
            raw.append(fh.read(info.size))
    t = time.perf_counter()
    for r in raw:
        inflate(r, size)
    return (time.perf_counter() - t) * n / len(raw)


def memory_bandwidth(repeat: int) -> float:
    """Bytes per second moved by ``np.copyto`` on 256 MB arrays (read + write)."""
    a = np.ones(32 << 20)
    b = np.empty_like(a)
    best = np.inf
    for _ in range(max(3, repeat)):
        t = time.perf_counter()
        np.copyto(b, a)
        best = min(best, time.perf_counter() - t)
    return 2 * a.nbytes / best


def simulated_data(ccm, fdr, seed: int = 1):
    """Counts (Poisson, mean 0.07 per bin) and a flat positive background template on the
    (ScAtt, Em, Phi, PsiChi) axes."""
    from histpy import Axes, Histogram

    axes = Axes([ccm.axes[0], fdr.axes["Em"], fdr.axes["Phi"], fdr.axes["PsiChi"]])
    rng = np.random.default_rng(seed)
    counts = rng.poisson(0.07, tuple(axes.nbins)).astype(np.float64)
    bkg = np.full(tuple(axes.nbins), 0.05)
    return Histogram(axes, contents=counts), Histogram(axes, contents=bkg)


PARFILE = """\
author: bench
model_definition:
  class: "AllSkyImage"
  property:
    coordinate: "galactic"
    nside: 16
    scheme: "ring"
    energy_edges: {value: [509.0, 513.0], unit: "keV"}
    unit: "cm-2 s-1 sr-1"
  initialization:
    algorithm: "flat"
    parameter: {value: [1e-4], unit: "cm-2 s-1 sr-1"}
deconvolution:
  algorithm: "RL"
  parameter:
    iteration_max: 30
    acceleration: {activate: False, alpha_max: 10.0}
    response_weighting: {activate: False, index: 0.5}
    smoothing: {activate: False, FWHM: {value: 2.0, unit: "deg"}}
    stopping_criteria: {statistics: "log-likelihood", threshold: -1.0e+30}
    background_normalization_optimization: {activate: True, range: {"albedo": [0.01, 10.0]}}
    save_results: {activate: False}
"""


def main() -> None:
    global RSS
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ori", type=Path, help="reuse this .ori file instead of generating one")
    ap.add_argument("--rows", type=int, default=DC2_ROWS)
    ap.add_argument("--keep", type=Path, help="directory for the generated files (reused)")
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()

    import gc

    from comptonsky import (
        CoordsysConversionMatrix,
        DataIF_COSI_DC2,
        SpacecraftAttitudeExposureTable,
        SpacecraftFile,
    )
    from comptonsky.deconvolution.driver import ImageDeconvolution

    RSS = PeakRSS()
    work = Path(args.keep or tempfile.mkdtemp(prefix="bench_detector_"))
    work.mkdir(parents=True, exist_ok=True)
    ori_path = args.ori
    if ori_path is None:
        ori_path = work / "dc2_like.ori"
        if not ori_path.exists():
            print(f"writing {args.rows} rows to {ori_path} ...", flush=True)
            write_ori(ori_path, dc2_like_table(args.rows))
    small = work / "warmup.ori"
    write_ori(small, dc2_like_table(5000))
    fdr1 = drm_nside16(work / "drm16_psichi1.h5")
    print("writing / opening the DC2-shape response ...", flush=True)
    fdr = drm_dc2(work / "drm_dc2_nside16_phi6.h5")

    # warm-up: compile and load every kernel once
    w = SpacecraftFile.parse_from_file(small)
    wt = SpacecraftAttitudeExposureTable.from_orientation(w, nside=16)
    for occ in (False, True):
        for avg in (False, True):
            CoordsysConversionMatrix.spacecraft_attitude_binning_ccm(
                fdr1, wt, use_averaged_pointing=avg, earth_occ=occ)
        CoordsysConversionMatrix.spacecraft_attitude_binning_ccm(
            fdr1, wt, use_averaged_pointing=False, earth_occ=occ, attitude_nside=None)

    load0 = os.getloadavg()
    mem_bw = memory_bandwidth(args.repeat)
    t_read_ori, disk_bw = read_bandwidth(ori_path, args.repeat)
    t_parse, ori = timed(lambda: SpacecraftFile.parse_from_file(ori_path), args.repeat, "parse")
    del ori
    evict(ori_path)  # not in the page cache: read from the disk while parsing
    t_cold_read, _ = read_bandwidth(ori_path, 1)
    evict(ori_path)
    t_parse_cold, ori = timed(lambda: SpacecraftFile.parse_from_file(ori_path), 1, "parse_cold")
    n_rows = len(ori)
    t_table, table = timed(lambda o=ori: SpacecraftAttitudeExposureTable.from_orientation(
        o, nside=16), args.repeat, "table")
    del ori
    gc.collect()
    n_all = int(table["num_pointings"].sum())

    def ccm_of(avg, occ, **kw):
        return lambda: CoordsysConversionMatrix.spacecraft_attitude_binning_ccm(
            fdr1, table, use_averaged_pointing=avg, earth_occ=occ, **kw)

    t_avg, ccm_avg = timed(ccm_of(True, False), args.repeat, "avg")
    t_avg_occ, _ = timed(ccm_of(True, True), args.repeat, "avg_occ")
    t_int, _ = timed(ccm_of(False, False), args.repeat, "int")
    t_int_occ, ccm = timed(ccm_of(False, True), args.repeat, "int_occ")
    # interval by interval, no grouping, on three bins; error of the grouped matrix there
    head = SpacecraftAttitudeExposureTable(table.iloc[[0, len(table) // 2, len(table) - 1]]
                                           .reset_index(drop=True))
    n_head = int(head["num_pointings"].sum())
    t_exact, exact = timed(lambda: CoordsysConversionMatrix.spacecraft_attitude_binning_ccm(
        fdr1, head, use_averaged_pointing=False, earth_occ=True, attitude_nside=None),
        1, "exact")
    grouped = CoordsysConversionMatrix.spacecraft_attitude_binning_ccm(
        fdr1, head, use_averaged_pointing=False, earth_occ=True).contents.todense()
    exact = exact.contents.todense()
    err_max = np.abs(grouped - exact).max() / exact.max()
    err_l1 = np.abs(grouped - exact).sum() / exact.sum()
    ccm_nnz = ccm.contents.nnz
    # the data interface and RL on the DC2-shape response
    t_read_rsp, rsp_bw = read_bandwidth(Path(fdr.filename), args.repeat)
    t_h5py = hdf5_read_time(Path(fdr.filename), args.repeat)
    t_inflate = inflate_time(Path(fdr.filename))
    event, bkg = simulated_data(ccm, fdr)
    n_occ = int(np.count_nonzero(event.contents))
    gc.collect()
    t_load, data = timed(lambda: DataIF_COSI_DC2.load(
        "bench", event, {"albedo": bkg}, rsp=fdr, coordsys_conv_matrix=ccm), args.repeat,
        "load")
    parfile = work / "parfile_rl30.yml"
    parfile.write_text(PARFILE)

    def rl30():
        deconv = ImageDeconvolution()
        deconv.set_dataset([data])
        deconv.read_parameterfile(parfile)
        deconv.initialize()
        deconv.run_deconvolution(progress=False)
        return deconv.results[-1]["iteration"]

    t_rl, n_it = timed(rl30, 1, "rl30")
    peak_all = max(PEAK.values())
    load1 = os.getloadavg()

    r_bytes = data.response.bytes_per_product if hasattr(data, "response") else \
        2 * 3072 * 30 * 3072 * 2
    table_bytes = n_all * 8 * 12  # x, z, zenith, altitude, live time per interval (float64)
    floors = {"parse": os.path.getsize(ori_path) / disk_bw,
              "table": table_bytes / mem_bw,
              "ccm": (n_all * 8 * 10 + ccm_nnz * 32) / mem_bw,
              "load": max(t_read_rsp, t_inflate / (os.cpu_count() or 1)),
              "rl30": 30 * 2 * r_bytes / mem_bw}
    print(f"\nDC2-like orientation: {n_rows} rows, {os.path.getsize(ori_path) / 1e6:.0f} MB; "
          f"{len(table)} ScAtt bins (nside 16); response {os.path.getsize(fdr.filename) / 1e6:.0f}"
          f" MB on disk; {n_occ} occupied of {event.contents.size} data bins; "
          f"{os.cpu_count()} CPUs")
    print(f"bandwidth measured: file reads {disk_bw / 1e9:.2f} GB/s (.ori), "
          f"{rsp_bw / 1e9:.2f} GB/s (response), memory {mem_bw / 1e9:.1f} GB/s")
    print(f"load average {load0[0]:.1f} at the start, {load1[0]:.1f} at the end "
          f"(other processes share the CPUs when it exceeds {os.cpu_count()})\n")
    print(f"{'step':58s} {'wall':>8s} {'CPU':>8s} {'cosipy M2':>9s} {'floor':>7s} {'peak RSS':>9s}")

    def row(name, t, key, cos=None, floor=None, note=""):
        c = "-" if cos is None else f"{cos:.1f}s"
        f = "-" if floor is None else f"{floor:.2f}s"
        print(f"{name:58s} {t:7.2f}s {CPU.get(key, float('nan')):7.2f}s {c:>9s} {f:>7s} "
              f"{PEAK.get(key, 0) / 2**30:7.2f}Gi {note}")

    row(".ori parse", t_parse, "parse", COSIPY_M2MAX["parse"], floors["parse"],
        f"(reading the bytes: {t_read_ori:.2f} s)")
    row(".ori parse, file not in the page cache", t_parse_cold, "parse_cold",
        COSIPY_M2MAX["parse"], t_cold_read, f"(reading the bytes from disk: {t_cold_read:.2f} s)")
    row("exposure table, nside 16", t_table, "table", COSIPY_M2MAX["table"], floors["table"])
    row("conversion matrix, averaged pointing", t_avg, "avg", COSIPY_M2MAX["ccm"],
        floors["ccm"])
    row("conversion matrix, averaged pointing, Earth occultation", t_avg_occ, "avg_occ")
    row("conversion matrix, per interval (grouped at nside 8192)", t_int, "int")
    row("conversion matrix, per interval, Earth occultation", t_int_occ, "int_occ")
    row("  the same interval by interval (no grouping), extrapolated", t_exact * n_all / n_head,
        "exact", note=f"({t_exact:.1f} s for {n_head} intervals)")
    row("DataIF_COSI_DC2.load (FullDetectorResponse + matrix)", t_load, "load",
        COSIPY_M2MAX["load"], floors["load"],
        f"(file read by h5py: {t_h5py:.2f} s; its bytes: {t_read_rsp:.2f} s; inflating its "
        f"chunks on one core: {t_inflate:.2f} s)")
    row(f"{n_it} RL iterations", t_rl, "rl30", COSIPY_M2MAX["rl30"], floors["rl30"])
    print(f"\npeak resident memory over the run: {peak_all / 2**30:.2f} GiB (target 4 GiB)")
    print(f"grouped vs interval-by-interval matrix on {n_head} intervals: max |ΔC| / max C = "
          f"{err_max:.1e}, Σ|ΔC| / ΣC = {err_l1:.1e}")
    print(f"non-zeros: {ccm_avg.contents.nnz} (averaged), {ccm_nnz} (per interval, occultation)")
    RSS.alive = False


if __name__ == "__main__":
    main()
