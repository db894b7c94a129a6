"""Small synthetic problems for tests, examples and the quick demo.

:func:`toy_problem` builds a Galactic-CDS response with a simple Compton-cone shape (for each
sky pixel and Phi bin, a Gaussian ring of counts on the PsiChi sphere at angular distance Phi),
a smooth background template and Poisson counts from a known sky. It is a stand-in for tests;
the physical instrument model lives in :mod:`comptonsky.simulate`.
"""

from __future__ import annotations

from dataclasses import dataclass

import healpy as hp
import numpy as np
from astropy import units as u
from histpy import Axis, HealpixAxis, Histogram

__all__ = ["ToyProblem", "toy_problem"]


@dataclass
class ToyProblem:
    """Response, truth, background template and counts of a synthetic observation."""

    response: Histogram  # (NuLambda, Ei, Em, Phi, PsiChi), cm2 s
    truth: np.ndarray  # (npix, 1), cm-2 s-1 sr-1
    background: Histogram  # (Em, Phi, PsiChi) expected counts
    event: Histogram  # (Em, Phi, PsiChi) Poisson counts of source + background
    signal_expectation: np.ndarray  # (Em*Phi*PsiChi,)


def toy_problem(nside: int = 4, phi_bin_deg: float = 15.0,
                exposure_cm2s: float = 1e8, ring_width_deg: float = 8.0,
                source_flux: float = 3e-3, background_counts: float = 2e4,
                n_dead_pixels: int = 0, seed: int = 0) -> ToyProblem:
    """Build a small deterministic problem.

    Parameters
    ----------
    nside : int
        HEALPix NSIDE of the sky pixels and of PsiChi.
    phi_bin_deg : float
        Compton-angle bin width (0–180°).
    exposure_cm2s : float
        Peak exposure of a sky pixel (cm² s) summed over the data space.
    ring_width_deg : float
        Gaussian width of the Compton ring on the PsiChi sphere.
    source_flux : float
        Total flux of the sky (cm⁻² s⁻¹), split between a disk and a bulge.
    background_counts : float
        Expected total background counts.
    n_dead_pixels : int
        Number of sky pixels given zero exposure (to exercise the automatic mask).
    seed : int
        Random seed for the counts.
    """
    rng = np.random.default_rng(seed)
    npix = hp.nside2npix(nside)
    phi_edges = np.arange(0.0, 180.0 + 1e-9, phi_bin_deg)
    phi_centres = np.radians(0.5 * (phi_edges[1:] + phi_edges[:-1]))
    sky = np.array(hp.pix2vec(nside, np.arange(npix)))  # (3, npix)
    cds = np.array(hp.pix2vec(nside, np.arange(npix)))  # PsiChi directions, (3, npix)
    cosd = np.clip(sky.T @ cds, -1, 1)  # (npix, npix)
    dist = np.arccos(cosd)
    width = np.radians(ring_width_deg)
    # Klein-Nishina-like weight favouring small Compton angles; effective area ~ cos(zenith)
    phi_weight = np.sin(phi_centres) * (1 + np.cos(phi_centres) ** 2) * np.exp(-phi_centres)
    lon, lat = hp.pix2ang(nside, np.arange(npix), lonlat=True)
    area = 0.3 + 0.7 * np.cos(np.radians(lat)) ** 2 * (1 + 0.3 * np.cos(np.radians(lon)))
    rings = np.exp(-0.5 * ((dist[:, None, :] - phi_centres[None, :, None]) / width) ** 2)
    rings *= phi_weight[None, :, None]
    rings /= rings.sum(axis=(1, 2), keepdims=True)
    rsp = rings * (exposure_cm2s * area)[:, None, None]
    if n_dead_pixels:
        rsp[rng.choice(npix, n_dead_pixels, replace=False)] = 0.0
    rsp = rsp[:, None, None, :, :]  # NuLambda, Ei, Em, Phi, PsiChi
    e_axis = [509.0, 513.0] * u.keV
    response = Histogram(
        [HealpixAxis(nside=nside, coordsys="galactic", label="NuLambda"),
         Axis(e_axis, label="Ei"), Axis(e_axis, label="Em"),
         Axis(phi_edges * u.deg, label="Phi"),
         HealpixAxis(nside=nside, coordsys="galactic", label="PsiChi")],
        contents=rsp, unit=u.cm**2 * u.s)
    # truth: thin disk + bulge (intensity in cm-2 s-1 sr-1)
    lwrap = np.where(lon > 180, lon - 360, lon)
    disk = np.exp(-0.5 * (lat / 5.0) ** 2) * np.exp(-0.5 * (lwrap / 60.0) ** 2)
    bulge = np.exp(-0.5 * (lat**2 + lwrap**2) / 10.0**2)
    shape = 0.6 * disk / disk.sum() + 0.4 * bulge / bulge.sum()
    pixarea = hp.nside2pixarea(nside)
    truth = (source_flux * shape / pixarea)[:, None]
    matrix = rsp.reshape(npix, -1)
    signal = (truth[:, 0] * pixarea) @ matrix
    data_axes = [Axis(e_axis, label="Em"), Axis(phi_edges * u.deg, label="Phi"),
                 HealpixAxis(nside=nside, coordsys="galactic", label="PsiChi")]
    bshape = np.exp(-phi_centres)[:, None] * (1.5 + cds[2])[None, :]
    bkg_values = background_counts * bshape / bshape.sum()
    background = Histogram(data_axes, contents=bkg_values[None])
    counts = rng.poisson(signal + bkg_values.reshape(-1)).astype(np.float64)
    event = Histogram(data_axes, contents=counts.reshape(bkg_values[None].shape))
    return ToyProblem(response, truth, background, event, signal)
