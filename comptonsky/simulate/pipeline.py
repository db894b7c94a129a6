"""One call from a preset to a complete DC2-like data set on disk.

:func:`simulate_dataset` writes the files the COSI 511 keV tutorial uses, in the same formats,
and a manifest (``simulation.json``) of the parameters and headline numbers; calling again with
the same parameters returns the existing files without recomputing (``force=True`` redoes them).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import replace
from pathlib import Path

import astropy.units as u
import healpy as hp
import numpy as np
import yaml
from histpy import Axis, HealpixAxis, Histogram

from ..binning.spec import phi_bin_edges
from ..errors import InvalidParameterError
from ..io.atomic import atomic_path
from ..io.events import write_events
from ..io.histogram import write_histogram
from ..response.galactic import (
    bin_attitudes,
    carry_local_cds,
    galactic_exposure,
    write_galactic_response,
)
from .detector import write_detector_response
from .events import simulate_background_events, simulate_sky_events
from .orbit import attitude_history, write_orientation
from .presets import Preset, get_preset
from .sky import HealpixMapSource, SkyModel

__all__ = ["simulate_dataset", "SIMULATION_VERSION", "MANIFEST_NAME"]

logger = logging.getLogger(__name__)

#: Bumped whenever the simulator's output for the same parameters changes (invalidates caches).
SIMULATION_VERSION = 5
#: Name of the manifest file written last into the output directory.
MANIFEST_NAME = "simulation.json"


def _events_name(tag: str, fmt: str) -> str:
    return f"{tag}_events.fits.gz" if fmt == "fits" else f"{tag}_events.hdf5"


def _file_names(sky_name: str, fmt: str, cosmic: bool) -> dict[str, str]:
    names = {
        "response": "psr_gal_511.h5",
        "detector_response": "detector_response_511.h5",
        "source_events": _events_name(sky_name, fmt),
        "albedo_events": _events_name("albedo", fmt),
        "albedo_model": "albedo_model.hdf5",
        "truth": f"truth_{sky_name}.hdf5",
        "orientation": "orientation.ori",
        "inputs": "inputs.yaml",
        "parfile": "imagedeconvolution_parfile.yml",
    }
    if cosmic:
        names["cosmic_events"] = _events_name("cosmic", fmt)
    return names


def _inputs_yaml(events_name: str, fmt: str, tmin: float, tmax: float, window, phi_bin: float,
                 nside: int) -> str:
    dur = tmax - tmin
    time_bins = str(int(round(dur))) if abs(dur - round(dur)) < 1e-6 else f"[{tmin!r}, {tmax!r}]"
    return (
        "#----------#\n"
        "# Data I/O:\n\n"
        f'data_file: "{events_name}"\n'
        'ori_file: "orientation.ori"\n'
        f"unbinned_output: '{fmt}' # 'fits' or 'hdf5'\n"
        f"time_bins: {time_bins} # time bin size in seconds. Takes int or list of bin edges.\n"
        f"tmin: {tmin!r}\n"
        f"tmax: {tmax!r}\n"
        f"energy_bins: [{window[0]!r}, {window[1]!r}]\n"
        f"phi_pix_size: {phi_bin:g} # binning of Compton scattering angle [deg]\n"
        f"nside: {nside} # healpix binning of psi chi\n"
        "scheme: 'ring' # healpix binning of psi chi\n"
        "#----------#\n"
    )


def _parfile_yaml(nside: int, window) -> str:
    """The tutorial's RL parameter file (reference layout) for this data set."""
    intensity = "cm-2 s-1 sr-1"
    tree = {
        "author": "comptonsky simulate",
        "model_definition": {
            "class": "AllSkyImage",
            "property": {"coordinate": "galactic", "nside": int(nside), "scheme": "ring",
                         "energy_edges": {"value": [float(e) for e in window], "unit": "keV"},
                         "unit": intensity},
            "initialization": {"algorithm": "flat",
                               "parameter": {"value": [1e-4], "unit": intensity}}},
        "deconvolution": {"algorithm": "RL", "parameter": {
            "iteration_max": 30,
            "acceleration": {"activate": True, "alpha_max": 10.0},
            "response_weighting": {"activate": True, "index": 0.5},
            "smoothing": {"activate": False, "FWHM": {"value": 2.0, "unit": "deg"}},
            "stopping_criteria": {"statistics": "log-likelihood", "threshold": 0.01},
            "background_normalization_optimization": {"activate": True,
                                                      "range": {"albedo": [0.01, 10.0]}},
            "save_results": {"activate": False, "directory": "./results",
                             "only_final_result": True}}},
    }
    return yaml.safe_dump(tree, sort_keys=False)


def _background_rate(value: float | str | None, preset: Preset) -> float | None:
    """The albedo count rate (s⁻¹) to scale to, or None for the physical line flux."""
    key = value.strip().lower() if isinstance(value, str) else value
    if key in (None, "line", "preset"):
        return preset.background_rate_hz if key == "preset" else None
    try:
        rate = float(key)
    except (TypeError, ValueError):
        rate = np.nan
    if not (np.isfinite(rate) and rate > 0):
        raise InvalidParameterError(f"background rate must be a positive number of counts/s, "
                                    f"'preset' or 'line', got {value!r}")
    return rate


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def simulate_dataset(output_dir: str | os.PathLike, preset: str | Preset = "dc2-511-thin-disk",
                     nside: int = 16, phi_bin_deg: float = 3.0, duration_s: float | None = None,
                     seed: int = 1, format: str = "fits", attitude_step_s: float = 20.0,
                     ori_cadence_s: float = 1.0,
                     attitude_resolution_deg: float | None = None,
                     sky_sampling: str = "pixel", psichi_oversample: int = 1,
                     background_rate_hz: float | str | None = "preset", force: bool = False,
                     progress: bool = True) -> dict[str, Path]:
    """Simulate a complete DC2-like data set into ``output_dir``.

    Parameters
    ----------
    output_dir : path-like
        Directory to write (created if needed).
    preset : str or Preset
        ``"dc2-511-thin-disk"`` (default), ``"dc2-511-thick-disk"``, ``"dc3-511-thin-disk"``,
        ``"dc2-511-thin-disk-cosmic"`` or a :class:`Preset`.
    nside : int
        HEALPix resolution of NuLambda, PsiChi and the truth map (16 for DC2; 4 or 8 for tests).
    phi_bin_deg : float
        Compton-angle bin width (deg); must divide 180.
    duration_s : float, optional
        Observation length (s) from the preset's start time; default the preset's (3 months).
    seed : int
        Random seed; the same seed gives identical files.
    format : {"fits", "hdf5"}
        Event-list format (``.fits.gz`` or ``.hdf5``).
    attitude_step_s : float
        Sampling step (s) of the attitude history the Galactic response and the albedo
        template are built from.
    ori_cadence_s : float
        Cadence (s) of ``orientation.ori``, which the spacecraft-frame (ScAtt) analysis reads:
        1 s (default) as in the COSI files; a 3-month file then holds 8 M rows (0.9 GB). A
        coarser cadence (e.g. 60) makes a smaller file and coarser exposure tables.
    attitude_resolution_deg : float, optional
        Size of the attitude bins of the response; default half a HEALPix pixel.
    sky_sampling : {"pixel", "continuous"}
        ``"pixel"`` (default): source photons are drawn uniformly inside each pixel of the truth
        map, so binned events agree with response · truth; ``"continuous"``: from the analytic
        components, whose structure below the pixel size the truth map lacks (docs/simulator.md,
        "Sky").
    psichi_oversample : int
        PsiChi of the detector-frame response is tabulated at ``nside × 2**psichi_oversample``
        before it is rotated onto the Galactic grid (docs/simulator.md, "Instrument"); 0 is
        faster but blurs the Compton cone by up to a pixel.
    background_rate_hz : float or str
        Albedo count rate in the analysis window (counts s⁻¹) the albedo is scaled to;
        ``"preset"`` (default): the preset's; ``"line"`` or None: the physical albedo line flux
        alone (docs/simulator.md, "Backgrounds").
    force : bool
        Recompute even if a matching manifest is present.
    progress : bool
        Show progress bars.

    Returns
    -------
    dict of str to pathlib.Path
        Keys ``response``, ``detector_response``, ``source_events``, ``albedo_events``, ``albedo_model``, ``truth``,
        ``orientation``, ``inputs``, ``parfile``, ``manifest`` (and ``cosmic_events`` for presets
        with a cosmic component).
    """
    pre = get_preset(preset)
    if nside < 1 or nside & (nside - 1):
        raise InvalidParameterError(f"nside must be a power of 2, got {nside}")
    phi_edges = phi_bin_edges(phi_bin_deg, "simulate_dataset")
    if sky_sampling not in ("pixel", "continuous"):
        raise InvalidParameterError(
            f"sky_sampling must be 'pixel' or 'continuous', got {sky_sampling!r}")
    if int(psichi_oversample) != psichi_oversample or not 0 <= psichi_oversample <= 3:
        raise InvalidParameterError(
            f"psichi_oversample must be an integer from 0 to 3, got {psichi_oversample!r}")
    psichi_oversample = int(psichi_oversample)
    background_rate = _background_rate(background_rate_hz, pre)
    if not (np.isfinite(ori_cadence_s) and ori_cadence_s > 0):
        raise InvalidParameterError(f"ori_cadence_s must be a positive number of seconds, got "
                                    f"{ori_cadence_s!r}")
    fmt = str(format).lower()
    if fmt not in ("fits", "hdf5"):
        raise InvalidParameterError(f"format must be 'fits' or 'hdf5', got {format!r}")
    orbit = pre.orbit.with_duration(duration_s)
    if attitude_resolution_deg is None:
        attitude_resolution_deg = 0.5 * float(np.degrees(hp.nside2resol(nside)))
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    sky = pre.sky()
    cosmic = bool(pre.isotropic_intensity)
    names = _file_names(sky.name, fmt, cosmic)
    paths = {k: out / v for k, v in names.items()}
    paths["manifest"] = out / MANIFEST_NAME
    params = {"version": SIMULATION_VERSION, "preset": pre.name, "nside": int(nside),
              "phi_bin_deg": float(phi_bin_deg), "duration_s": float(orbit.duration_s),
              "seed": int(seed), "format": fmt, "attitude_step_s": float(attitude_step_s),
              "ori_cadence_s": float(ori_cadence_s),
              "attitude_resolution_deg": float(attitude_resolution_deg),
              "sky_sampling": sky_sampling, "psichi_oversample": psichi_oversample,
              "background_rate_hz": background_rate}
    if not force and paths["manifest"].exists():
        try:
            old = json.loads(paths["manifest"].read_text())
        except (OSError, ValueError):
            old = {}
        if old.get("parameters") == params and all(p.exists() for p in paths.values()):
            logger.info("simulation in %s is up to date; reusing it", out)
            return paths
    elif paths["manifest"].exists():
        paths["manifest"].unlink()

    t_start = time.perf_counter()
    inst = pre.instrument()
    window = pre.energy_window_kev
    em_edges = np.asarray(window, dtype=float)
    ss = np.random.SeedSequence(int(seed))
    rng_src, rng_bkg = (np.random.default_rng(s) for s in ss.spawn(2))
    summary: dict = {}

    # attitude history -> orientation file (at its own cadence) and attitude bins
    t0 = time.perf_counter()
    summary["orientation_rows"] = write_orientation(paths["orientation"], orbit, ori_cadence_s,
                                                    progress=progress)
    logger.info("orientation written in %.1f s", time.perf_counter() - t0)
    ori = attitude_history(orbit, attitude_step_s)
    bins = bin_attitudes(ori, attitude_resolution_deg)
    summary["attitude_bins"] = len(bins)

    # detector-frame response -> Galactic response
    t0 = time.perf_counter()
    det = inst.detector_response(nside, nside * 2**psichi_oversample, phi_edges, em_edges)
    logger.info("detector-frame response built in %.1f s", time.perf_counter() - t0)
    t0 = time.perf_counter()
    write_detector_response(paths["detector_response"], det, nside, phi_edges, em_edges)
    logger.info("spacecraft-frame response file written in %.1f s", time.perf_counter() - t0)
    t0 = time.perf_counter()
    write_galactic_response(paths["response"], det, bins, em_edges, em_edges, phi_edges,
                            nside=nside, progress=progress)
    logger.info("Galactic response written in %.1f s", time.perf_counter() - t0)

    # truth map
    lam = sky.intensity_map(nside)
    truth = Histogram([HealpixAxis(nside=nside, scheme="ring", coordsys="galactic", label="lb"),
                       Axis(em_edges * u.keV, label="Ei")],
                      contents=lam[:, None], unit=u.Unit("cm-2 s-1 sr-1"))
    write_histogram(truth, paths["truth"])
    expo = galactic_exposure(det, bins, nside)
    gc = hp.ang2pix(nside, 0.0, 0.0, lonlat=True)
    summary["gc_exposure_cm2_s"] = float(expo[gc])
    summary["injected_flux_ph_cm2_s"] = sky.flux
    summary["expected_source_counts"] = float(np.sum(expo * lam) * hp.nside2pixarea(nside))

    # events
    injected = sky if sky_sampling == "continuous" else SkyModel(
        [HealpixMapSource(lam, name=f"{sky.name} (pixelised)")], name=sky.name)
    src = simulate_sky_events(injected, inst, orbit, rng_src, progress=progress)
    write_events(paths["source_events"], src, format=fmt)
    inwin = (src["Energies"] >= window[0]) & (src["Energies"] < window[1])
    summary["source_events"] = len(src["Energies"])
    summary["source_events_in_window"] = int(inwin.sum())

    # noise-free albedo template in the Galactic CDS, scaled to the requested background rate
    bkgs = pre.backgrounds()
    albedo = bkgs[0]
    cache: dict = {}

    def rate(t: int) -> np.ndarray:
        zl = bins.rotations[t].T @ bins.zenith[t]
        key = (tuple(np.round(zl, 3)), round(float(bins.horizon_deg[t]), 2))
        if key not in cache:
            cache[key] = albedo.local_rate(det, zl, bins.horizon_deg[t])
        return cache[key]

    model = carry_local_cds(rate, bins, det.nside_psichi, nside)
    model = model.reshape(det.shape_k[1], det.shape_k[2], -1)[None]  # (Time, Em, Phi, PsiChi)
    line_counts = float(model.sum())
    summary["albedo_line_counts"] = line_counts
    if background_rate is not None:
        if not line_counts > 0:
            raise InvalidParameterError("the albedo gives no counts in the analysis window; "
                                        "cannot scale it to a background rate")
        scale = background_rate * bins.total_livetime / line_counts
        model = model * scale
        bkgs[0] = albedo = replace(albedo, intensity=albedo.intensity * scale)
        summary["albedo_scale_over_line_flux"] = scale
    summary["albedo_flux_ph_cm2_s"] = albedo.flux(orbit.horizon_deg)
    summary["albedo_intensity_ph_cm2_s_sr"] = float(albedo.intensity)
    hist = Histogram([Axis(np.array([orbit.tmin, orbit.tmax]) * u.s, label="Time"),
                      Axis(em_edges * u.keV, label="Em"), Axis(phi_edges * u.deg, label="Phi"),
                      HealpixAxis(nside=nside, scheme="ring", coordsys="galactic",
                                  label="PsiChi")],
                     contents=model)
    write_histogram(hist, paths["albedo_model"])
    summary["expected_albedo_counts"] = float(model.sum())

    for bkg in bkgs:
        ev = simulate_background_events(bkg, inst, orbit, rng_bkg, progress=progress)
        key = "albedo_events" if bkg.name == "albedo" else f"{bkg.name}_events"
        write_events(paths[key], ev, format=fmt)
        summary[f"{bkg.name}_events"] = len(ev["Energies"])
        summary[f"{bkg.name}_events_in_window"] = int(
            ((ev["Energies"] >= window[0]) & (ev["Energies"] < window[1])).sum())

    _write_text(paths["inputs"], _inputs_yaml(names["source_events"], fmt, orbit.tmin,
                                              orbit.tmax, window, phi_bin_deg, nside))
    _write_text(paths["parfile"], _parfile_yaml(nside, window))
    manifest = {"parameters": params, "files": names, "summary": summary}
    _write_text(paths["manifest"], json.dumps(manifest, indent=2) + "\n")
    logger.info("simulation written to %s in %.1f s: %s", out, time.perf_counter() - t_start,
                summary)
    return paths
