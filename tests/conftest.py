"""Shared fixtures: small synthetic problems and the path to ../shared/reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from comptonsky import DataIF_COSI_DC2, ImageDeconvolution
from comptonsky.response.load import load_response
from comptonsky.response.synthetic import cone_response
from comptonsky.testing import toy_problem

REPO = Path(__file__).resolve().parents[1]
SHARED_REFERENCE = REPO.parent / "shared" / "reference"
PARFILE = SHARED_REFERENCE / "imagedeconvolution_parfile_gal_511keV.yml"


def reference_file(name: str) -> Path:
    """Path of a file in ../shared/reference, skipping the test when the folder is absent."""
    path = SHARED_REFERENCE / name
    if not path.exists():
        pytest.skip(f"{path} is absent: ../shared/reference is not beside this checkout")
    return path


@pytest.fixture(scope="session")
def small_problem():
    """nside 4 model and data, 15° Phi bins: 192 × 12 × 192 response."""
    return toy_problem(nside=4, phi_bin_deg=15.0, seed=3)


@pytest.fixture(scope="session")
def tiny_problem():
    """nside 1 model and data, 45° Phi bins: a 12 × 48 response for loop references."""
    return toy_problem(nside=1, phi_bin_deg=45.0, ring_width_deg=25.0, seed=5,
                       background_counts=500.0, exposure_cm2s=3e7)


@pytest.fixture(scope="module")
def cone():
    """A small Compton-cone response Histogram (nside 4, 12 Phi bins), for loading tests."""
    return cone_response(nside=4, n_phi=12, ring_width_deg=10.0)


@pytest.fixture(scope="module")
def reference(cone):
    """The operator of :func:`cone` loaded from memory: the products to compare with."""
    return load_response(cone)


@pytest.fixture
def rsp_file(cone, tmp_path):
    """:func:`cone` written as a response file."""
    path = tmp_path / "rsp.h5"
    cone.write(path)
    return path


def same_products(op, ref, tol: float) -> None:
    """Forward and adjoint products of random vectors and the exposure of ``op`` are finite
    and equal ``ref``'s within ``tol`` of their largest element."""
    rng = np.random.default_rng(1)
    x, y = rng.random(ref.n_model), rng.random(ref.n_data)
    for a, b in ((op.forward(x), ref.forward(x)), (op.adjoint(y), ref.adjoint(y)),
                 (op.exposure, ref.exposure)):
        assert np.all(np.isfinite(a))
        assert np.abs(a - b).max() <= tol * np.abs(b).max()


PARFILE_TEXT = """\
author: test
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
  algorithm: "{algorithm}"
  parameter:
    iteration_max: {iterations}
    acceleration:
        activate: {accel}
        alpha_max: {alpha_max}
        method: {method}
    response_weighting:
        activate: {weighting}
        index: 0.5
    smoothing:
        activate: {smoothing}
        FWHM:
            value: 30.0
            unit: "deg"
    stopping_criteria:
        statistics: "log-likelihood"
        threshold: {threshold}
    background_normalization_optimization:
        activate: {bkg}
        range: {{"albedo": [0.01, 10.0]}}
    save_results:
        activate: False
        directory: "./results"
        only_final_result: True
"""


def write_parfile(tmp_path: Path, nside: int = 4, algorithm: str = "RL", iterations: int = 10,
                  accel: bool = False, alpha_max: float = 10.0, weighting: bool = False,
                  smoothing: bool = False, threshold: float = -1e30, bkg: bool = True,
                  method: str = "max_step") -> Path:
    """Write a parameter file in the tutorial's layout and return its path."""
    path = tmp_path / f"parfile_{algorithm}.yml"
    path.write_text(PARFILE_TEXT.format(nside=nside, algorithm=algorithm, iterations=iterations,
                                        accel=accel, alpha_max=alpha_max, weighting=weighting,
                                        smoothing=smoothing, threshold=threshold, bkg=bkg,
                                        method=method))
    return path


def prepared_deconvolution(problem, parfile: Path, overrides=(), mask=None) -> ImageDeconvolution:
    """An ImageDeconvolution on ``problem`` (background 'albedo') with ``parfile`` read,
    ``overrides`` applied and ``mask`` set; not yet initialised."""
    dataset = DataIF_COSI_DC2.load("toy", problem.event, {"albedo": problem.background},
                                   problem.response)
    deconv = ImageDeconvolution()
    deconv.set_dataset([dataset])
    deconv.read_parameterfile(parfile)
    for text in overrides:
        deconv.override_parameter(text)
    if mask is not None:
        deconv.set_mask(mask)
    return deconv


def ori_reference_rows(path: Path) -> np.ndarray:
    """The OG rows of an ``.ori`` file, read line by line with Python's ``float`` (no line
    checks): the slow obvious reference for the compiled reader. Shape (N, 9)."""
    rows = []
    for line in Path(path).read_bytes().decode("latin-1").split("\n"):
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "EN":
            break
        if parts[0] == "OG":
            rows.append([float(v) for v in parts[1:10]])
    return np.array(rows, dtype=float).reshape(-1, 9)
