"""Sphere geometry shared by every layer: directions, attitudes and the Earth's horizon.

Directions are Cartesian unit vectors, shape ``(..., 3)``, in the frame their longitudes and
latitudes are given in (Galactic for the sky, the spacecraft frame for the detector).
An attitude is the rotation matrix ``M`` whose columns are the spacecraft x, y = z × x and z axes
in Galactic Cartesian coordinates: a detector-frame vector ``v`` points to the Galactic direction
``M @ v``, and a Galactic vector ``n`` has detector-frame coordinates ``M.T @ n``.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

__all__ = [
    "EARTH_RADIUS_KM",
    "ATMOSPHERE_KM",
    "lonlat_to_vec",
    "vec_to_lonlat",
    "attitude_matrices",
    "horizon_angle_deg",
    "equatorial_to_galactic_matrix",
    "rotation_about_z",
]

#: Mean equatorial Earth radius (km, WGS-84).
EARTH_RADIUS_KM = 6378.137
#: Height of the absorbing atmosphere added to the Earth radius for occultation (km).
ATMOSPHERE_KM = 0.0


def lonlat_to_vec(lon_deg: np.ndarray, lat_deg: np.ndarray) -> np.ndarray:
    """Unit vectors from longitude and latitude.

    Parameters
    ----------
    lon_deg, lat_deg : array_like, shape (...)
        Longitude and latitude in degrees.

    Returns
    -------
    ndarray, shape (..., 3)
        Cartesian unit vectors.
    """
    lon = np.radians(np.asarray(lon_deg, dtype=np.float64))
    lat = np.radians(np.asarray(lat_deg, dtype=np.float64))
    c = np.cos(lat)
    return np.stack([c * np.cos(lon), c * np.sin(lon), np.sin(lat)], axis=-1)


def vec_to_lonlat(vec: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Longitude in [0, 360) and latitude in [-90, 90] (deg) of vectors.

    Parameters
    ----------
    vec : array_like, shape (..., 3)
        Vectors (need not be normalised).

    Returns
    -------
    lon, lat : ndarray, shape (...)
        Degrees.
    """
    v = np.asarray(vec, dtype=np.float64)
    r = np.linalg.norm(v, axis=-1)
    lat = np.degrees(np.arcsin(np.clip(v[..., 2] / r, -1.0, 1.0)))
    lon = np.mod(np.degrees(np.arctan2(v[..., 1], v[..., 0])), 360.0)
    return lon, lat


def attitude_matrices(x_axis: np.ndarray, z_axis: np.ndarray) -> np.ndarray:
    """Rotation matrices (detector → Galactic) from the spacecraft x and z axes.

    Parameters
    ----------
    x_axis, z_axis : array_like, shape (N, 3) or (3,)
        Galactic unit vectors of the spacecraft x and z axes. x is made exactly orthogonal
        to z (Gram–Schmidt) before use.

    Returns
    -------
    ndarray, shape (N, 3, 3) or (3, 3)
        ``M[..., :, 0]`` = x, ``M[..., :, 1]`` = y = z × x, ``M[..., :, 2]`` = z.
    """
    z = np.asarray(z_axis, dtype=np.float64)
    x = np.asarray(x_axis, dtype=np.float64)
    z = z / np.linalg.norm(z, axis=-1, keepdims=True)
    x = x - np.sum(x * z, axis=-1, keepdims=True) * z
    x = x / np.linalg.norm(x, axis=-1, keepdims=True)
    y = np.cross(z, x)
    return np.stack([x, y, z], axis=-1)


def horizon_angle_deg(altitude_km: float) -> float:
    """Angle (deg) from the zenith to the Earth's limb seen from ``altitude_km``.

    ``90° + arccos(R⊕ / (R⊕ + h))``: 550 km gives 113.0° (nothing arrives from more than 113°
    from the zenith, docs/design.md §6).
    """
    r = EARTH_RADIUS_KM + ATMOSPHERE_KM
    return float(90.0 + np.degrees(np.arccos(r / (EARTH_RADIUS_KM + float(altitude_km)))))


@lru_cache(maxsize=1)
def equatorial_to_galactic_matrix() -> np.ndarray:
    """The 3 × 3 rotation taking ICRS Cartesian vectors to Galactic ones (from astropy)."""
    from astropy.coordinates import ICRS, SkyCoord

    eye = SkyCoord(x=[1.0, 0.0, 0.0], y=[0.0, 1.0, 0.0], z=[0.0, 0.0, 1.0],
                   representation_type="cartesian", frame=ICRS())
    g = eye.galactic.cartesian.xyz.value  # (3, 3): column k = image of ICRS axis k
    return np.ascontiguousarray(g)


def rotation_about_z(angle: np.ndarray) -> np.ndarray:
    """Rotation matrices by ``angle`` (rad, shape (...)) about the z axis, shape (..., 3, 3)."""
    c, s = np.cos(angle), np.sin(angle)
    z, o = np.zeros_like(c), np.ones_like(c)
    return np.stack([np.stack([c, -s, z], -1), np.stack([s, c, z], -1),
                     np.stack([z, z, o], -1)], -2)
