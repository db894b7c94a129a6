"""Bit-level agreement with the published algorithm (cosipy 0.4.3), from stored reference runs.

``tests/data/cosipy_reference.npz`` holds inputs and per-iteration outputs of cosipy's own
``ImageDeconvolution`` for several settings (see ``tests/data/README.md``); cosipy itself is not
needed here. Each case's parameter file in the tutorial's names is run through comptonsky.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from astropy import units as u
from histpy import Axis, HealpixAxis, Histogram

from comptonsky import DataIF_COSI_DC2, ImageDeconvolution

FIXTURE = Path(__file__).parent / "data" / "cosipy_reference.npz"


@pytest.fixture(scope="module")
def reference():
    with np.load(FIXTURE) as z:
        return {k: z[k] for k in z.files}


def _dataset(ref):
    nside = int(ref["nside"])
    energy = ref["energy_edges"] * u.keV
    data_axes = [Axis(energy, label="Em"), Axis(ref["phi_edges"] * u.deg, label="Phi"),
                 HealpixAxis(nside=nside, coordsys="galactic", label="PsiChi")]
    response = Histogram([HealpixAxis(nside=nside, coordsys="galactic", label="NuLambda"),
                          Axis(energy, label="Ei"), *data_axes],
                         contents=ref["response"], unit="cm2 s")
    event = Histogram(data_axes, contents=ref["event"])
    background = Histogram(data_axes, contents=ref["background"])
    return DataIF_COSI_DC2.load("toy", event, {"albedo": background}, response)


def _prepared(reference, case, tmp_path):
    """Fixture entries of ``case`` and an ImageDeconvolution set up as cosipy's run was."""
    ref = {k.split("/", 1)[1]: v for k, v in reference.items() if k.startswith(case + "/")}
    parfile = tmp_path / "parfile.yml"
    parfile.write_text(str(ref["tutorial_yaml"]))
    deconv = ImageDeconvolution()
    deconv.set_dataset([_dataset(reference)])
    deconv.read_parameterfile(parfile)
    for text in ref["overrides"][: int(ref["n_overrides"])]:
        deconv.override_parameter(str(text))
    if not ref["user_mask"].all():
        deconv.set_mask(ref["user_mask"])
    return ref, deconv


CASES = ["rl_plain", "rl_full", "rl_tutorial", "rl_simple", "rl_user_mask", "rl_threshold",
         "rl_class_as_is", "map_rl", "map_rl_tsv_loglike"]


@pytest.mark.parametrize("case", CASES)
def test_case_matches_cosipy(reference, case, tmp_path):
    ref, deconv = _prepared(reference, case, tmp_path)
    deconv.initialize()
    np.testing.assert_allclose(deconv.initial_model.contents.value, ref["initial_model"],
                               rtol=1e-15)
    results = deconv.run_deconvolution(progress=False, keep_maps="all")
    assert len(results) == int(ref["n_iter"])
    np.testing.assert_allclose(deconv.dataset[0].exposure_map.contents.value,
                               ref["exposure_map"], rtol=1e-13)
    for k, result in enumerate(results):
        scale = np.abs(ref["model"][k]).max()
        assert result["iteration"] == ref["iteration"][k]
        np.testing.assert_allclose(result["model"].contents.value, ref["model"][k],
                                   rtol=1e-10, atol=1e-13 * scale, err_msg=f"model, it {k + 1}")
        # delta maps on free pixels: on masked ones cosipy's MAP_RL leaves NaN (exp overflow
        # at zero exposure), which we replace by 0; the maps themselves agree everywhere.
        free = ref["mask"]
        np.testing.assert_allclose(result["delta_model"].contents.value[free],
                                   ref["delta_model"][k][free], rtol=1e-9,
                                   atol=1e-12 * scale, err_msg=f"delta, it {k + 1}")
        np.testing.assert_allclose(result["processed_delta_model"].contents.value[free],
                                   ref["processed_delta_model"][k][free], rtol=1e-9,
                                   atol=1e-12 * scale, err_msg=f"processed delta, it {k + 1}")
        assert np.isfinite(result["processed_delta_model"].contents.value).all()
        assert result["accel_factor"] == pytest.approx(ref["accel_factor"][k], rel=1e-12)
        assert result["background_normalization"]["albedo"] == pytest.approx(
            ref["bkg_norm"][k], rel=1e-12)
        assert np.sum(result["log-likelihood"]) == pytest.approx(
            ref["loglike_recomputed"][k], rel=1e-13, abs=1e-8)
        if "log_posterior" in ref:
            assert result["log-posterior"] == pytest.approx(ref["log_posterior"][k], rel=1e-13,
                                                            abs=1e-8)


@pytest.mark.parametrize("case", ["v034_rl_full", "v034_rl_tutorial", "v034_rl_user_mask",
                                  "v034_rl_simple"])
def test_legacy_cosipy_034_with_unchecked_acceleration(reference, case, tmp_path):
    """cosipy 0.3.4 applied α without the likelihood check: ``method: max_step_unchecked``.

    Compared up to ``fragile_after`` iterations: beyond it a pixel driven to ≈ ±1e-19 decides
    α, and the run is no longer reproducible bit for bit (docs/reference-algorithms.md).
    """
    ref, deconv = _prepared(reference, case, tmp_path)
    if deconv.parameter.get("deconvolution:parameter:acceleration:activate"):
        deconv.override_parameter("deconvolution:parameter:acceleration:method = "
                                  "max_step_unchecked")
    deconv.initialize()
    results = deconv.run_deconvolution(progress=False, keep_maps="all")
    n_compare = int(ref["fragile_after"]) or int(ref["n_iter"])
    assert n_compare >= 4
    for k in range(n_compare):
        scale = np.abs(ref["model"][k]).max()
        np.testing.assert_allclose(results[k]["model"].contents.value, ref["model"][k],
                                   rtol=1e-10, atol=1e-13 * scale)
        assert results[k]["accel_factor"] == pytest.approx(ref["accel_factor"][k], rel=1e-12)
        assert results[k]["background_normalization"]["albedo"] == pytest.approx(
            ref["bkg_norm"][k], rel=1e-12)
