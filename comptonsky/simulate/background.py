"""Background photons: Earth albedo from the Earth disk, and an optional isotropic cosmic component.

Both are photon fields at the line energy defined relative to the Earth: albedo fills the Earth
disk (zenith angle beyond the limb, ≈ 113° at 550 km) with a flat intensity; the cosmic
component fills the visible sky. They go through the same instrument model and attitude history
as the sky.
"""

from __future__ import annotations

from dataclasses import dataclass

import healpy as hp
import numpy as np

from ..errors import InvalidParameterError
from ..response.galactic import DetectorResponse, _subpixels
from .instrument import _perp_basis
from .orbit import OrbitProfile

__all__ = ["EarthFixedBackground", "AlbedoBackground", "IsotropicBackground"]


def _cap_solid_angle(half_angle_rad: float) -> float:
    return float(2.0 * np.pi * (1.0 - np.cos(half_angle_rad)))


@dataclass
class EarthFixedBackground:
    """A flat photon intensity over a region defined by the Earth.

    Attributes
    ----------
    intensity : float
        ph cm⁻² s⁻¹ sr⁻¹ (at the line, counted in the analysis window).
    region : {"earth", "sky"}
        ``"earth"``: the Earth disk (beyond the limb); ``"sky"``: the rest of the sphere.
    name : str
    """

    intensity: float
    region: str = "earth"
    name: str = "background"

    def __post_init__(self) -> None:
        if self.region not in ("earth", "sky"):
            raise InvalidParameterError(f"region must be 'earth' or 'sky', got {self.region!r}")
        if not self.intensity >= 0:
            raise InvalidParameterError(f"{self.name}: intensity must be ≥ 0")

    def flux(self, horizon_deg: float) -> float:
        """Photon flux (ph cm⁻² s⁻¹) from the whole region, the limb at ``horizon_deg`` from the
        zenith."""
        earth = _cap_solid_angle(np.radians(180.0 - horizon_deg))
        return self.intensity * (earth if self.region == "earth" else 4 * np.pi - earth)

    def max_cos_theta(self, orbit: OrbitProfile) -> float:
        """Largest cos θ (θ from the boresight) of the region's directions in the detector frame.

        The boresight is tilted from the zenith by at most ``orbit.rocking_deg``, so the Earth
        disk (beyond ``orbit.horizon_deg`` from the zenith) reaches up to
        ``horizon − rocking`` from the boresight.
        """
        if self.region == "earth":
            return float(np.cos(np.radians(orbit.horizon_deg - abs(orbit.rocking_deg))))
        return 1.0

    def inside(self, vec: np.ndarray, zenith: np.ndarray, horizon_deg: float) -> np.ndarray:
        """Whether unit vectors ``vec`` (N, 3) lie in the region, given the ``zenith`` (N, 3)."""
        below = np.sum(vec * zenith, axis=-1) < np.cos(np.radians(horizon_deg))
        return below if self.region == "earth" else ~below

    def sample(self, zenith: np.ndarray, horizon_deg: float,
               rng: np.random.Generator) -> np.ndarray:
        """One photon direction per row of ``zenith`` (N, 3), uniform over the region."""
        n = len(zenith)
        if self.region == "earth":
            axis = -zenith
            cmin = np.cos(np.radians(180.0 - horizon_deg))
        else:
            axis = zenith
            cmin = np.cos(np.radians(horizon_deg))
        c = 1.0 - rng.random(n) * (1.0 - cmin)  # uniform in cos over the cap around ``axis``
        s = np.sqrt(np.clip(1.0 - c * c, 0.0, 1.0))
        az = rng.random(n) * 2 * np.pi
        e1, e2 = _perp_basis(axis)
        return (c[:, None] * axis + s[:, None]
                * (np.cos(az)[:, None] * e1 + np.sin(az)[:, None] * e2))

    def local_rate(self, det: DetectorResponse, zenith_local: np.ndarray,
                   horizon_deg: float) -> np.ndarray:
        """Expected count rate in the detector-frame CDS for a fixed zenith direction.

        Parameters
        ----------
        det : comptonsky.response.galactic.DetectorResponse
            Detector-frame response (cm²).
        zenith_local : array_like, shape (3,)
            Zenith in the detector frame.
        horizon_deg : float

        Returns
        -------
        ndarray, shape (n_k, N_PsiChi_local)
            Counts s⁻¹.
        """
        nside = det.nside_nu
        ch = _subpixels(nside, np.arange(hp.nside2npix(nside)), 2)
        zl = np.asarray(zenith_local, dtype=np.float64)
        zl = zl / np.linalg.norm(zl)
        frac = self.inside(ch, zl, horizon_deg).mean(axis=1)
        return det.weighted_row_sum(frac * hp.nside2pixarea(nside) * self.intensity)


def AlbedoBackground(flux: float = 4.4e-4, horizon_deg: float = 113.0,
                     name: str = "albedo") -> EarthFixedBackground:
    """Earth-albedo line photons, flat over the Earth disk.

    Parameters
    ----------
    flux : float
        Photon flux from the whole disk (ph cm⁻² s⁻¹; docs/design.md §6: 4.4e-4 in 509–513 keV).
    horizon_deg : float
        Limb angle used to turn the flux into an intensity (113° at 550 km).
    """
    omega = _cap_solid_angle(np.radians(180.0 - horizon_deg))
    return EarthFixedBackground(intensity=flux / omega, region="earth", name=name)


def IsotropicBackground(intensity: float = 1.5e-4, name: str = "cosmic") -> EarthFixedBackground:
    """Isotropic cosmic photons over the visible sky (ph cm⁻² s⁻¹ sr⁻¹ in the line window).

    The default, 1.5e-4, is this project's order-of-magnitude estimate of the cosmic diffuse
    continuum in a 4 keV window at 511 keV (E² dN/dE ≈ 0.01 MeV cm⁻² s⁻¹ sr⁻¹); it is not a
    docs/design.md §6 number.
    """
    return EarthFixedBackground(intensity=intensity, region="sky", name=name)
