"""The demo job: data → binned CDS → deconvolution → maps beside the truth, in one call."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from .deconvolution.model import AllSkyImageModel
from .io.histogram import open_histogram, write_histogram
from .jobs import deconvolve_files, write_summary
from .regions import region_fluxes

__all__ = ["run_demo"]

logger = logging.getLogger(__name__)

DEMO_PARFILE = """\
author: comptonsky demo
model_definition:
  class: "AllSkyImage"
  property:
    coordinate: "galactic"
    nside: {nside}
    scheme: "ring"
    energy_edges:
      value: [509.0, 513.0]
      unit: "keV"
    unit: "cm-2 s-1 sr-1"
  initialization:
    algorithm: "flat"
    parameter:
      value: [1e-4]
      unit: "cm-2 s-1 sr-1"
deconvolution:
  algorithm: "RL"
  parameter:
    iteration_max: {iterations}
    acceleration:
      activate: True
      alpha_max: 2.0
    response_weighting:
      activate: False
      index: 0.5
    smoothing:
      activate: False
      FWHM:
        value: 2.0
        unit: "deg"
    stopping_criteria:
      statistics: "log-likelihood"
      threshold: 0.01
    background_normalization_optimization:
      activate: True
      range: {{"albedo": [0.01, 10.0]}}
"""


def _toy_inputs(data_dir: Path, nside: int, seed: int) -> dict[str, Path]:
    """Generate the small built-in dataset (synthetic cone response) into ``data_dir``."""
    from .testing import toy_problem

    problem = toy_problem(nside=nside, phi_bin_deg=6.0, seed=seed)
    truth = AllSkyImageModel.from_axes(
        AllSkyImageModel(nside, problem.response.axes["Ei"].edges).axes,
        contents=problem.truth)
    paths = {
        "response": data_dir / "response.h5",
        "event": data_dir / "event.hdf5",
        "albedo": data_dir / "albedo_model.hdf5",
        "truth": data_dir / "truth.hdf5",
    }
    write_histogram(problem.response, paths["response"])
    write_histogram(problem.event, paths["event"])
    write_histogram(problem.background, paths["albedo"])
    write_histogram(truth, paths["truth"])
    return paths


def run_demo(output: str | os.PathLike = "demo-output", nside: int | None = None,
             iterations: int = 50, seed: int = 1, progress: bool = True) -> dict[str, Any]:
    """Run the demo and write PNGs and ``summary.json`` into ``output``.

    Returns
    -------
    dict
        The summary (also in ``output/summary.json``).
    """
    output = Path(output)
    data_dir = output / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    nside = nside or 8
    paths = _toy_inputs(data_dir, nside, seed)
    parfile = output / "imagedeconvolution_parfile.yml"
    parfile.write_text(DEMO_PARFILE.format(nside=nside, iterations=iterations))
    summary = deconvolve_files(parfile, paths["event"], {"albedo": paths["albedo"]},
                               paths["response"], output / "results", progress=progress)
    summary["data"] = {k: str(v) for k, v in paths.items()}
    _compare_with_truth(summary, output, paths["truth"])
    write_summary(summary, output / "summary.json")
    return summary


def _compare_with_truth(summary: dict[str, Any], output: Path, truth_path: Path) -> None:
    import matplotlib.pyplot as plt

    from .plotting import plot_image

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
    for name, image, scale in (("truth", truth, "log"), ("model", model, "log"),
                               ("residual", residual, "linear")):
        fig = plot_image(image, scale=scale, title=name, output=output / f"{name}.png",
                         cmap="RdBu_r" if name == "residual" else "magma",
                         vmin=1e-3 * t.max() if scale == "log" else None)
        plt.close(fig)
