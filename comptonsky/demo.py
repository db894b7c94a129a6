"""The demo job: data → binned CDS → deconvolution → maps beside the truth, in one call."""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from .config import Parameters
from .deconvolution.model import AllSkyImageModel
from .io.histogram import open_histogram, write_histogram
from .jobs import run_files, write_parameters, write_summary
from .regions import region_fluxes

__all__ = ["run_demo", "run_detector_demo", "write_demo_parameters", "bin_per_attitude_bin",
           "DEMO_PARFILE", "DEMO_SCATT_NSIDE"]

logger = logging.getLogger(__name__)

#: Default resolution of the demo: the DC2 response shape is nside 16 with 3° Phi bins; the demo
#: uses 6° bins so that it runs end to end in a few minutes on two cores.
DEMO_NSIDE = 16
DEMO_PHI_BIN_DEG = 6.0
#: The parameter file the demo writes into its output directory and runs.
DEMO_PARFILE = "imagedeconvolution_parfile_demo.yml"
#: HEALPix nside of the attitude (ScAtt) bins of the detector-frame demo (the tutorial's).
DEMO_SCATT_NSIDE = 16

#: The tutorial's overrides (section 3-3), applied to the simulator's parameter file to make the
#: demo's (:func:`write_demo_parameters`).
TUTORIAL_OVERRIDES = (
    "deconvolution:parameter:background_normalization_optimization:activate = True",
    "deconvolution:parameter:acceleration:accel_factor_max = 2.0",
    "deconvolution:parameter:smoothing:activate = False",
    "deconvolution:parameter:response_weighting:activate = False",
)


def run_demo(output: str | os.PathLike = "demo-output", nside: int | None = None,
             iterations: int = 50, seed: int = 1, progress: bool = True,
             preset: str = "dc2-511-thin-disk",
             phi_bin_deg: float | None = None,
             duration_s: float | None = None, messages: bool = True) -> dict[str, Any]:
    """Simulate (once, cached), bin, deconvolve, compare with the truth; write maps, PNGs,
    JSON and the report.

    The deconvolution runs the parameter file :func:`write_demo_parameters` writes into
    ``output`` (:data:`DEMO_PARFILE`), unchanged.

    Parameters
    ----------
    output : path-like
        Output directory; the simulation is cached in ``output/simulation``.
    nside : int, optional
        HEALPix NSIDE of the sky model and of PsiChi (default :data:`DEMO_NSIDE`).
    iterations : int
        RL iterations (the tutorial runs 50).
    seed : int
        Random seed of the simulation.
    progress : bool
        Show progress bars.
    preset : str
        Simulator preset (``dc2-511-thin-disk`` or ``dc2-511-thick-disk``).
    phi_bin_deg : float, optional
        Compton-angle bin width (default :data:`DEMO_PHI_BIN_DEG`).
    duration_s : float, optional
        Observation length (default: the preset's three months).
    messages : bool
        Print what each stage does (and cache hits) to stderr.

    Returns
    -------
    dict
        The summary (also in ``output/summary.json``).
    """
    from .binning import BinnedData
    from .simulate.pipeline import MANIFEST_NAME, simulate_dataset

    say = _stage_printer(messages)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    start = t0 = time.perf_counter()
    nside, phi_bin_deg = nside or DEMO_NSIDE, phi_bin_deg or DEMO_PHI_BIN_DEG
    manifest = output / "simulation" / MANIFEST_NAME
    before = manifest.stat().st_mtime_ns if manifest.exists() else None
    say(f"simulation: preset {preset}, nside {nside}, Phi bins {phi_bin_deg:g} deg, seed {seed} "
        f"-> {output / 'simulation'}")
    sim = simulate_dataset(output / "simulation", preset=preset, nside=nside,
                           phi_bin_deg=phi_bin_deg, seed=seed,
                           duration_s=duration_s, progress=progress)
    simulate_s = time.perf_counter() - t0
    cached = before is not None and manifest.stat().st_mtime_ns == before
    say(f"simulation: {'found in the cache' if cached else 'written'} ({simulate_s:.1f} s)")
    t0 = time.perf_counter()
    binned = {}
    for key in ("source_events", "albedo_events"):
        say(f"binning {Path(sim[key]).name} (Galactic PsiChi)")
        binner = BinnedData(input_yaml=sim["inputs"])
        binner.get_binned_data(unbinned_data=sim[key], psichi_binning="galactic",
                               progress=progress)
        binned[key] = binner.binned_data.to_dense()
    event = binned["source_events"] + binned["albedo_events"]
    event_path = write_histogram(event, output / "binned" / "511keV_galactic_event.hdf5")
    bin_s = time.perf_counter() - t0
    say(f"binned {float(event.contents.sum()):.0f} events in {bin_s:.1f} s -> {event_path}")
    parfile = write_demo_parameters(sim["parfile"], output / DEMO_PARFILE, iterations)
    say(f"deconvolution: RL, {int(iterations)} iterations, parameters {parfile}")
    job = run_files(parfile, event_path, {"albedo": sim["albedo_model"]}, sim["response"],
                    output / "results", progress=progress, truth=sim["truth"], overwrite=True)
    summary = job.summary
    info = summary["response"].get("load_info") or {}
    say(f"response: {summary['response']['storage']} {summary['response']['dtype']}, "
        f"{'mapped from the file itself' if info.get('mapped_source') else 'read from the file itself' if info.get('in_place') else 'from the cache' if info.get('cached') else 'converted'} "
        f"({info.get('seconds', 0.0):.1f} s); {summary['iterations']} iterations in "
        f"{summary['timing_s']['iterations']:.1f} s, stopped: {summary['stopping']['reason']}")
    summary["preset"] = preset
    summary["parameter_file"] = str(parfile)
    summary["counts"] = {"source": float(binned["source_events"].contents.sum()),
                         "albedo": float(binned["albedo_events"].contents.sum())}
    summary["timing_s"].update({"simulate_or_cache": simulate_s, "bin": bin_s})
    summary["data"] = {k: str(v) for k, v in sim.items()}
    say("comparing with the truth")
    _compare_with_truth(summary, output, sim["truth"])
    summary["report"] = str(output / "results" / "report.html")
    summary["timing_s"]["demo_total"] = time.perf_counter() - start
    write_summary(summary, output / "summary.json")
    say(f"done in {summary['timing_s']['demo_total']:.0f} s; report: {summary['report']}")
    return summary


def write_demo_parameters(simulation_parfile: str | os.PathLike, path: str | os.PathLike,
                          iterations: int) -> Path:
    """The demo's parameter file: the simulation's, with ``iteration_max = iterations`` and
    :data:`TUTORIAL_OVERRIDES` applied, written to ``path`` (the demo runs this file as is)."""
    parameters = Parameters.from_file(simulation_parfile)
    changes = (f"deconvolution:parameter:iteration_max = {int(iterations)}", *TUTORIAL_OVERRIDES)
    for text in changes:
        parameters.override(text)
    return write_parameters(parameters, path,
                            f"The demo's parameters: {Path(simulation_parfile).name} of the "
                            "simulation with\n" + "\n".join(f"  {t}" for t in changes))


def _stage_printer(enabled: bool):
    """A function printing one stage message to stderr (or doing nothing)."""
    def say(text: str) -> None:
        if enabled:
            print(f"demo: {text}", file=sys.stderr, flush=True)
    return say


def _compare_with_truth(summary: dict[str, Any], output: Path, truth_path: Path) -> None:
    import matplotlib.pyplot as plt

    from .plotting import image_norm, plot_image

    truth = open_histogram(truth_path)
    model = open_histogram(output / "results" / f"model_itr{summary['iterations']}.hdf5")
    recovered, injected = region_fluxes(model), region_fluxes(truth)
    summary["regions"] = {name: {"recovered": recovered[name], "injected": injected[name],
                                 "ratio": recovered[name] / injected[name]
                                 if injected[name] else None}
                          for name in recovered}
    t = np.asarray(truth.contents.value)
    m = np.asarray(model.contents.value)
    summary["residual_rms_relative_to_truth_max"] = float(np.sqrt(np.mean((m - t) ** 2)) /
                                                          t.max())
    residual = AllSkyImageModel.from_axes(truth.axes, contents=m - t)
    shared = image_norm([m[:, 0], t[:, 0]], "log", band="band 0")   # one scale for both
    for name, image, title in (("truth", truth, "truth"), ("model", model, "model")):
        plt.close(plot_image(image, scale="log", title=title, norm=shared,
                             output=output / f"{name}.png"))
    plt.close(plot_image(residual, title="residual model − truth", symmetric=True,
                         output=output / "residual.png"))


# --- the detector-frame (ScAtt) path ------------------------------------------------------------
def bin_per_attitude_bin(table, binner, events, first_axis, progress: bool = True):
    """Bin events per ScAtt bin of ``table``, PsiChi in the spacecraft frame, as dense counts
    on the conversion matrix's ScAtt axis.

    ``table.get_binned_data`` does the binning (streamed): each event goes to the bin whose
    (z, x) HEALPix pixel pair, at the table's nside and scheme, is that of the event's own
    ``Zpointings`` and ``Xpointings``; events in no bin are left out (and counted in the log).

    Parameters
    ----------
    table : SpacecraftAttitudeExposureTable
    binner : BinnedData
        The binning parameters (the tutorial's ``inputs.yaml``).
    events : path-like
        Event file.
    first_axis : histpy Axis
        The ScAtt axis of the conversion matrix (``ccm.axes[0]``).
    progress : bool

    Returns
    -------
    histpy.Histogram
        Dense counts on (ScAtt, Em, Phi, PsiChi local).
    """
    hist = table.get_binned_data(binner, psichi_binning="local", unbinned_data=events,
                                 progress=progress)
    return _on_axis(hist, first_axis)


def _on_axis(hist, first_axis):
    """``hist`` (dense) with ``first_axis`` as its first axis (the counts unchanged)."""
    from histpy import Histogram

    from .errors import AxisMismatchError

    contents = hist.contents
    contents = contents.todense() if hasattr(contents, "todense") else np.asarray(contents)
    contents = np.asarray(getattr(contents, "value", contents), dtype=np.float64)
    if contents.shape[0] != first_axis.nbins:
        raise AxisMismatchError(f"axis {first_axis.label!r}: the binned data have "
                                f"{contents.shape[0]} attitude bins, the conversion matrix "
                                f"{first_axis.nbins}")
    return Histogram([first_axis, *hist.axes[1:]], contents=contents)


def run_detector_demo(output: str | os.PathLike = "demo-output", nside: int | None = None,
                      iterations: int = 50, seed: int = 1, progress: bool = True,
                      preset: str = "dc2-511-thin-disk", phi_bin_deg: float | None = None,
                      duration_s: float | None = None, scatt_nside: int | None = None,
                      ori_cadence_s: float = 1.0, messages: bool = True) -> dict[str, Any]:
    """The detector-frame (ScAtt) analysis of the demo's simulated data, end to end.

    The steps of the COSI ScAtt tutorials: ``SpacecraftFile.parse_from_file`` →
    ``SpacecraftAttitudeExposureTable.from_orientation`` →
    ``CoordsysConversionMatrix.spacecraft_attitude_binning_ccm`` (Earth occultation on) →
    events binned per ScAtt bin with PsiChi in the spacecraft frame →
    ``DataIF_COSI_DC2.load(rsp=FullDetectorResponse, coordsys_conv_matrix=ccm)`` → RL with the
    demo's parameters; then the recovered fluxes (bulge, disk, inner Galaxy) beside the
    injected ones, and the fitted albedo normalisation (simulated at 1). The background
    template is the simulation's albedo model per ScAtt bin in the spacecraft frame, noise free
    (:func:`comptonsky.simulate.detector.albedo_detector_model`).

    Parameters
    ----------
    output : path-like
        Output directory: the simulation is shared with :func:`run_demo`
        (``output/simulation``); this run writes into ``output/detector``.
    nside, iterations, seed, progress, preset, phi_bin_deg, duration_s, messages
        As for :func:`run_demo`.
    scatt_nside : int, optional
        nside of the ScAtt bins (default :data:`DEMO_SCATT_NSIDE`).
    ori_cadence_s : float
        Cadence of the simulated ``orientation.ori`` (1 s, as the COSI files).

    Returns
    -------
    dict
        The summary (also in ``output/detector/summary.json``).
    """
    from .attitude import CoordsysConversionMatrix, SpacecraftAttitudeExposureTable
    from .binning import BinnedData
    from .deconvolution.dataset import DataIF_COSI_DC2
    from .deconvolution.driver import ImageDeconvolution
    from .io.drm import FullDetectorResponse
    from .io.spacecraft import SpacecraftFile
    from .simulate.detector import albedo_detector_model, simulated_albedo
    from .simulate.pipeline import simulate_dataset

    say = _stage_printer(messages)
    output = Path(output)
    work = output / "detector"
    work.mkdir(parents=True, exist_ok=True)
    start = t0 = time.perf_counter()
    nside, phi_bin_deg = nside or DEMO_NSIDE, phi_bin_deg or DEMO_PHI_BIN_DEG
    scatt_nside = int(scatt_nside or DEMO_SCATT_NSIDE)
    timing: dict[str, float] = {}
    say(f"simulation: preset {preset}, nside {nside}, Phi bins {phi_bin_deg:g} deg, seed {seed} "
        f"-> {output / 'simulation'}")
    sim = simulate_dataset(output / "simulation", preset=preset, nside=nside,
                           phi_bin_deg=phi_bin_deg, seed=seed, duration_s=duration_s,
                           ori_cadence_s=ori_cadence_s, progress=progress)
    timing["simulate_or_cache"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    ori = SpacecraftFile.parse_from_file(sim["orientation"])
    timing["ori_parse"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    table = SpacecraftAttitudeExposureTable.from_orientation(ori, nside=scatt_nside,
                                                             min_exposure=0,
                                                             min_num_pointings=1)
    timing["exposure_table"] = time.perf_counter() - t0
    table.save_as_fits(work / "exposure_table.fits", overwrite=True)
    n_rows = len(ori)
    del ori  # the table holds what the later steps need; the 1-s attitudes can go
    say(f"orientation: {n_rows} rows -> {len(table)} ScAtt bins (nside {scatt_nside}) in "
        f"{timing['ori_parse'] + timing['exposure_table']:.1f} s")
    fdr = FullDetectorResponse.open(sim["detector_response"])
    try:
        t0 = time.perf_counter()
        ccm = CoordsysConversionMatrix.spacecraft_attitude_binning_ccm(
            fdr, table, nside_model=nside, use_averaged_pointing=True, earth_occ=True)
        timing["conversion_matrix"] = time.perf_counter() - t0
        say(f"conversion matrix: {len(table)} x {12 * nside ** 2} x {fdr.npix}, Earth "
            f"occultation on ({timing['conversion_matrix']:.1f} s)")
        t0 = time.perf_counter()
        binner = BinnedData(input_yaml=sim["inputs"])
        binned = {}
        for key in ("source_events", "albedo_events"):
            say(f"binning {Path(sim[key]).name} per ScAtt bin (spacecraft-frame PsiChi)")
            binned[key] = bin_per_attitude_bin(table, binner, sim[key], ccm.axes[0],
                                               progress=progress)
        event = binned["source_events"] + binned["albedo_events"]
        counts = {"source": float(binned["source_events"].contents.sum()),
                  "albedo": float(binned["albedo_events"].contents.sum())}
        del binned  # only their sum is fitted
        write_histogram(event, work / "511keV_scatt_event.hdf5")
        timing["bin"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        bkg = albedo_detector_model(fdr, table, ccm.axes[0],
                                    simulated_albedo(Path(sim["manifest"])))
        timing["background_template"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        dataset = DataIF_COSI_DC2.load("scatt", event, {"albedo": bkg}, fdr,
                                       coordsys_conv_matrix=ccm)
        timing["load"] = time.perf_counter() - t0
    finally:
        fdr.close()
    say(f"binned {float(event.contents.sum()):.0f} events; dataset: {dataset!r}")
    parfile = write_demo_parameters(sim["parfile"], work / DEMO_PARFILE, iterations)
    say(f"deconvolution: RL, {int(iterations)} iterations, parameters {parfile}")
    deconv = ImageDeconvolution()
    deconv.set_dataset([dataset])
    deconv.read_parameterfile(parfile)
    deconv.initialize()
    t0 = time.perf_counter()
    deconv.run_deconvolution(progress=progress)
    timing["iterations"] = time.perf_counter() - t0
    final = deconv.results[-1]
    model = final["model"]
    write_histogram(model, work / f"model_itr{final['iteration']}.hdf5")
    truth = open_histogram(sim["truth"])
    recovered, injected = region_fluxes(model), region_fluxes(truth)
    summary: dict[str, Any] = {
        "frame": "detector", "preset": preset, "nside": nside, "scatt_nside": scatt_nside,
        "scatt_bins": len(table), "orientation_rows": n_rows,
        "iterations": final["iteration"], "parameter_file": str(parfile),
        "counts": {**counts, "albedo_expected": float(bkg.contents.sum())},
        "occupied_bins": int(np.count_nonzero(dataset.counts)),
        "data_bins": int(np.prod(event.axes.nbins)),
        "log_likelihood": float(np.sum(final["log-likelihood"])),
        "background_normalization": {k: float(v) for k, v in
                                     final["background_normalization"].items()},
        "regions": {name: {"recovered": recovered[name], "injected": injected[name],
                           "ratio": recovered[name] / injected[name] if injected[name] else None}
                    for name in recovered},
        "data": {k: str(v) for k, v in sim.items()},
        "timing_s": timing,
    }
    summary["timing_s"]["demo_total"] = time.perf_counter() - start
    write_summary(summary, work / "summary.json")
    _detector_images(work, model, truth)
    say(f"done in {summary['timing_s']['demo_total']:.0f} s; outputs in {work}")
    return summary


def _detector_images(work: Path, model, truth) -> None:
    import matplotlib.pyplot as plt

    from .plotting import image_norm, plot_image

    t = np.asarray(truth.contents.value)
    m = np.asarray(getattr(model.contents, "value", model.contents))
    shared = image_norm([m[:, 0], t[:, 0]], "log", band="band 0")
    for name, image in (("truth", truth), ("model", model)):
        plt.close(plot_image(image, scale="log", title=f"{name} (detector-frame fit)"
                             if name == "model" else name, norm=shared,
                             output=work / f"{name}.png"))
