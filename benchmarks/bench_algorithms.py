"""Benchmark: response passes and wall time each method needs to reach the tutorial's log L.

Data (DC2 shape by default: model nside 16, Phi 3° → 60 bins, PsiChi nside 16; response
3072 × 184 320 held as float32, 2.3 GB): the synthetic Compton-cone response of
:mod:`comptonsky.response.synthetic` (σ 2° rings, 9.7e7 cm² s at the Galactic Centre), the DC2
511 keV thin-disk sky of :mod:`comptonsky.simulate.sky` (point source, two bulges, thin disk;
2.83e-3 ph cm⁻² s⁻¹), a smooth background template of 1.5e6 counts (falling with Phi, brighter
towards the Galactic poles of PsiChi), Poisson counts of the sum. The background norm's truth is 1.

1. Reference: the tutorial's settings — RL, max-step acceleration α_max 2, background
   normalisation, 50 iterations; its final log L is the target.
2. Each method runs until it reaches the target (or its iteration cap); printed: iterations,
   response passes (forward or adjoint over all data bins; OSEM's restricted products count by
   the fraction of bins), wall time.
3. Tutorial parameter-file defaults (α_max 10, response weighting, 2° smoothing, background norm):
   number of iterations where log L fell, and the background norm error, per method.
4. Table (markdown): recovered vs injected flux per region (bulge, disk, inner Galaxy), residual RMS
   against the truth map (relative to the truth's RMS), passes, wall time.

With ``--simulation DIR`` (the output of ``comptonsky simulate``), the simulator's physical
response (``psr_gal_511.h5``) and truth map (``truth_*.hdf5``) are used instead, and the background
template is the simulator's albedo model (``albedo_model.hdf5``, Time summed) scaled to
``--background-counts`` (default 1.5e6: DC2's total 508–512 keV background; the simulator's
albedo alone, line photons only, gives ≈ 5e3). Counts: Poisson(response · truth + background).

Usage::

    python benchmarks/bench_algorithms.py [--nside 16] [--phi 3] [--seed 0] [--quick]
                                          [--simulation DIR] [--background-counts 1.5e6]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import healpy as hp
import numpy as np
from astropy import units as u
from histpy import Axes, Histogram

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from comptonsky import DataIF_COSI_DC2, ImageDeconvolution  # noqa: E402
from comptonsky.deconvolution.stopping import choose_iterations  # noqa: E402
from comptonsky.regions import region_fluxes  # noqa: E402
from comptonsky.response.synthetic import cone_axes, fill_cone_rows  # noqa: E402
from comptonsky.simulate.sky import dc2_511_thin_disk  # noqa: E402

PARFILE = """\
model_definition:
  class: "AllSkyImage"
  property:
    coordinate: "galactic"
    nside: {nside}
    scheme: "ring"
    energy_edges: {{value: [509.0, 513.0], unit: "keV"}}
    unit: "cm-2 s-1 sr-1"
  initialization:
    algorithm: "flat"
    parameter: {{value: [1.0e-4], unit: "cm-2 s-1 sr-1"}}
deconvolution:
  algorithm: "RL"
  parameter:
    iteration_max: 50
    acceleration: {{activate: true, alpha_max: 2.0, method: "max_step"}}
    response_weighting: {{activate: false, index: 0.5}}
    smoothing: {{activate: false, FWHM: {{value: 2.0, unit: "deg"}}}}
    stopping_criteria: {{statistics: "log-likelihood", threshold: -1.0e+30}}
    background_normalization_optimization: {{activate: true, range: {{"albedo": [0.01, 10.0]}}}}
    save_results: {{activate: false}}
"""


def build(nside: int, phi_deg: float, seed: int):
    """Response (float32 histogram, no copy), truth map, background, counts."""
    n_phi = int(round(180.0 / phi_deg))
    npix = hp.nside2npix(nside)
    t0 = time.perf_counter()
    contents = np.zeros((npix, 1, 1, n_phi, npix), dtype=np.float32)
    for start in range(0, npix, 256):
        rows = slice(start, min(start + 256, npix))
        fill_cone_rows(contents[rows, 0, 0], rows, nside, n_phi, 2.0, 4.0)
    axes = cone_axes(nside, n_phi)
    response = Histogram(axes, contents=contents, unit=u.cm**2 * u.s, copy_contents=False)
    build_s = time.perf_counter() - t0
    truth = dc2_511_thin_disk().intensity_map(nside)[:, None]  # (npix, 1), cm-2 s-1 sr-1
    data_axes = Axes([axes["Em"], axes["Phi"], axes["PsiChi"]])
    phi_c = np.radians(axes["Phi"].centers.to_value(u.deg))
    _, lat = hp.pix2ang(nside, np.arange(npix), lonlat=True)
    template = np.exp(-phi_c / 1.0)[:, None] * (1.0 + 0.8 * np.abs(np.sin(np.radians(lat))))
    template = 1.5e6 * template / template.sum()
    background = Histogram(data_axes, contents=template[None])
    return response, truth, background, data_axes, build_s


def load_simulation(directory: Path, background_counts: float):
    """Response (float32, dense), truth map, scaled albedo template from a simulator output."""
    from comptonsky.io.histogram import open_histogram

    manifest = json.loads((directory / "simulation.json").read_text())
    files = manifest["files"]
    t0 = time.perf_counter()
    response = directory / files["response"]
    truth_hist = open_histogram(directory / files["truth"])
    truth = np.asarray(truth_hist.contents.to_value("cm-2 s-1 sr-1")).reshape(-1, 1)
    albedo = open_histogram(directory / files["albedo_model"]).project(["Em", "Phi", "PsiChi"])
    values = np.asarray(getattr(albedo.contents, "value", albedo.contents), dtype=np.float64)
    values = values * (background_counts / values.sum())
    background = Histogram(albedo.axes, contents=values)
    return response, truth, background, albedo.axes, time.perf_counter() - t0


def make_dataset(response, truth, background, data_axes, seed):
    empty = Histogram(data_axes, contents=np.ones(background.contents.shape))
    ds0 = DataIF_COSI_DC2.load("dc2", empty, {"albedo": background}, response,
                               dtype="float32", storage="dense")
    signal = ds0.response.forward(truth[:, 0])
    expected = signal + background.contents.reshape(-1)
    counts = np.random.default_rng(seed).poisson(expected).astype(np.float64)
    event = Histogram(data_axes, contents=counts.reshape(background.contents.shape))
    ds = DataIF_COSI_DC2(ds0.name, event, {"albedo": background}, ds0.response)
    return ds, float(signal.sum()), float(counts.sum())


def run(ds, workdir: Path, nside: int, overrides, target=None):
    """Run with per-iteration pass counts and times; stop at ``target`` if given.

    The iteration count comes from ``iteration_max`` or, with cross-validation stopping, from
    the cross-validated choice (whose passes are counted too)."""
    path = workdir / "parfile.yml"
    path.write_text(PARFILE.format(nside=nside))
    deconv = ImageDeconvolution()
    deconv.set_dataset([ds])
    deconv.read_parameterfile(path)
    for text in overrides:
        deconv.override_parameter(text)
    deconv.initialize()
    algo = deconv.algorithm
    trace = []
    passes = deconv.passes
    passes.reset()  # the passes of the set-up are not part of the run
    start = time.perf_counter()
    limit = algo.iteration_max
    if algo.stopping_statistic == "cross-validation":
        algo.cross_validation = choose_iterations(algo, progress=False)
        limit = algo.cross_validation["best_iteration"]
    while algo.state.iteration < limit and not (target is not None and trace
                                                and trace[-1][2] >= target):
        state = algo.iterate()
        trace.append((passes.total, time.perf_counter() - start, state.log_likelihood))
    return deconv, trace


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nside", type=int, default=16)
    parser.add_argument("--phi", type=float, default=3.0, help="Phi bin width, degrees")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default="/tmp/comptonsky-bench-algorithms")
    parser.add_argument("--json", default=None, help="write all numbers to this JSON file")
    parser.add_argument("--quick", action="store_true", help="skip the tutorial-defaults part")
    parser.add_argument("--simulation", default=None,
                        help="simulator output directory (comptonsky simulate)")
    parser.add_argument("--background-counts", type=float, default=1.5e6)
    parser.add_argument("--cross-validation", action="store_true",
                        help="only: cross-validation stopping vs fixed iteration counts")
    args = parser.parse_args(argv)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if args.simulation:
        response, truth, background, data_axes, build_s = load_simulation(
            Path(args.simulation), args.background_counts)
        args.nside = hp.npix2nside(truth.shape[0])
    else:
        response, truth, background, data_axes, build_s = build(args.nside, args.phi,
                                                                args.seed)
    ds, signal, total = make_dataset(response, truth, background, data_axes, args.seed)
    source = f"simulator output {args.simulation}" if args.simulation else "cone model"
    print(f"{source}: nside {args.nside}, {ds.response.data_shape[1]} Phi bins, "
          f"response {ds.response.shape} {ds.response.dtype} "
          f"({ds.response.matrix.nbytes / 1e9:.2f} GB, built in {build_s:.1f} s); "
          f"{total:.4g} counts, sky {signal:.4g}")
    injected = region_fluxes(_map(truth, ds))
    if args.cross_validation:
        return cross_validation(ds, workdir, args.nside, truth, injected, args.json)
    out = {"source": source, "shape": list(ds.response.shape), "counts": total,
           "sky_counts": signal,
           "injected": injected}

    ref, ref_trace = run(ds, workdir, args.nside, [])
    target = ref_trace[-1][2]
    print(f"\nreference (RL, max_step α_max 2, 50 it): log L {target:.6f}, "
          f"{ref_trace[-1][0]:.0f} passes, {ref_trace[-1][1]:.1f} s")
    P = "deconvolution:parameter"
    methods = {
        "RL max_step α10": [f"{P}:acceleration:alpha_max = 10.0", f"{P}:iteration_max = 100"],
        "RL line_search": [f"{P}:acceleration:method = line_search",
                           f"{P}:acceleration:alpha_max = 10.0", f"{P}:iteration_max = 100"],
        "RL SQUAREM": [f"{P}:acceleration:method = SQUAREM",
                       f"{P}:acceleration:alpha_max = 10.0", f"{P}:iteration_max = 50"],
        "OSEM 16 PsiChi": ["deconvolution:algorithm = OSEM", f"{P}:n_subsets = 16",
                           f"{P}:subset_axis = PsiChi", f"{P}:acceleration:method = line_search",
                           f"{P}:iteration_max = 40"],
        "OSEM 48 PsiChi": ["deconvolution:algorithm = OSEM", f"{P}:n_subsets = 48",
                           f"{P}:subset_axis = PsiChi", f"{P}:acceleration:method = line_search",
                           f"{P}:iteration_max = 40"],
        "OSEM 12 Phi": ["deconvolution:algorithm = OSEM", f"{P}:n_subsets = 12",
                        f"{P}:subset_axis = Phi", f"{P}:acceleration:method = line_search",
                        f"{P}:iteration_max = 40"],
    }
    rows = [_row("RL max_step α2 (tutorial)", ref, ref_trace, truth, injected, ds, target)]
    print(f"\n{'method':28s} {'iter':>5s} {'passes':>8s} {'÷ ref':>6s} {'time s':>7s}  reached")
    for name, overrides in methods.items():
        deconv, trace = run(ds, workdir, args.nside, overrides, target=target)
        row = _row(name, deconv, trace, truth, injected, ds, target)
        rows.append(row)
        print(f"{name:28s} {row['iterations']:5d} {row['passes']:8.1f} "
              f"{ref_trace[-1][0] / row['passes']:6.1f} {row['time_s']:7.1f}  {row['reached']}")
        del deconv
    out["methods"] = rows

    print("\n| method | iterations | passes | wall s | reached | bulge | disk | inner Galaxy | "
          "RMS/RMS(truth) | bkg norm |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print(f"| injected | | | | | {injected['bulge']:.3e} | {injected['disk']:.3e} | "
          f"{injected['inner_galaxy']:.3e} | 0 | 1 |")
    for r in rows:
        f = r["fluxes"]
        print(f"| {r['method']} | {r['iterations']} | {r['passes']:.0f} | {r['time_s']:.1f} | "
              f"{'yes' if r['reached'] else 'no'} | {f['bulge']:.3e} | {f['disk']:.3e} | "
              f"{f['inner_galaxy']:.3e} | {r['rms']:.3f} | {r['bkg_norm']:.4f} |")

    if not args.quick:
        print("\ntutorial parameter-file defaults (α_max 10, response weighting, smoothing 2°, "
              "bkg norm), 30 iterations:")
        defaults = [f"{P}:acceleration:alpha_max = 10.0", f"{P}:iteration_max = 30",
                    f"{P}:response_weighting:activate = true", f"{P}:smoothing:activate = true"]
        safety = {}
        for method in ("max_step_unchecked", "max_step", "line_search", "SQUAREM"):
            deconv, trace = run(ds, workdir, args.nside,
                                defaults + [f"{P}:acceleration:method = {method}"])
            logl = np.array([t[2] for t in trace])
            start = float(np.sum(ds.log_likelihood(ds.expectation(
                np.full(ds.response.n_model, 1e-4), {"albedo": 1.0}))))
            steps = np.diff(np.concatenate([[start], logl]))
            norm = deconv.results[-1]["background_normalization"]["albedo"]
            safety[method] = {"decreases": int(np.sum(steps < 0)), "final_logL": float(logl[-1]),
                              "bkg_norm": norm, "bkg_norm_error": abs(norm - 1.0),
                              "passes": trace[-1][0], "time_s": trace[-1][1]}
            print(f"  {method:20s} log L falls in {safety[method]['decreases']:2d}/30 iterations, "
                  f"final log L {logl[-1]:.2f}, bkg norm {norm:.4f} "
                  f"(error {100 * abs(norm - 1):.2f} %), {trace[-1][0]:.0f} passes, "
                  f"{trace[-1][1]:.1f} s")
        out["tutorial_defaults"] = safety
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2, default=float))
    return 0


def cross_validation(ds, workdir, nside, truth, injected, json_path) -> int:
    """RL line search stopped by cross-validation vs fixed iteration counts."""
    P = "deconvolution:parameter"
    base = [f"{P}:acceleration:method = line_search", f"{P}:acceleration:alpha_max = 10.0"]
    rows = []
    deconv, trace = run(ds, workdir, nside, base + [
        f"{P}:iteration_max = 200", f"{P}:stopping_criteria:statistics = cross-validation"])
    cv = deconv.algorithm.cross_validation
    rows.append(_row(f"cross-validation (k* = {cv['best_iteration']})", deconv, trace, truth,
                     injected, ds, np.inf))
    for k in (10, 25, 50, 100, 200):
        deconv, trace = run(ds, workdir, nside, base + [f"{P}:iteration_max = {k}"])
        row = _row(f"fixed {k} iterations", deconv, trace, truth, injected, ds, np.inf)
        rows.append(row)
    print("\n| run | iterations | passes | bulge | disk | inner Galaxy | RMS/RMS(truth) | "
          "log L |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        f = r["fluxes"]
        print(f"| {r['method']} | {r['iterations']} | {r['passes']:.0f} | {f['bulge']:.3e} | "
              f"{f['disk']:.3e} | {f['inner_galaxy']:.3e} | {r['rms']:.3f} | "
              f"{r['logL']:.1f} |")
    print(f"validation log L (fit part, 50 % held out): "
          f"{np.round(np.diff(cv['validation_log_likelihood'])[:40], 1).tolist()}")
    if json_path:
        Path(json_path).write_text(json.dumps({"rows": rows, "cv": cv}, indent=2,
                                              default=float))
    return 0


def _map(values, ds):
    from comptonsky.deconvolution.model import AllSkyImageModel

    return AllSkyImageModel.from_axes(ds.model_axes, contents=np.asarray(values).reshape(
        ds.response.model_shape))


def _row(name, deconv, trace, truth, injected, ds, target):
    reached = [k for k, t in enumerate(trace) if t[2] >= target]
    k = reached[0] if reached else len(trace) - 1
    result = deconv.results[k]
    model = result["model"].contents.value
    rms = float(np.sqrt(np.mean((model - truth) ** 2)) / np.sqrt(np.mean(truth**2)))
    return {"method": name, "iterations": k + 1, "passes": float(trace[k][0]),
            "time_s": float(trace[k][1]), "reached": bool(reached),
            "logL": float(trace[k][2]), "fluxes": region_fluxes(result["model"]), "rms": rms,
            "bkg_norm": float(result["background_normalization"]["albedo"])}


if __name__ == "__main__":
    sys.exit(main())
