"""Benchmark: binning a DC2-format gzipped FITS event file, next to its decompression rate.

Generates a DC2-layout ``.fits.gz`` file (default 2 M events, about 210 MB, the size of the DC2
511 keV source file) in a temporary directory, then measures, each in a fresh process:

- inflating the whole file with zlib (``gzip`` module) and with ISA-L (``isal.igzip``);
- ``BinnedData.get_binned_data`` with the tutorial's DC2 binning (Galactic PsiChi, nside 16,
  3 deg Phi bins), the same in the local frame, and both configurations in one pass;

and prints events/s, time (best of ``--repeat`` runs) and peak resident memory (VmHWM, which
includes about 250 MB of imported libraries) for each. The reference tool's time for the
same file on the project machine (12.9 s, docs/design.md §5) is printed for comparison.

Usage::

    python benchmarks/bench_binning.py [--events N] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

REFERENCE_TOOL_SECONDS = 12.9  # reference tool on the 2 M-event file (docs/design.md §5)
TMIN, TMAX = 1835487300.0, 1843467255.0

INPUTS_YAML = """\
unbinned_output: 'fits'
time_bins: 7979955
tmin: 1835487300.0
tmax: 1843467255.0
energy_bins: [509.0, 513.0]
phi_pix_size: 3
nside: 16
scheme: 'ring'
"""


def make_events(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Synthetic DC2 columns with realistic ranges (canonical units)."""
    rng = np.random.default_rng(seed)
    line = rng.random(n) < 0.5
    energies = np.where(line, rng.normal(511.0, 2.0, n), rng.uniform(100.0, 511.0, n))
    return {
        "Energies": energies,
        "TimeTags": np.sort(rng.uniform(TMIN, TMAX, n)),
        "Xpointings": np.column_stack([rng.uniform(-np.pi, np.pi, n), rng.uniform(-1, 1, n)]),
        "Ypointings": np.column_stack([rng.uniform(-np.pi, np.pi, n), rng.uniform(-1, 1, n)]),
        "Zpointings": np.column_stack([rng.uniform(-np.pi, np.pi, n), rng.uniform(-1, 1, n)]),
        "Phi": np.arccos(rng.uniform(-1.0, 1.0, n)),
        "Chi local": rng.uniform(0.0, 2 * np.pi, n),
        "Psi local": np.arccos(rng.uniform(-1.0, 1.0, n)),
        "Distance": rng.exponential(2.0, n),
        "Chi galactic": rng.uniform(0.0, 360.0, n),
        "Psi galactic": np.degrees(np.arcsin(rng.uniform(-1.0, 1.0, n))),
    }


def _peak_rss_mb() -> float:
    """Peak resident memory of this process (MB): VmHWM, which, unlike ru_maxrss, is not
    inherited from the parent across exec."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def child(task: str, path: str, yaml_path: str) -> dict:
    """Run one measurement in this (fresh) process; returns seconds, CPU seconds, peak RSS."""
    if task in ("zlib", "isal"):
        import gzip

        from isal import igzip

        opener = gzip.open if task == "zlib" else igzip.open
        c0 = _cpu_seconds()
        t0 = time.perf_counter()
        nbytes = 0
        with opener(path, "rb") as fh:
            while True:
                block = fh.read(1 << 24)
                if not block:
                    break
                nbytes += len(block)
        return {"seconds": time.perf_counter() - t0, "cpu": _cpu_seconds() - c0, "bytes": nbytes,
                "rss_mb": _peak_rss_mb()}

    from comptonsky.binning import BinnedData, bin_events
    from comptonsky.io.events import write_events

    binned = BinnedData(input_yaml=yaml_path)
    # one-time costs outside the timing: numba kernels (cached on disk after the first run),
    # lazy imports, thread start-up -- by binning a small file of the same format first
    warm = Path(path).with_name(f"warmup_{os.getpid()}.fits.gz")
    write_events(warm, make_events(1000, seed=1))
    bin_events(warm, [binned.binning("galactic"), binned.binning("local")], progress=False)
    warm.unlink()
    base = _peak_rss_mb()
    c0 = _cpu_seconds()
    t0 = time.perf_counter()
    if task == "both":
        hists = bin_events(path, [binned.binning("galactic"), binned.binning("local")],
                           progress=False)
    else:
        hists = [binned.get_binned_data(unbinned_data=path, psichi_binning=task, progress=False)]
    seconds, cpu = time.perf_counter() - t0, _cpu_seconds() - c0
    # outside the timing: the first arithmetic on a sparse array compiles sparse's own kernels
    counts = [float(h.contents.sum()) for h in hists]
    return {"seconds": seconds, "cpu": cpu, "counts": counts, "rss_mb": _peak_rss_mb(),
            "rss_before_mb": base}


def run_child(task: str, path: Path, yaml_path: Path) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", task, str(path), str(yaml_path)],
        check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2_000_000, help="events in the test file")
    parser.add_argument("--keep", type=Path, default=None,
                        help="directory to keep (and reuse) the generated file in")
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs per task; the best is shown (the machine may be shared)")
    parser.add_argument("--child", nargs=3, metavar=("TASK", "FILE", "YAML"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(*args.child)))
        return 0

    from comptonsky.io.events import write_events

    tmp = tempfile.TemporaryDirectory(prefix="bench_binning_")
    workdir = args.keep or Path(tmp.name)
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / f"dc2_like_{args.events}.fits.gz"
    yaml_path = workdir / "inputs_511keV_DC2.yaml"
    yaml_path.write_text(INPUTS_YAML)
    if not path.exists():
        t0 = time.perf_counter()
        write_events(path, make_events(args.events))
        print(f"generated {path.name}: {args.events:,} events, "
              f"{path.stat().st_size / 1e6:.1f} MB in {time.perf_counter() - t0:.1f} s")
    n = args.events
    size_mb = path.stat().st_size / 1e6
    print(f"file: {size_mb:.1f} MB gzipped, {n:,} events; {os.cpu_count()} CPUs; "
          f"best of {args.repeat} runs, each in a fresh process")
    print(f"{'task':<34}{'seconds':>9}{'CPU s':>8}{'events/s':>14}{'MB/s (gz)':>11}"
          f"{'peak RSS MB':>13}")
    rows = [("inflate, zlib (gzip module)", "zlib"), ("inflate, ISA-L (isal.igzip)", "isal"),
            ("bin: galactic PsiChi", "galactic"), ("bin: local PsiChi", "local"),
            ("bin: galactic + local, one pass", "both")]
    results = {}
    for label, task in rows:
        runs = [run_child(task, path, yaml_path) for _ in range(max(1, args.repeat))]
        r = min(runs, key=lambda x: x["seconds"])
        r["rss_mb"] = max(x["rss_mb"] for x in runs)
        results[task] = r
        s = r["seconds"]
        print(f"{label:<34}{s:9.3f}{r['cpu']:8.2f}{n / s:14,.0f}{size_mb / s:11.1f}"
              f"{r['rss_mb']:13.0f}")
    gal = results["galactic"]["seconds"]
    base = results["galactic"]["rss_before_mb"]
    print(f"peak RSS of the binning runs includes {base:.0f} MB of imported libraries measured "
          "before binning; CPU s > seconds means the reader thread overlapped the binning")
    print(f"reference tool (docs/design.md §5, 2 M events): {REFERENCE_TOOL_SECONDS} s "
          f"-> {2_000_000 / REFERENCE_TOOL_SECONDS:,.0f} events/s")
    speedup = n / gal / (2_000_000 / REFERENCE_TOOL_SECONDS)
    print(f"speed-up over the reference tool: {speedup:.1f}x;"
          f" binning time / ISA-L inflate time: {gal / results['isal']['seconds']:.2f};"
          f" / zlib inflate time: {gal / results['zlib']['seconds']:.2f}")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
