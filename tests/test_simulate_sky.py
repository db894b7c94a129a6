"""Sky models: fluxes, truth maps and exact sampling; presets."""

from __future__ import annotations

import healpy as hp
import numpy as np
import pytest

from comptonsky.errors import InvalidParameterError, UnknownChoiceError
from comptonsky.simulate.presets import PRESETS, get_preset
from comptonsky.simulate.sky import (
    EllipticalGaussianSource,
    GaussianSource,
    HealpixMapSource,
    PointSource,
    SkyModel,
    dc2_511_thick_disk,
    dc2_511_thin_disk,
)


def test_dc2_thin_disk_flux_and_truth_map():
    sky = dc2_511_thin_disk()
    assert len(sky.components) == 4
    assert sky.flux == pytest.approx(2.83e-3)
    for nside in (4, 16):
        m = sky.intensity_map(nside)
        assert m.shape == (hp.nside2npix(nside),)
        assert np.all(m >= 0)
        assert m.sum() * hp.nside2pixarea(nside) == pytest.approx(2.83e-3, rel=1e-9)
        # brightest pixel holds the Galactic Centre
        assert np.argmax(m) == hp.ang2pix(nside, 0.0, 0.0, lonlat=True)
    thick = dc2_511_thick_disk()
    assert thick.flux == pytest.approx(2.83e-3)
    # the thick disk puts more flux at high latitude
    v = np.stack(hp.pix2vec(16, np.arange(hp.nside2npix(16))), axis=-1)
    hi = np.abs(v[:, 2]) > np.sin(np.radians(15))
    assert thick.intensity_map(16)[hi].sum() > 3 * sky.intensity_map(16)[hi].sum()


@pytest.mark.parametrize("comp", [
    GaussianSource(10.0, -5.0, 6.0, 1.0),
    EllipticalGaussianSource(0.0, 0.0, 40.0, 8.0, 1.0),
    HealpixMapSource(np.random.default_rng(0).random(hp.nside2npix(4))),
])
def test_sampling_matches_pixel_flux(comp):
    rng = np.random.default_rng(1)
    nside = 4
    n = 200000
    v = comp.sample(n, rng)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0)
    counts = np.bincount(hp.vec2pix(nside, *v.T), minlength=hp.nside2npix(nside))
    mu = comp.pixel_flux(nside) / comp.flux * n
    m = mu > 20
    chi2 = np.sum((counts[m] - mu[m]) ** 2 / mu[m]) / m.sum()
    assert chi2 < 1.5
    assert counts[~m].sum() < 2 * mu[~m].sum() + 50


def test_point_source_and_mixture():
    rng = np.random.default_rng(2)
    sky = SkyModel([PointSource(30.0, 20.0, 1e-3), GaussianSource(0.0, 0.0, 5.0, 3e-3)])
    v = sky.sample(40000, rng)
    at_point = np.isclose(v @ hp.ang2vec(30.0, 20.0, lonlat=True), 1.0)
    assert at_point.mean() == pytest.approx(0.25, abs=0.01)
    m = sky.intensity_map(8)
    p = hp.ang2pix(8, 30.0, 20.0, lonlat=True)
    assert m[p] * hp.nside2pixarea(8) == pytest.approx(1e-3, rel=1e-6)


def test_bad_inputs():
    with pytest.raises(InvalidParameterError):
        HealpixMapSource(-np.ones(12))
    with pytest.raises(UnknownChoiceError, match="dc2-511-thin-disk"):
        get_preset("dc2-511-thin-disc")
    assert {"dc2-511-thin-disk", "dc2-511-thick-disk"} <= set(PRESETS)
