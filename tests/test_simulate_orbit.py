"""Orbit and attitude profiles (DC2 zenith pointing, DC3 rocking) and attitude binning."""

from __future__ import annotations

import numpy as np
import pytest

from comptonsky.response.galactic import bin_attitudes
from comptonsky.simulate.orbit import (
    DC2_ORBIT,
    DC3_ORBIT,
    attitude_at,
    attitude_history,
    equatorial_to_galactic_matrix,
    horizon_angle_deg,
    orbital_period,
)


def test_orbit_numbers():
    assert orbital_period(550.0) / 60.0 == pytest.approx(95.6, abs=0.2)  # docs/design.md: ≈ 95.5 min
    assert horizon_angle_deg(550.0) == pytest.approx(113.0, abs=0.2)  # docs/design.md: 113°
    assert DC2_ORBIT.tmin == 1835487300.0
    assert DC2_ORBIT.tmax == 1843467255.0
    earth = 2 * np.pi * (1 - np.cos(np.radians(180.0 - DC2_ORBIT.horizon_deg)))
    assert earth == pytest.approx(3.8, abs=0.05)  # Earth disk ≈ 3.8 sr


def test_dc2_zenith_pointing_equatorial():
    t = DC2_ORBIT.tmin + np.linspace(0.0, 2 * 86400.0, 500)
    att = attitude_at(DC2_ORBIT, t)
    np.testing.assert_allclose(att["z_axis"], att["zenith"], atol=1e-12)
    np.testing.assert_allclose(np.sum(att["x_axis"] * att["z_axis"], axis=1), 0.0, atol=1e-12)
    # 0° inclination: the zenith stays on the celestial equator
    eq = att["zenith"] @ equatorial_to_galactic_matrix()
    np.testing.assert_allclose(eq[:, 2], 0.0, atol=1e-9)
    # one Keplerian period later the attitude repeats up to the J2 drift of the node (≈ 0.5°)
    p = DC2_ORBIT.period_s
    a2 = attitude_at(DC2_ORBIT, t + p)
    drift = np.degrees(np.arccos(np.clip(np.sum(a2["z_axis"] * att["z_axis"], axis=1), -1, 1)))
    assert np.all(drift < 1.0)


def test_dc3_rocking():
    t = DC3_ORBIT.tmin + np.array([100.0, 43200.0 + 100.0, 2 * 43200.0 + 100.0])
    att = attitude_at(DC3_ORBIT, t)
    ang = np.degrees(np.arccos(np.sum(att["z_axis"] * att["zenith"], axis=1)))
    np.testing.assert_allclose(ang, 22.0, atol=1e-9)
    eq = att["z_axis"] @ equatorial_to_galactic_matrix()
    # north, then south, then north again
    assert eq[0, 2] > 0.3 and eq[1, 2] < -0.3 and eq[2, 2] > 0.3


def test_history_and_binning():
    orbit = DC2_ORBIT.with_duration(6 * 3600.0)
    o = attitude_history(orbit, 10.0)
    assert o.total_livetime == pytest.approx(6 * 3600.0)
    assert o.time[0] == orbit.tmin and o.time[-1] == orbit.tmax
    bins = bin_attitudes(o, 2.0)
    assert bins.total_livetime == pytest.approx(6 * 3600.0)
    # a rotation about a fixed axis: of order 360°/2° bins, far fewer than samples
    assert 150 < len(bins) < 1200
    # every sample lies close to its bin's attitude
    z = bins.rotations[:, :, 2]
    best = np.max(o.z_axis[:-1] @ z.T, axis=1)
    assert np.degrees(np.arccos(np.clip(best.min(), -1, 1))) < 2.0
    np.testing.assert_allclose(bins.horizon_deg, horizon_angle_deg(550.0))
