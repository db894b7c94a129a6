"""Orbit and attitude profiles of COSI: circular low-Earth orbit, zenith pointing, optional rocking.

The spacecraft moves on a circular orbit (altitude h, inclination i, node precessing with the
Earth's J2). Its z axis (boresight) points to the zenith, tilted by the rocking angle towards the
orbit normal; its x axis lies along the velocity, turned by ``x_tilt_deg`` towards the orbit
normal. Attitudes are computed in the equatorial (ICRS) frame and rotated to Galactic
coordinates with a fixed matrix.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import numpy as np

from ..errors import InvalidParameterError
from ..geometry import (
    EARTH_RADIUS_KM,
    equatorial_to_galactic_matrix,
    horizon_angle_deg,
    rotation_about_z,
)
from ..io.orientation import Orientation, OriWriter

__all__ = [
    "EARTH_RADIUS_KM",
    "EARTH_GM_KM3_S2",
    "OrbitProfile",
    "DC2_ORBIT",
    "DC3_ORBIT",
    "orbital_period",
    "horizon_angle_deg",
    "equatorial_to_galactic_matrix",
    "attitude_at",
    "attitude_history",
    "iter_attitude_history",
    "write_orientation",
]

logger = logging.getLogger(__name__)

#: Earth's gravitational parameter (km³ s⁻², WGS-84).
EARTH_GM_KM3_S2 = 398600.4418
#: Earth's second zonal harmonic (dimensionless).
EARTH_J2 = 1.08263e-3


@dataclass(frozen=True)
class OrbitProfile:
    """A circular orbit with a zenith-pointing (optionally rocking) attitude law.

    Attributes
    ----------
    name : str
        Profile name.
    altitude_km : float
        Orbit altitude (km).
    inclination_deg : float
        Orbit inclination to the Earth's equator (deg).
    tmin : float
        Start time (s, mission clock of the DC files).
    duration_s : float
        Default duration (s).
    rocking_deg : float
        Rocking angle of the z axis from the zenith towards (+) or away from (−) the orbit
        normal; 0 for pure zenith pointing.
    rocking_period_s : float
        Time (s) spent at each rocking sign before switching (12 h for DC3).
    x_tilt_deg : float
        Angle (deg) of the x axis from the velocity towards the orbit normal.
    node_deg : float
        Right ascension of the ascending node at ``tmin`` (deg).
    phase_deg : float
        Argument of latitude (deg) of the spacecraft at ``tmin``.
    """

    name: str
    altitude_km: float
    inclination_deg: float = 0.0
    tmin: float = 1835487300.0
    duration_s: float = 7979955.0
    rocking_deg: float = 0.0
    rocking_period_s: float = 43200.0
    x_tilt_deg: float = 0.0
    node_deg: float = 0.0
    phase_deg: float = 121.87

    @property
    def period_s(self) -> float:
        """Orbital period (s) from Kepler's third law."""
        return orbital_period(self.altitude_km)

    @property
    def horizon_deg(self) -> float:
        """Angle from the zenith beyond which the Earth blocks the sky (deg)."""
        return horizon_angle_deg(self.altitude_km)

    def with_duration(self, duration_s: float | None) -> OrbitProfile:
        """A copy with another duration (``None`` keeps the default)."""
        if duration_s is None:
            return self
        if not duration_s > 0:
            raise InvalidParameterError(f"duration must be positive, got {duration_s} s")
        return replace(self, duration_s=float(duration_s))

    @property
    def tmax(self) -> float:
        """End time (s)."""
        return self.tmin + self.duration_s


#: DC2: 550 km, 0° inclination, zenith pointing, 3 months (docs/design.md §6).
DC2_ORBIT = OrbitProfile(name="dc2", altitude_km=550.0)
#: DC3: 530 km, 0° inclination, ±22° north/south rocking every 12 h (docs/design.md §6).
DC3_ORBIT = OrbitProfile(name="dc3", altitude_km=530.0, rocking_deg=22.0)


def orbital_period(altitude_km: float) -> float:
    """Period (s) of a circular orbit at ``altitude_km`` (Kepler's third law).

    550 km gives 5736 s (95.6 min), as docs/design.md §6 says (≈ 95.5 min).
    """
    a = EARTH_RADIUS_KM + float(altitude_km)
    return float(2.0 * np.pi * np.sqrt(a**3 / EARTH_GM_KM3_S2))


def attitude_at(profile: OrbitProfile, times: np.ndarray) -> dict[str, np.ndarray]:
    """Spacecraft axes and zenith at the given times, in Galactic Cartesian coordinates.

    Parameters
    ----------
    profile : OrbitProfile
        The orbit and attitude law.
    times : array_like, shape (N,)
        Times (s).

    Returns
    -------
    dict
        ``x_axis``, ``z_axis``, ``zenith`` (each shape (N, 3), unit vectors) and
        ``rotation`` (N, 3, 3), detector → Galactic.
    """
    t = np.asarray(times, dtype=np.float64) - profile.tmin
    a = EARTH_RADIUS_KM + profile.altitude_km
    n_mean = 2.0 * np.pi / profile.period_s
    inc = np.radians(profile.inclination_deg)
    node_rate = -1.5 * n_mean * EARTH_J2 * (EARTH_RADIUS_KM / a) ** 2 * np.cos(inc)
    u = np.radians(profile.phase_deg) + n_mean * t
    node = np.radians(profile.node_deg) + node_rate * t
    cu, su = np.cos(u), np.sin(u)
    # orbit-plane vectors with the node on the x axis, then tilted by the inclination
    ci, si = np.cos(inc), np.sin(inc)
    zen = np.stack([cu, su * ci, su * si], -1)
    vel = np.stack([-su, cu * ci, cu * si], -1)
    nrm = np.broadcast_to(np.array([0.0, -si, ci]), zen.shape)
    rz = rotation_about_z(node)
    zen = np.einsum("nij,nj->ni", rz, zen)
    vel = np.einsum("nij,nj->ni", rz, vel)
    nrm = np.einsum("nij,nj->ni", rz, nrm)
    if profile.rocking_deg:
        sign = np.where(np.floor(t / profile.rocking_period_s) % 2 == 0, 1.0, -1.0)
        rho = np.radians(profile.rocking_deg) * sign
    else:
        rho = np.zeros_like(t)
    cr, sr = np.cos(rho)[:, None], np.sin(rho)[:, None]
    zax = cr * zen + sr * nrm
    up = -sr * zen + cr * nrm  # orthogonal to both zax and vel
    tau = np.radians(profile.x_tilt_deg)
    xax = np.cos(tau) * vel + np.sin(tau) * up
    g = equatorial_to_galactic_matrix()
    zax, xax, zen = zax @ g.T, xax @ g.T, zen @ g.T
    yax = np.cross(zax, xax)
    rot = np.stack([xax, yax, zax], axis=-1)
    return {"x_axis": xax, "z_axis": zax, "zenith": zen, "rotation": rot}


def attitude_history(profile: OrbitProfile, dt_s: float = 20.0, tmin: float | None = None,
                     tmax: float | None = None) -> Orientation:
    """Sample the attitude every ``dt_s`` seconds into an :class:`Orientation`.

    Parameters
    ----------
    profile : OrbitProfile
        The orbit and attitude law.
    dt_s : float
        Sampling step (s). The last time stamp is ``tmax`` with live time 0.
    tmin, tmax : float, optional
        Time range (s); default the profile's.

    Returns
    -------
    Orientation
        Time stamps, axes, altitude, zenith and live times (full live time: DC2 has no SAA).
    """
    t0, t1, n = _sampling(profile, dt_s, tmin, tmax)
    times = np.append(t0 + dt_s * np.arange(n), t1)
    live = np.append(np.diff(times), 0.0)
    att = attitude_at(profile, times)
    logger.debug("attitude history: %d samples of %.1f s", len(times), dt_s)
    return Orientation(time=times, x_axis=att["x_axis"], z_axis=att["z_axis"],
                       altitude=np.full(len(times), profile.altitude_km),
                       earth_zenith=att["zenith"], livetime=live)


def _sampling(profile: OrbitProfile, dt_s: float, tmin: float | None, tmax: float | None
              ) -> tuple[float, float, int]:
    """Start, end and number of whole steps of an attitude history (its rows: t0 + k·dt for
    k < n, then t1), with the range checked."""
    if not dt_s > 0:
        raise InvalidParameterError(f"attitude sampling step must be positive, got {dt_s}")
    t0 = profile.tmin if tmin is None else float(tmin)
    t1 = profile.tmax if tmax is None else float(tmax)
    if not t1 > t0:
        raise InvalidParameterError(f"empty time range [{t0}, {t1}]")
    return t0, t1, int(np.ceil((t1 - t0) / dt_s))


def iter_attitude_history(profile: OrbitProfile, dt_s: float = 1.0, tmin: float | None = None,
                          tmax: float | None = None, block_rows: int = 1 << 20):
    """The rows of :func:`attitude_history` in blocks of at most ``block_rows`` time stamps.

    A 3-month history at 1 s holds 8 M rows; blocks keep the memory at a block's attitudes.

    Yields
    ------
    Orientation
        Consecutive blocks; together the same rows as ``attitude_history(profile, dt_s, ...)``.
    """
    t0, t1, n = _sampling(profile, dt_s, tmin, tmax)
    for i0 in range(0, n + 1, int(block_rows)):
        i = np.arange(i0, min(n + 1, i0 + int(block_rows)))
        times = np.where(i < n, t0 + dt_s * i, t1)
        nxt = np.minimum(t0 + dt_s * (i + 1), t1)
        live = np.where(i < n, nxt - times, 0.0)
        att = attitude_at(profile, times)
        yield Orientation(time=times, x_axis=att["x_axis"], z_axis=att["z_axis"],
                          altitude=np.full(len(times), profile.altitude_km),
                          earth_zenith=att["zenith"], livetime=live)


def write_orientation(path, profile: OrbitProfile, dt_s: float = 1.0,
                      progress: bool = False) -> int:
    """Write the attitude history of ``profile`` at ``dt_s`` cadence as an ``.ori`` file.

    Parameters
    ----------
    path : path-like
        Output file (written atomically).
    profile : OrbitProfile
    dt_s : float
        Cadence (s); the COSI files and the tutorials use 1 s.
    progress : bool
        Show a progress bar.

    Returns
    -------
    int
        Rows written.
    """
    from tqdm.auto import tqdm

    n = int(np.ceil(profile.duration_s / dt_s)) + 1
    with OriWriter(path) as w, tqdm(total=n, desc="orientation", unit="row",
                                     disable=not progress) as bar:
        for block in iter_attitude_history(profile, dt_s):
            w.write(block)
            bar.update(len(block))
    return w.rows
