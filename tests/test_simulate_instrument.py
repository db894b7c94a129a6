"""Instrument model: Compton kinematics, Klein–Nishina, resolutions, effective area, sampling."""

from __future__ import annotations

import numpy as np
import pytest

from comptonsky.errors import InvalidParameterError
from comptonsky.simulate.instrument import InstrumentModel, klein_nishina, scattered_energy


def test_kinematics_511():
    phi = np.radians([0.0, 30.0, 60.0, 90.0, 120.0, 180.0])
    np.testing.assert_allclose(scattered_energy(phi, 511.0),
                               511.0 / (2.0 - np.cos(phi)), rtol=2e-4)
    assert scattered_energy(np.pi, 511.0) == pytest.approx(511.0 / 3.0, rel=2e-4)


def test_klein_nishina_511_shape():
    # docs/design.md §6: mode 35°, median 61°, 69 % below 90° (distribution in φ, no detection weight)
    phi = np.linspace(0.0, np.pi, 200001)
    pdf = klein_nishina(phi, 511.0) * np.sin(phi)
    cdf = np.cumsum(pdf)
    cdf /= cdf[-1]
    assert np.degrees(phi[np.argmax(pdf)]) == pytest.approx(35.0, abs=1.5)
    assert np.degrees(np.interp(0.5, cdf, phi)) == pytest.approx(61.0, abs=1.5)
    assert np.interp(np.pi / 2, phi, cdf) == pytest.approx(0.69, abs=0.01)


def test_energy_resolution_and_window():
    inst = InstrumentModel()
    assert inst.energy_sigma_kev == pytest.approx(1.63 * np.sqrt(2))
    frac = inst.energy_fractions([509.0, 513.0])
    assert frac.shape == (1,)
    assert frac[0] == pytest.approx(0.6136, abs=2e-3)
    assert inst.energy_fractions([400.0, 511.0, 600.0]).sum() == pytest.approx(1.0)


def test_effective_area_shape():
    inst = InstrumentModel()
    th = np.radians([0.0, 50.0, 89.0, 180.0])
    nu = np.stack([np.sin(th), np.zeros_like(th), np.cos(th)], axis=1)
    a = inst.effective_area(nu, [509.0, 513.0])
    assert 50.0 <= a[0] <= 80.0  # on-axis photopeak area in the window (docs/design.md §6: 50–80 cm²)
    assert 0.35 <= a[1] / a[0] <= 0.65  # about half by 40–50°
    assert a[2] / a[0] < 0.02  # ~0 at the edge of the field of view
    assert 0 < a[3] / a[0] <= inst.back_fraction * 1.2  # small leak from below


def test_acceptance_depends_on_detector_direction():
    inst = InstrumentModel()
    phi = np.full(3, np.radians(90.0))
    up, side, down = np.array([[0, 0, 1.0], [1.0, 0, 0], [0, 0, -1.0]])
    acc = inst.acceptance(np.stack([up, side, down]), phi)
    assert acc[0] < acc[2] < acc[1]
    # diagonal in the stack plane travels further than along an edge normal
    diag = np.array([[np.sqrt(0.5), np.sqrt(0.5), 0.0]])
    assert inst.path_length(diag)[0] > inst.path_length(side[None])[0]


def test_sampled_events_follow_the_cone():
    inst = InstrumentModel()
    rng = np.random.default_rng(3)
    n = 200000
    th = np.radians(30.0)
    nu = np.tile([np.sin(th), 0.0, np.cos(th)], (n, 1))
    ev = inst.sample_events(nu, rng)
    kept = ev["keep"].mean()
    expected = inst.effective_area(nu[:1])[0] / inst.candidate_area_cm2
    assert kept == pytest.approx(expected, rel=0.02)
    geo = np.arccos(np.clip(ev["psichi"] @ nu[0], -1, 1))
    arm = np.degrees(geo - ev["phi"])
    # ARM ≈ 4° FWHM Gaussian (σ = 1.70°)
    assert np.std(arm) == pytest.approx(4.0 / 2.3548, rel=0.03)
    assert abs(np.median(arm)) < 0.05
    assert np.all((ev["phi"] >= 0) & (ev["phi"] <= np.pi))
    assert np.std(ev["energy"]) == pytest.approx(inst.energy_sigma_kev, rel=0.02)
    assert np.all(ev["distance"] > 0)
    # the first deposit passes the threshold: few very forward scatters
    assert np.mean(np.degrees(geo) < 10.0) < 0.01


def test_detector_response_matches_effective_area():
    inst = InstrumentModel()
    det = inst.detector_response(4, 4, np.arange(0.0, 181.0, 6.0), [509.0, 513.0])
    assert det.shape_k == (1, 1, 30)
    import healpy as hp

    nu = np.stack(hp.pix2vec(4, np.arange(hp.nside2npix(4))), axis=-1)
    area = inst.effective_area(nu, [509.0, 513.0])
    tot = det.total()
    front = nu[:, 2] > 0.2
    # the binned response loses only the ARM tails beyond 0° and 180°
    np.testing.assert_allclose(tot[front], area[front], rtol=0.02)
    row = det.row(0)  # near the boresight: counts peak where angle(ν, PsiChi) ≈ Phi
    psi = np.degrees(np.arccos(np.clip(nu @ nu[0], -1, 1)))
    phic = np.arange(3.0, 180.0, 6.0)
    k = np.argmax(row[0, 0], axis=0)  # best Phi bin per PsiChi pixel
    strong = row[0, 0].max(axis=0) > 0.05 * row.max()
    assert np.all(np.abs(phic[k[strong]] - psi[strong]) < 15.0)


def test_area_bound_for_photons_from_below():
    inst = InstrumentModel()
    # the bound is the largest c(θ) over cos θ ≤ c: the back leak when only the back is seen
    assert inst.max_area_factor(np.cos(np.radians(113.0))) == pytest.approx(inst.back_fraction)
    assert inst.max_area_factor(1.0) == pytest.approx(1.0)
    assert inst.max_area_factor(0.5) == pytest.approx(0.5**inst.area_index)
    cos = np.linspace(-1.0, -0.2, 101)
    assert inst.area_factor(cos).max() <= inst.max_area_factor(-0.2)


def test_sampling_with_an_area_bound_keeps_the_detected_rate():
    # drawing 1/bound times fewer candidates and keeping them 1/bound times more often gives the
    # same detected rate: compare the two kept fractions, scaled, on directions from below
    inst = InstrumentModel()
    rng = np.random.default_rng(11)
    n = 400_000
    th = np.arccos(-rng.uniform(0.4, 1.0, n))
    ph = rng.uniform(0, 2 * np.pi, n)
    nu = np.stack([np.sin(th) * np.cos(ph), np.sin(th) * np.sin(ph), np.cos(th)], axis=1)
    plain = inst.sample_events(nu, rng)["keep"].mean()
    bound = inst.max_area_factor(-0.4)
    bounded = inst.sample_events(nu, rng, area_scale=bound)["keep"].mean() * bound
    assert bounded == pytest.approx(plain, rel=0.03)
    with pytest.raises(InvalidParameterError, match="area_scale"):
        inst.sample_events(np.array([[0.0, 0.0, 1.0]]), rng, area_scale=0.05)
    with pytest.raises(InvalidParameterError, match="area_scale"):
        inst.sample_events(nu[:2], rng, area_scale=0.0)
