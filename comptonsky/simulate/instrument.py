"""A detector-frame model of the COSI Compton telescope at a gamma-ray line.

A *model* built from published numbers (docs/design.md §6), not the COSI team's Monte-Carlo
response: photopeak area A(ν) = A₀ c(θ) η(ν)/η(ẑ), Compton angle from Klein–Nishina times a
trigger weight, stopping of the scattered photon in the germanium stack, Gaussian ARM and energy
noise (docs/simulator.md, "Instrument", states the model; the attributes of
:class:`InstrumentModel` hold its numbers). PsiChi is the reverse of the scattered photon's
flight direction, so a source at ν is seen on the cone angle(ν, PsiChi) = φ, as in the DC2 files.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from functools import cached_property

import healpy as hp
import numba
import numpy as np
from scipy.special import erf

from .._numba import njit
from ..errors import InvalidParameterError
from ..physics import klein_nishina, scattered_energy
from ..response.galactic import DetectorResponse, _subpixels

__all__ = ["InstrumentModel", "klein_nishina", "scattered_energy"]

logger = logging.getLogger(__name__)

_NTAB = 4097  # points of the tabulated functions of φ on [0, π]


@dataclass
class InstrumentModel:
    """Detector-frame photopeak response model at one gamma-ray line.

    Attributes
    ----------
    line_energy_kev : float
        Line energy E₀ (keV).
    on_axis_area_cm2 : float
        A₀: on-axis full-energy-peak area for Compton events, all measured energies (cm²).
        Calibrated so that the DC2 3-month exposure at the Galactic Centre in 509–513 keV is
        ≈ 9.7e7 cm² s (docs/design.md §6).
    area_index : float
        k in c(θ) = cos^k θ for the front hemisphere (half area near 50°; docs/design.md §6: ~half by
        40–50°, ~0 beyond 90°).
    back_fraction : float
        Leak through the bottom shield: c(θ) = back_fraction · |cos θ|^k for θ > 90°.
    hit_sigma_kev : float
        Energy resolution per hit (σ, keV; docs/design.md §6: 1.63 keV at 511 keV).
    n_hits : int
        Hits per event (2: σ_E = 2.3 keV, FWHM 5.4 keV).
    arm_fwhm_deg : float
        FWHM of the angular-resolution measure (deg; docs/design.md §6: ≈ 4° at 511 keV).
    threshold_kev, threshold_width_kev : float
        Soft trigger threshold on the first energy deposit (keV).
    stack_half_width_cm, stack_height_cm, first_hit_depth_cm : float
        Germanium stack: square footprint of half-width a, height h, first interaction at depth d
        below the top, centred laterally.
    mu_300_per_cm, mu_index : float
        Attenuation coefficient of germanium, μ(E) = μ₃₀₀ (E / 300 keV)^(−index) (cm⁻¹).
    """

    line_energy_kev: float = 511.0
    on_axis_area_cm2: float = 84.0
    area_index: float = 1.5
    back_fraction: float = 0.05
    hit_sigma_kev: float = 1.63
    n_hits: int = 2
    arm_fwhm_deg: float = 4.0
    threshold_kev: float = 20.0
    threshold_width_kev: float = 5.0
    stack_half_width_cm: float = 8.0
    stack_height_cm: float = 6.0
    first_hit_depth_cm: float = 1.5
    mu_300_per_cm: float = 0.55
    mu_index: float = 0.45

    def __post_init__(self) -> None:
        if not self.line_energy_kev > 0:
            raise InvalidParameterError(f"line energy must be positive, got {self.line_energy_kev}")
        if not 0 < self.first_hit_depth_cm < self.stack_height_cm:
            raise InvalidParameterError("first_hit_depth_cm must lie inside the stack height")

    # ---------------------------------------------------------------------------------------
    # scalar physics

    @property
    def energy_sigma_kev(self) -> float:
        """σ of the measured energy of a photopeak event (keV)."""
        return float(self.hit_sigma_kev * np.sqrt(self.n_hits))

    @property
    def arm_sigma_rad(self) -> float:
        """σ of the Gaussian ARM (rad)."""
        return float(np.radians(self.arm_fwhm_deg) / (2.0 * np.sqrt(2.0 * np.log(2.0))))

    def energy_fractions(self, em_edges_kev: np.ndarray) -> np.ndarray:
        """Fraction of photopeak events whose measured energy falls in each Em bin.

        Parameters
        ----------
        em_edges_kev : array_like, shape (M + 1,)
            Measured-energy bin edges (keV).

        Returns
        -------
        ndarray, shape (M,)
        """
        e = (np.asarray(em_edges_kev, dtype=np.float64) - self.line_energy_kev)
        c = 0.5 * erf(e / (np.sqrt(2.0) * self.energy_sigma_kev))
        return np.diff(c)

    def area_factor(self, cos_theta: np.ndarray) -> np.ndarray:
        """c(θ): geometric/shielding factor of the photopeak area (dimensionless, ≤ 1)."""
        ct = np.asarray(cos_theta, dtype=np.float64)
        front = np.clip(ct, 0.0, 1.0) ** self.area_index
        back = self.back_fraction * np.clip(-ct, 0.0, 1.0) ** self.area_index
        return np.where(ct >= 0, front, back)

    def mu(self, energy_kev: np.ndarray) -> np.ndarray:
        """Attenuation coefficient of germanium (cm⁻¹) at ``energy_kev``."""
        return self.mu_300_per_cm * (np.asarray(energy_kev) / 300.0) ** (-self.mu_index)

    def detection_weight(self, phi: np.ndarray) -> np.ndarray:
        """Probability that the first deposit E₀ − E′(φ) passes the trigger threshold."""
        e1 = self.line_energy_kev - scattered_energy(phi, self.line_energy_kev)
        return 0.5 * (1.0 + erf((e1 - self.threshold_kev)
                                / (np.sqrt(2.0) * self.threshold_width_kev)))

    def path_length(self, flight_dir: np.ndarray) -> np.ndarray:
        """Path (cm) from the first interaction to the stack surface along ``flight_dir``.

        Parameters
        ----------
        flight_dir : array_like, shape (..., 3)
            Detector-frame unit vectors of the scattered photon's flight direction.
        """
        d = np.asarray(flight_dir, dtype=np.float64)
        with np.errstate(divide="ignore"):
            lx = self.stack_half_width_cm / np.abs(d[..., 0])
            ly = self.stack_half_width_cm / np.abs(d[..., 1])
            up = self.first_hit_depth_cm
            down = self.stack_height_cm - self.first_hit_depth_cm
            lz = np.where(d[..., 2] > 0, up, down) / np.abs(d[..., 2])
        return np.minimum(np.minimum(lx, ly), lz)

    def acceptance(self, flight_dir: np.ndarray, phi: np.ndarray) -> np.ndarray:
        """Probability that the scattered photon (flight direction, scatter angle) is stopped."""
        e2 = scattered_energy(phi, self.line_energy_kev)
        return -np.expm1(-self.mu(e2) * self.path_length(flight_dir))

    # ---------------------------------------------------------------------------------------
    # tabulated distributions

    @cached_property
    def _table(self) -> dict:
        phi = np.linspace(0.0, np.pi, _NTAB)
        q = klein_nishina(phi, self.line_energy_kev) * self.detection_weight(phi)
        pdf = q * 2.0 * np.pi * np.sin(phi)  # density in φ of the detected scatters
        cdf = np.concatenate([[0.0], np.cumsum(0.5 * (pdf[1:] + pdf[:-1]) * np.diff(phi))])
        norm = cdf[-1]
        mu2 = self.mu(scattered_energy(phi, self.line_energy_kev))
        return {"phi": phi, "q_per_sr": q / norm, "cdf": cdf / norm, "mu": mu2,
                "eta0": float(self.eta(np.array([[0.0, 0.0, 1.0]]))[0])}

    def sample_phi(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Draw ``n`` true Compton angles (rad) from Klein–Nishina × detection weighting."""
        t = self._table
        return np.interp(rng.random(n), t["cdf"], t["phi"])

    def eta(self, nu: np.ndarray, n_phi: int = 360, n_az: int = 72) -> np.ndarray:
        """Mean stopping probability of the scattered photon for incoming directions ``nu``.

        Parameters
        ----------
        nu : array_like, shape (N, 3)
            Detector-frame unit vectors towards the source.

        Returns
        -------
        ndarray, shape (N,)
        """
        nu = np.atleast_2d(np.asarray(nu, dtype=np.float64))
        phi = (np.arange(n_phi) + 0.5) * np.pi / n_phi
        q = klein_nishina(phi, self.line_energy_kev) * self.detection_weight(phi)
        wphi = q * np.sin(phi)
        wphi /= wphi.sum()
        az = (np.arange(n_az) + 0.5) * 2 * np.pi / n_az
        out = np.empty(len(nu))
        for i, v in enumerate(nu):
            kin = -v
            e1, e2 = _perp_basis(kin[None, :])
            cp, sp = np.cos(phi)[:, None, None], np.sin(phi)[:, None, None]
            ring = (np.cos(az)[None, :, None] * e1[0] + np.sin(az)[None, :, None] * e2[0])
            ks = cp * kin + sp * ring  # (n_phi, n_az, 3)
            acc = self.acceptance(ks, phi[:, None]).mean(axis=1)
            out[i] = float(np.sum(wphi * acc))
        return out

    @property
    def eta0(self) -> float:
        """η(ẑ): acceptance-weighted detection probability on axis."""
        return self._table["eta0"]

    def effective_area(self, nu: np.ndarray, em_edges_kev: np.ndarray | None = None) -> np.ndarray:
        """Photopeak effective area (cm²) for sources at detector-frame directions ``nu``.

        Parameters
        ----------
        nu : array_like, shape (N, 3)
            Unit vectors towards the sources (detector frame).
        em_edges_kev : array_like, optional
            If given, only events with measured energy inside ``[edges[0], edges[-1]]`` count.
        """
        nu = np.atleast_2d(np.asarray(nu, dtype=np.float64))
        a = self.on_axis_area_cm2 * self.area_factor(nu[:, 2]) * self.eta(nu) / self.eta0
        if em_edges_kev is not None:
            a = a * self.energy_fractions(em_edges_kev).sum()
        return a

    # ---------------------------------------------------------------------------------------
    # event sampling

    def sample_events(self, nu: np.ndarray, rng: np.random.Generator,
                      area_scale: float = 1.0) -> dict[str, np.ndarray]:
        """Turn candidate photons into detected photopeak events (thinning).

        Candidates must arrive at the rate ``flux × candidate_area_cm2 × area_scale``; each is
        kept with the probability that makes the kept rate ``flux × A(ν)``.

        Parameters
        ----------
        nu : ndarray, shape (N, 3)
            Detector-frame unit vectors towards the source of each candidate.
        rng : numpy.random.Generator
        area_scale : float
            An upper bound of c(θ) over the directions the candidates can come from (see
            :meth:`max_area_factor`); 1 in general, the back-leak fraction for photons that
            only come from below. Smaller bounds waste fewer candidates.

        Returns
        -------
        dict
            ``keep`` (N,) bool and, for the kept events (K of them): ``phi`` measured Compton
            angle (rad), ``psichi`` (K, 3) detector-frame PsiChi unit vectors, ``energy`` (keV),
            ``distance`` (cm).
        """
        n = len(nu)
        if not 0.0 < area_scale <= 1.0:
            raise InvalidParameterError(f"area_scale must lie in (0, 1], got {area_scale}")
        factor = self.area_factor(nu[:, 2])
        if area_scale < 1.0 and np.any(factor > area_scale * (1.0 + 1e-9)):
            raise InvalidParameterError(
                f"area_scale {area_scale:g} is below the area factor {factor.max():g} of a "
                "candidate direction; use max_area_factor() of the directions' region")
        keep = rng.random(n) * area_scale < factor
        phi_t = self.sample_phi(n, rng)
        az = rng.random(n) * 2.0 * np.pi
        kin = -nu
        e1, e2 = _perp_basis(kin)
        ks = (np.cos(phi_t)[:, None] * kin + np.sin(phi_t)[:, None]
              * (np.cos(az)[:, None] * e1 + np.sin(az)[:, None] * e2))
        acc = self.acceptance(ks, phi_t)
        keep &= rng.random(n) < acc
        phi_m = phi_t + rng.normal(0.0, self.arm_sigma_rad, n)
        keep &= (phi_m >= 0.0) & (phi_m <= np.pi)
        energy = self.line_energy_kev + rng.normal(0.0, self.energy_sigma_kev, n)
        # first-to-second interaction distance: truncated exponential inside the stack
        mu2 = self.mu(scattered_energy(phi_t, self.line_energy_kev))
        lpath = self.path_length(ks)
        dist = -np.log1p(-rng.random(n) * -np.expm1(-mu2 * lpath)) / mu2
        return {"keep": keep, "phi": phi_m[keep], "psichi": -ks[keep], "energy": energy[keep],
                "distance": dist[keep]}

    def max_area_factor(self, cos_theta_max: float) -> float:
        """Largest c(θ) over the detector-frame directions with cos θ ≤ ``cos_theta_max``.

        For photons that can only arrive from below (the Earth disk of a zenith-pointed
        instrument) this is the back-leak fraction, so candidates for them can be drawn
        ``1 / back_fraction`` times more sparsely (``area_scale`` of :meth:`sample_events`).
        """
        c = float(np.clip(cos_theta_max, -1.0, 1.0))
        back = float(self.area_factor(np.array(-1.0)))
        return max(back, float(self.area_factor(np.array(c)))) if c >= 0 else back

    @property
    def candidate_area_cm2(self) -> float:
        """Area (cm²) at which candidate photons must be generated for :meth:`sample_events`."""
        return self.on_axis_area_cm2 / self.eta0

    # ---------------------------------------------------------------------------------------
    # binned detector-frame response

    def detector_response(self, nside_nu: int, nside_psichi: int, phi_edges_deg: np.ndarray,
                          em_edges_kev: np.ndarray, oversample: int | None = None,
                          threshold: float = 1e-4) -> DetectorResponse:
        """Binned detector-frame response R_det[ν, Ei, Em, Phi, PsiChi] (cm²).

        Each local sky pixel ν is represented by its centre (a point-source response); each
        PsiChi pixel is integrated over ``4**oversample`` sub-pixels and each Phi bin exactly
        (Gaussian ARM). Values below ``threshold`` × the largest value of a ν row are dropped
        (1e-4 loses < 1e-4 of the area and a fifth of the entries).

        Parameters
        ----------
        nside_nu, nside_psichi : int
            HEALPix resolution (RING) of the source-direction and PsiChi axes.
        phi_edges_deg : array_like, shape (F + 1,)
            Compton-angle bin edges (deg).
        em_edges_kev : array_like, shape (M + 1,)
            Measured-energy bin edges (keV).
        oversample : int, optional
            Sub-pixel level; by default chosen so sub-pixels are ≤ 0.7 × the ARM σ.

        Returns
        -------
        comptonsky.response.galactic.DetectorResponse
        """
        phi_edges = np.radians(np.asarray(phi_edges_deg, dtype=np.float64))
        em_frac = self.energy_fractions(em_edges_kev)
        sigma = self.arm_sigma_rad
        pix_size = np.sqrt(4 * np.pi / hp.nside2npix(nside_psichi))
        if oversample is None:
            oversample = int(max(0, np.ceil(np.log2(pix_size / (0.7 * sigma)))))
        nsub = 4**oversample
        npix_p = hp.nside2npix(nside_psichi)
        sub = _subpixels(nside_psichi, np.arange(npix_p), oversample)
        lpath = self.path_length(-sub)  # flight direction is −PsiChi
        nu = np.stack(hp.pix2vec(nside_nu, np.arange(hp.nside2npix(nside_nu))), axis=-1)
        tab = self._table
        scale = (self.on_axis_area_cm2 / self.eta0) * self.area_factor(nu[:, 2])
        dphi = np.min(np.diff(phi_edges))
        spread = 2.5 * pix_size
        width = int(np.ceil((2 * 4.5 * sigma + spread) / dphi)) + 2
        logger.info("detector response: %d nu x %d Phi x %d PsiChi, %d sub-pixels, band %d",
                    len(nu), len(phi_edges) - 1, npix_p, nsub, width)
        blocks = []
        chunk = max(1, int(1e7 // (npix_p * width)))
        for c0 in range(0, len(nu), chunk):
            sl = slice(c0, min(len(nu), c0 + chunk))
            start = np.zeros((sl.stop - sl.start, npix_p), dtype=np.int32)
            vals = np.zeros((sl.stop - sl.start, npix_p, width), dtype=np.float64)
            _band_kernel(nu[sl], sub, lpath, 4 * np.pi / npix_p / nsub, tab["phi"],
                         tab["q_per_sr"], tab["mu"], phi_edges, sigma, 4.5, start, vals, _CDF_TAB)
            vals *= scale[sl, None, None]
            blocks.append(_band_to_csr(start, vals, em_frac, len(phi_edges) - 1, threshold))
            del start, vals
        # from_row_blocks hands the freed block memory back to the OS as it joins
        return DetectorResponse.from_row_blocks(blocks, nside_nu=nside_nu,
                                                nside_psichi=nside_psichi,
                                                shape_k=(1, len(em_frac), len(phi_edges) - 1))


def _perp_basis(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two unit vectors orthogonal to each row of ``v`` (N, 3) and to each other."""
    helper = np.where(np.abs(v[:, 2:3]) < 0.9, np.array([0.0, 0.0, 1.0]), np.array([1.0, 0.0, 0.0]))
    e1 = np.cross(v, helper)
    e1 /= np.linalg.norm(e1, axis=1, keepdims=True)
    e2 = np.cross(v, e1)
    return e1, e2


_CDF_HALF = 6.0  # the Gaussian CDF table spans ±6 σ
_CDF_X = np.linspace(-_CDF_HALF, _CDF_HALF, 24001)
_CDF_TAB = 0.5 * (1.0 + erf(_CDF_X / np.sqrt(2.0)))


@njit(cache=True, inline="always")
def _gauss_cdf(x, tab):
    if x <= -_CDF_HALF:
        return 0.0
    if x >= _CDF_HALF:
        return 1.0
    u = (x + _CDF_HALF) * ((tab.shape[0] - 1) / (2.0 * _CDF_HALF))
    k = int(u)
    f = u - k
    return tab[k] * (1.0 - f) + tab[k + 1] * f


@njit(parallel=True, cache=True)
def _band_kernel(nu, sub, lpath, sub_area, tphi, tq, tmu, edges, sigma, nsig, start, vals, cdf):
    nnu = nu.shape[0]
    npix, nsub = sub.shape[0], sub.shape[1]
    nbin = edges.shape[0] - 1
    width = vals.shape[2]
    dt = tphi[1] - tphi[0]
    ntab = tphi.shape[0]
    inv = 1.0 / sigma
    for i in numba.prange(nnu):
        ang = np.empty(nsub)
        for p in range(npix):
            amin = 10.0
            for s in range(nsub):
                c = nu[i, 0] * sub[p, s, 0] + nu[i, 1] * sub[p, s, 1] + nu[i, 2] * sub[p, s, 2]
                c = min(1.0, max(-1.0, c))
                a = math.acos(c)
                ang[s] = a
                amin = min(amin, a)
            # the bin holding amin − nsig σ: the last edge at or below it
            b0 = min(max(np.searchsorted(edges, amin - nsig * sigma, side="right") - 1, 0),
                     nbin - 1)
            start[i, p] = b0
            for s in range(nsub):
                a = ang[s]
                x = a / dt
                k = min(int(x), ntab - 2)
                f = x - k
                q = tq[k] * (1 - f) + tq[k + 1] * f
                mu = tmu[k] * (1 - f) + tmu[k + 1] * f
                w = sub_area * q * (1.0 - math.exp(-mu * lpath[p, s]))
                if w <= 0.0:
                    continue
                b = b0
                lower = _gauss_cdf((edges[b] - a) * inv, cdf)
                while b < nbin and b - b0 < width and edges[b] < a + nsig * sigma:
                    upper = _gauss_cdf((edges[b + 1] - a) * inv, cdf)
                    vals[i, p, b - b0] += w * (upper - lower)
                    lower = upper
                    b += 1


def _band_to_csr(start, vals, em_frac, nphi, threshold):
    """Convert a banded block (ν, p, band) to one CSR row block over k = (Ei, Em, Phi) and p.

    Returns ``(counts, col_p, col_k, val)``: entries per ν row, then the entries of all rows,
    each row sorted by (p, k). Built with whole-block array operations, so the block's entries
    live in a few large arrays rather than thousands of small ones (which the C heap keeps
    after they are freed).
    """
    nnu, npix, width = vals.shape
    nem = len(em_frac)
    vmax = vals.reshape(nnu, -1).max(axis=1)
    bins = start[:, :, None] + np.arange(width, dtype=np.int32)[None, None, :]
    mask = (bins < nphi) & (vals > (threshold * vmax)[:, None, None]) & \
        (vmax > 0)[:, None, None]
    i_idx, p_idx, w_idx = np.nonzero(mask)
    phi_idx = bins[i_idx, p_idx, w_idx]
    val = vals[i_idx, p_idx, w_idx]
    del mask, bins
    # k = em * nphi + phi (single Ei bin); within a row sort by (p, k)
    k = (np.arange(nem, dtype=np.int64)[:, None] * nphi + phi_idx[None, :]).ravel()
    pp = np.broadcast_to(p_idx, (nem, len(p_idx))).ravel()
    ii = np.broadcast_to(i_idx, (nem, len(i_idx))).ravel()
    vv = (em_frac[:, None] * val[None, :]).ravel()
    order = np.lexsort((k, pp, ii)) if nem > 1 else np.arange(len(k))
    counts = np.bincount(i_idx, minlength=nnu).astype(np.int64) * nem
    return (counts, pp[order].astype(np.int32), k[order].astype(np.int32),
            vv[order].astype(np.float32))
