"""Detector-frame (ScAtt) imaging: the response operator, the occupied-bins restriction, the
dataset and its cosipy methods, the algorithms on it, and agreement with the Galactic engine."""

from __future__ import annotations

import astropy.units as u
import healpy as hp
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
from comptonsky.attitude.samples import nearest_rotations
from comptonsky.deconvolution.dataset import DetectorFrameDataset
from comptonsky.deconvolution.joint import JointData
from comptonsky.deconvolution.stopping import dataset_with_counts
from comptonsky.errors import AxisMismatchError, InvalidParameterError
from comptonsky.io.drm import write_full_detector_response
from comptonsky.response.attitude import AttitudeBins
from comptonsky.response.detector import DetectorResponse
from comptonsky.response.detector_frame import detector_frame_response
from comptonsky.response.galactic import carry_local_cds, galactic_response
from comptonsky.response.linear import adjointness_test

from .conftest import write_parfile
from .test_exposure_table import random_orbit

NSIDE = 2
PHI = np.linspace(0.0, 180.0, 7)


def drm_axes(nside_nu=NSIDE, nside_psi=NSIDE, scheme="ring"):
    return Axes([HealpixAxis(nside=nside_nu, scheme=scheme, coordsys="spacecraftframe",
                             label="NuLambda"),
                 Axis([509.0, 513.0] * u.keV, scale="log", label="Ei"),
                 Axis([509.0, 513.0] * u.keV, scale="log", label="Em"),
                 Axis(PHI * u.deg, label="Phi"),
                 HealpixAxis(nside=nside_psi, coordsys="spacecraftframe", label="PsiChi")])


def cone_contents(axes, width_deg=30.0):
    """Effective area (cm²) on a cone: PsiChi at angle ≈ Phi from the source direction ν."""
    nu = np.array(hp.pix2vec(axes["NuLambda"].nside, np.arange(axes["NuLambda"].nbins))).T
    psi = np.array(hp.pix2vec(axes["PsiChi"].nside, np.arange(axes["PsiChi"].nbins))).T
    ang = np.degrees(np.arccos(np.clip(nu @ psi.T, -1, 1)))  # (ν, p)
    phi = 0.5 * (PHI[1:] + PHI[:-1])
    cone = np.exp(-0.5 * ((ang[:, None, :] - phi[None, :, None]) / width_deg) ** 2)
    cone *= np.sin(np.radians(phi))[None, :, None] + 0.1
    zen = np.clip(nu[:, 2], 0, None) + 0.2  # more area towards the z axis
    return (10.0 * zen[:, None, None] * cone)[:, None, None]


class Problem:
    pass


@pytest.fixture(scope="module")
def problem(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dframe")
    p = Problem()
    p.axes = drm_axes()
    p.contents = cone_contents(p.axes)
    p.drm_path = write_full_detector_response(tmp / "drm.h5", p.axes, p.contents)
    p.fdr = FullDetectorResponse.open(p.drm_path)
    p.table = SpacecraftAttitudeExposureTable.from_orientation(random_orbit(1500), nside=2)
    p.ccm = CoordsysConversionMatrix.spacecraft_attitude_binning_ccm(
        p.fdr, p.table, nside_model=NSIDE, use_averaged_pointing=True, earth_occ=False)
    p.op = detector_frame_response(p.fdr, p.ccm, dtype=np.float64)
    rng = np.random.default_rng(1)
    npix = hp.nside2npix(NSIDE)
    b = np.array(hp.pix2ang(NSIDE, np.arange(npix), lonlat=True))[1]
    p.sky = 1e-3 * (0.3 + np.exp(-0.5 * (b / 20.0) ** 2))  # a smooth disk, cm⁻² s⁻¹ sr⁻¹
    truth = p.op.forward(p.sky)
    shape = p.op.data_shape
    bkg = np.broadcast_to(np.asarray(p.table["exposure"])[:, None, None, None],
                          shape) * 1e-3 * (1 + np.arange(shape[2]))[None, None, :, None]
    p.bkg = Histogram(p.op.data_axes, contents=np.array(bkg))
    p.counts = rng.poisson(truth.reshape(shape) + bkg).astype(float)
    p.event = Histogram(p.op.data_axes, contents=p.counts)
    p.ds = DataIF_COSI_DC2.load("dframe", p.event, {"albedo": p.bkg}, p.fdr,
                                coordsys_conv_matrix=p.ccm, dtype="float64")
    p.full = DataIF_COSI_DC2.load("full", p.event, {"albedo": p.bkg}, p.fdr,
                                  coordsys_conv_matrix=p.ccm, dtype="float64",
                                  occupied_only=False)
    return p


def dense_reference(p, lam, y):
    """ε and Rᵀy by explicit einsum over (s, j, ν, e, m, φ, ψ)."""
    c = p.ccm.contents.todense()
    r = p.fdr.read_rows()
    d_omega = 4 * np.pi / hp.nside2npix(NSIDE)
    lam = lam.reshape(-1, r.shape[1])
    eps = d_omega * np.einsum("sjn,je,nekpq->skpq", c, lam, r)
    back = d_omega * np.einsum("sjn,skpq,nekpq->je", c, y.reshape(eps.shape), r)
    return eps.reshape(-1), back.reshape(-1)


def test_operator_matches_dense_reference(problem):
    p, op = problem, problem.op
    assert op.data_shape == (len(p.table), 1, 6, 48) and op.model_shape == (48, 1)
    assert adjointness_test(op) < 1e-13
    rng = np.random.default_rng(0)
    lam, y = rng.random(op.n_model), rng.random(op.n_data)
    eps, back = dense_reference(p, lam, y)
    np.testing.assert_allclose(op.forward(lam), eps, rtol=1e-12, atol=0)
    np.testing.assert_allclose(op.adjoint(y), back, rtol=1e-12, atol=0)
    np.testing.assert_allclose(op.exposure, op.adjoint(np.ones(op.n_data)), rtol=1e-12)
    single = detector_frame_response(p.fdr, p.ccm, dtype=np.float32)
    assert single.columns.dtype == np.float32
    np.testing.assert_allclose(single.forward(lam), eps, rtol=1e-5)


def test_occupied_bins_equal_full_space(problem):
    p = problem
    occ, full = p.ds.response, p.full.response
    assert occ.n_data < 0.8 * full.n_data
    assert adjointness_test(occ) < 1e-13
    np.testing.assert_allclose(occ.exposure, full.exposure, rtol=1e-12)
    np.testing.assert_allclose(occ.adjoint(np.ones(occ.n_data)), full.exposure, rtol=1e-12)
    lam = p.sky * 1.3
    norms = {"albedo": 0.9}
    eps_o = p.ds.expectation(lam, norms)
    eps_f = p.full.expectation(lam, norms)
    assert abs(eps_o.sum() - eps_f.sum()) < 1e-10 * eps_f.sum()
    np.testing.assert_allclose(p.ds.log_likelihood(eps_o), p.full.log_likelihood(eps_f),
                               rtol=1e-12)
    r_o, r_f = p.ds.counts / eps_o, p.full.counts / eps_f
    np.testing.assert_allclose(occ.adjoint(r_o), full.adjoint(r_f), rtol=1e-12)
    for k in (0, 2):
        so, sf = occ.subset(k, 3, "PsiChi"), full.subset(k, 3, "PsiChi")
        np.testing.assert_allclose(so.exposure, sf.exposure, rtol=1e-12)
        assert so.mode == "columns" and so.pass_fraction == pytest.approx(1 / 3, rel=0.1)
        assert adjointness_test(so) < 1e-13
        np.testing.assert_allclose(so.forward(lam), occ.forward(lam)[so.data_indices],
                                   rtol=1e-12)
        y = np.random.default_rng(k).random(so.n_data)
        full_y = np.zeros(occ.n_data)
        full_y[so.data_indices] = y
        np.testing.assert_allclose(so.adjoint(y), occ.adjoint(full_y), rtol=1e-12)


def fit(datasets, tmp_path, algorithm="RL", iterations=5, overrides=(), **settings):
    imdec = ImageDeconvolution()
    imdec.set_dataset(list(datasets))
    path = write_parfile(tmp_path, nside=NSIDE, algorithm=algorithm, iterations=iterations,
                         **settings)
    if algorithm == "MAP_RL":
        path.write_text(path.read_text().replace(
            "    save_results:", "    prior:\n        TSV:\n            coefficient: 1.0e+2\n"
            "    save_results:"))
    imdec.read_parameterfile(path)
    if overrides:
        imdec.override_parameter(*overrides)
    imdec.initialize()
    imdec.run_deconvolution(progress=False)
    return imdec


@pytest.mark.parametrize("algorithm,settings,overrides", [
    ("RL", {"accel": True}, ()),
    ("RL", {"accel": True, "method": "line_search"}, ()),
    ("RLsimple", {"bkg": False}, ()),
    ("MAP_RL", {}, ()),
    ("OSEM", {}, ("deconvolution:parameter:n_subsets = 4",
                  "deconvolution:parameter:subset_axis = PsiChi")),
    ("OSEM", {}, ("deconvolution:parameter:n_subsets = 3",
                  "deconvolution:parameter:subset_axis = Phi")),
])
def test_algorithms_run_and_match_full_space(problem, tmp_path, algorithm, settings,
                                             overrides):
    a, b = (fit([ds], tmp_path, algorithm, overrides=overrides, **settings)
            for ds in (problem.ds, problem.full))
    assert np.all(np.isfinite(a.results[-1]["model"].contents.value))
    la = [r["log-likelihood"][0] for r in a.results]
    lb = [r["log-likelihood"][0] for r in b.results]
    np.testing.assert_allclose(la, lb, rtol=1e-10)
    assert la[-1] > la[0]
    # the line search finds α to 1e-10, which moves the maps by up to ~4e-10
    tol = 1e-8 if settings.get("method") == "line_search" else 1e-10
    np.testing.assert_allclose(a.results[-1]["model"].contents.value,
                               b.results[-1]["model"].contents.value, rtol=tol)
    np.testing.assert_allclose(a.results[-1]["background_normalization"]["albedo"],
                               b.results[-1]["background_normalization"]["albedo"], rtol=tol)


def test_cosipy_methods_on_full_space_histograms(problem):
    p, ds = problem, problem.ds
    assert isinstance(ds, DetectorFrameDataset) and ds.model_axes.labels.tolist() == ["lb",
                                                                                     "Ei"]
    model = Histogram(ds.model_axes, contents=p.sky.reshape(-1, 1), unit="cm-2 s-1 sr-1")
    eps = ds.calc_expectation(model, {"albedo": 1.2})
    assert eps.axes == p.event.axes
    full = p.full.expectation(p.sky, {"albedo": 1.2})
    np.testing.assert_allclose(eps.contents.reshape(-1), full, rtol=1e-12)
    logl = ds.calc_log_likelihood(eps)
    assert logl == ds.calc_loglikelihood(eps)
    np.testing.assert_allclose(logl, p.full.log_likelihood(full), rtol=1e-12)
    np.testing.assert_allclose(logl, ds.log_likelihood(ds.expectation(p.sky, {"albedo": 1.2})),
                               rtol=1e-12)
    ones = Histogram(p.event.axes, contents=np.ones(p.event.axes.nbins))
    np.testing.assert_allclose(ds.calc_T_product(ones).contents.value.reshape(-1),
                               ds.exposure_map.contents.value.reshape(-1), rtol=1e-12)
    assert ds.exposure_map.unit == u.cm ** 2 * u.s * u.sr
    assert ds.calc_bkg_model_product("albedo", ones) == pytest.approx(
        p.bkg.contents.sum(), rel=1e-12)
    assert ds.background("albedo").sum() == pytest.approx(p.bkg.contents.sum(), rel=1e-12)
    assert ds.counts.sum() == p.counts.sum()


def test_axis_checks_before_any_work(problem, tmp_path):
    p = problem
    load = DataIF_COSI_DC2.load
    # attitude-bin count
    short = Histogram(Axes([Axis(np.arange(len(p.table)), label="ScAtt"),
                            *[p.event.axes[k] for k in ("Em", "Phi", "PsiChi")]]),
                      contents=p.counts[:-1])
    with pytest.raises(AxisMismatchError, match="ScAtt bins, the conversion matrix has"):
        load("x", short, {}, p.fdr, coordsys_conv_matrix=p.ccm)
    # Galactic histogram where a local one is expected
    gal_axes = Axes([*p.event.axes[:3], HealpixAxis(nside=NSIDE, coordsys="galactic",
                                                    label="PsiChi")])
    with pytest.raises(AxisMismatchError, match="spacecraftframe"):
        load("x", Histogram(gal_axes, contents=p.counts), {}, p.fdr, coordsys_conv_matrix=p.ccm)
    # nside of the data disagreeing with the response
    other = Axes([*p.event.axes[:3], HealpixAxis(nside=1, coordsys="spacecraftframe",
                                                 label="PsiChi")])
    with pytest.raises(AxisMismatchError, match="PsiChi"):
        load("x", Histogram(other, contents=p.counts[..., :12]), {}, p.fdr,
             coordsys_conv_matrix=p.ccm)
    # a matrix made for another response (NuLambda nside)
    other_fdr = FullDetectorResponse.open(write_full_detector_response(
        tmp_path / "nu1.h5", drm_axes(nside_nu=1), np.ones(tuple(drm_axes(nside_nu=1).nbins))))
    with pytest.raises(AxisMismatchError, match="NuLambda"):
        load("x", p.event, {}, other_fdr, coordsys_conv_matrix=p.ccm)
    # a spacecraft-frame response without a conversion matrix
    with pytest.raises(InvalidParameterError, match="coordsys_conv_matrix"):
        load("x", p.event, {}, p.fdr)
    with pytest.raises(InvalidParameterError, match="is_miniDC2_format: expected True or "
                       "False, found 'no'"):
        load("x", p.event, {}, p.fdr, coordsys_conv_matrix=p.ccm, is_miniDC2_format="no")
    with pytest.raises(InvalidParameterError, match="storage"):
        load("x", p.event, {}, p.fdr, coordsys_conv_matrix=p.ccm, storage="sparse")


def galactic_counterpart(p, interpolation="overlap"):
    """The Galactic response of the same DRM and attitude bins (comptonsky.response.galactic)."""
    avg = p.table.averaged_samples()
    rot = nearest_rotations(avg.x, avg.z)
    live = np.asarray(p.table["exposure"], dtype=float)
    bins = AttitudeBins(rotations=rot, zenith=rot[:, :, 2], horizon_deg=np.full(len(live), 180.0),
                        livetime=live)
    det = DetectorResponse.from_dense(p.contents)
    return det, bins, galactic_response(det, bins, NSIDE, occultation=False,
                                        interpolation=interpolation, progress=False)


def test_joint_fit_with_a_galactic_dataset(problem, tmp_path):
    p = problem
    _, _, rgal = galactic_counterpart(p)
    axes = Axes([HealpixAxis(nside=NSIDE, coordsys="galactic", label="NuLambda"),
                 p.axes["Ei"], p.axes["Em"], p.axes["Phi"],
                 HealpixAxis(nside=NSIDE, coordsys="galactic", label="PsiChi")])
    rsp = Histogram(axes, contents=rgal, unit="cm2 s")
    data_axes = Axes([axes["Em"], axes["Phi"], axes["PsiChi"]])
    eps = np.einsum("je,jekpq->kpq", p.sky.reshape(-1, 1) * 4 * np.pi / 48, rgal)
    rng = np.random.default_rng(4)
    bkg = Histogram(data_axes, contents=np.full(data_axes.nbins, eps.mean() * 0.3))
    event = Histogram(data_axes, contents=rng.poisson(eps + bkg.contents).astype(float))
    gal = DataIF_COSI_DC2.load("gal", event, {"albedo": bkg}, rsp)
    local = Histogram(Axes([*data_axes[:2], p.event.axes["PsiChi"]]), contents=event.contents)
    with pytest.raises(AxisMismatchError, match="PsiChi"):  # a local histogram, Galactic CDS
        DataIF_COSI_DC2.load("gal", local, {}, rsp)
    imdec = fit([gal, p.ds], tmp_path, "RL", iterations=5, accel=True)
    logls = [sum(r["log-likelihood"]) for r in imdec.results]
    assert len(imdec.results[-1]["log-likelihood"]) == 2 and logls[-1] > logls[0]
    data = JointData([gal, p.ds])
    np.testing.assert_allclose(data.exposure, gal.response.exposure + p.ds.response.exposure)


def test_expectations_agree_with_the_galactic_engine(problem):
    """Same DRM and attitude bins through both paths, a smooth sky: per (Em, Phi) and in the
    Galactic CDS the expectations agree within the interpolation differences (bilinear in ν and
    no PsiChi regridding here; nearest ν and PsiChi pushed to the Galactic grid there)."""
    p = problem
    det, bins, rgal = galactic_counterpart(p)
    lam = p.sky.reshape(-1, 1) * 4 * np.pi / 48
    eps_gal = np.einsum("je,jekpq->kpq", lam, rgal)[0]  # (Phi, PsiChi_gal)
    eps_det = p.op.forward(p.sky).reshape(p.op.data_shape)[:, 0]  # (S, Phi, PsiChi_loc)
    rel_total = abs(eps_det.sum() / eps_gal.sum() - 1)
    per_phi = np.abs(eps_det.sum(axis=(0, 2)) / eps_gal.sum(axis=1) - 1)
    carried = carry_local_cds(lambda t: eps_det[t] / bins.livetime[t], bins, NSIDE, NSIDE)
    l1 = np.abs(carried - eps_gal).sum() / eps_gal.sum()
    print(f"total {rel_total:.2e}, per Phi max {per_phi.max():.2e}, Galactic CDS L1 {l1:.2e}")
    assert rel_total < 0.015  # measured 0.93 %
    assert per_phi.max() < 0.015  # 0.94 %
    assert l1 < 0.04  # 2.5 %


def test_cross_validation_on_the_occupied_bins(problem, tmp_path):
    p = problem
    copy = dataset_with_counts(p.ds, p.ds.counts * 0 + np.round(p.ds.counts / 2), 0.5)
    assert copy.response is p.ds.response and copy.counts.sum() < p.ds.counts.sum()
    assert copy.background("albedo").sum() == pytest.approx(0.5 * p.bkg.contents.sum())
    imdec = fit([p.ds], tmp_path, "RL", iterations=30, accel=True, overrides=(
        "deconvolution:parameter:stopping_criteria:statistics = cross-validation",
        "deconvolution:parameter:stopping_criteria:patience = 2"))
    assert 1 <= imdec.algorithm.cross_validation["best_iteration"] <= 30


def test_cosipy_03_flat_rl_parameters(caplog):
    from comptonsky.config import Parameters

    flat = {"deconvolution": {"algorithm": "RL", "parameter": {
        "iteration_max": 3, "acceleration": True, "alpha_max": 10.0,
        "response_weighting": True, "response_weighting_index": 0.5,
        "smoothing": True, "smoothing_FWHM": {"value": 2.0, "unit": "deg"},
        "background_normalization_optimization": True,
        "background_normalization_range": {"albedo": [0.01, 10.0]},
        "save_results": False, "save_results_directory": "./results"}}}
    with caplog.at_level("INFO", logger="comptonsky.config"):
        p = Parameters(flat, "flat.yml")
    assert "flat parameters" in caplog.text
    pre = "deconvolution:parameter:"
    assert p[pre + "acceleration:activate"] is True and p[pre + "acceleration:alpha_max"] == 10
    assert p[pre + "response_weighting:index"] == 0.5
    assert p[pre + "smoothing:FWHM:value"] == 2.0
    assert p[pre + "background_normalization_optimization:range"] == {"albedo": [0.01, 10.0]}
    assert p[pre + "save_results:activate"] is False
    assert p[pre + "save_results:directory"] == "./results"
    both = {"deconvolution": {"parameter": {"acceleration": {"alpha_max": 2.0},
                                            "alpha_max": 3.0}}}
    with pytest.raises(InvalidParameterError, match="alpha_max"):
        Parameters(both, "both.yml")


def test_time_binned_dataset(problem):
    p = problem
    o = random_orbit(1500)
    edges = np.linspace(o.time[0], o.time[-1], 4) * u.s
    ccm = CoordsysConversionMatrix.time_binning_ccm(p.fdr, o, edges, nside_model=NSIDE,
                                                    earth_occ=False)
    op = detector_frame_response(p.fdr, ccm, dtype=np.float64)
    assert op.data_axes.labels[0] == "Time" and adjointness_test(op) < 1e-13
    counts = np.random.default_rng(2).poisson(op.forward(p.sky).reshape(op.data_shape))
    event = Histogram(op.data_axes, contents=counts.astype(float))
    ds = DataIF_COSI_DC2.load("t", event, {}, p.fdr, coordsys_conv_matrix=ccm,
                              dtype="float64")
    assert adjointness_test(ds.response) < 1e-13
    np.testing.assert_allclose(ds.response.exposure, op.exposure, rtol=1e-12)
    shifted = Histogram(Axes([Axis(edges + 50 * u.s, label="Time"), *op.data_axes[1:]]),
                        contents=counts.astype(float))
    with pytest.raises(AxisMismatchError, match="Time"):
        DataIF_COSI_DC2.load("t", shifted, {}, p.fdr, coordsys_conv_matrix=ccm)


@pytest.mark.parametrize("polarized, unit", [(False, "cm2"), (True, "m2")])
def test_response_columns_stream_the_transposed_response(tmp_path, polarized, unit):
    """Block-by-block columns equal the transpose of the whole response read at once."""
    from comptonsky.response.detector_frame import response_columns

    rng = np.random.default_rng(4)
    axes = list(drm_axes(nside_nu=2, nside_psi=1))
    axes[1] = Axis([400.0, 500.0, 520.0] * u.keV, scale="log", label="Ei")
    if polarized:
        axes.insert(2, Axis([0.0, 90.0, 180.0] * u.deg, label="Pol"))
    axes = Axes(axes)
    contents = rng.uniform(0, 1, tuple(axes.nbins))
    fdr = FullDetectorResponse.open(write_full_detector_response(tmp_path / "r.h5", axes,
                                                                 contents, unit=unit))
    whole = contents.sum(axis=2) if polarized else contents
    whole = whole * (1e4 if unit == "m2" else 1.0)
    n_nu, n_e = whole.shape[:2]
    want = whole.reshape(n_nu * n_e, -1).T
    for block in (1, 5, 64):
        cols, sums = response_columns(fdr, np.float64, block=block)
        assert cols.flags.c_contiguous and cols.dtype == np.float64
        np.testing.assert_allclose(cols, want, rtol=1e-12)
        np.testing.assert_allclose(sums, whole.reshape(n_nu, n_e, -1).sum(axis=2), rtol=1e-12)
    cols32, _ = response_columns(fdr, np.float32)
    assert cols32.dtype == np.float32
    np.testing.assert_allclose(cols32, want, rtol=1e-6)
