"""Sky models of a gamma-ray line: point sources, Gaussians, HEALPix maps, and the DC2 511 keV sky.

Every component knows its total line flux (ph cm⁻² s⁻¹), its intensity (ph cm⁻² s⁻¹ sr⁻¹) at
Galactic directions, and how to draw photon arrival directions from itself exactly, so that
simulated events and the truth map describe the same sky. The DC2 511 keV components are those
of docs/design.md §6 (the bulge follows Siegert et al. 2016, A&A 586, A84); the thick disk is the
one Siegert et al. 2016 fitted to SPI data, not a docs/design.md §6 number.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import healpy as hp
import numpy as np

from ..errors import InvalidParameterError
from ..geometry import lonlat_to_vec, vec_to_lonlat

__all__ = [
    "SkyComponent",
    "PointSource",
    "GaussianSource",
    "EllipticalGaussianSource",
    "HealpixMapSource",
    "SkyModel",
    "dc2_511_thin_disk",
    "dc2_511_thick_disk",
]


def _cdf(x: np.ndarray, pdf: np.ndarray) -> tuple[np.ndarray, float]:
    """Trapezoidal integral of ``pdf`` from ``x[0]`` at each ``x``: (that over the total, total)."""
    c = np.concatenate([[0.0], np.cumsum(0.5 * (pdf[1:] + pdf[:-1]) * np.diff(x))])
    return c / c[-1], c[-1]


def _tangent_basis(center: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    helper = np.array([0.0, 0.0, 1.0]) if abs(center[2]) < 0.9 else np.array([1.0, 0.0, 0.0])
    e1 = np.cross(helper, center)
    e1 /= np.linalg.norm(e1)
    return e1, np.cross(center, e1)


class SkyComponent:
    """Base class of sky components.

    Attributes
    ----------
    flux : float
        Total line flux (ph cm⁻² s⁻¹).
    name : str
    """

    flux: float
    name: str

    def intensity(self, vec: np.ndarray) -> np.ndarray:
        """Intensity (ph cm⁻² s⁻¹ sr⁻¹) at Galactic unit vectors ``vec`` (N, 3)."""
        raise NotImplementedError

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Draw ``n`` Galactic unit vectors (n, 3) from the component's brightness distribution."""
        raise NotImplementedError

    def pixel_flux(self, nside: int) -> np.ndarray:
        """Flux (ph cm⁻² s⁻¹) in each RING pixel at ``nside``, shape (12 nside²,)."""
        nside_hi = max(nside, min(256, nside * 16))
        npix_hi = hp.nside2npix(nside_hi)
        v = np.stack(hp.pix2vec(nside_hi, np.arange(npix_hi)), axis=-1)
        fine = self.intensity(v) * hp.nside2pixarea(nside_hi)
        fine *= self.flux / max(fine.sum(), 1e-300)
        return hp.ud_grade(fine, nside, power=-2)


@dataclass
class PointSource(SkyComponent):
    """A point source at Galactic (l, b) (deg) with line flux ``flux`` (ph cm⁻² s⁻¹)."""

    l_deg: float
    b_deg: float
    flux: float
    name: str = "point"

    def intensity(self, vec: np.ndarray) -> np.ndarray:
        return np.zeros(len(vec))

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return np.broadcast_to(lonlat_to_vec(self.l_deg, self.b_deg), (n, 3)).copy()

    def pixel_flux(self, nside: int) -> np.ndarray:
        out = np.zeros(hp.nside2npix(nside))
        out[hp.ang2pix(nside, self.l_deg, self.b_deg, lonlat=True)] = self.flux
        return out


@dataclass
class GaussianSource(SkyComponent):
    """Circular Gaussian in angular distance θ from (l, b): I ∝ exp(−θ²/2σ²), total ``flux``."""

    l_deg: float
    b_deg: float
    sigma_deg: float
    flux: float
    name: str = "gaussian"

    @cached_property
    def _tab(self) -> dict:
        if not self.sigma_deg > 0:
            raise InvalidParameterError(f"{self.name}: sigma must be positive")
        th = np.linspace(0.0, np.pi, 20001)
        cdf, total = _cdf(th, np.exp(-0.5 * (th / np.radians(self.sigma_deg)) ** 2) * np.sin(th))
        return {"th": th, "cdf": cdf, "norm": 2 * np.pi * total,
                "center": lonlat_to_vec(self.l_deg, self.b_deg)}

    def intensity(self, vec: np.ndarray) -> np.ndarray:
        t = self._tab
        th = np.arccos(np.clip(vec @ t["center"], -1.0, 1.0))
        return self.flux * np.exp(-0.5 * (th / np.radians(self.sigma_deg)) ** 2) / t["norm"]

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        t = self._tab
        th = np.interp(rng.random(n), t["cdf"], t["th"])
        az = rng.random(n) * 2 * np.pi
        c = t["center"]
        e1, e2 = _tangent_basis(c)
        return (np.cos(th)[:, None] * c + np.sin(th)[:, None]
                * (np.cos(az)[:, None] * e1 + np.sin(az)[:, None] * e2))


@dataclass
class EllipticalGaussianSource(SkyComponent):
    """Gaussian separable in Galactic (l, b): I ∝ exp(−Δl²/2σ_l² − (b − b₀)²/2σ_b²).

    Δl is wrapped to (−180°, 180°]; the normalisation includes the cos b solid-angle factor.
    """

    l_deg: float
    b_deg: float
    sigma_l_deg: float
    sigma_b_deg: float
    flux: float
    name: str = "disk"

    @cached_property
    def _tab(self) -> dict:
        if not (self.sigma_l_deg > 0 and self.sigma_b_deg > 0):
            raise InvalidParameterError(f"{self.name}: sigmas must be positive")
        dl = np.linspace(-np.pi, np.pi, 20001)
        cl, total_l = _cdf(dl, np.exp(-0.5 * (dl / np.radians(self.sigma_l_deg)) ** 2))
        b = np.linspace(-np.pi / 2, np.pi / 2, 20001)
        cb, total_b = _cdf(b, np.exp(-0.5 * ((b - np.radians(self.b_deg))
                                             / np.radians(self.sigma_b_deg)) ** 2) * np.cos(b))
        return {"dl": dl, "cl": cl, "b": b, "cb": cb, "norm": total_l * total_b}

    def intensity(self, vec: np.ndarray) -> np.ndarray:
        t = self._tab
        lon, lat = vec_to_lonlat(vec)
        dl = np.radians((lon - self.l_deg + 180.0) % 360.0 - 180.0)
        db = np.radians(lat - self.b_deg)
        g = (np.exp(-0.5 * (dl / np.radians(self.sigma_l_deg)) ** 2)
             * np.exp(-0.5 * (db / np.radians(self.sigma_b_deg)) ** 2))
        return self.flux * g / t["norm"]

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        t = self._tab
        dl = np.interp(rng.random(n), t["cl"], t["dl"])
        b = np.interp(rng.random(n), t["cb"], t["b"])
        return lonlat_to_vec(self.l_deg + np.degrees(dl), np.degrees(b))


@dataclass
class HealpixMapSource(SkyComponent):
    """A user map of intensity (ph cm⁻² s⁻¹ sr⁻¹), Galactic, RING, constant inside each pixel.

    Parameters
    ----------
    values : array_like, shape (12 nside²,)
        Non-negative intensities.
    """

    values: np.ndarray
    name: str = "map"
    flux: float = field(init=False)

    def __post_init__(self) -> None:
        self.values = np.asarray(self.values, dtype=np.float64)
        self.nside = hp.npix2nside(len(self.values))
        if np.any(~np.isfinite(self.values)) or np.any(self.values < 0):
            raise InvalidParameterError(f"{self.name}: map intensities must be finite and ≥ 0")
        self.flux = float(self.values.sum() * hp.nside2pixarea(self.nside))

    def intensity(self, vec: np.ndarray) -> np.ndarray:
        return self.values[hp.vec2pix(self.nside, vec[:, 0], vec[:, 1], vec[:, 2])]

    def pixel_flux(self, nside: int) -> np.ndarray:
        f = self.values * hp.nside2pixarea(self.nside)
        return f if nside == self.nside else hp.ud_grade(f, nside, power=-2)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        p = self.values / self.values.sum()
        pix = rng.choice(len(p), size=n, p=p)
        level = max(0, min(10, 29 - int(np.log2(self.nside))))
        nest = hp.ring2nest(self.nside, pix).astype(np.int64)
        child = nest * 4**level + rng.integers(0, 4**level, size=n)
        return np.stack(hp.pix2vec(self.nside * 2**level, child, nest=True), axis=-1)


@dataclass
class SkyModel:
    """A sum of sky components.

    Attributes
    ----------
    components : list of SkyComponent
    name : str
    """

    components: list
    name: str = "sky"

    @property
    def flux(self) -> float:
        """Total line flux (ph cm⁻² s⁻¹)."""
        return float(sum(c.flux for c in self.components))

    def intensity_map(self, nside: int) -> np.ndarray:
        """Pixel-averaged intensity (ph cm⁻² s⁻¹ sr⁻¹) on a Galactic RING map, shape (12 nside²,).

        Point sources contribute their flux divided by the pixel solid angle.
        """
        f = sum(c.pixel_flux(nside) for c in self.components)
        return f / hp.nside2pixarea(nside)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Draw ``n`` photon directions (Galactic unit vectors, (n, 3)) from the whole sky."""
        fl = np.array([c.flux for c in self.components], dtype=np.float64)
        which = rng.choice(len(fl), size=n, p=fl / fl.sum())
        out = np.empty((n, 3))
        for i, c in enumerate(self.components):
            sel = np.nonzero(which == i)[0]
            if len(sel):
                out[sel] = c.sample(len(sel), rng)
        return out


def _bulge() -> list:
    return [
        PointSource(0.0, 0.0, 1.2e-4, name="GC point source"),
        GaussianSource(-0.25, -1.25, 2.5, 2.8e-4, name="narrow bulge"),
        GaussianSource(0.0, 0.0, 8.7, 7.3e-4, name="broad bulge"),
    ]


def dc2_511_thin_disk() -> SkyModel:
    """The DC2 511 keV thin-disk sky (four components, total 2.83e-3 ph cm⁻² s⁻¹)."""
    return SkyModel(_bulge() + [EllipticalGaussianSource(0.0, 0.0, 90.0, 3.0, 1.7e-3,
                                                         name="thin disk")],
                    name="511_thin_disk")


def dc2_511_thick_disk() -> SkyModel:
    """Thick-disk variant: the same bulge, disk σ_l 60°, σ_b 10.5°, 1.7e-3 ph cm⁻² s⁻¹."""
    return SkyModel(_bulge() + [EllipticalGaussianSource(0.0, 0.0, 60.0, 10.5, 1.7e-3,
                                                         name="thick disk")],
                    name="511_thick_disk")
