"""``comptonsky deconvolve --ccm``: detector-frame runs from files, and bad input refused first."""

from __future__ import annotations

import json

import numpy as np
import pytest
from histpy import Axes, Axis, HealpixAxis, Histogram

from comptonsky import (
    CoordsysConversionMatrix,
    DataIF_COSI_DC2,
    FullDetectorResponse,
    ImageDeconvolution,
    SpacecraftAttitudeExposureTable,
)
from comptonsky.cli import main as cli_main
from comptonsky.errors import AxisMismatchError, InvalidParameterError
from comptonsky.io.drm import write_full_detector_response
from comptonsky.response.detector_frame import detector_frame_response

from .conftest import write_parfile
from .test_detector_frame import NSIDE, cone_contents, drm_axes
from .test_exposure_table import random_orbit


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """DRM, conversion matrix, binned event and background (ScAtt, local PsiChi) on disk."""
    tmp = tmp_path_factory.mktemp("ccm_cli")
    axes = drm_axes()
    drm = write_full_detector_response(tmp / "drm.h5", axes, cone_contents(axes))
    fdr = FullDetectorResponse.open(drm)
    table = SpacecraftAttitudeExposureTable.from_orientation(random_orbit(1500), nside=2)
    ccm = CoordsysConversionMatrix.spacecraft_attitude_binning_ccm(
        fdr, table, nside_model=NSIDE, use_averaged_pointing=True, earth_occ=False)
    ccm_path = ccm.write(tmp / "ccm.hdf5")
    op = detector_frame_response(fdr, ccm, dtype=np.float64)
    sky = np.full(op.model_shape, 2e-3)
    shape = op.data_shape
    bkg = np.broadcast_to(np.asarray(table["exposure"])[:, None, None, None], shape) * 1e-3
    counts = np.random.default_rng(3).poisson(op.forward(sky.ravel()).reshape(shape) + bkg)
    Histogram(op.data_axes, contents=counts.astype(float)).write(tmp / "event.hdf5")
    Histogram(op.data_axes, contents=np.array(bkg)).write(tmp / "bkg.hdf5")
    return {"dir": tmp, "drm": drm, "ccm": ccm_path, "event": tmp / "event.hdf5",
            "bkg": tmp / "bkg.hdf5", "fdr": fdr, "ccm_obj": ccm, "table": table,
            "data_axes": op.data_axes, "counts": counts.astype(float)}


def deconvolve(files, tmp_path, *extra, event=None, response=None, ccm=None, nside=NSIDE):
    parfile = write_parfile(tmp_path, nside=nside, iterations=3)
    argv = ["deconvolve", str(parfile), "--event", str(event or files["event"]),
            "--background", f"albedo={files['bkg']}", "--response",
            str(response or files["drm"]), "--output", str(tmp_path / "out"),
            "--no-plots", "--no-report", "--no-progress", *extra]
    if ccm is not False:
        argv += ["--ccm", str(ccm or files["ccm"])]
    return cli_main(argv)


def test_cli_runs_a_detector_frame_dataset(files, tmp_path, capsys):
    assert deconvolve(files, tmp_path) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["iterations"] == 3
    assert "conversion matrix" in summary["provenance"]["inputs"]
    # the same fit from Python gives the same log-likelihoods
    ds = DataIF_COSI_DC2.load("data", Histogram.open(files["event"]),
                              {"albedo": Histogram.open(files["bkg"])}, files["fdr"],
                              coordsys_conv_matrix=files["ccm_obj"])
    deconv = ImageDeconvolution()
    deconv.set_dataset([ds])
    deconv.read_parameterfile(write_parfile(tmp_path, nside=NSIDE, iterations=3))
    deconv.initialize()
    deconv.run_deconvolution(progress=False)
    np.testing.assert_allclose(sum(summary["log_likelihood"]),
                               sum(deconv.results[-1]["log-likelihood"]), rtol=1e-9)
    assert "ScAtt" not in capsys.readouterr().err


def _other_data(files, tmp_path, name, axes, contents):
    path = tmp_path / name
    Histogram(axes, contents=contents).write(path)
    return path


@pytest.mark.parametrize("case", ["scatt-count", "galactic-psichi", "nside-data",
                                  "drm-without-ccm", "scatt-without-ccm", "galactic-with-ccm",
                                  "model-nside", "ccm-other-response"])
def test_bad_input_refused_before_work(files, tmp_path, capsys, case):
    ax = files["data_axes"]
    counts = files["counts"]
    kwargs = {}
    if case == "scatt-count":
        short = Axes([Axis(np.arange(ax[0].nbins), label="ScAtt"), ax["Em"], ax["Phi"],
                      ax["PsiChi"]])
        kwargs["event"] = _other_data(files, tmp_path, "short.hdf5", short, counts[:-1])
        want = "ScAtt bins, the conversion matrix has"
    elif case == "galactic-psichi":
        gal = Axes([*ax[:3], HealpixAxis(nside=NSIDE, coordsys="galactic", label="PsiChi")])
        kwargs["event"] = _other_data(files, tmp_path, "gal.hdf5", gal, counts)
        want = "needs a 'spacecraftframe' (local) PsiChi"
    elif case == "nside-data":
        one = Axes([*ax[:3], HealpixAxis(nside=1, coordsys="spacecraftframe", label="PsiChi")])
        kwargs["event"] = _other_data(files, tmp_path, "nside1.hdf5", one, counts[..., :12])
        want = "PsiChi"
    elif case == "drm-without-ccm":
        kwargs["ccm"] = False
        want = "is a FullDetectorResponse"
    elif case == "scatt-without-ccm":
        kwargs["ccm"] = False
        d = drm_axes()
        gal_rsp = Axes([HealpixAxis(nside=NSIDE, coordsys="galactic", label="NuLambda"),
                        d["Ei"], d["Em"], d["Phi"],
                        HealpixAxis(nside=NSIDE, coordsys="galactic", label="PsiChi")])
        kwargs["response"] = _other_data(files, tmp_path, "gal_rsp.h5", gal_rsp,
                                         np.ones(tuple(gal_rsp.nbins)))
        want = "binned per ScAtt bin in the detector frame"
    elif case == "galactic-with-ccm":
        kwargs["response"] = files["ccm"]  # a histpy file, not a DRM
        want = "is not a FullDetectorResponse"
    elif case == "model-nside":
        kwargs["nside"] = 4
        want = "nside"
    else:  # a matrix built for a response of another NuLambda nside
        other = write_full_detector_response(
            tmp_path / "nu1.h5", drm_axes(nside_nu=1), np.ones(tuple(drm_axes(nside_nu=1).nbins)))
        kwargs["response"] = other
        want = "NuLambda"
    assert deconvolve(files, tmp_path, **kwargs) == 1
    err = capsys.readouterr().err
    assert want in err and len(err.strip().splitlines()) == 1
    assert not list((tmp_path / "out").glob("*.hdf5"))  # nothing was computed


def test_python_errors_for_ccm_mismatches(files):
    fdr, ccm, table = files["fdr"], files["ccm_obj"], files["table"]
    event = Histogram.open(files["event"])
    with pytest.raises(InvalidParameterError, match="is a FullDetectorResponse"):
        DataIF_COSI_DC2.load("x", event.project(["Em", "Phi", "PsiChi"]), {}, str(files["drm"]))
    d = drm_axes()
    gal_rsp = Axes([HealpixAxis(nside=NSIDE, coordsys="galactic", label="NuLambda"), d["Ei"],
                    d["Em"], d["Phi"], HealpixAxis(nside=NSIDE, coordsys="galactic",
                                                   label="PsiChi")])
    with pytest.raises(AxisMismatchError, match="ScAtt"):
        DataIF_COSI_DC2.load("x", event, {}, Histogram(gal_rsp, contents=np.ones(
            tuple(gal_rsp.nbins))))
    # a table with another number of bins gives a matrix the data do not fit
    fewer = SpacecraftAttitudeExposureTable(table.iloc[:-2].reset_index(drop=True),
                                            nside=table.nside, scheme=table.scheme)
    small = CoordsysConversionMatrix.spacecraft_attitude_binning_ccm(
        fdr, fewer, nside_model=NSIDE, use_averaged_pointing=True, earth_occ=False)
    with pytest.raises(AxisMismatchError, match="ScAtt bins, the conversion matrix has"):
        DataIF_COSI_DC2.load("x", event, {}, fdr, coordsys_conv_matrix=small)
    assert ccm.axes["ScAtt"].nbins == len(table)


def test_time_binned_histogram_fits_its_matrix(files, tmp_path):
    """Events binned per time interval of a table load with the matrix of the same intervals;
    intervals that differ from the matrix's are refused."""
    import pandas as pd

    from comptonsky import BinnedData, TimeBinnedExposureTable

    o = random_orbit(1500)
    edges = np.linspace(o.time[0], o.time[-1], 4)
    table = TimeBinnedExposureTable(pd.DataFrame({"time_binning_index": np.arange(3),
                                                  "tstart": edges[:-1], "tstop": edges[1:]}))
    ccm = CoordsysConversionMatrix.time_binning_ccm(files["fdr"], o, edges, nside_model=NSIDE,
                                                    earth_occ=False)
    ax = files["data_axes"]
    rng = np.random.default_rng(4)
    n = 3000
    ev = {"TimeTags": rng.uniform(edges[0], edges[-1], n), "Energies": rng.uniform(509, 513, n),
          "Phi": rng.uniform(0, np.pi, n), "Chi local": rng.uniform(0, 2 * np.pi, n),
          "Psi local": np.arccos(rng.uniform(-1, 1, n))}
    params = BinnedData(energy_bins=ax["Em"].edges.value, phi_pix_size=30.0, nside=NSIDE)
    params.cosi_dataset = ev
    hist = table.get_binned_data(params, psichi_binning="local")
    assert hist.contents.sum() == n
    bkg = Histogram(hist.axes, contents=np.ones(hist.contents.shape))
    ds = DataIF_COSI_DC2.load("t", hist, {"albedo": bkg}, files["fdr"], coordsys_conv_matrix=ccm)
    assert ds.counts.sum() == n
    shifted = TimeBinnedExposureTable(pd.DataFrame({
        "time_binning_index": np.arange(3), "tstart": edges[:-1] + 1.0,
        "tstop": np.append(edges[1:-1] + 1.0, edges[-1])}))
    other = shifted.get_binned_data(params)
    with pytest.raises(AxisMismatchError, match="Time"):
        DataIF_COSI_DC2.load("t", other, {}, files["fdr"], coordsys_conv_matrix=ccm)
