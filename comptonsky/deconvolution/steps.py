"""The numerical steps of the Richardson–Lucy family as pure functions on flat float64 arrays.

Maps are shape (n_model,) in the model unit, background norms ``{name: n}``. No function
modifies its inputs. The algorithms (:mod:`.algorithms`) are compositions of these steps:

* E-step: expected counts and ratios X/ε (:class:`~.joint.JointData`);
* EM step: :func:`em_delta`, :func:`background_steps` (ML); :func:`map_em`,
  :func:`map_background_norms`, :func:`prior_filter` (MAP);
* filters: :func:`response_weighting_filter`, :func:`filter_delta`;
* step length: :func:`acceleration_factor` (and :mod:`.algorithms.acceleration`);
* M-step: :func:`shift_norms`, then the constraints :func:`constrain`, :func:`clip_norms`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

__all__ = ["em_delta", "background_steps", "map_em", "map_background_norms", "prior_filter",
           "response_weighting_filter", "filter_delta", "acceleration_factor", "constrain",
           "clip_norms", "shift_norms"]


def em_delta(model: np.ndarray, back_projected_ratio: np.ndarray,
             exposure: np.ndarray) -> np.ndarray:
    """Richardson–Lucy delta map δλ_j = λ_j (T_j / E_j − 1), shape (n,).

    ``back_projected_ratio`` is T = Σ_i r_i R_ij ΔΩ_j with r = X/ε, ``exposure`` E_j =
    Σ_i R_ij ΔΩ_j (all shape (n,)); where E_j = 0 the delta is 0.
    """
    factor = np.divide(back_projected_ratio, exposure, out=np.ones_like(model),
                       where=exposure > 0)
    factor -= 1.0
    return model * factor


def background_steps(norms: Mapping[str, float], ratio_dots: Mapping[str, float],
                     template_sums: Mapping[str, float]) -> dict[str, float]:
    """EM steps of the background norms: δn_b = n_b (Σ_i r_i B_bi / Σ_i B_bi − 1).

    Backgrounds missing from ``ratio_dots`` or with Σ B = 0 get δn = 0.
    """
    out = {}
    for key, n in norms.items():
        total = template_sums.get(key, 0.0)
        out[key] = n * (ratio_dots[key] / total - 1.0) if key in ratio_dots and total > 0 else 0.0
    return out


def map_em(model: np.ndarray, back_projected_ratio: np.ndarray, exposure: np.ndarray,
           k: float, inverse_theta: float, minimum_flux: float) -> tuple[np.ndarray, np.ndarray]:
    """EM map under a gamma(k, θ) prior: λᴱᴹ = (λ T + k − 1) / (E + 1/θ), floored at the minimum.

    Returns
    -------
    em_map, denominator : ndarray, shape (n,)
        λᴱᴹ (0 where E + 1/θ = 0: no data and a flat prior) and E + 1/θ.
    """
    denominator = exposure + inverse_theta
    with np.errstate(divide="ignore", invalid="ignore"):
        em_map = (model * back_projected_ratio + (k - 1.0)) / denominator
    em_map = np.where(denominator > 0, em_map, 0.0)
    return np.where(em_map < minimum_flux, minimum_flux, em_map), denominator


def map_background_norms(norms: Mapping[str, float], ratio_dots: Mapping[str, float],
                         template_sums: Mapping[str, float], k: float,
                         inverse_theta: float) -> dict[str, float]:
    """MAP update of the norms under a gamma(k, θ) prior: (n Σ r B + k − 1) / (Σ B + 1/θ)."""
    return {key: (n * ratio_dots[key] + k - 1.0) / (template_sums[key] + inverse_theta)
            for key, n in norms.items()}


def prior_filter(gradient: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """One-step-late prior factor F = exp(G / (E + 1/θ)) (1 where the denominator is 0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        exponent = np.where(denominator > 0, gradient / denominator, 0.0)
    with np.errstate(over="ignore", invalid="ignore"):
        return np.exp(exponent)


def response_weighting_filter(exposure: np.ndarray, index: float) -> np.ndarray:
    """w_j = (E_j / max E)^β, shape like ``exposure``."""
    return (exposure / np.max(exposure)) ** index


def filter_delta(delta: np.ndarray, weight: np.ndarray | None = None,
                 smoother: Callable[[np.ndarray], np.ndarray] | None = None,
                 shape: tuple[int, int] | None = None) -> np.ndarray:
    """δλ × w, then smoothed (``smoother`` works on maps of ``shape`` (npix, n_energy))."""
    processed = delta.copy()
    if weight is not None:
        processed *= weight
    if smoother is not None:
        processed = smoother(processed.reshape(shape)).reshape(-1)
    return processed


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


def constrain(model: np.ndarray, minimum_flux: float, mask: np.ndarray | None) -> np.ndarray:
    """max(λ, minimum_flux), and 0 where ``mask`` is False (a new array)."""
    out = np.where(model < minimum_flux, minimum_flux, model)
    if mask is not None:
        out[~mask] = 0.0
    return out


def clip_norms(norms: Mapping[str, float],
               ranges: Mapping[str, tuple[float, float]]) -> dict[str, float]:
    """Norms clipped to their ``[low, high]`` ranges (names without a range unchanged)."""
    return {key: float(min(max(n, ranges[key][0]), ranges[key][1])) if key in ranges else n
            for key, n in norms.items()}


def shift_norms(norms: Mapping[str, float], step: Mapping[str, float],
                alpha: float = 1.0) -> dict[str, float]:
    """n_b + α δn_b for every background."""
    return {key: n + alpha * step[key] for key, n in norms.items()}
