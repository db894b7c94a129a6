"""Priors for maximum-a-posteriori deconvolution (``MAP_RL``).

Each prior has ``log_prior(model)`` (a number) and ``grad_log_prior(model)`` (∂ log P / ∂λ,
shape like ``model``). Maps are (npix, n_energy) arrays in the model's unit.
"""

from __future__ import annotations

import healpy as hp
import numpy as np
from astropy import units as u

from ..errors import AxisMismatchError
from ..io.histogram import open_histogram

__all__ = ["GammaPrior", "TSVPrior", "EntropyPrior", "EnergyTSVPrior", "healpix_neighbours",
           "reference_map_from_file"]

#: Added to λ inside the gamma log-prior so that λ = 0 stays finite (float64 machine epsilon).
LOG_EPSILON = float(np.finfo(np.float64).eps)


def healpix_neighbours(nside: int, nested: bool = False) -> np.ndarray:
    """The 8 HEALPix neighbours of every pixel, shape (npix, 8).

    Missing neighbours (healpy's −1, at the few pixels with only 7) are replaced by the pixel
    itself, so they contribute nothing to differences.
    """
    npix = hp.nside2npix(nside)
    theta, phi = hp.pix2ang(nside, np.arange(npix), nest=nested)
    neighbours = hp.get_all_neighbours(nside, theta, phi, nest=nested).T  # (npix, 8)
    own = np.broadcast_to(np.arange(npix)[:, None], neighbours.shape)
    return np.where(neighbours < 0, own, neighbours)


class GammaPrior:
    """Independent gamma prior with shape k and scale θ on each value.

    log P = (k − 1) Σ log(x + ε) − Σ x / θ (constants dropped); θ = ∞ means no exponential
    cut-off, k = 1 and θ = ∞ is flat.
    """

    def __init__(self, k: float = 1.0, theta: float = np.inf):
        self.k = float(k)
        self.theta = float(theta)

    @property
    def inverse_theta(self) -> float:
        return 0.0 if np.isinf(self.theta) else 1.0 / self.theta

    def log_prior(self, values: np.ndarray) -> float:
        values = np.asarray(values, dtype=np.float64)
        return float((self.k - 1.0) * np.sum(np.log(values + LOG_EPSILON))
                     - np.sum(values) * self.inverse_theta)


class TSVPrior:
    """Total squared variation over the 8 HEALPix neighbours, per energy band.

    log P = −c Σ_j Σ_{q∈N(j)} (λ_j − λ_q)²; its gradient is taken as
    −4 c Σ_{q∈N(j)} (λ_j − λ_q) (each pair counted from both sides).
    """

    def __init__(self, coefficient: float, nside: int, nested: bool = False):
        self.coefficient = float(coefficient)
        self.neighbours = healpix_neighbours(nside, nested)

    def _differences(self, model: np.ndarray) -> np.ndarray:
        return model[:, None, :] - model[self.neighbours, :]  # (npix, 8, n_energy)

    def log_prior(self, model: np.ndarray) -> float:
        return float(-self.coefficient * np.sum(self._differences(model) ** 2))

    def grad_log_prior(self, model: np.ndarray) -> np.ndarray:
        return -4.0 * self.coefficient * np.sum(self._differences(model), axis=1)


class EntropyPrior:
    """Maximum-entropy prior against a reference intensity m (a number or a map).

    log P = c Σ_j λ_j (1 − log(λ_j / m_j)); gradient −c log(λ_j / m_j). The log-prior is largest
    at λ = m. ``reference`` is a float or an array of shape (npix, n_energy) in the model unit
    (``prior:entropy:reference_map: {value, unit}`` or ``{file}``).
    """

    def __init__(self, coefficient: float, reference: float | np.ndarray):
        self.coefficient = float(coefficient)
        self.reference = reference

    def log_prior(self, model: np.ndarray) -> float:
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = model * (1.0 - np.log(model / self.reference))
        return float(self.coefficient * np.sum(np.where(model > 0, terms, 0.0)))

    def grad_log_prior(self, model: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore"):
            return -self.coefficient * np.log(model / self.reference)


class EnergyTSVPrior:
    """Smoothness across neighbouring energy bands, pixel by pixel.

    log P = −c Σ_j Σ_k (λ_{j,k+1} − λ_{j,k})²  (maps of shape (npix, n_energy), model unit);
    gradient ∂ log P/∂λ_{j,k} = −2c [(λ_{j,k} − λ_{j,k−1}) + (λ_{j,k} − λ_{j,k+1})], a missing
    neighbour band contributing nothing. With one energy band it is identically zero.
    """

    def __init__(self, coefficient: float):
        self.coefficient = float(coefficient)

    def log_prior(self, model: np.ndarray) -> float:
        return float(-self.coefficient * np.sum(np.diff(model, axis=1) ** 2))

    def grad_log_prior(self, model: np.ndarray) -> np.ndarray:
        diff = np.diff(model, axis=1)  # λ_{k+1} − λ_k, shape (npix, n_energy − 1)
        grad = np.zeros_like(model, dtype=np.float64)
        grad[:, 1:] -= diff   # −(λ_k − λ_{k−1})
        grad[:, :-1] += diff  # −(λ_k − λ_{k+1})
        return 2.0 * self.coefficient * grad


def reference_map_from_file(path, model_axes, unit) -> np.ndarray:
    """A reference map (histpy HDF5, axes lb, Ei or lb only) as an array (npix, n_energy).

    Parameters
    ----------
    path : path-like
        histpy HDF5 file.
    model_axes : histpy.Axes
        The model axes it must match (NSIDE, scheme, number of energy bands).
    unit : astropy.units.Unit
        The model unit the values are converted to.
    """
    hist = open_histogram(path)
    values = hist.contents
    values = u.Quantity(values, hist.unit).to_value(unit) if hist.unit is not None else \
        np.asarray(values)
    lb = model_axes[0]
    shape = tuple(int(n) for n in model_axes.nbins)
    if hist.axes[0].nside != lb.nside:
        raise AxisMismatchError(f"{path}: map has HEALPix nside {hist.axes[0].nside}, the model "
                                f"has nside {lb.nside}")
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 1:
        values = np.repeat(values[:, None], shape[1], axis=1)
    if values.shape != shape:
        raise AxisMismatchError(f"{path}: map has shape {values.shape}, the model has {shape} "
                                "(pixels, energy bands)")
    if str(hist.axes[0].scheme).lower() != str(lb.scheme).lower():
        order = "n2r" if str(hist.axes[0].scheme).lower() == "nested" else "r2n"
        values = np.stack([hp.reorder(values[:, k], **{order: True})
                           for k in range(shape[1])], axis=1)
    return values
