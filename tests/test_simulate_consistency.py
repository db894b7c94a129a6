"""Simulated events agree with the response applied to the truth: counts, χ², occultation, albedo.

Binning is done here with plain numpy/healpy so these tests stand alone.
"""

from __future__ import annotations

import healpy as hp
import numpy as np
import pytest

from comptonsky.response.galactic import bin_attitudes, carry_local_cds, galactic_response
from comptonsky.simulate.background import AlbedoBackground
from comptonsky.simulate.events import simulate_background_events, simulate_sky_events
from comptonsky.simulate.instrument import InstrumentModel
from comptonsky.simulate.orbit import DC2_ORBIT, attitude_at, attitude_history
from comptonsky.simulate.sky import HealpixMapSource, PointSource, SkyModel, dc2_511_thin_disk

pytestmark = pytest.mark.slow  # end-to-end

NSIDE = 8
PHI_EDGES = np.arange(0.0, 181.0, 6.0)
WINDOW = (509.0, 513.0)


@pytest.fixture(scope="module")
def setup():
    inst = InstrumentModel()
    orbit = DC2_ORBIT.with_duration(86400.0)
    # PsiChi tabulated one level finer than the Galactic grid, as simulate_dataset does
    det = inst.detector_response(NSIDE, 2 * NSIDE, PHI_EDGES, WINDOW)
    bins = bin_attitudes(attitude_history(orbit, 10.0), 2.0)
    resp = galactic_response(det, bins, NSIDE, progress=False)
    return inst, orbit, det, bins, resp


def _bin(ev):
    sel = (ev["Energies"] >= WINDOW[0]) & (ev["Energies"] < WINDOW[1])
    ip = np.digitize(np.degrees(ev["Phi"][sel]), PHI_EDGES) - 1
    pp = hp.ang2pix(NSIDE, ev["Chi galactic"][sel], ev["Psi galactic"][sel], lonlat=True)
    x = np.zeros((len(PHI_EDGES) - 1, hp.nside2npix(NSIDE)))
    np.add.at(x, (ip, pp), 1.0)
    return x


def test_source_events_match_response_times_truth(setup):
    inst, orbit, det, bins, resp = setup
    # the DC2 sky, pixelised (the truth map), 100 times brighter: ~2.6e5 counts, as in DC2
    lam = dc2_511_thin_disk().intensity_map(NSIDE) * 100.0
    sky = SkyModel([HealpixMapSource(lam)])
    ev = simulate_sky_events(sky, inst, orbit, np.random.default_rng(5), progress=False)
    x = _bin(ev)
    mu = np.einsum("jk,j->k", resp.reshape(len(lam), -1).astype(np.float64),
                   lam * hp.nside2pixarea(NSIDE)).reshape(x.shape)
    n, m = x.sum(), mu.sum()
    assert abs(n - m) < 4 * np.sqrt(m)
    for threshold in (5, 20):  # also in the bright bins, where systematics would show first
        ok = mu > threshold
        assert ok.sum() > 1000
        chi2_dof = np.sum((x[ok] - mu[ok]) ** 2 / mu[ok]) / ok.sum()
        assert 0.9 < chi2_dof < 1.12, (threshold, chi2_dof)
    # the Compton-angle distribution agrees too
    phi_x, phi_mu = x.sum(axis=1), mu.sum(axis=1)
    good = phi_mu > 20
    assert np.sum((phi_x[good] - phi_mu[good]) ** 2 / phi_mu[good]) / good.sum() < 2.0
    # all measured energies are photopeak energies around 511 keV
    assert abs(np.mean(ev["Energies"]) - 511.0) < 0.1


def test_kinematics_of_point_source_events(setup):
    inst, orbit, *_ = setup
    src = hp.ang2vec(0.0, 0.0, lonlat=True)
    ev = simulate_sky_events(SkyModel([PointSource(0.0, 0.0, 3e-2)]), inst, orbit,
                             np.random.default_rng(6), progress=False)
    psichi = hp.ang2vec(ev["Chi galactic"], ev["Psi galactic"], lonlat=True)
    geo = np.arccos(np.clip(psichi @ src, -1, 1))
    arm = np.degrees(geo - ev["Phi"])
    assert np.std(arm) == pytest.approx(4.0 / 2.3548, rel=0.05)
    # local and Galactic PsiChi are the same direction seen through the pointings
    x = hp.ang2vec(np.degrees(ev["Xpointings"][:, 0]), np.degrees(ev["Xpointings"][:, 1]),
                   lonlat=True)
    z = hp.ang2vec(np.degrees(ev["Zpointings"][:, 0]), np.degrees(ev["Zpointings"][:, 1]),
                   lonlat=True)
    y = np.cross(z, x)
    loc = np.stack([np.sum(psichi * x, 1), np.sum(psichi * y, 1), np.sum(psichi * z, 1)], 1)
    np.testing.assert_allclose(np.arccos(np.clip(loc[:, 2], -1, 1)), ev["Psi local"], atol=1e-6)
    # occultation: no event while the source is beyond the Earth's limb
    zen = attitude_at(orbit, ev["TimeTags"])["zenith"]
    assert np.degrees(np.arccos(zen @ src)).max() <= orbit.horizon_deg
    assert np.all(np.diff(ev["TimeTags"]) >= 0)


def test_albedo_events_match_albedo_model(setup):
    inst, orbit, det, bins, _ = setup
    albedo = AlbedoBackground(4.4e-4 * 400, orbit.horizon_deg)
    ev = simulate_background_events(albedo, inst, orbit, np.random.default_rng(7),
                                    progress=False)
    x = _bin(ev)
    rate = albedo.local_rate(det, np.array([0.0, 0.0, 1.0]), orbit.horizon_deg)
    mu = carry_local_cds(rate, bins, det.nside_psichi, NSIDE).reshape(x.shape)
    assert abs(x.sum() - mu.sum()) < 4 * np.sqrt(mu.sum())
    # albedo photons come from below: their scattered-photon directions point to the lower sky
    assert np.mean(np.cos(ev["Psi local"]) < 0) > 0.5
    for axis in (0, 1):  # PsiChi and Phi marginals
        xm, mm = x.sum(axis=axis), mu.sum(axis=axis)
        ok = mm > 10
        assert ok.sum() > 5
        assert np.sum((xm[ok] - mm[ok]) ** 2 / mm[ok]) / ok.sum() < 1.5
