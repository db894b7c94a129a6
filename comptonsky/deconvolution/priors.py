"""Priors for maximum-a-posteriori deconvolution (``MAP_RL``).

Each prior has ``log_prior(model)`` (a number) and ``grad_log_prior(model)`` (∂ log P / ∂λ,
shape like ``model``). Maps are (npix, n_energy) arrays in the model's unit.
"""

from __future__ import annotations

import healpy as hp
import numpy as np

__all__ = ["GammaPrior", "TSVPrior", "EntropyPrior", "healpix_neighbours"]

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
    """Maximum-entropy prior against a reference intensity m.

    log P = c Σ_j λ_j (1 − log(λ_j / m)); gradient −c log(λ_j / m).
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
