"""The numerical steps of the Richardson–Lucy family as pure functions on flat float64 arrays.

Each function takes and returns plain ndarrays (shape (n_model,) for maps) so that it can be
tested against a slow, obvious loop and reused by every algorithm.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "em_delta",
    "acceleration_factor",
    "response_weighting_filter",
    "update_background_norm",
    "apply_minimum_and_mask",
]


def em_delta(model: np.ndarray, back_projected_ratio: np.ndarray,
             exposure: np.ndarray) -> np.ndarray:
    """Richardson–Lucy delta map δλ_j = λ_j (Σ_i r_i R_ij ΔΩ_j / E_j − 1).

    Parameters
    ----------
    model : ndarray, shape (n,)
        Current map λ.
    back_projected_ratio : ndarray, shape (n,)
        Σ_i r_i R_ij ΔΩ_j with r = X/ε.
    exposure : ndarray, shape (n,)
        E_j = Σ_i R_ij ΔΩ_j. Where it is zero the delta is 0.

    Returns
    -------
    ndarray, shape (n,)
    """
    factor = np.divide(back_projected_ratio, exposure, out=np.ones_like(model),
                       where=exposure > 0)
    factor -= 1.0
    return model * factor


def response_weighting_filter(exposure: np.ndarray, index: float) -> np.ndarray:
    """w_j = (E_j / max E)^β, shape like ``exposure``."""
    return (exposure / np.max(exposure)) ** index


def acceleration_factor(model: np.ndarray, delta: np.ndarray, alpha_max: float,
                        mask: np.ndarray | None = None) -> float:
    """Largest step α ≤ α_max keeping λ + α δλ ≥ 0, floored at 1.

    α = min( min_j {−λ_j/δλ_j : −λ_j/δλ_j > 0, δλ_j ≠ 0, j unmasked}, α_max ), then max(α, 1).
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = -model / delta
    usable = (delta != 0) & (ratio > 0)
    if mask is not None:
        usable &= mask
    alpha = min(float(np.min(ratio[usable])) if usable.any() else np.inf, float(alpha_max))
    return max(alpha, 1.0)


def update_background_norm(norm: float, ratio_dot_template: float, template_sum: float,
                           norm_range: tuple[float, float] | None = None) -> float:
    """EM update of a background normalisation: n ← n Σ_i r_i B_i / Σ_i B_i, clipped to range."""
    new = norm * ratio_dot_template / template_sum
    if norm_range is not None:
        new = min(max(new, norm_range[0]), norm_range[1])
    return float(new)


def apply_minimum_and_mask(model: np.ndarray, minimum_flux: float,
                           mask: np.ndarray | None) -> np.ndarray:
    """λ ← max(λ, minimum_flux); masked (False) pixels set to 0. Modifies and returns ``model``."""
    np.maximum(model, minimum_flux, out=model)
    if mask is not None:
        model[~mask] = 0.0
    return model
