"""Datasets: validation of events, backgrounds and responses before any work starts."""

from __future__ import annotations

import numpy as np
import pytest
from astropy import units as u
from histpy import Axis, HealpixAxis, Histogram

from comptonsky import DataIF_COSI_DC2, ImageDeconvolution
from comptonsky.errors import (
    AxisMismatchError,
    FileFormatError,
    InvalidDataError,
    InvalidParameterError,
    UnknownChoiceError,
)
from comptonsky.io.histogram import write_histogram

from .conftest import write_parfile


def _with_contents(hist, contents):
    return Histogram(hist.axes, contents=contents, unit=hist.unit)


def test_load_from_histograms_and_from_file(small_problem, tmp_path):
    path = write_histogram(small_problem.response, tmp_path / "rsp.h5")
    a = DataIF_COSI_DC2.load("a", small_problem.event, {"albedo": small_problem.background},
                             small_problem.response)
    b = DataIF_COSI_DC2.load("b", small_problem.event, {"albedo": small_problem.background},
                             str(path))
    np.testing.assert_array_equal(a.response.exposure, b.response.exposure)
    assert a.keys_bkg_models() == ["albedo"]
    assert a.exposure_map.unit == u.cm**2 * u.s * u.sr
    assert a.response.check_adjointness() < 1e-12


def test_time_axis_is_summed(small_problem):
    ev = small_problem.event
    timed = Histogram([Axis([0, 1, 2] * u.s, label="Time"), *ev.axes],
                      contents=np.stack([ev.contents, 2 * ev.contents]))
    ds = DataIF_COSI_DC2.load("t", timed, {}, small_problem.response)
    np.testing.assert_array_equal(ds.counts, 3 * ev.contents.reshape(-1))


def test_phi_axis_mismatch_shows_both_edge_sets(small_problem):
    ev = small_problem.event
    axes = [ev.axes["Em"], Axis(np.linspace(0, 180, 7) * u.deg, label="Phi"), ev.axes["PsiChi"]]
    bad = Histogram(axes, contents=np.ones((1, 6, ev.axes["PsiChi"].nbins)))
    with pytest.raises(AxisMismatchError) as err:
        DataIF_COSI_DC2.load("x", bad, {}, small_problem.response)
    msg = str(err.value)
    assert "'Phi'" in msg and "30." in msg and "15." in msg


def test_psichi_nside_mismatch(small_problem):
    ev = small_problem.event
    axes = [ev.axes["Em"], ev.axes["Phi"], HealpixAxis(nside=2, coordsys="galactic",
                                                       label="PsiChi")]
    bad = Histogram(axes, contents=np.ones((1, 12, 48)))
    with pytest.raises(AxisMismatchError, match="PsiChi.*nside=2.*nside=4"):
        DataIF_COSI_DC2.load("x", bad, {}, small_problem.response)


def test_em_unit_is_converted_before_comparison(small_problem):
    ev = small_problem.event
    axes = [Axis([0.509, 0.513] * u.MeV, label="Em"), ev.axes["Phi"], ev.axes["PsiChi"]]
    same = Histogram(axes, contents=ev.contents)
    DataIF_COSI_DC2.load("x", same, {}, small_problem.response)


def test_wrong_axis_labels(small_problem):
    ev = small_problem.event
    axes = [Axis([509, 513] * u.keV, label="Energy"), ev.axes["Phi"], ev.axes["PsiChi"]]
    with pytest.raises(AxisMismatchError, match="expected \\['Em', 'Phi', 'PsiChi'\\]"):
        DataIF_COSI_DC2.load("x", Histogram(axes, contents=ev.contents), {},
                             small_problem.response)


@pytest.mark.parametrize("value, fragment", [(-1.0, "negative"), (np.nan, "NaN")])
def test_bad_counts(small_problem, value, fragment):
    counts = small_problem.event.contents.copy()
    counts[0, 3, 7] = value
    with pytest.raises(InvalidDataError, match=fragment) as err:
        DataIF_COSI_DC2.load("x", _with_contents(small_problem.event, counts), {},
                             small_problem.response)
    assert "(0, 3, 7)" in str(err.value)
    with pytest.raises(InvalidDataError, match="background 'albedo'"):
        DataIF_COSI_DC2.load("x", small_problem.event,
                             {"albedo": _with_contents(small_problem.background, counts)},
                             small_problem.response)


def test_response_without_exposure(small_problem):
    zero = Histogram(small_problem.response.axes,
                     contents=np.zeros(small_problem.response.contents.shape), unit="cm2 s")
    with pytest.raises(InvalidDataError, match="no exposure"):
        DataIF_COSI_DC2.load("x", small_problem.event, {}, zero)


def test_missing_and_unreadable_response_files(small_problem, tmp_path):
    with pytest.raises(FileFormatError, match="not found"):
        DataIF_COSI_DC2.load("x", small_problem.event, {}, tmp_path / "absent.h5")
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not hdf5 at all")
    with pytest.raises(FileFormatError, match="junk.h5"):
        DataIF_COSI_DC2.load("x", small_problem.event, {}, junk)


def test_coordsys_conversion_matrix_is_refused(small_problem):
    with pytest.raises(InvalidParameterError, match="coordsys_conv_matrix"):
        DataIF_COSI_DC2.load("x", small_problem.event, {}, small_problem.response,
                             coordsys_conv_matrix=object())


def test_unknown_algorithm_and_model_names(small_problem, tmp_path):
    ds = DataIF_COSI_DC2.load("x", small_problem.event, {}, small_problem.response)
    deconv = ImageDeconvolution()
    deconv.set_dataset([ds])
    deconv.read_parameterfile(write_parfile(tmp_path))
    with pytest.raises(UnknownChoiceError, match="did you mean 'RLsimple'"):
        deconv.override_parameter("deconvolution:algorithm = RLsimpel")
    with pytest.raises(UnknownChoiceError, match="AllSkyImage"):
        deconv.override_parameter("model_definition:class = AllSky")


def test_model_axes_must_match_response(small_problem, tmp_path):
    ds = DataIF_COSI_DC2.load("x", small_problem.event, {}, small_problem.response)
    deconv = ImageDeconvolution()
    deconv.set_dataset([ds])
    deconv.read_parameterfile(write_parfile(tmp_path, nside=8))
    with pytest.raises(AxisMismatchError, match="nside=8.*nside=4"):
        deconv.initialize()
    deconv.override_parameter("model_definition:property:nside = 4",
                              "model_definition:property:energy_edges:value = [500, 520]")
    with pytest.raises(AxisMismatchError, match="'Ei'"):
        deconv.initialize()


def test_initialize_needs_dataset_and_parameters(tmp_path):
    deconv = ImageDeconvolution()
    with pytest.raises(InvalidParameterError, match="set_dataset"):
        deconv.initialize()


def test_parameter_file_response_section_changes_precision(small_problem, tmp_path):
    """``response: {dtype: float32}`` in the parameter file reloads the response in float32."""
    results = {}
    for dtype in ("float64", "float32"):
        ds = DataIF_COSI_DC2.load("x", small_problem.event, {"albedo": small_problem.background},
                                  small_problem.response)
        deconv = ImageDeconvolution()
        deconv.set_dataset([ds])
        deconv.read_parameterfile(write_parfile(tmp_path, iterations=5, accel=True))
        deconv.override_parameter(f"response:dtype = {dtype}")
        deconv.initialize()
        assert ds.response.matrix.dtype == np.dtype(dtype)
        results[dtype] = deconv.run_deconvolution(progress=False)[-1]["model"].contents.value
    scale = results["float64"].max()
    assert np.abs(results["float32"] - results["float64"]).max() < 1e-3 * scale
    assert not np.array_equal(results["float32"], results["float64"])
