"""Galactic responses from a FullDetectorResponse and an orientation (cosipy's
``get_extended_source_response``), the per-block engine, the streaming writer and the CLI."""

from __future__ import annotations

import sys
from pathlib import Path

import astropy.units as u
import healpy as hp
import numpy as np
import pytest
from histpy import Axes, Axis, HealpixAxis, Histogram

from comptonsky import DataIF_COSI_DC2, FullDetectorResponse, SpacecraftFile
from comptonsky.cli import main
from comptonsky.errors import InvalidParameterError
from comptonsky.io.drm import write_full_detector_response
from comptonsky.io.orientation import Orientation
from comptonsky.response.attitude import AttitudeBins
from comptonsky.response.detector import DetectorResponse
from comptonsky.response.extended import (
    get_extended_source_response,
    scatt_map_bins,
    write_extended_source_response,
)
from comptonsky.response.galactic import galactic_response_block, push_tables

from .conftest import reference_file

REF = Path(__file__).parent / "data" / "cosipy_galactic_response_reference.npz"
DENSE = "cosipy-test-data/test_full_detector_response_dense.h5"
SPARSE = "cosipy-test-data/test_full_detector_response.h5"
ORI10 = "cosipy-test-data/20280301_first_10sec.ori"
NSIDE = 2
NPIX = hp.nside2npix(NSIDE)


def _random_rotations(n, seed):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(n, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    w, x, y, z = q.T
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
        np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
        np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1)], 1)


def _det(seed=0, nphi=3):
    rng = np.random.default_rng(seed)
    a = rng.random((NPIX, 1, 2, nphi, NPIX))
    a[a < 0.4] = 0.0
    return a, DetectorResponse.from_dense(a)


def _orientation(n=40, seed=1, altitude=550.0):
    """A tumbling history: random attitudes, zenith = z axis, 1-s live times."""
    rot = _random_rotations(n, seed)
    live = np.ones(n)
    live[-1] = 0.0
    return Orientation(np.arange(n, dtype=float), rot[:, :, 0], rot[:, :, 2],
                       np.full(n, altitude), rot[:, :, 2], live)


def test_block_size_does_not_change_float64_results():
    _, det = _det(1)
    o = _orientation(30, 2)
    for bins, interp in ((scatt_map_bins(o, 1, earth_occ=True), "pull"),
                         (AttitudeBins(_random_rotations(5, 3), _random_rotations(5, 4)[:, :, 2],
                                       np.full(5, 100.0), np.arange(1.0, 6.0)), "overlap")):
        push = push_tables(bins.rotations, NSIDE, NSIDE, interp)
        whole = galactic_response_block(det, bins, np.arange(NPIX), NSIDE, push=push,
                                        interpolation=interp)
        assert whole.dtype == np.float64 and whole.shape == (NPIX, 1, 2, 3, NPIX)
        assert whole.max() > 0
        for size in (1, 5, 17):
            parts = np.concatenate([
                galactic_response_block(det, bins, np.arange(b, min(NPIX, b + size)), NSIDE,
                                        interpolation=interp)
                for b in range(0, NPIX, size)])
            np.testing.assert_allclose(parts, whole, rtol=1e-12, atol=0)
        # any order of pixels: each row depends on its own pixel only
        perm = np.random.default_rng(0).permutation(NPIX)
        np.testing.assert_allclose(
            galactic_response_block(det, bins, perm, NSIDE, push=push, interpolation=interp),
            whole[perm], rtol=1e-12, atol=0)


@pytest.mark.parametrize("interp", ["overlap", "nearest", "bilinear"])
def test_sum_over_cds_is_livetime_weighted_effective_area_along_the_track(interp):
    a, det = _det(2)
    area = a.astype(np.float32).astype(np.float64).sum(axis=(1, 2, 3, 4))
    rng = np.random.default_rng(5)
    t, ns = 4, 30  # random attitudes (no ties on pixel boundaries), samples with own zeniths
    bins = AttitudeBins(_random_rotations(t, 6), np.zeros((t, 3)), np.zeros(t), np.zeros(t),
                        sample_bin=rng.integers(0, t, ns),
                        sample_zenith=_random_rotations(ns, 7)[:, :, 2],
                        sample_horizon_deg=rng.uniform(80.0, 120.0, ns),
                        sample_livetime=rng.uniform(0.5, 2.0, ns))
    bins.livetime = np.bincount(bins.sample_bin, weights=bins.sample_livetime, minlength=t)
    r = galactic_response_block(det, bins, np.arange(NPIX), NSIDE, interpolation=interp)
    # slow reference: per sample, the nearest ν of the pixel centre in that bin's attitude,
    # times the sample's live time when the pixel is above its horizon
    n = np.stack(hp.pix2vec(NSIDE, np.arange(NPIX)), axis=-1)
    expected = np.zeros(NPIX)
    for s in range(len(bins.sample_bin)):
        rot = bins.rotations[bins.sample_bin[s]]
        for j in range(NPIX):
            seen = n[j] @ bins.sample_zenith[s] > np.cos(np.radians(bins.sample_horizon_deg[s]))
            if seen:
                nu = hp.vec2pix(NSIDE, *(rot.T @ n[j]))
                expected[j] += bins.sample_livetime[s] * area[nu]
    # overlap shares are exact sixteenths; bilinear weights are float32 (sum 1 to ~1e-7)
    np.testing.assert_allclose(r.sum(axis=(1, 2, 3, 4)), expected,
                               rtol=1e-6 if interp == "bilinear" else 1e-9)
    assert np.all(expected > 0)


def test_earth_occulted_directions_get_zero():
    _, det = _det(3)
    n = 12
    rot = np.broadcast_to(np.eye(3), (n, 3, 3))
    zen = np.tile([0.0, 0.0, 1.0], (n, 1))
    live = np.ones(n)
    live[-1] = 0.0
    o = Orientation(np.arange(n, dtype=float), rot[:, :, 0], rot[:, :, 2], np.full(n, 550.0),
                    zen, live)
    bins = scatt_map_bins(o, 1, earth_occ=True)
    r = galactic_response_block(det, bins, np.arange(NPIX), NSIDE, interpolation="nearest")
    horizon = 180.0 - np.degrees(np.arcsin(6378.0 / (6378.0 + 550.0)))
    theta = np.degrees(hp.pix2ang(NSIDE, np.arange(NPIX))[0])
    hidden = theta >= horizon
    assert hidden.any() and (~hidden).any()
    assert np.all(r[hidden] == 0.0)
    assert np.all(r[~hidden].sum(axis=(1, 2, 3, 4)) > 0)
    r_free = galactic_response_block(det, scatt_map_bins(o, 1, earth_occ=False),
                                     np.arange(NPIX), NSIDE, interpolation="nearest",
                                     occultation=False)
    np.testing.assert_allclose(r[~hidden], r_free[~hidden], rtol=1e-12)


def _ties(fdr, bins, nside_image):
    """Sky pixels whose centre, in some attitude bin, lies on a NuLambda pixel boundary (a tie:
    either pixel is right)."""
    n = np.stack(hp.pix2vec(nside_image, np.arange(hp.nside2npix(nside_image))), axis=-1)
    loc = np.einsum("tji,pj->tpi", bins.rotations, n)
    pix = hp.vec2pix(fdr.nside, loc[..., 0], loc[..., 1], loc[..., 2])
    out = np.zeros(len(n), bool)
    for eps in ([1e-9, 0, 0], [0, 1e-9, 0], [0, 0, 1e-9], [-1e-9, 0, 0], [0, -1e-9, 0]):
        m = loc + np.array(eps)
        moved = hp.vec2pix(fdr.nside, m[..., 0], m[..., 1], m[..., 2])
        out |= np.any(moved != pix, axis=0)
    return out


def test_agrees_with_cosipy_get_extended_source_response(tmp_path):
    ref = np.load(REF)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    from make_cosipy_detector_fixtures import write_ori

    write_ori(tmp_path / "orbit.ori", ref["orbit_rows"])
    oris = {"ori10s": SpacecraftFile.parse_from_file(reference_file(ORI10)),
            "orbit": SpacecraftFile.parse_from_file(tmp_path / "orbit.ori")}
    with FullDetectorResponse.open(reference_file(DENSE)) as fdr:
        for case in ref["cases"]:
            c = str(case)
            ni = int(ref[f"{c}/nside_image"]) or None
            ns = int(ref[f"{c}/nside_scatt_map"]) or None
            ori = oris[str(ref[f"{c}/orientation"])]
            occ = bool(ref[f"{c}/earth_occ"])
            h = fdr.get_extended_source_response(ori, nside_image=ni, nside_scatt_map=ns,
                                                 Earth_occ=occ, progress=False)
            assert list(h.axes.labels) == ["NuLambda", "Ei", "Em", "Phi", "PsiChi"]
            assert h.unit == u.cm**2 * u.s
            assert h.shape == tuple(ref[f"{c}/shape"])
            vals = h.contents.value
            tie = _ties(fdr, scatt_map_bins(ori, ns or fdr.nside), ni or fdr.nside)
            idx = ref[f"{c}/index"]
            ok = ~tie[np.unravel_index(idx, vals.shape)[0]]
            got, want = vals.ravel()[idx], ref[f"{c}/value"]
            # away from ties: the same numbers (float32 storage of the reference: ~1e-7)
            np.testing.assert_allclose(got[ok], want[ok], rtol=1e-6)
            # at ties (the pixel centre on a NuLambda boundary) either pixel is right; they
            # are rare among the entries
            assert np.mean(np.abs(got / want - 1) <= 0.01) > 0.97
            ps = ref[f"{c}/pixel_sum"]
            np.testing.assert_allclose(vals.reshape(len(ps), -1).sum(axis=1)[~tie], ps[~tie],
                                       rtol=1e-6)


def test_sparse_and_dense_files_and_the_streamed_file_agree(tmp_path):
    ori = SpacecraftFile.parse_from_file(reference_file(ORI10))
    with FullDetectorResponse.open(reference_file(DENSE)) as d, \
            FullDetectorResponse.open(reference_file(SPARSE)) as s:
        hd = get_extended_source_response(d, ori, progress=False, dtype="float64")
        hs = s.get_extended_source_response(ori, progress=False)
        np.testing.assert_allclose(hs.contents.value, hd.contents.value, rtol=1e-12)
        path = write_extended_source_response(tmp_path / "psr.h5", s, ori, block=5,
                                              dtype="float64", progress=False)
    h = Histogram.open(path)
    assert list(h.axes.labels) == ["NuLambda", "Ei", "Em", "Phi", "PsiChi"]
    assert h.unit == u.cm**2 * u.s
    assert h.axes["NuLambda"].coordsys.name == "galactic"
    assert h.axes["PsiChi"].coordsys.name == "galactic"
    assert h.axes["Ei"].axis_scale == "log"
    np.testing.assert_allclose(h.axes["Ei"].edges.value, hd.axes["Ei"].edges.value)
    np.testing.assert_allclose(h.contents.value, hd.contents.value, rtol=1e-12)
    ev = Histogram([h.axes["Em"], h.axes["Phi"], h.axes["PsiChi"]],
                   contents=np.ones(h.shape[2:]))
    ds = DataIF_COSI_DC2.load("galactic", ev, {"bkg": ev}, str(path))
    assert ds is not None


def test_errors_before_work(tmp_path):
    ori = _orientation(5)
    with FullDetectorResponse.open(reference_file(DENSE)) as fdr:
        with pytest.raises(InvalidParameterError, match="coordsys"):
            fdr.get_extended_source_response(ori, coordsys="icrs")
        with pytest.raises(InvalidParameterError, match="power of 2"):
            fdr.get_extended_source_response(ori, nside_image=3)
        with pytest.raises(InvalidParameterError, match="method"):
            fdr.get_extended_source_response(ori, method="magic")
    axes = Axes([HealpixAxis(nside=1, coordsys="spacecraftframe", label="NuLambda"),
                 Axis([100.0, 900.0] * u.keV, scale="log", label="Ei"),
                 Axis([0.0, 90.0, 180.0] * u.deg, label="Pol"),
                 Axis([100.0, 900.0] * u.keV, scale="log", label="Em"),
                 Axis([0.0, 180.0] * u.deg, label="Phi"),
                 HealpixAxis(nside=1, coordsys="spacecraftframe", label="PsiChi")])
    write_full_detector_response(tmp_path / "pol.h5", axes, np.ones(axes.nbins))
    with FullDetectorResponse.open(tmp_path / "pol.h5") as fdr:
        with pytest.raises(InvalidParameterError, match="polarization"):
            fdr.get_extended_source_response(ori)


def test_cli_round_trip(tmp_path, capsys):
    drm, ori = reference_file(SPARSE), reference_file(ORI10)
    out = tmp_path / "psr.h5"
    assert main(["response", "galactic", "--drm", str(drm), "--ori", str(ori), "--nside", "2",
                 "--no-earth-occ", "--output", str(out), "--no-progress"]) == 0
    assert "wrote" in capsys.readouterr().out
    h = Histogram.open(out)
    assert h.shape == (48, 10, 10, 30, 12) and h.contents.dtype == np.float32
    with FullDetectorResponse.open(drm) as fdr:
        ref = fdr.get_extended_source_response(SpacecraftFile.parse_from_file(ori),
                                               nside_image=2, Earth_occ=False, progress=False)
    np.testing.assert_allclose(h.contents.value, ref.contents.value, rtol=1e-5,
                               atol=1e-6 * ref.contents.value.max())
    # errors, before any work: exit status 1 and a one-line message
    assert main(["response", "galactic", "--drm", str(drm), "--ori", str(ori), "--output",
                 str(out), "--no-progress"]) == 1  # exists
    assert "exists" in capsys.readouterr().err
    assert main(["response", "galactic", "--drm", str(tmp_path / "none.h5"), "--ori", str(ori),
                 "--output", str(tmp_path / "x.h5")]) == 1
    assert "no such file" in capsys.readouterr().err
    assert main(["response", "galactic", "--drm", str(ori), "--ori", str(ori),
                 "--output", str(tmp_path / "x.h5")]) == 1
    assert main(["response", "galactic", "--drm", str(drm), "--ori", str(ori), "--nside", "6",
                 "--output", str(tmp_path / "x.h5")]) == 1
    assert "power of 2" in capsys.readouterr().err
    assert not (tmp_path / "x.h5").exists()


def test_blocks_written_in_any_order_and_missing_pixels_refused(tmp_path):
    from comptonsky.response.extended import extended_response_axes
    from comptonsky.response.galactic import write_response_blocks

    _, det = _det(4)
    bins = AttitudeBins(_random_rotations(3, 8), _random_rotations(3, 9)[:, :, 2],
                        np.full(3, 110.0), np.array([1.0, 2.0, 3.0]))
    with FullDetectorResponse.open(reference_file(DENSE)) as fdr:
        axes = extended_response_axes(fdr, 1)
        det = DetectorResponse.from_full_detector_response(fdr)
    starts = [8, 0, 4]  # blocks arrive out of order (as from workers)
    blocks = [(np.arange(b, b + 4), galactic_response_block(det, bins, np.arange(b, b + 4), 1))
              for b in starts]
    path = write_response_blocks(tmp_path / "r.h5", axes, iter(blocks), dtype="float64")
    whole = galactic_response_block(det, bins, np.arange(12), 1)
    np.testing.assert_array_equal(Histogram.open(path).contents.value, whole)
    with pytest.raises(InvalidParameterError, match="never written"):
        write_response_blocks(tmp_path / "bad.h5", axes, iter(blocks[:2]))
    assert not (tmp_path / "bad.h5").exists()
    with pytest.raises(InvalidParameterError, match="consecutive"):
        write_response_blocks(tmp_path / "bad.h5", axes, iter([(np.array([0, 2]), whole[:2])]))
