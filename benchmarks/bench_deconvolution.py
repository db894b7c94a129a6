"""Benchmark: the tutorial's RL deconvolution at DC2 shape, for every response storage mode.

Builds a DC2-shape response, shape (NuLambda 3072, Ei 1, Em 1, Phi 60, PsiChi 3072), float64 in
cm² s (4.5 GB), from the synthetic Compton-cone model of :mod:`comptonsky.response.synthetic`
(Gaussian rings of σ = 2° at angular distance Phi around each sky pixel, cut at 4σ, times a smooth
latitude-dependent exposure of 9.7e7 cm² s at the Galactic Centre; ≈ 8.9 % of the elements are
non-zero) and writes it in the histpy format with ``Histogram.write``. Counts are a Poisson draw of
the DC2 511 keV sky (point source, two bulges, thin disk; docs/design.md §6) plus a 1.5e6-count background
whose template is the response summed over the sky.

``--shape continuum`` builds the multi-band continuum shape of the Crab tutorial instead
(768 × 10 × 10 × 36 × 768: nside 8, 10 energy bands, 36 Phi bins; float32, 8.5 GB; the cone model
times an energy redistribution, :func:`build_continuum_inputs`) and runs the sparse modes and
``auto`` (dense float32 would hold 8.5 GB).

Then, each in a fresh process (peak memory = VmHWM, the peak resident set), for each mode:

1. first load (no cache: HDF5 read block-wise into the mode's dtype and storage, cache written),
   the tutorial's RL run (50 iterations; acceleration α_max 2, background normalisation on,
   smoothing and response weighting off) timed per iteration;
2. cached load (memory-mapped cache) and a few iterations: the *fixed cost* of a run with warm
   caches (load, initialisation and the first iteration's excess over the median, after the
   imports);
3. the same with an empty numba cache (``$NUMBA_CACHE_DIR`` a new folder): the fixed cost of the
   first run after an install (``--no-cold-kernels`` skips it).

Also: the machine's memory bandwidth (best BLAS sgemv over a 1 GiB matrix), the bandwidth floor
of each mode (2 products × bytes streamed ÷ bandwidth), the sparse products with the C kernels,
their numba twins and scipy.sparse (full products and OSEM's 48 PsiChi subsets),
and the largest deviation of each mode's final map from the float64 dense map (relative to its
maximum). The reference tool (cosipy) takes 4.5 s per iteration, 19 s to load and 8.9 GiB at this
shape on the 2-core machine.

Usage::

    python benchmarks/bench_deconvolution.py [--shape dc2|continuum] [--workdir DIR]
        [--iterations 50] [--modes ...] [--response FILE]

``--response`` benchmarks an existing DC2-shape response instead (for instance the simulator's
``psr_gal_511.h5`` from ``comptonsky simulate --preset dc2-511-thin-disk``); counts are drawn
through it the same way. The response and data files are kept in ``--workdir`` (default ``$TMPDIR/comptonsky-bench``) and
reused by later runs; caches are deleted before each first load.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

NSIDE, N_PHI = 16, 60
#: Iteration at which every mode's map is compared with the float64 dense map (out-of-core runs
#: fewer iterations than the others).
COMPARE_AT = 10
REFERENCE = {"iteration_s": 4.5, "load_s": 19.0, "peak_gib": 8.9}

MODES = {
    "dense-float64": dict(storage="dense", dtype="float64"),
    "dense-float32": dict(storage="dense", dtype="float32"),
    "sparse-float32": dict(storage="sparse", dtype="float32"),
    "sparse-float64": dict(storage="sparse", dtype="float64"),
    "out-of-core-float32": dict(storage="out-of-core", dtype="float32", memory_budget="1 GiB"),
    "auto-float32": dict(storage="auto", dtype="float32"),
}

PARAMETERS = """\
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
    iteration_max: 50
    acceleration: {activate: True, alpha_max: 2.0}
    response_weighting: {activate: False, index: 0.5}
    smoothing: {activate: False, FWHM: {value: 2.0, unit: "deg"}}
    stopping_criteria: {statistics: "log-likelihood", threshold: 0.0}
    background_normalization_optimization:
      activate: True
      range: {"albedo": [0.01, 10.0]}
    save_results: {activate: False, directory: "./results", only_final_result: True}
"""


# ------------------------------------------------------------------------------------------
# Inputs
# ------------------------------------------------------------------------------------------

def dc2_sky(nside: int) -> np.ndarray:
    """DC2 511 keV 'thin disk' intensity map (cm⁻² s⁻¹ sr⁻¹), shape (12 nside²,)."""
    import healpy as hp
    npix = hp.nside2npix(nside)
    lon, lat = hp.pix2ang(nside, np.arange(npix), lonlat=True)
    lon = (lon + 180.0) % 360.0 - 180.0
    omega = hp.nside2pixarea(nside)

    def gauss(l0, b0, sl, sb):
        g = np.exp(-0.5 * (((lon - l0) / sl) ** 2 + ((lat - b0) / sb) ** 2))
        return g / g.sum()

    flux = (1.2e-4 * gauss(0, 0, 1.0, 1.0) + 2.8e-4 * gauss(-0.25, -1.25, 2.5, 2.5)
            + 7.3e-4 * gauss(0, 0, 8.7, 8.7) + 1.7e-3 * gauss(0, 0, 90.0, 3.0))
    return flux / omega


def inputs_from_response(workdir: Path, rsp_path: Path) -> Path:
    """Event and background histograms drawn through an existing response file."""
    from histpy import Histogram

    from comptonsky.response.load import load_response

    done = workdir / "inputs.done"
    if done.exists() and done.read_text().strip() == str(rsp_path):
        return rsp_path
    workdir.mkdir(parents=True, exist_ok=True)
    op = load_response(rsp_path, storage="out-of-core", cache=False, memory_budget="512 MiB")
    nside = op.model_axes["lb"].nside
    signal = op.forward(np.repeat(dc2_sky(nside), op.model_shape[1]))
    template = op._matvec(np.ones(op.n_model))
    bkg = template * (1.5e6 / template.sum())
    counts = np.random.default_rng(1).poisson(signal + bkg).astype(np.float64)
    print(f"{rsp_path}: {op.model_shape} x {op.data_shape}; expected signal {signal.sum():.4g} "
          f"counts, background {bkg.sum():.4g}", flush=True)
    shape = op.data_shape
    Histogram(op.data_axes, contents=counts.reshape(shape)).write(workdir / "event.h5",
                                                                  overwrite=True)
    Histogram(op.data_axes, contents=bkg.reshape(shape)).write(workdir / "bkg.h5", overwrite=True)
    (workdir / "parfile.yml").write_text(PARAMETERS.replace("nside: 16", f"nside: {nside}"))
    op.close()
    done.write_text(f"{rsp_path}\n")
    return rsp_path


def build_inputs(workdir: Path) -> Path:
    """Write the response, event and background histograms (skipped when present)."""
    import healpy as hp
    from astropy import units as u
    from histpy import Axes, Histogram

    from comptonsky.response.synthetic import cone_axes, fill_cone_rows

    rsp_path = workdir / "psr_gal_511_DC2_cone.h5"
    done = workdir / "inputs.done"
    if done.exists() and rsp_path.exists():
        return rsp_path
    workdir.mkdir(parents=True, exist_ok=True)
    axes = cone_axes(NSIDE, N_PHI)
    npix = hp.nside2npix(NSIDE)
    t0 = time.perf_counter()
    contents = np.empty((npix, 1, 1, N_PHI, npix), dtype=np.float64)
    step = 128
    for j0 in range(0, npix, step):
        fill_cone_rows(contents[j0:j0 + step, 0, 0], slice(j0, j0 + step), NSIDE, N_PHI)
    matrix = contents.reshape(npix, -1)
    print(f"built the cone response {contents.shape} float64 ({contents.nbytes / 1e9:.2f} GB; "
          f"{np.count_nonzero(matrix) / matrix.size:.4f} non-zero) in "
          f"{time.perf_counter() - t0:.1f} s", flush=True)
    lam = dc2_sky(NSIDE) * hp.nside2pixarea(NSIDE)
    signal = lam @ matrix
    template = np.ones(npix) @ matrix
    bkg = template * (1.5e6 / template.sum())
    rng = np.random.default_rng(1)
    counts = rng.poisson(signal + bkg).astype(np.float64)
    print(f"expected signal {signal.sum():.4g} counts, background {bkg.sum():.4g}", flush=True)
    t0 = time.perf_counter()
    Histogram(axes, contents=contents, unit=u.cm ** 2 * u.s, copy_contents=False).write(
        rsp_path, overwrite=True)
    print(f"wrote {rsp_path} ({rsp_path.stat().st_size / 1e9:.2f} GB) in "
          f"{time.perf_counter() - t0:.1f} s", flush=True)
    del contents, matrix
    data_axes = Axes([axes["Em"], axes["Phi"], axes["PsiChi"]])
    shape = tuple(int(n) for n in data_axes.nbins)
    Histogram(data_axes, contents=counts.reshape(shape)).write(workdir / "event.h5",
                                                               overwrite=True)
    Histogram(data_axes, contents=bkg.reshape(shape)).write(workdir / "bkg.h5", overwrite=True)
    (workdir / "parfile.yml").write_text(PARAMETERS)
    done.write_text("ok\n")
    return rsp_path


CONTINUUM = dict(nside=8, n_phi=36, ei_edges=(100.0, 158.5, 251.2, 398.1, 631.0, 1000.0, 1585.0,
                                              2512.0, 3981.0, 6310.0, 10000.0))
CONTINUUM_MODES = ["auto-float32", "sparse-float32", "sparse-float64"]


def build_continuum_inputs(workdir: Path) -> Path:
    """The multi-band continuum shape (the Crab tutorial's: 768 × 10 × 10 × 36 × 768, float32
    8.5 GB), written row block by row block: the cone model of each sky pixel and Phi bin times
    an energy redistribution (60 % photopeak Em = Ei, 40 % spread evenly over Em < Ei); counts
    from a Crab-like point source (power law, index 2.2) plus a 5e6-count background."""
    import h5py
    import healpy as hp
    from astropy import units as u
    from histpy import Axes, Axis, HealpixAxis, Histogram

    from comptonsky.response.synthetic import fill_cone_rows

    rsp_path = workdir / "continuum_768x10x10x36x768.h5"
    done = workdir / "inputs.done"
    if done.exists() and rsp_path.exists():
        return rsp_path
    workdir.mkdir(parents=True, exist_ok=True)
    nside, n_phi, edges = CONTINUUM["nside"], CONTINUUM["n_phi"], np.array(CONTINUUM["ei_edges"])
    n_e, npix = len(edges) - 1, hp.nside2npix(nside)
    axes = Axes([HealpixAxis(nside=nside, coordsys="galactic", label="NuLambda"),
                 Axis(edges * u.keV, label="Ei", scale="log"),
                 Axis(edges * u.keV, label="Em", scale="log"),
                 Axis(np.linspace(0.0, 180.0, n_phi + 1) * u.deg, label="Phi", scale="linear"),
                 HealpixAxis(nside=nside, coordsys="galactic", label="PsiChi")])
    redistribution = np.tril(np.full((n_e, n_e), 0.4), -1)
    redistribution /= np.maximum(redistribution.sum(axis=1, keepdims=True), 1e-300) / 0.4
    redistribution[0, :] = 0.0
    redistribution += np.diag(np.where(np.arange(n_e) == 0, 1.0, 0.6))
    efficiency = np.linspace(1.0, 0.3, n_e)                       # falls with energy
    crab_l, crab_b = 184.56, -5.78
    src = hp.ang2pix(nside, crab_l, crab_b, lonlat=True)
    spectrum = edges[:-1] ** -1.2 - edges[1:] ** -1.2            # ∝ ∫ E^-2.2 dE
    spectrum *= 3e-2 / spectrum.sum()                             # ph cm⁻² s⁻¹ in all bands
    signal = np.zeros((n_e, n_phi, npix))
    template = np.zeros((n_e, n_phi, npix))
    t0 = time.perf_counter()
    step = 16
    with h5py.File(rsp_path, "w") as f:
        g = f.create_group("hist")
        g.attrs["format"] = "dense"
        g.attrs["unit"] = "cm2 s"
        axes.write(g.create_group("axes"))
        ds = g.create_dataset("contents", shape=(npix, n_e, n_e, n_phi, npix), dtype="float32",
                              track_times=False)
        cone = np.empty((step, n_phi, npix))
        block = np.empty((step, n_e, n_e, n_phi, npix), dtype=np.float32)
        for j0 in range(0, npix, step):
            m = min(step, npix - j0)
            fill_cone_rows(cone[:m], slice(j0, j0 + m), nside, n_phi, ring_width_deg=6.0,
                           cutoff=3.0, exposure_cm2s=1.0e8)
            np.multiply((redistribution * efficiency[:, None])[None, :, :, None, None],
                        cone[:m, None, None], out=block[:m])
            ds[j0:j0 + m] = block[:m]
            b64 = block[:m].astype(np.float64)
            template += b64.sum(axis=(0, 1))
            if j0 <= src < j0 + m:
                signal += np.tensordot(spectrum, b64[src - j0], axes=(0, 0))
    print(f"built the continuum response {(npix, n_e, n_e, n_phi, npix)} float32 "
          f"({rsp_path.stat().st_size / 1e9:.2f} GB) in {time.perf_counter() - t0:.1f} s",
          flush=True)
    bkg = template * (5e6 / template.sum())
    counts = np.random.default_rng(1).poisson(signal + bkg).astype(np.float64)
    print(f"expected signal {signal.sum():.4g} counts, background {bkg.sum():.4g}", flush=True)
    data_axes = Axes([axes["Em"], axes["Phi"], axes["PsiChi"]])
    Histogram(data_axes, contents=counts).write(workdir / "event.h5", overwrite=True)
    Histogram(data_axes, contents=bkg).write(workdir / "bkg.h5", overwrite=True)
    flat = ", ".join(["1e-4"] * n_e)
    edge_text = ", ".join(f"{e:g}" for e in edges)
    (workdir / "parfile.yml").write_text(
        PARAMETERS.replace("nside: 16", f"nside: {nside}")
        .replace("energy_edges: {value: [509.0, 513.0], unit: \"keV\"}",
                 f"energy_edges: {{value: [{edge_text}], unit: \"keV\"}}")
        .replace("parameter: {value: [1e-4]", f"parameter: {{value: [{flat}]"))
    done.write_text("ok\n")
    return rsp_path


def peak_rss_gib() -> float:
    """This process's peak resident memory (GiB): VmHWM, which, unlike ``ru_maxrss``, is not
    inherited from the parent across fork and exec."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2 ** 20
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def memory_bandwidth() -> float:
    """Bytes/s of a large BLAS sgemv (1 GiB, 3072 rows like the DC2 response; best of both
    orientations, best of 5)."""
    a = np.ones((3072, 2 ** 28 // 3072), dtype=np.float32)
    x = np.ones(a.shape[0], dtype=np.float32)
    y = np.ones(a.shape[1], dtype=np.float32)
    best = np.inf
    for _ in range(5):
        t = time.perf_counter()
        x @ a
        best = min(best, time.perf_counter() - t)
        t = time.perf_counter()
        a @ y
        best = min(best, time.perf_counter() - t)
    return a.nbytes / best


# ------------------------------------------------------------------------------------------
# Child: one mode, one process
# ------------------------------------------------------------------------------------------

IMPORT_S = 0.0


def child(args) -> None:
    global IMPORT_S
    t = time.perf_counter()
    from histpy import Histogram

    from comptonsky import DataIF_COSI_DC2, ImageDeconvolution
    IMPORT_S = time.perf_counter() - t

    workdir = Path(args.workdir)
    opts = dict(MODES[args.mode])
    event = Histogram.open(workdir / "event.h5")
    bkg = Histogram.open(workdir / "bkg.h5")
    t0 = t_load0 = time.perf_counter()
    data = DataIF_COSI_DC2.load("bench", event, {"albedo": bkg}, rsp=args.rsp,
                                cache_dir=str(workdir / "cache"), **opts)
    op = data.response                    # the response is loaded when first needed
    load_s = time.perf_counter() - t0
    deco = ImageDeconvolution()
    deco.set_dataset([data])
    deco.read_parameterfile(workdir / "parfile.yml")
    deco.override_parameter(f"deconvolution:parameter:iteration_max = {args.iterations}")
    deco.initialize()
    alg = deco.algorithm
    fit_op = alg.data.operators[0]        # what the fit multiplies with (reuse + counting)
    passes = deco.passes
    passes.reset()
    setup_s = time.perf_counter() - t_load0
    computed0 = fit_op.products_computed
    times: list[float] = []
    t0 = time.perf_counter()
    maps = {}
    for it in range(1, args.iterations + 1):  # the tutorial's run: threshold 0, all iterations
        t = time.perf_counter()
        alg.iterate()
        times.append(time.perf_counter() - t)
        if it in (COMPARE_AT, args.iterations):  # maps at iteration 10 and at the end
            maps[it] = np.array(alg.state.model, dtype=np.float64).reshape(-1)
    run_s = time.perf_counter() - t0
    info = dict(getattr(op, "load_info", {}))
    cache_done_s = None
    if info.get("cache_pending") is not None:
        info["cache_pending"].result()
        cache_done_s = time.perf_counter() - t_load0
    for it, model in maps.items():
        np.save(workdir / f"map-{args.mode}-{args.phase}-it{it}.npy", model)
    steady = float(np.median(times[1:])) if len(times) > 1 else times[0]
    out = {"mode": args.mode, "phase": args.phase, "load_s": load_s, "run_s": run_s,
           "setup_s": setup_s, "fixed_s": setup_s + times[0] - steady,
           "import_s": IMPORT_S,
           "iterations": len(times), "iter_s": times, "cache_written_s": cache_done_s,
           "mapped_source": bool(info.get("mapped_source")),
           "products_per_iteration":
               (fit_op.products_computed - computed0 + passes.adjoint) / max(1, len(times)),
           "calls_per_iteration": passes.total / max(1, len(times)), "cached": info.get("cached"),
           "storage": info.get("storage", op.storage), "dtype": str(op.dtype),
           "bytes_per_product": int(op.bytes_per_product), "held_bytes": int(op.nbytes),
           "peak_rss_gib": peak_rss_gib(),
           "bkg_norm": deco.results[-1]["background_normalization"]}
    if op.storage == "sparse":
        out.update(nnz=op.nnz, density=op.density, threshold=op.threshold,
                   dropped_flux_fraction=op.dropped_flux_fraction,
                   max_row_dropped_fraction=op.max_row_dropped_fraction)
    print("RESULT " + json.dumps(out), flush=True)


def kernels_child(args) -> None:
    """Time the sparse float32 products: the C kernels and their numba twins, on every core and
    on one, the 48 PsiChi subsets' products of one OSEM pass, and scipy.sparse CSR."""
    import scipy.sparse as sp

    from comptonsky.response.load import load_response
    from comptonsky.response.sparse import (
        kernel_threads,
        kernels_in_use,
        set_kernel_threads,
        use_kernels,
    )
    op = load_response(args.rsp, dtype="float32", storage="sparse",
                       cache_dir=str(Path(args.workdir) / "cache"))
    rng = np.random.default_rng(0)
    x = rng.random(op.n_model)
    y = rng.random(op.n_data)

    def best(fn, n=5):
        fn()
        ts = []
        for _ in range(n):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
        return min(ts)

    subsets = [op.subset(k, 48, "PsiChi") for k in range(48)]
    y_sub = [y[s.data_indices] for s in subsets]
    res = {"threads": kernel_threads()}
    default = kernels_in_use()
    for name in dict.fromkeys([default, "numba"]):
        use_kernels(name)
        res[f"{name}_forward_s"] = best(lambda: op._matvec(x))
        res[f"{name}_adjoint_s"] = best(lambda: op._rmatvec(y))
        res[f"{name}_subsets48_forward_s"] = best(lambda: [s.forward(x) for s in subsets])
        res[f"{name}_subsets48_adjoint_s"] = best(
            lambda: [s.adjoint(v) for s, v in zip(subsets, y_sub)])
        set_kernel_threads(1)
        res[f"{name}_1thread_forward_s"] = best(lambda: op._matvec(x))
        res[f"{name}_1thread_adjoint_s"] = best(lambda: op._rmatvec(y))
        set_kernel_threads(None)
    use_kernels(default)
    res["kernels"] = default
    r = op.rows
    counts = np.diff(r.ptr, axis=1)                       # (n_seg, n_model)
    j = np.repeat(np.tile(np.arange(op.n_model), op.n_seg), counts.reshape(-1))
    k = np.repeat(np.repeat(np.arange(op.n_seg), op.n_model), counts.reshape(-1))
    csr = sp.csr_matrix((np.asarray(r.val), (j, k * op.n_psi + r.idx.astype(np.int64))),
                        shape=(op.n_model, op.n_data))
    del j, k
    csc_t = csr.T.tocsr()
    x32, y32 = x.astype(np.float32), y.astype(np.float32)
    res["scipy_forward_scatter_s"] = best(lambda: csr.T @ x32)
    res["scipy_forward_csrT_s"] = best(lambda: csc_t @ x32)
    res["scipy_adjoint_s"] = best(lambda: csr @ y32)
    print("RESULT " + json.dumps(res), flush=True)


# ------------------------------------------------------------------------------------------
# Parent
# ------------------------------------------------------------------------------------------

def _cpu_jiffies() -> tuple[int, int]:
    with open("/proc/stat") as fh:
        v = [int(x) for x in fh.readline().split()[1:]]
    return sum(v), v[3] + v[4]


def wait_idle(max_wait: float = 60.0, busy_max: float = 0.10) -> float:
    """Wait (up to ``max_wait`` s) until other processes use < ``busy_max`` of the CPUs."""
    t_end = time.time() + max_wait
    while True:
        t0, i0 = _cpu_jiffies()
        time.sleep(1.0)
        t1, i1 = _cpu_jiffies()
        busy = 1.0 - (i1 - i0) / max(1, t1 - t0)
        if busy < busy_max or time.time() > t_end:
            return busy


def run_child(args, mode: str, phase: str, iterations: int, kind: str = "mode") -> dict:
    idle_before = wait_idle(args.max_wait)
    tick = os.sysconf("SC_CLK_TCK")
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    j0, i0 = _cpu_jiffies()
    t0 = time.time()
    cmd = [sys.executable, __file__, "--child", kind, "--mode", mode, "--phase", phase,
           "--iterations", str(iterations), "--workdir", str(args.workdir), "--rsp",
           str(args.rsp)]
    env = dict(os.environ)
    if phase == "cold-kernels":                       # as after an install: nothing compiled
        env["NUMBA_CACHE_DIR"] = tempfile.mkdtemp(prefix="comptonsky-bench-numba-")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    finally:
        if phase == "cold-kernels":
            shutil.rmtree(env["NUMBA_CACHE_DIR"], ignore_errors=True)
    wall = time.time() - t0
    j1, i1 = _cpu_jiffies()
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    own = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
    busy_all = ((j1 - j0) - (i1 - i0)) / tick
    other = max(0.0, busy_all - own) / (wall * (os.cpu_count() or 1))
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            res = json.loads(line[7:])
            res["other_cpu_load"] = other
            res["other_cpu_load_before"] = idle_before
            return res
    sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
    raise RuntimeError(f"benchmark child {mode}/{phase} failed (exit {proc.returncode})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", choices=("dc2", "continuum"), default="dc2",
                   help="dc2: 3072 x 1 x 1 x 60 x 3072 (default); continuum: the multi-band "
                        "768 x 10 x 10 x 36 x 768")
    p.add_argument("--workdir", default=None,
                   help="default $TMPDIR/comptonsky-bench (dc2) or comptonsky-bench-continuum")
    p.add_argument("--iterations", type=int, default=50)
    p.add_argument("--ooc-iterations", type=int, default=10,
                   help="iterations of the (slow) out-of-core mode")
    p.add_argument("--modes", nargs="*", default=None,
                   help=f"default: all (dc2) or {CONTINUUM_MODES} (continuum)")
    p.add_argument("--response", default=None,
                   help="benchmark this DC2-shape response file (e.g. the simulator's "
                        "psr_gal_511.h5) instead of building the synthetic cone model")
    p.add_argument("--max-wait", type=float, default=60.0,
                   help="seconds to wait for idle CPUs before each measured process")
    p.add_argument("--no-cold-kernels", action="store_true",
                   help="skip the run with an empty numba cache (the first run after install)")
    p.add_argument("--child", default=None)
    p.add_argument("--mode", default=None)
    p.add_argument("--phase", default="first")
    p.add_argument("--rsp", default=None)
    args = p.parse_args()
    if args.child == "mode":
        return child(args)
    if args.child == "kernels":
        return kernels_child(args)

    suffix = "" if args.shape == "dc2" else "-continuum"
    args.workdir = Path(args.workdir or os.path.join(tempfile.gettempdir(),
                                                     f"comptonsky-bench{suffix}"))
    if args.modes is None:
        args.modes = list(MODES) if args.shape == "dc2" else list(CONTINUUM_MODES)
    if args.response:
        args.rsp = inputs_from_response(args.workdir, Path(args.response).resolve())
    elif args.shape == "continuum":
        args.rsp = build_continuum_inputs(args.workdir)
    else:
        args.rsp = build_inputs(args.workdir)
    print(f"load average: {' '.join(f'{v:.2f}' for v in os.getloadavg())}", flush=True)
    wait_idle(args.max_wait)
    bw = memory_bandwidth()
    print(f"memory bandwidth (BLAS sgemv, 1 GiB): {bw / 1e9:.1f} GB/s; "
          f"CPU cores: {os.cpu_count()}", flush=True)
    read_s = float("nan")
    if args.shape == "dc2":
        t0 = time.perf_counter()
        import h5py
        with h5py.File(args.rsp, "r") as f:
            raw = f["hist/contents"][()]
        read_s = time.perf_counter() - t0
        print(f"plain h5py read of the whole response ({raw.dtype}, {raw.nbytes / 1e9:.2f} GB): "
              f"{read_s:.2f} s", flush=True)
        del raw
    cache = args.workdir / "cache"
    rows = []
    for mode in args.modes:
        for old in cache.glob("*.cache") if cache.exists() else []:
            old.unlink()
        n_it = args.ooc_iterations if mode.startswith("out-of-core") else args.iterations
        first = run_child(args, mode, "first", n_it)
        cached = run_child(args, mode, "cached", min(10, n_it))
        cold = None if args.no_cold_kernels else run_child(args, mode, "cold-kernels",
                                                            min(5, n_it))
        rows.append((mode, first, cached, cold))
        it = np.array(first["iter_s"])
        print(f"{mode:>20}: {np.median(it):.4f} s/iteration (median of {len(it)}, min "
              f"{it.min():.4f}), floor {2 * first['bytes_per_product'] / bw:.4f} s; fixed cost "
              f"{cached['fixed_s']:.3f} s warm, "
              f"{'-' if cold is None else format(cold['fixed_s'], '.3f')} s with nothing "
              f"compiled; load {first['load_s']:.2f} s first / {cached['load_s']:.2f} s "
              f"cached, peak {first['peak_rss_gib']:.2f} / {cached['peak_rss_gib']:.2f} GiB, "
              f"{first['products_per_iteration']:.2f} products/iteration, other processes used "
              f"{100 * first['other_cpu_load']:.0f} % of the CPUs", flush=True)
    kern = None
    if "sparse-float32" in args.modes:
        for old in cache.glob("*.cache") if cache.exists() else []:
            old.unlink()
        run_child(args, "sparse-float32", "prep", 1)
        kern = run_child(args, "sparse-float32", "kernels", 1, kind="kernels")

    def deviation(mode: str, iteration: int) -> float:
        """max |map − float64 map| / max(float64 map) at ``iteration``: against sparse float64
        for the sparse modes (the same stored elements: the precision alone), else against
        dense float64."""
        order = ("sparse-float64", "dense-float64") if ("sparse" in mode or "auto" in mode) \
            and mode != "sparse-float64" else ("dense-float64",)
        for ref_mode in order:
            ref = args.workdir / f"map-{ref_mode}-first-it{iteration}.npy"
            if ref.exists():
                break
        mine = args.workdir / f"map-{mode}-first-it{iteration}.npy"
        if not (ref.exists() and mine.exists()):
            return float("nan")
        a, b = np.load(mine), np.load(ref)
        return float(np.abs(a - b).max() / np.abs(b).max())

    shape = "3072 x 1 x 1 x 60 x 3072" if args.shape == "dc2" else "768 x 10 x 10 x 36 x 768"
    print()
    print(f"shape {shape}; RL, tutorial settings; {os.cpu_count()} cores; bandwidth "
          f"{bw / 1e9:.1f} GB/s; load average now {os.getloadavg()[0]:.2f}"
          + (f"; reference tool: {REFERENCE['iteration_s']} s/it, load {REFERENCE['load_s']} s, "
             f"peak {REFERENCE['peak_gib']} GiB; plain HDF5 read {read_s:.2f} s"
             if args.shape == "dc2" else ""))
    print("s/iter: median over the run (min in brackets); floor: 2 products x bytes streamed / "
          "bandwidth; x floor: s/iter / floor; fixed: per-run cost beyond the iterations (load, "
          "initialise, first-iteration excess; after the imports) with warm caches, and with "
          "nothing compiled (first run after install; response cache warm); peak: VmHWM with "
          "the response cache cold / warm; map dev: max |map - float64 map| / max, final "
          "iteration (sparse modes against sparse float64, the others against dense float64); other: CPU share used by other processes during the run")
    hdr = (f"{'mode':>20} {'s/iter':>17} {'floor':>7} {'x floor':>7} {'prod':>5} "
           f"{'fixed':>6} {'cold':>6} {'import':>6} {'load 1st':>9} {'peak GiB':>9} "
           f"{'cached':>7} {'held GB':>8} {'map dev':>9} {'other':>6}")
    print(hdr)
    print("-" * len(hdr))
    summary = []
    for mode, first, cached, cold in rows:
        it = float(np.median(first["iter_s"]))
        floor = 2 * first["bytes_per_product"] / bw
        dev = deviation(mode, len(first["iter_s"]))
        dev10 = deviation(mode, COMPARE_AT)
        it_min = float(np.min(first["iter_s"]))
        cold_s = float("nan") if cold is None else cold["fixed_s"]
        print(f"{mode:>20} {it:8.4f} ({it_min:6.4f}) {floor:7.4f} {it / floor:7.2f} "
              f"{first['products_per_iteration']:5.2f} {cached['fixed_s']:6.3f} {cold_s:6.3f} "
              f"{cached['import_s']:6.2f} {first['load_s']:8.2f}s {first['peak_rss_gib']:9.2f} "
              f"{cached['peak_rss_gib']:7.2f} {first['held_bytes'] / 1e9:8.2f} {dev:9.2e} "
              f"{100 * first['other_cpu_load']:5.0f}%")
        print(f"{'':>20} storage {first['storage']} {first['dtype']}; map deviation from "
              f"float64: {dev10:.2e} at iteration {COMPARE_AT}, {dev:.2e} at iteration "
              f"{len(first['iter_s'])}; first-load cache written after "
              f"{first['cache_written_s'] or 0:.2f} s"
              f"{' (HDF5 matrix mapped in place, no cache)' if first['mapped_source'] else ''}")
        summary.append({"mode": mode, "iter_s_median": it, "floor_s": floor,
                        "first": first, "cached": cached, "cold_kernels": cold,
                        "map_max_dev_final": dev, f"map_max_dev_it{COMPARE_AT}": dev10})
        if "nnz" in first:
            print(f"{'':>20} sparse: threshold {first['threshold']:g}, density "
                  f"{first['density']:.4f}, dropped flux fraction "
                  f"{first['dropped_flux_fraction']:.3g} (worst pixel "
                  f"{first['max_row_dropped_fraction']:.3g})")
    if kern:
        for name in dict.fromkeys([kern["kernels"], "numba"]):
            print(f"\nsparse float32 products, {name} kernels (best of 5): {kern['threads']} "
                  f"threads forward {kern[f'{name}_forward_s']:.4f} s / adjoint "
                  f"{kern[f'{name}_adjoint_s']:.4f} s; 1 thread "
                  f"{kern[f'{name}_1thread_forward_s']:.4f} / "
                  f"{kern[f'{name}_1thread_adjoint_s']:.4f} s; the 48 PsiChi subsets of one "
                  f"OSEM pass forward {kern[f'{name}_subsets48_forward_s']:.4f} s / adjoint "
                  f"{kern[f'{name}_subsets48_adjoint_s']:.4f} s")
        print(f"scipy.sparse CSR (1 thread) forward {kern['scipy_forward_scatter_s']:.4f} s "
              f"(Rᵀx scatter) or {kern['scipy_forward_csrT_s']:.4f} s (transposed copy), "
              f"adjoint {kern['scipy_adjoint_s']:.4f} s")
    out = args.workdir / "results.json"
    out.write_text(json.dumps({"bandwidth_Bps": bw, "plain_read_s": read_s, "modes": summary,
                               "kernels": kern}, indent=1))
    print(f"\nfull results: {out}")


if __name__ == "__main__":
    main()
