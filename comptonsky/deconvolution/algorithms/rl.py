"""Richardson–Lucy (ML-EM) with acceleration, response weighting, smoothing and background fit.

``RL`` reproduces the published algorithm (cosipy 0.4.3's ``RLadvanced``, which is what the
tutorial calls ``RL``; see ``docs/reference-algorithms.md``). One iteration:

1. r = X / ε with ε from the end of the previous iteration;
2. δλ_j = λ_j ((Rᵀr)_j / E_j − 1), masked elements 0; if fitting backgrounds,
   δn_b = n_b (Σ_i r_i B_bi / Σ_i B_bi − 1);
3. processed δλ: × (E/max E)^β (response weighting), then Gaussian smoothing per energy band
   (``smoothing:method``: ``healpy``, spherical harmonics, or ``pixel``, an exact sparse kernel);
4. step: λ¹ = λ + δλ. With acceleration, α = min over unmasked j of −λ_j/δλ_j > 0, capped at
   α_max and floored at 1; the accelerated step λ + αδλ is kept unless its log-likelihood
   (sky expectation interpolated linearly between λ and λ¹) is below that of λ¹
   (``method: max_step``); ``max_step_unchecked`` always takes it (the older rule);
   ``line_search`` and ``SQUAREM`` replace steps 4 with the safe accelerators of
   :mod:`.acceleration` (the objective can never fall);
5. λ ← max(λ, minimum_flux), masked elements 0; n_b ← n_b + δn_b clipped to its range;
6. ε and log L at the new state; stop at ``iteration_max`` or when log L rises by less than
   the threshold (a fall only warns).

``RLsimple`` is plain ML-EM: backgrounds enter at norm 1 and are not fitted; no acceleration,
weighting, smoothing or threshold stopping.
"""

from __future__ import annotations

import logging

import numpy as np
from astropy import units as u

from ...errors import InvalidParameterError, UnknownChoiceError
from ..smoothing import make_smoother
from ..steps import acceleration_factor, em_delta, response_weighting_filter
from .acceleration import ACCELERATORS, State
from .base import DeconvolutionAlgorithm

__all__ = ["RichardsonLucy", "RichardsonLucySimple", "ACCELERATION_METHODS"]

logger = logging.getLogger(__name__)

#: Spellings accepted for ``acceleration:method`` → canonical name.
ACCELERATION_METHODS = {
    "max_step": "max_step",
    "MaxStep": "max_step",
    "max_step_unchecked": "max_step_unchecked",
    "line_search": "line_search",
    "LineSearch": "line_search",
    "SQUAREM": "SQUAREM",
    "squarem": "SQUAREM",
}

#: Default range of a background normalisation not listed in ``range``.
DEFAULT_BKG_RANGE = (0.0, 100.0)


class RichardsonLucy(DeconvolutionAlgorithm):
    """The accelerated, smoothed, response-weighted RL with background normalisation (``RL``)."""

    name = "RL"
    fits_backgrounds = True
    uses_filters = True
    statistics = ("log-likelihood", "cross-validation")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.do_acceleration = self.uses_filters and bool(self._get("acceleration:activate",
                                                                    False))
        self.alpha_max = float(self._get("acceleration:alpha_max", 10.0))
        method = self._get("acceleration:method", "max_step")
        if method not in ACCELERATION_METHODS:
            raise UnknownChoiceError("acceleration method", method, ACCELERATION_METHODS)
        self.acceleration_method = ACCELERATION_METHODS[method]
        #: SQUAREM / line search object (None for the max-step rules and without acceleration)
        self.accelerator = (ACCELERATORS[self.acceleration_method]()
                            if self.do_acceleration and self.acceleration_method in ACCELERATORS
                            else None)
        self.do_response_weighting = self.uses_filters and bool(
            self._get("response_weighting:activate", False))
        self.response_weighting_index = float(self._get("response_weighting:index", 0.5))
        self.do_smoothing = self.uses_filters and bool(self._get("smoothing:activate", False))
        self.smoothing_fwhm = self._quantity("smoothing:FWHM", None)
        self.smoothing_method = self._get("smoothing:method", "healpy")
        if self.do_smoothing and self.smoothing_fwhm is None:
            raise InvalidParameterError(f"{self.parameter.source}: smoothing is activated but "
                                        "deconvolution:parameter:smoothing:FWHM is not set")
        requested = bool(self._get("background_normalization_optimization:activate", False))
        if requested and not self.fits_backgrounds:
            logger.warning("%s does not fit background normalisations (they stay 1); use RL to "
                           "fit them", self.name)
        self.do_bkg_norm_optimization = requested and self.fits_backgrounds
        ranges = self._get("background_normalization_optimization:range", {}) or {}
        unknown = set(ranges) - set(self.data.background_names)
        if unknown:
            raise UnknownChoiceError("background name in background_normalization range",
                                     sorted(unknown)[0], self.data.background_names)
        self.bkg_norm_range = {key: tuple(ranges.get(key, DEFAULT_BKG_RANGE))
                               for key in self.data.background_names}
        for key, (lo, hi) in self.bkg_norm_range.items():
            if not 0 <= lo <= hi:
                raise InvalidParameterError(
                    f"{self.parameter.source}: background_normalization_optimization:range:"
                    f"{key} must be [low, high] with 0 ≤ low ≤ high, found [{lo}, {hi}]")
        minimum = self._quantity("minimum_flux", 0.0 * self.model_unit)
        self.minimum_flux = float(u.Quantity(minimum).to_value(self.model_unit))
        if self.stopping_statistic not in self.statistics:
            raise UnknownChoiceError(f"stopping statistic for {self.name}",
                                     self.stopping_statistic, self.statistics)

    def initialize(self) -> None:
        super().initialize()
        self.weight = (response_weighting_filter(self.data.exposure,
                                                 self.response_weighting_index)
                       if self.do_response_weighting else None)
        self.smoother = None
        if self.do_smoothing:
            lb = self.data.model_axes[0]
            self.smoother = make_smoother(self.smoothing_method, self.smoothing_fwhm, lb.nside,
                                          nested=str(lb.scheme).lower() == "nested")

    # --- the steps ------------------------------------------------------------------------
    def m_step(self, ratios: list[np.ndarray]) -> tuple[np.ndarray, dict[str, float]]:
        """Delta map (masked) and background-norm increments from the ratios X/ε."""
        back = self.data.summed_adjoint(ratios)
        delta = em_delta(self.model, back, self.data.exposure)
        if self.mask is not None:
            delta[~self.mask] = 0.0
        delta_norm = {}
        if self.do_bkg_norm_optimization:
            for key in self.data.background_names:
                n = self.bkg_norm[key]
                factor = self.data.background_dot(key, ratios) / self.data.background_sums[key]
                delta_norm[key] = n * (factor - 1.0)
        return delta, delta_norm

    def process_delta(self, delta: np.ndarray) -> np.ndarray:
        """Response weighting, then smoothing, of the delta map (returns a new array)."""
        processed = delta.copy()
        if self.weight is not None:
            processed *= self.weight
        if self.smoother is not None:
            shape = self.data.model_shape
            processed = self.smoother(processed.reshape(shape)).reshape(-1)
        return processed

    def accelerated_step(self, processed: np.ndarray, trial_norm: dict[str, float]) -> float:
        """Choose α and update ``self.model``; returns α (1 when the step was rejected)."""
        alpha = acceleration_factor(self.model, processed, self.alpha_max, self.mask)
        if self.acceleration_method == "max_step_unchecked" or alpha <= 1.0:
            self.model = self.model + alpha * processed
            return alpha
        trial = self.model + processed
        trial_sources = self.data.source_expectations(trial)
        eps_trial = self.data.add_backgrounds(trial_sources, trial_norm)
        eps_alpha = self.data.add_backgrounds(
            [s0 + alpha * (s1 - s0) for s0, s1 in zip(self.sources, trial_sources)], trial_norm)
        if self.data.total_log_likelihood(eps_alpha) < self.data.total_log_likelihood(eps_trial):
            logger.debug("iteration %d: accelerated step α=%.4g rejected", self.iteration_count,
                         alpha)
            self.model = trial
            return 1.0
        self.model = self.model + alpha * processed
        return alpha

    def apply_constraints(self) -> None:
        """Minimum flux and mask on the map; ranges on the background norms."""
        self.model = np.where(self.model < self.minimum_flux, self.minimum_flux, self.model)
        if self.mask is not None:
            self.model[~self.mask] = 0.0
        if self.do_bkg_norm_optimization:
            for key, (lo, hi) in self.bkg_norm_range.items():
                self.bkg_norm[key] = float(min(max(self.bkg_norm[key], lo), hi))

    # --- interface used by the safe accelerators (acceleration.py) -----------------------
    has_extra_objective = False

    def _norm_array(self, norms: dict[str, float] | None = None) -> np.ndarray:
        norms = self.bkg_norm if norms is None else norms
        return np.array([norms[k] for k in self.data.background_names], dtype=np.float64)

    def extra_objective(self, model: np.ndarray, norms: dict[str, float]) -> float:
        """Terms added to Σ log L in the objective (0 for ML; log-priors for MAP_RL)."""
        return 0.0

    def current_state(self) -> State:
        """The current point with its expectations and objective."""
        return State(self.model, self._norm_array(), self.sources, self.expectations,
                     list(self.log_likelihoods),
                     float(np.sum(self.log_likelihoods))
                     + self.extra_objective(self.model, self.bkg_norm))

    def set_state(self, state: State) -> None:
        """Make ``state`` current (model, norms, expectations, log L)."""
        self.model = state.model
        self.bkg_norm = {k: float(v) for k, v in zip(self.data.background_names, state.norms)}
        self.sources = state.sources
        self.expectations = state.expectations
        self.log_likelihoods = state.log_likelihoods

    def accept_state(self, state: State) -> None:
        """Make ``state`` the result of this iteration."""
        self.set_state(state)

    def directions(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """EM directions (map, norms) at the current state, best first, plain EM last.

        Costs one adjoint pass. Sets ``delta_model`` and ``processed_delta_model``.
        """
        ratios = self.data.ratios(self.expectations)
        self.delta_model, delta_norm = self.m_step(ratios)
        self.processed_delta_model = self.process_delta(self.delta_model)
        dn = np.array([delta_norm.get(k, 0.0) for k in self.data.background_names])
        out = [(self.processed_delta_model, dn)]
        if self.weight is not None or self.smoother is not None:
            out.append((self.delta_model, dn))
        return out

    def constrain(self, model: np.ndarray,
                  norms: dict[str, float]) -> tuple[np.ndarray, dict[str, float]]:
        """Minimum flux and mask on a map, ranges on norms (new objects; inputs untouched)."""
        model = np.where(model < self.minimum_flux, self.minimum_flux, model)
        if self.mask is not None:
            model[~self.mask] = 0.0
        norms = dict(norms)
        if self.do_bkg_norm_optimization:
            for key, (lo, hi) in self.bkg_norm_range.items():
                norms[key] = float(min(max(norms[key], lo), hi))
        return model, norms

    def iterate(self) -> None:
        if self.accelerator is not None:
            self.alpha = self.accelerator.iterate(self)
            return
        ratios = self.data.ratios(self.expectations)
        self.delta_model, delta_norm = self.m_step(ratios)
        trial_norm = {k: n + delta_norm.get(k, 0.0) for k, n in self.bkg_norm.items()}
        self.processed_delta_model = self.process_delta(self.delta_model)
        if self.do_acceleration:
            self.alpha = self.accelerated_step(self.processed_delta_model, trial_norm)
        else:
            self.alpha = 1.0
            self.model = self.model + self.processed_delta_model
        self.bkg_norm = trial_norm
        self.apply_constraints()
        self.e_step()

    def check_stopping_criteria(self) -> bool:
        if self.iteration_count == 1 and self.iteration_max > 1:
            return False
        return super().check_stopping_criteria()


class RichardsonLucySimple(RichardsonLucy):
    """Plain ML-EM (``RLsimple``): backgrounds at norm 1, no filters; stops at iteration_max."""

    name = "RLsimple"
    fits_backgrounds = False
    uses_filters = False

    def check_stopping_criteria(self) -> bool:
        return self.iteration_count >= self.iteration_max
