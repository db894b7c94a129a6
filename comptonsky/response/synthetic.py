"""A synthetic Compton-cone response, for tests and benchmarks at any shape (DC2 included).

The model, stated once: for a sky pixel j (direction n_j) and a Compton scatter-angle bin φ
(centre φ_c), the photons land on the PsiChi sphere on a ring of angular radius φ_c around n_j,
with a Gaussian radial profile of width ``ring_width`` (≈ the angular resolution measure, ARM):

    R[j, 0, 0, φ, p] = A(n_j) · KN(φ_c) · g(|∠(n_j, p) − φ_c|) / Σ_p' g(|∠(n_j, p') − φ_c|)

with g(x) = exp(−x²/2σ²), KN the Klein–Nishina scatter-angle distribution at 511 keV (normalised
over the Phi bins) and A a smooth effective exposure (cm² s) that depends on Galactic latitude
(a zenith-pointing equatorial orbit sees the sky unevenly). Rings are renormalised over the
sphere so each (j, φ) carries exactly A·KN. Entries more than ``cutoff`` σ from the ring are
exactly zero, which makes the matrix sparse: about sin φ · 2·cutoff·σ / 2 of the sphere is
non-zero per ring, ≈ 8 % of the dense matrix at DC2 shape with σ = 2° and cutoff = 4.

This is not the COSI instrument; it has the response's shape, units and sparsity structure.
"""

from __future__ import annotations

import healpy as hp
import numpy as np
from astropy import units as u
from histpy import Axes, Axis, HealpixAxis, Histogram

from ..physics import klein_nishina

__all__ = ["cone_response", "fill_cone_rows", "cone_axes"]

def cone_axes(nside: int = 16, n_phi: int = 60, energy_edges=(509.0, 513.0)) -> Axes:
    """Axes ``(NuLambda, Ei, Em, Phi, PsiChi)`` of a Galactic point-source response: HEALPix
    ``nside`` (RING) sky and PsiChi, ``n_phi`` Compton-angle bins over 0–180°, one energy band
    (``energy_edges`` in keV)."""
    edges = u.Quantity(energy_edges, u.keV)
    return Axes([
        HealpixAxis(nside=nside, coordsys="galactic", label="NuLambda"),
        Axis(edges, label="Ei", scale="linear"),
        Axis(edges, label="Em", scale="linear"),
        Axis(np.linspace(0.0, 180.0, n_phi + 1) * u.deg, label="Phi", scale="linear"),
        HealpixAxis(nside=nside, coordsys="galactic", label="PsiChi"),
    ])


def fill_cone_rows(out: np.ndarray, rows: slice, nside: int, n_phi: int,
                   ring_width_deg: float = 2.0, cutoff: float = 4.0,
                   exposure_cm2s: float = 9.7e7) -> None:
    """Write response rows ``rows`` (sky pixels) of the cone model into ``out``.

    Parameters
    ----------
    out : ndarray, shape (len(rows), n_phi, 12 nside²)
        Destination (any float dtype); rows of the (NuLambda, Phi, PsiChi) response in cm² s.
    rows : slice
        Sky pixels to fill.
    nside, n_phi, ring_width_deg, cutoff, exposure_cm2s
        Model parameters (see module docstring); ``exposure_cm2s`` is A at the Galactic Centre.
    """
    npix = hp.nside2npix(nside)
    pix = np.arange(npix)[rows]
    vec_sky = np.array(hp.pix2vec(nside, pix)).T                     # (m, 3)
    vec_psi = np.array(hp.pix2vec(nside, np.arange(npix)))           # (3, npix)
    dist = np.arccos(np.clip(vec_sky @ vec_psi, -1.0, 1.0))           # (m, npix) rad
    phi_edges = np.linspace(0.0, np.pi, n_phi + 1)
    phi_c = 0.5 * (phi_edges[1:] + phi_edges[:-1])
    kn = klein_nishina(phi_c, 511.0) * np.sin(phi_c)  # per unit Compton angle
    kn = kn / kn.sum()
    sigma = np.deg2rad(ring_width_deg)
    b = np.arcsin(np.clip(vec_sky[:, 2], -1, 1))
    area = exposure_cm2s * (0.35 + 0.65 * np.cos(b) ** 2)              # smooth, cm² s
    for k in range(n_phi):
        x = (dist - phi_c[k]) / sigma
        ring = np.exp(-0.5 * x * x)
        ring[np.abs(x) > cutoff] = 0.0
        norm = ring.sum(axis=1, keepdims=True)
        norm[norm == 0] = 1.0
        out[:, k, :] = ring * ((area * kn[k])[:, None] / norm)


def cone_response(nside: int = 4, n_phi: int = 12, ring_width_deg: float = 10.0,
                  cutoff: float = 4.0, dtype=np.float64) -> Histogram:
    """The cone-model response (:func:`fill_cone_rows`) as a histpy Histogram with axes
    :func:`cone_axes`, unit cm² s, shape (12 nside², 1, 1, n_phi, 12 nside²); small shapes."""
    axes = cone_axes(nside, n_phi)
    npix = hp.nside2npix(nside)
    contents = np.zeros((npix, 1, 1, n_phi, npix), dtype=dtype)
    fill_cone_rows(contents[:, 0, 0], slice(0, npix), nside, n_phi, ring_width_deg, cutoff)
    return Histogram(axes, contents=contents, unit=u.cm ** 2 * u.s, copy_contents=False)
