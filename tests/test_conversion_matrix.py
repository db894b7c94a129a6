"""CoordsysConversionMatrix: cosipy's matrices, slow references, Earth occultation, files."""

from __future__ import annotations

from pathlib import Path

import astropy.units as u
import healpy as hp
import numpy as np
import pandas as pd
import pytest
import sparse
from histpy import Axes, Axis, HealpixAxis

from comptonsky import (
    CoordsysConversionMatrix,
    FullDetectorResponse,
    SpacecraftAttitudeExposureTable,
    SpacecraftFile,
)
from comptonsky.attitude import ccm_kernels
from comptonsky.attitude.healpix import interp_weights
from comptonsky.attitude.samples import cos_horizon, nearest_rotations
from comptonsky.errors import FileFormatError, InvalidParameterError
from comptonsky.geometry import attitude_matrices, horizon_angle_deg, lonlat_to_vec
from comptonsky.io.drm import write_full_detector_response
from comptonsky.io.orientation import Orientation

from .conftest import reference_file
from .test_exposure_table import generated_ori, random_orbit

REF = Path(__file__).parent / "data" / "cosipy_detector_reference.npz"
ORI10 = "cosipy-test-data/20280301_first_10sec.ori"
SPARSE = "cosipy-test-data/test_full_detector_response.h5"


def ref_dense(z, prefix):
    return sparse.COO(z[f"{prefix}/coords"].astype(np.int64), z[f"{prefix}/data"],
                      shape=tuple(z[f"{prefix}/shape"])).todense()


def axes_drm(tmp_path, nside, scheme="ring"):
    axes = Axes([HealpixAxis(nside=nside, scheme=scheme, coordsys="spacecraftframe",
                             label="NuLambda"),
                 Axis([500.0, 520.0] * u.keV, scale="log", label="Ei"),
                 Axis([500.0, 520.0] * u.keV, scale="log", label="Em"),
                 Axis([0.0, 180.0] * u.deg, label="Phi"),
                 HealpixAxis(nside=1, coordsys="spacecraftframe", label="PsiChi")])
    path = write_full_detector_response(tmp_path / f"drm{nside}{scheme}.h5", axes,
                                        np.zeros(tuple(axes.nbins)))
    return FullDetectorResponse.open(path)


def table_from_reference(z, prefix, nside):
    """A SpacecraftAttitudeExposureTable holding exactly cosipy's columns."""
    n = z[f"{prefix}/num_pointings"]
    cut = np.cumsum(n)[:-1]
    df = pd.DataFrame({
        "scatt_binning_index": z[f"{prefix}/scatt_binning_index"],
        "healpix_index": [tuple(p) for p in z[f"{prefix}/healpix_index"].tolist()],
        "zpointing": np.split(z[f"{prefix}/zpointing"], cut),
        "xpointing": np.split(z[f"{prefix}/xpointing"], cut),
        "zpointing_averaged": list(z[f"{prefix}/zpointing_averaged"]),
        "xpointing_averaged": list(z[f"{prefix}/xpointing_averaged"]),
        "delta_time": np.split(z[f"{prefix}/delta_time"], cut),
        "exposure": z[f"{prefix}/exposure"], "num_pointings": n,
        "bkg_group": z[f"{prefix}/bkg_group"]})
    return SpacecraftAttitudeExposureTable(df, nside=nside, scheme="ring")


def slow_ccm(rot, live, zen, cosh, bins, nbins, nside_model, nest_model, nside_local,
             nest_local, occultation):
    """Obvious loops with healpy: C[s, j, ν] = Σ_t Δt w_ν(A_tᵀ n_j) occ_t(n_j)."""
    npm = hp.nside2npix(nside_model)
    sky = np.array(hp.pix2vec(nside_model, np.arange(npm), nest=nest_model)).T
    out = np.zeros((nbins, npm, hp.nside2npix(nside_local)))
    for t in range(len(live)):
        if bins[t] < 0:
            continue
        for j in range(npm):
            if occultation and sky[j] @ zen[t] < cosh[t]:
                continue
            d = rot[t].T @ sky[j]
            th, ph = hp.vec2ang(d)
            pix, w = hp.get_interp_weights(nside_local, th, ph, nest=nest_local)
            for p, ww in zip(pix[:, 0], w[:, 0]):
                out[bins[t], j, p] += live[t] * ww
    return out


def test_time_matrix_reproduces_cosipy_file():
    ori = SpacecraftFile.parse_from_file(reference_file(ORI10))
    with FullDetectorResponse.open(reference_file(SPARSE)) as fdr:
        t = ori.get_time()
        ccm = CoordsysConversionMatrix.time_binning_ccm(fdr, ori, [t[0].value, t[-1].value] * u.s,
                                                        earth_occ=False)
    ref = CoordsysConversionMatrix.open(reference_file("cosipy-test-data/ccm_time_test.hdf5"))
    assert ccm.binning_method == ref.binning_method == "Time"
    assert ccm.axes == ref.axes and ccm.unit == ref.unit == u.s
    np.testing.assert_allclose(ccm.contents.todense(), ref.contents.todense(), rtol=0,
                               atol=1e-12)


@pytest.mark.parametrize("avg", [0, 1])
def test_scatt_matrix_equals_cosipy_on_its_own_table(avg):
    z = np.load(REF)
    table = SpacecraftAttitudeExposureTable.from_fits(
        reference_file("cosipy-test-data/exposure_table_test_nside1_ring.fits"))
    with FullDetectorResponse.open(reference_file(SPARSE)) as fdr:
        ccm = CoordsysConversionMatrix.spacecraft_attitude_binning_ccm(
            fdr, table, use_averaged_pointing=bool(avg), earth_occ=False)
    assert ccm.binning_method == "ScAtt" and list(ccm.axes.labels) == ["ScAtt", "lb", "NuLambda"]
    np.testing.assert_allclose(ccm.contents.todense(), ref_dense(z, f"ccm10_scatt_avg{avg}"),
                               rtol=0, atol=1e-11)
    with pytest.raises(InvalidParameterError, match="earth_zenith"):  # a cosipy 0.3 table
        CoordsysConversionMatrix.spacecraft_attitude_binning_ccm(fdr, table)


@pytest.mark.parametrize("avg", [0, 1])
def test_scatt_matrix_generated_orbit(tmp_path, avg):
    z = np.load(REF)
    fdr = axes_drm(tmp_path, int(z["gen/nside_drm"]))
    nm = int(z["gen/nside_model"])
    want = ref_dense(z, f"gen_ccm_scatt_avg{avg}")
    # on cosipy's own table the kernel agrees to rounding
    cos_table = table_from_reference(z, "gen_et_ring", int(z["gen/nside_table"]))
    ccm = CoordsysConversionMatrix.spacecraft_attitude_binning_ccm(
        fdr, cos_table, nside_model=nm, use_averaged_pointing=bool(avg), earth_occ=False)
    np.testing.assert_allclose(ccm.contents.todense(), want, rtol=0, atol=1e-9 * want.max())
    # end to end from the .ori: interval midpoints are unit-vector means (cosipy: mean l, b),
    # ~1e-7 rad apart
    table = SpacecraftAttitudeExposureTable.from_orientation(generated_ori(tmp_path), nside=4)
    ccm = CoordsysConversionMatrix.spacecraft_attitude_binning_ccm(
        fdr, table, nside_model=nm, use_averaged_pointing=bool(avg), earth_occ=False)
    np.testing.assert_allclose(ccm.contents.todense(), want, rtol=0, atol=2e-6 * want.max())


def test_time_matrix_generated_orbit(tmp_path):
    z = np.load(REF)
    fdr = axes_drm(tmp_path, int(z["gen/nside_drm"]))
    ccm = CoordsysConversionMatrix.time_binning_ccm(fdr, generated_ori(tmp_path),
                                                    z["gen/time_edges"] * u.s,
                                                    nside_model=int(z["gen/nside_model"]),
                                                    earth_occ=False)
    want = ref_dense(z, "gen_ccm_time")
    np.testing.assert_allclose(ccm.axes["Time"].edges.to_value(u.s), z["gen/time_edges"])
    np.testing.assert_allclose(ccm.contents.todense(), want, rtol=0, atol=1e-8 * want.max())


@pytest.mark.parametrize("nest_model, nest_local", [(False, False), (True, True)])
def test_per_sample_kernel_equals_slow_reference(tmp_path, nest_model, nest_local):
    rng = np.random.default_rng(11)
    n = 60
    z = rng.normal(size=(n, 3))
    x = rng.normal(size=(n, 3))
    rot = attitude_matrices(x, z)
    zen = rng.normal(size=(n, 3))
    zen /= np.linalg.norm(zen, axis=1, keepdims=True)
    alt = rng.uniform(300, 2000, n)
    live = rng.uniform(0, 2, n)
    live[::7] = 0.0
    t = 100.0 + np.arange(n, dtype=float)
    o = Orientation(t, rot[:, :, 0], rot[:, :, 2], alt, zen, live)
    fdr = axes_drm(tmp_path, 2, "nested" if nest_local else "ring")
    edges = np.array([t[0], t[20] + 0.0, t[45], t[-1]])
    ccm = CoordsysConversionMatrix.time_binning_ccm(fdr, o, edges, nside_model=2,
                                                    is_nest_model=nest_model, earth_occ=True)
    bins = np.searchsorted(edges, t[:-1], side="right") - 1
    want = slow_ccm(rot[:-1], live[:-1], zen[:-1], cos_horizon(alt[:-1]), bins, 3, 2,
                    nest_model, 2, nest_local, True)
    np.testing.assert_allclose(ccm.contents.todense(), want, rtol=0, atol=1e-12)


def test_occulted_exposure_band_logic_equals_brute_force():
    rng = np.random.default_rng(3)
    n, nb = 4000, 7
    # bins with tight and with widely spread zeniths (the latter test samples one by one)
    centre = rng.normal(size=(nb, 3))
    spread = np.array([0.01, 0.05, 0.3, 1.0, 3.0, 0.02, 0.2])
    codes = np.sort(rng.integers(0, nb, n))
    zen = centre[codes] + spread[codes, None] * rng.normal(size=(n, 3))
    zen /= np.linalg.norm(zen, axis=1, keepdims=True)
    live = rng.uniform(0, 1, n)
    cosh = cos_horizon(rng.uniform(400, 600, n))
    sky = np.array(hp.pix2vec(8, np.arange(768))).T
    offsets = np.searchsorted(codes, np.arange(nb + 1))
    out = np.zeros((nb, 768))
    ccm_kernels.occulted_exposure(live, zen, cosh, offsets, sky, out)
    vis = (sky @ zen.T) >= cosh[None, :]  # (768, n)
    want = np.stack([(vis[:, codes == s] * live[codes == s]).sum(1) for s in range(nb)])
    np.testing.assert_allclose(out, want, rtol=1e-12, atol=1e-12)


def zenith_orbit(n=600, altitude=550.0, saa=None):
    o = random_orbit(n, seed=9, saa=saa)
    return Orientation(o.time, o.x_axis, o.z_axis, np.full(n, altitude), o.z_axis.copy(),
                       o.livetime)


@pytest.mark.parametrize("avg", [False, True])
def test_earth_occultation_and_exposure_sums(tmp_path, avg):
    o = zenith_orbit()
    fdr = axes_drm(tmp_path, 4)
    table = SpacecraftAttitudeExposureTable.from_orientation(o, nside=8)
    occ = CoordsysConversionMatrix.spacecraft_attitude_binning_ccm(
        fdr, table, nside_model=4, use_averaged_pointing=avg, earth_occ=True).contents.todense()
    free = CoordsysConversionMatrix.spacecraft_attitude_binning_ccm(
        fdr, table, nside_model=4, use_averaged_pointing=avg, earth_occ=False).contents.todense()
    sky = np.array(hp.pix2vec(4, np.arange(192))).T
    cos_h = np.cos(np.radians(horizon_angle_deg(550.0)))
    exposure = table["exposure"].to_numpy()
    np.testing.assert_allclose(free.sum(axis=2), np.repeat(exposure[:, None], 192, 1),
                               rtol=1e-12)  # Σ_ν C = live time of the bin, every direction
    for s in range(len(table)):
        zen = lonlat_to_vec(table["earth_zenith"][s][:, 0], table["earth_zenith"][s][:, 1])
        vis = sky @ zen.T >= cos_h  # (192, k)
        always, never = vis.all(1), ~vis.any(1)
        assert never.any() and always.any()
        np.testing.assert_array_equal(occ[s][never], 0.0)  # behind the Earth: no weight
        np.testing.assert_allclose(occ[s][always].sum(1), exposure[s], rtol=1e-12)
        seen = (vis * table["delta_time"][s][None, :]).sum(1)
        np.testing.assert_allclose(occ[s].sum(1), seen, rtol=1e-12, atol=1e-9)


def test_saa_samples_add_nothing(tmp_path):
    fdr = axes_drm(tmp_path, 2)
    o = zenith_orbit(400, saa=slice(100, 250))
    keep = np.ones(len(o), bool)
    keep[101:250] = False  # drop the zero-live-time interval starts (keep t[100] as an end)
    o2 = Orientation(o.time[keep], o.x_axis[keep], o.z_axis[keep], o.altitude[keep],
                     o.earth_zenith[keep], o.livetime[keep])
    edges = np.array([o.time[0], o.time[300], o.time[-1]])
    a = CoordsysConversionMatrix.time_binning_ccm(fdr, o, edges, nside_model=2).contents
    b = CoordsysConversionMatrix.time_binning_ccm(fdr, o2, edges, nside_model=2).contents
    np.testing.assert_allclose(a.todense(), b.todense(), rtol=1e-12, atol=1e-12)


def test_nested_model_is_a_permutation_of_ring(tmp_path):
    fdr = axes_drm(tmp_path, 2)
    o = zenith_orbit(300)
    ring = SpacecraftAttitudeExposureTable.from_orientation(o, nside=2)
    r = CoordsysConversionMatrix.spacecraft_attitude_binning_ccm(fdr, ring, nside_model=4,
                                                                 scheme_model="ring")
    n = CoordsysConversionMatrix.spacecraft_attitude_binning_ccm(fdr, ring, nside_model=4,
                                                                 scheme_model="nested")
    assert str(n.axes["lb"].scheme).lower().startswith("nest")
    perm = hp.nest2ring(4, np.arange(192))
    np.testing.assert_allclose(n.contents.todense(), r.contents.todense()[:, perm, :],
                               rtol=1e-12, atol=1e-12)


def test_nearest_rotation_and_interp_kernels():
    rng = np.random.default_rng(5)
    x, z = rng.normal(size=(200, 3)), rng.normal(size=(200, 3))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    m = np.stack([x, np.cross(z, x), z], axis=-1)
    u_, _, vt = np.linalg.svd(m)
    want = u_ @ vt
    want[np.linalg.det(want) < 0] *= np.nan  # not defined for left-handed inputs
    got = nearest_rotations(x, z)
    ok = ~np.isnan(want[:, 0, 0])
    np.testing.assert_allclose(got[ok], want[ok], atol=1e-12)
    v = rng.normal(size=(5000, 3))
    for nside, nest in ((1, False), (8, True), (32, False)):
        pix, w = interp_weights(nside, v, nest)
        th, ph = hp.vec2ang(v)
        rp, rw = hp.get_interp_weights(nside, th, ph, nest=nest)
        np.testing.assert_array_equal(pix, rp.T)
        np.testing.assert_allclose(w, rw.T, atol=1e-11)


def test_write_open_round_trip(tmp_path):
    fdr = axes_drm(tmp_path, 2)
    table = SpacecraftAttitudeExposureTable.from_orientation(zenith_orbit(200), nside=2)
    ccm = CoordsysConversionMatrix.spacecraft_attitude_binning_ccm(fdr, table)
    path = ccm.write(tmp_path / "ccm.hdf5")
    back = CoordsysConversionMatrix.open(path)
    assert isinstance(back, CoordsysConversionMatrix) and back.binning_method == "ScAtt"
    assert back.axes == ccm.axes and back.unit == u.s
    np.testing.assert_array_equal(back.contents.todense(), ccm.contents.todense())
    with pytest.raises(FileExistsError):
        ccm.write(path)
    with pytest.raises(FileFormatError, match="no such file"):
        CoordsysConversionMatrix.open(tmp_path / "none.hdf5")
    other = reference_file("test_event_histogram_localCDS.hdf5")
    with pytest.raises(FileFormatError, match="axes"):
        CoordsysConversionMatrix.open(other)


def test_arguments(tmp_path):
    fdr = axes_drm(tmp_path, 1)
    o = zenith_orbit(50)
    with pytest.raises(InvalidParameterError, match="increasing"):
        CoordsysConversionMatrix.time_binning_ccm(fdr, o, [o.time[10], o.time[5]])
    with pytest.raises(InvalidParameterError, match="SpacecraftAttitudeExposureTable"):
        CoordsysConversionMatrix.spacecraft_attitude_binning_ccm(fdr, pd.DataFrame())
    with pytest.raises(InvalidParameterError, match="power of 2"):
        CoordsysConversionMatrix.time_binning_ccm(fdr, o, [o.time[0], o.time[9]], nside_model=3)


def vector_slow_ccm(rot, live, zen, cosh, bins, nbins, nside_model, nside_local, occultation):
    """The interval-by-interval sum with healpy, vectorised over the sky pixels."""
    npm = hp.nside2npix(nside_model)
    sky = np.array(hp.pix2vec(nside_model, np.arange(npm))).T
    out = np.zeros((nbins, npm, hp.nside2npix(nside_local)))
    rows = np.repeat(np.arange(npm), 4)
    for t in range(len(live)):
        if bins[t] < 0:
            continue
        vis = (sky @ zen[t] >= cosh[t]) if occultation else np.ones(npm, bool)
        d = sky @ rot[t]  # rot[t].T @ n_j for every j
        th, ph = hp.vec2ang(d)
        pix, w = hp.get_interp_weights(nside_local, th, ph)
        np.add.at(out[bins[t]], (rows, pix.T.reshape(-1)),
                  (live[t] * w.T * vis[:, None]).reshape(-1))
    return out


def rocking_orientation(n, seed, period=200.0, amplitude_deg=1.0, repeat=None):
    """1-s attitudes rocking back and forth (fine pixels are revisited), or, with ``repeat``,
    cycling through ``repeat`` random attitudes; random zeniths, altitudes and live times."""
    rng = np.random.default_rng(seed)
    t = 1000.0 + np.arange(n, dtype=float)
    if repeat:
        base = attitude_matrices(rng.normal(size=(repeat, 3)), rng.normal(size=(repeat, 3)))
        rot = base[np.arange(n) % repeat]
    else:
        a = np.radians(amplitude_deg) * np.sin(2 * np.pi * t / period) + 1e-6 * t
        b = np.radians(30.0) + 0.3 * np.radians(amplitude_deg) * np.cos(2 * np.pi * t / 23.0)
        z = np.stack([np.cos(a) * np.cos(b), np.sin(a) * np.cos(b), np.sin(b)], -1)
        rot = attitude_matrices(np.cross(z, [0.0, 0.0, 1.0]), z)
    zen = rot[:, :, 2] + 0.8 * rng.normal(size=(n, 3))
    zen /= np.linalg.norm(zen, axis=1, keepdims=True)
    alt = rng.uniform(400, 700, n)
    live = rng.uniform(0.5, 1.0, n)
    live[rng.random(n) < 0.1] = 0.0
    return Orientation(t, rot[:, :, 0], rot[:, :, 2], alt, zen, live), rot


@pytest.mark.parametrize("attitude_nside", [None, 64, 8192])
def test_grouped_matrix_is_exact_for_repeated_attitudes(tmp_path, attitude_nside):
    """Intervals sharing an attitude bit for bit: grouping them changes nothing (to rounding)."""
    o, rot = rocking_orientation(400, seed=5, repeat=7)
    fdr = axes_drm(tmp_path, 4)
    edges = np.array([o.time[0], o.time[150], o.time[300], o.time[-1]])
    ccm = CoordsysConversionMatrix.time_binning_ccm(fdr, o, edges, nside_model=4,
                                                    earth_occ=True,
                                                    attitude_nside=attitude_nside)
    bins = np.searchsorted(edges, o.time[:-1], side="right") - 1
    want = vector_slow_ccm(rot[:-1], o.livetime[:-1], o.zenith[:-1], cos_horizon(o.altitude[:-1]),
                           bins, 3, 4, 4, True)
    np.testing.assert_allclose(ccm.contents.todense(), want, rtol=0, atol=1e-12 * want.max())


def test_grouped_matrix_error_at_a_fine_attitude_grid(tmp_path):
    """Distinct 1-s attitudes: exact without grouping; grouped on a fine grid, close, with the
    same live time per sky pixel (Σ_ν C is exact for any grouping)."""
    from comptonsky.attitude.conversion_matrix import attitude_groups
    from comptonsky.attitude.samples import split_by_intervals

    o, rot = rocking_orientation(3000, seed=8)
    fdr = axes_drm(tmp_path, 4)
    edges = np.array([o.time[0], o.time[1200], o.time[-1]])
    bins = np.searchsorted(edges, o.time[:-1], side="right") - 1
    want = vector_slow_ccm(rot[:-1], o.livetime[:-1], o.zenith[:-1], cos_horizon(o.altitude[:-1]),
                           bins, 2, 4, 4, True)

    def ccm(an):
        return CoordsysConversionMatrix.time_binning_ccm(
            fdr, o, edges, nside_model=4, earth_occ=True, attitude_nside=an).contents.todense()

    np.testing.assert_allclose(ccm(None), want, rtol=0, atol=1e-12 * want.max())
    s = split_by_intervals(o, edges[:-1], edges[1:])
    offsets = np.searchsorted(s.bin, np.arange(3))
    errors = {}
    for an, most in ((256, 0.1), (2048, 0.7)):
        _, gstart, _ = attitude_groups(s, offsets, an)
        assert len(gstart) - 1 < most * len(s)  # the grid does group the intervals
        got = ccm(an)
        np.testing.assert_allclose(got.sum(axis=2), want.sum(axis=2), rtol=1e-12, atol=1e-9)
        errors[an] = np.abs(got - want).max() / want.max()
    assert 0 < errors[2048] < 2e-4 and errors[2048] < errors[256] < 5e-3


def test_grouped_scatt_matrix_close_to_interval_by_interval(tmp_path):
    o, _ = rocking_orientation(3000, seed=2)
    table = SpacecraftAttitudeExposureTable.from_orientation(o, nside=8)
    fdr = axes_drm(tmp_path, 4)
    exact, grouped = (CoordsysConversionMatrix.spacecraft_attitude_binning_ccm(
        fdr, table, nside_model=4, use_averaged_pointing=False, earth_occ=True,
        attitude_nside=an).contents.todense() for an in (None, 8192))
    np.testing.assert_allclose(grouped, exact, rtol=0, atol=1e-5 * exact.max())
    for bad in (3, 0, 16384):
        with pytest.raises(InvalidParameterError, match="attitude_nside"):
            CoordsysConversionMatrix.spacecraft_attitude_binning_ccm(
                fdr, table, nside_model=4, attitude_nside=bad)
