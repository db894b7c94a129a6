"""The detector-frame data interface and RL against cosipy 0.3.4, from stored reference runs.

``tests/data/cosipy_detector_rl_reference.npz`` (``tools/make_cosipy_detector_rl_fixture.py``)
holds cosipy's exposure map, expectation, log-likelihood, T-product and background product and
its per-iteration RL map, acceleration factor, background norm and log-likelihood for three
problems: cosipy's time-binned test files, its ScAtt test files, and a generated orbit. Here the
same problems are built with comptonsky the way a user would (the team's files opened, the
matrix computed from the exposure table or the orbit), and run with the same parameter file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import sparse
from histpy import Axes, Axis, Histogram

from comptonsky import (
    AllSkyImageModel,
    CoordsysConversionMatrix,
    DataIF_COSI_DC2,
    FullDetectorResponse,
    ImageDeconvolution,
    SpacecraftAttitudeExposureTable,
)
from comptonsky.io.histogram import open_histogram

from .conftest import reference_file
from .test_conversion_matrix import ref_dense
from .test_exposure_table import generated_ori

FIXTURE = Path(__file__).parent / "data" / "cosipy_detector_rl_reference.npz"
CASES = ("time", "scatt", "orbit")


@pytest.fixture(scope="module")
def reference():
    with np.load(FIXTURE) as z:
        return {k: z[k] for k in z.files}


def _case(reference, case):
    return {k.split("/", 1)[1]: v for k, v in reference.items() if k.startswith(case + "/")}


def _dataset(case, ref, tmp_path, dtype, cosipy_matrix=False):
    """The case's data interface, built from the team's files with comptonsky (with
    ``cosipy_matrix``, the orbit's conversion matrix replaced by the one cosipy computed)."""
    if case == "time":
        fdr = FullDetectorResponse.open(reference_file(
            "cosipy-test-data/test_full_detector_response.h5"))
        ccm = CoordsysConversionMatrix.open(reference_file("cosipy-test-data/ccm_time_test.hdf5"))
        event = open_histogram(reference_file(
            "cosipy-test-data/test_event_histogram_localCDS.hdf5")).to_dense()
    else:
        fdr = FullDetectorResponse.open(reference_file(
            "cosipy-test-data/test_full_detector_response_dense.h5"))
        if case == "scatt":
            table = SpacecraftAttitudeExposureTable.from_fits(reference_file(
                "cosipy-test-data/exposure_table_test_nside1_ring.fits"))
            event = open_histogram(reference_file(
                "cosipy-test-data/test_event_histogram_localCDS_scatt.h5")).to_dense()
            ccm = CoordsysConversionMatrix.spacecraft_attitude_binning_ccm(
                fdr, table, use_averaged_pointing=True, earth_occ=False)
            # cosipy's matrix from the same table, to rounding
            np.testing.assert_allclose(ccm.contents.todense(), ref_dense(ref, "ccm"), rtol=1e-12,
                                       atol=1e-12 * ref["ccm/data"].max())
        else:
            table = SpacecraftAttitudeExposureTable.from_orientation(generated_ori(tmp_path),
                                                                     nside=int(ref["nside_table"]))
            ccm = CoordsysConversionMatrix.spacecraft_attitude_binning_ccm(
                fdr, table, nside_model=2, use_averaged_pointing=True, earth_occ=False)
            # end to end from the .ori: interval means are unit-vector means (cosipy: mean l, b)
            np.testing.assert_allclose(ccm.contents.todense(), ref_dense(ref, "ccm"), rtol=0,
                                       atol=2e-6 * ref["ccm/data"].max())
            if cosipy_matrix:
                ccm = CoordsysConversionMatrix(ccm.axes, contents=sparse.COO.from_numpy(
                    ref_dense(ref, "ccm")), unit=ccm.unit)
            event = Histogram(Axes([Axis(np.arange(len(table) + 1), label="ScAtt"),
                                    *[fdr.axes[k] for k in ("Em", "Phi", "PsiChi")]]),
                              contents=ref["event"])
    np.testing.assert_array_equal(event.contents, ref["event"])
    bkg = Histogram(event.axes, contents=ref["background"])
    return DataIF_COSI_DC2.load(case, event, {"albedo": bkg}, fdr, coordsys_conv_matrix=ccm,
                                is_miniDC2_format=(case == "time"), dtype=dtype)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_products_match_cosipy(reference, case, dtype, tmp_path):
    ref = _case(reference, case)
    ds = _dataset(case, ref, tmp_path, dtype)
    # float32: the response held in single precision (the default)
    rtol = 1e-12 if dtype == "float64" and case != "orbit" else 2e-6
    np.testing.assert_allclose(ds.exposure_map.contents.value, ref["exposure_map"], rtol=rtol)
    model = AllSkyImageModel(nside=ds.model_axes["lb"].nside,
                             energy_edges=ds.model_axes["Ei"].edges)
    model[:] = ref["model_in"] * model.unit
    bkg_norm = float(reference["expectation_bkg_norm"])
    eps = ds.calc_expectation(model, dict_bkg_norm={"albedo": bkg_norm})
    np.testing.assert_allclose(eps.contents, ref["expectation"], rtol=rtol)
    assert ds.calc_log_likelihood(eps) == pytest.approx(float(ref["loglike"]), rel=rtol)
    assert ds.calc_loglikelihood(eps) == pytest.approx(float(ref["loglike"]), rel=rtol)
    ratio = Histogram(ds.data_axes, contents=ref["event"] / ref["expectation"])
    np.testing.assert_allclose(ds.calc_T_product(ratio).contents.value, ref["t_product"],
                               rtol=rtol)
    assert ds.calc_bkg_model_product("albedo", ratio) == pytest.approx(
        float(ref["bkg_product"]), rel=1e-12)


def _run_rl(ref, ds, tmp_path):
    parfile = tmp_path / "parfile.yml"
    parfile.write_text(str(ref["parfile"]))
    deconv = ImageDeconvolution()
    deconv.set_dataset([ds])
    deconv.read_parameterfile(parfile)
    deconv.override_parameter("deconvolution:parameter:acceleration:method = max_step_unchecked")
    deconv.initialize()
    np.testing.assert_allclose(deconv.initial_model.contents.value, ref["initial_model"],
                               rtol=1e-15)
    return deconv.run_deconvolution(progress=False, keep_maps="all")


@pytest.mark.parametrize("case", CASES)
def test_rl_iterations_match_cosipy(reference, case, tmp_path):
    """cosipy 0.3's RL (flat parameter names, α always applied) iteration by iteration.

    The orbit runs on cosipy's own matrix here: an RL step that drives a pixel close to zero
    amplifies the 1e-6 by which the matrices differ (unit-vector means of the attitudes)."""
    ref = _case(reference, case)
    results = _run_rl(ref, _dataset(case, ref, tmp_path, "float64", cosipy_matrix=True),
                      tmp_path)
    assert len(results) == int(reference["n_iter"])
    for k, result in enumerate(results):
        scale = np.abs(ref["rl_model"][k]).max()
        np.testing.assert_allclose(result["model"].contents.value, ref["rl_model"][k],
                                   rtol=1e-10, atol=1e-12 * scale, err_msg=f"map, it {k + 1}")
        assert result["accel_factor"] == pytest.approx(ref["rl_alpha"][k], rel=1e-12)
        assert result["background_normalization"]["albedo"] == pytest.approx(
            ref["rl_bkg_norm"][k], rel=1e-12)
        assert np.sum(result["log-likelihood"]) == pytest.approx(ref["rl_loglike"][k], rel=1e-12)
    # the map of pixels pushed to zero by the largest step is zero in both
    assert np.array_equal(results[-1]["model"].contents.value == 0, ref["rl_model"][-1] == 0)


def test_rl_on_the_orbit_with_comptonskys_own_matrix(reference, tmp_path):
    """End to end from the .ori, the response in float32: the same likelihood and background
    norm to 1e-8, the map to 1e-6 of its peak."""
    ref = _case(reference, "orbit")
    results = _run_rl(ref, _dataset("orbit", ref, tmp_path, "float32"), tmp_path)
    for k, result in enumerate(results):
        assert np.sum(result["log-likelihood"]) == pytest.approx(ref["rl_loglike"][k], rel=1e-8)
        assert result["background_normalization"]["albedo"] == pytest.approx(
            ref["rl_bkg_norm"][k], rel=1e-8)
    scale = np.abs(ref["rl_model"][-1]).max()
    np.testing.assert_allclose(results[-1]["model"].contents.value, ref["rl_model"][-1],
                               rtol=0, atol=1e-6 * scale)
