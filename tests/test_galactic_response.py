"""The detector-frame → Galactic response engine on small, exactly checkable cases."""

from __future__ import annotations

import healpy as hp
import numpy as np
import pytest
from histpy import Axis, HealpixAxis, Histogram

from comptonsky.errors import AxisMismatchError, InvalidParameterError
from comptonsky.response.galactic import (
    AttitudeBins,
    DetectorResponse,
    carry_local_cds,
    galactic_exposure,
    galactic_response,
    write_galactic_response,
)

NSIDE = 2
NPIX = hp.nside2npix(NSIDE)


def _random_det(seed=0, nphi=3):
    rng = np.random.default_rng(seed)
    a = rng.random((NPIX, 1, 1, nphi, NPIX))
    a[a < 0.5] = 0.0
    return a


def _bins(rotations, livetime, zenith=None, horizon=180.0):
    rotations = np.asarray(rotations, dtype=float)
    n = len(rotations)
    if zenith is None:
        zenith = rotations[:, :, 2]
    return AttitudeBins(rotations, np.asarray(zenith, float), np.full(n, horizon),
                        np.asarray(livetime, float))


def _rot_z(deg):
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def test_identity_attitude_reproduces_detector_response():
    a = _random_det()
    det = DetectorResponse.from_dense(a)
    np.testing.assert_allclose(det.to_dense(), a, rtol=1e-6)
    r = galactic_response(det, _bins([np.eye(3)], [10.0]), occultation=False,
                          interpolation="nearest", progress=False)
    np.testing.assert_allclose(r, 10.0 * a, rtol=1e-6)
    # bilinear pushing at pixel centres and overlap sharing are the identity too, and so is a
    # sky pixel represented by its sub-pixels
    for kw in (dict(interpolation="bilinear"), dict(interpolation="overlap"),
               dict(interpolation="overlap", sky_oversample=1)):
        r2 = galactic_response(det, _bins([np.eye(3)], [10.0]), occultation=False,
                               progress=False, **kw)
        np.testing.assert_allclose(r2, 10.0 * a, rtol=1e-5, atol=1e-6)


def test_quarter_turn_permutes_pixels():
    # HEALPix RING grids are symmetric under 90° turns about z: the response must be permuted
    a = _random_det(1)
    det = DetectorResponse.from_dense(a)
    rot = _rot_z(90.0)
    v = np.stack(hp.pix2vec(NSIDE, np.arange(NPIX)), axis=-1)
    perm = hp.vec2pix(NSIDE, *(v @ rot).T)  # local pixel of each Galactic pixel: R^T n
    expected = 2.0 * a[perm][..., perm]
    for interp in ("nearest", "overlap"):
        r = galactic_response(det, _bins([rot], [2.0]), occultation=False,
                              interpolation=interp, progress=False)
        np.testing.assert_allclose(r, expected, rtol=1e-6, atol=1e-7)


def test_sum_over_attitudes_and_exposure():
    a = _random_det(2)
    det = DetectorResponse.from_dense(a)
    rots = [np.eye(3), _rot_z(90.0), _rot_z(180.0)]
    live = [1.0, 2.0, 3.0]
    r = galactic_response(det, _bins(rots, live), occultation=False, progress=False)
    parts = sum(galactic_response(det, _bins([q], [w]), occultation=False, progress=False)
                for q, w in zip(rots, live))
    np.testing.assert_allclose(r, parts, rtol=1e-5)
    expo = galactic_exposure(det, _bins(rots, live), NSIDE, occultation=False)
    np.testing.assert_allclose(expo, r.sum(axis=(1, 2, 3, 4)), rtol=1e-5)


def test_occultation_zeroes_pixels_behind_the_earth():
    a = _random_det(3)
    det = DetectorResponse.from_dense(a)
    zen = np.array([[0.0, 0.0, 1.0]])
    r = galactic_response(det, _bins([np.eye(3)], [1.0], zenith=zen, horizon=100.0),
                          progress=False)
    v = np.stack(hp.pix2vec(NSIDE, np.arange(NPIX)), axis=-1)
    # children at 2 nside decide the visible fraction; fully hidden pixels give 0
    below = v[:, 2] < -0.6
    assert np.all(r[below] == 0.0)
    above = v[:, 2] > 0.0
    np.testing.assert_allclose(r[above], a[above], rtol=1e-6, atol=1e-9)


def test_write_and_open_with_histpy(tmp_path):
    a = _random_det(4)
    det = DetectorResponse.from_dense(a)
    bins = _bins([np.eye(3), _rot_z(90.0)], [1.5, 2.5])
    path = write_galactic_response(tmp_path / "r.h5", det, bins, [509.0, 513.0],
                                   [509.0, 513.0], [0.0, 60.0, 120.0, 180.0], block=7,
                                   progress=False)
    h = Histogram.open(path)
    assert list(h.axes.labels) == ["NuLambda", "Ei", "Em", "Phi", "PsiChi"]
    assert h.unit == "cm2 s"
    assert h.axes["NuLambda"].nside == NSIDE and h.axes["PsiChi"].coordsys.name == "galactic"
    np.testing.assert_allclose(h.axes["Phi"].edges.value, [0, 60, 120, 180])
    np.testing.assert_allclose(h.contents.value,
                               galactic_response(det, bins, progress=False), rtol=1e-6)
    with pytest.raises(AxisMismatchError):
        write_galactic_response(tmp_path / "bad.h5", det, bins, [509.0, 513.0],
                                [509.0, 513.0], [0.0, 90.0, 180.0], progress=False)


def test_from_histogram_detector_frame():
    a = _random_det(5)
    axes = [HealpixAxis(nside=NSIDE, label="NuLambda"), Axis([509.0, 513.0], label="Ei"),
            Axis([509.0, 513.0], label="Em"), Axis([0.0, 60.0, 120.0, 180.0], label="Phi"),
            HealpixAxis(nside=NSIDE, label="PsiChi")]
    h = Histogram(axes, contents=a, unit="m2")
    det = DetectorResponse.from_histogram(h)
    np.testing.assert_allclose(det.to_dense(), a * 1e4, rtol=1e-6)
    with pytest.raises(AxisMismatchError):
        DetectorResponse.from_histogram(Histogram(axes[:4], contents=a[..., 0]))


def test_carry_local_cds_conserves_counts():
    rng = np.random.default_rng(6)
    rate = rng.random((3, NPIX))
    bins = _bins([np.eye(3), _rot_z(37.0), _rot_z(200.0)], [1.0, 2.0, 4.0])
    out = carry_local_cds(rate, bins, NSIDE, NSIDE)
    np.testing.assert_allclose(out.sum(axis=1), rate.sum(axis=1) * 7.0, rtol=1e-6)
    ident = carry_local_cds(rate, _bins([np.eye(3)], [1.0]), NSIDE, NSIDE,
                            interpolation="nearest")
    np.testing.assert_allclose(ident, rate)


def test_from_drm_file_layout(tmp_path):
    # a small file in the COSI full-detector-response layout: DRM/{AXES, COUNTS, EFF_AREA}
    import h5py
    from histpy import Axes

    rng = np.random.default_rng(7)
    axes = Axes([HealpixAxis(nside=NSIDE, label="NuLambda"),
                 Axis([500.0, 510.0, 520.0], label="Ei", unit="keV"),
                 Axis([500.0, 510.0, 520.0], label="Em", unit="keV"),
                 Axis([0.0, 90.0, 180.0], label="Phi", unit="deg"),
                 HealpixAxis(nside=NSIDE, label="PsiChi"),
                 Axis([0.0, 1.0, 2.0], label="Dist", unit="cm")])
    counts = rng.random(axes.shape)
    eff = np.array([2.0, 3.0])
    with h5py.File(tmp_path / "drm.h5", "w") as f:
        g = f.create_group("DRM")
        g.attrs["VERSION"] = 2
        g.attrs["UNIT"] = "cm2"
        axes.write(g.create_group("AXES"))
        g.create_dataset("COUNTS", data=counts)
        g.create_dataset("EFF_AREA", data=eff)
    det = DetectorResponse.from_drm_file(tmp_path / "drm.h5")
    expected = (counts * eff[None, :, None, None, None, None]).sum(axis=5)
    assert det.shape_k == (2, 2, 2)
    np.testing.assert_allclose(det.to_dense(), expected, rtol=1e-6)


def test_row_sums_and_weighted_rows_match_dense():
    a = _random_det(seed=4)
    a[3] = 0.0  # an empty row
    det = DetectorResponse.from_dense(a)
    np.testing.assert_allclose(det.total(), a.sum(axis=(1, 2, 3, 4)), rtol=1e-6)
    assert det.total()[3] == 0.0
    w = np.random.default_rng(5).random(NPIX)
    np.testing.assert_allclose(det.weighted_row_sum(w),
                               np.tensordot(w, a, axes=(0, 0)).reshape(-1, NPIX), rtol=1e-6)
    with pytest.raises(InvalidParameterError, match="one per ν"):
        det.weighted_row_sum(w[:-1])


def test_row_blocks_assemble_the_same_response():
    a = _random_det(seed=6)
    whole = DetectorResponse.from_dense(a)
    blocks = [(np.diff(whole.indptr[:21]), whole.col_p[:whole.indptr[20]],
               whole.col_k[:whole.indptr[20]], whole.val[:whole.indptr[20]]),
              (np.diff(whole.indptr[20:]), whole.col_p[whole.indptr[20]:],
               whole.col_k[whole.indptr[20]:], whole.val[whole.indptr[20]:])]
    joined = DetectorResponse.from_row_blocks(blocks, NSIDE, NSIDE, (1, 1, 3))
    assert blocks == []  # consumed while joining
    np.testing.assert_array_equal(joined.to_dense(), whole.to_dense())
    with pytest.raises(InvalidParameterError, match="ν rows"):
        DetectorResponse.from_row_blocks([], NSIDE, NSIDE, (1, 1, 3))
