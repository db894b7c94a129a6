"""Pixel-space Gaussian smoothing: a symmetric, normalised, non-negative sparse kernel."""

from __future__ import annotations

import healpy as hp
import numpy as np
import pytest
from astropy import units as u

from comptonsky.deconvolution.smoothing import PixelSmoothing, make_smoother
from comptonsky.errors import UnknownChoiceError


@pytest.mark.parametrize("nested", [False, True])
def test_kernel_symmetric_normalised_nonnegative(nested):
    kernel = PixelSmoothing(15 * u.deg, 8, nested=nested).kernel
    assert abs(kernel - kernel.T).max() == 0.0
    np.testing.assert_allclose(np.asarray(kernel.sum(axis=1)).ravel(), 1.0, atol=1e-12)
    np.testing.assert_allclose(np.asarray(kernel.sum(axis=0)).ravel(), 1.0, atol=1e-12)
    assert kernel.data.min() >= 0.0


def test_flat_map_kept_and_total_conserved():
    smoother = PixelSmoothing(20 * u.deg, 8)
    npix = hp.nside2npix(8)
    flat = np.full((npix, 2), 3.0)
    np.testing.assert_allclose(smoother(flat), flat, rtol=1e-12)
    rng = np.random.default_rng(0)
    maps = rng.random((npix, 2))
    np.testing.assert_allclose(smoother(maps).sum(axis=0), maps.sum(axis=0), rtol=1e-12)


def test_width_of_smoothed_point_and_no_ringing():
    nside, fwhm = 32, 20.0
    smoother = PixelSmoothing(fwhm * u.deg, nside)
    npix = hp.nside2npix(nside)
    centre = hp.ang2pix(nside, 0.0, 0.0, lonlat=True)
    point = np.zeros((npix, 1))
    point[centre] = 1.0
    out = smoother(point)[:, 0]
    assert out.min() >= 0.0  # no negative side lobes
    v0 = hp.pix2vec(nside, centre)
    angle = np.arccos(np.clip(np.array(hp.pix2vec(nside, np.arange(npix))).T @ v0, -1, 1))
    sigma = np.radians(fwhm) / np.sqrt(8 * np.log(2))
    # 2-D Gaussian: mean squared angle 2σ² (small-angle); truncation at 4σ lowers it slightly
    assert np.sum(out * angle**2) / out.sum() == pytest.approx(2 * sigma**2, rel=0.1)


def test_ring_and_nested_agree():
    ring = PixelSmoothing(12 * u.deg, 8, nested=False)
    nest = PixelSmoothing(12 * u.deg, 8, nested=True)
    rng = np.random.default_rng(2)
    maps = rng.random(hp.nside2npix(8))
    via_ring = ring(maps[:, None])[:, 0]
    via_nest = hp.reorder(nest(hp.reorder(maps, r2n=True)[:, None])[:, 0], n2r=True)
    np.testing.assert_allclose(via_ring, via_nest, rtol=1e-9)


def test_narrow_kernel_is_identity_and_unknown_method():
    kernel = PixelSmoothing(0.1 * u.deg, 4).kernel
    np.testing.assert_allclose(kernel.toarray(), np.eye(192), atol=1e-12)
    with pytest.raises(UnknownChoiceError, match="'pixel'"):
        make_smoother("gaussian", 5 * u.deg, 4)


def test_rl_with_pixel_smoothing(small_problem, tmp_path):
    from .test_acceleration import loglikes, run

    deconv, _ = run(small_problem, tmp_path, iterations=5, smoothing=True,
                    overrides=["deconvolution:parameter:smoothing:method = pixel"])
    assert isinstance(deconv.algorithm.smoother, PixelSmoothing)
    assert np.all(np.isfinite(loglikes(deconv)))
