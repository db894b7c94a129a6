"""Richardson–Lucy (ML-EM) with acceleration, response weighting, smoothing and background fit.

Semantics follow DESIGN §4 exactly (the published algorithm users know):

1. ratio r = X / ε with the current model and background norms;
2. δλ_j = λ_j (Σ_i r_i R_ij ΔΩ_j / E_j − 1); masked elements set to 0;
3. background norms n_b ← n_b Σ r_i B_bi / Σ B_bi, clipped to their range (same r);
4. processed δλ: × (E/max E)^β if response weighting, then Gaussian smoothing if activated;
5. α = acceleration factor (or 1); λ ← max(λ + α δλ, minimum_flux); masked stay 0;
6. ε and log L recomputed with the new λ and norms.
"""

from __future__ import annotations

import logging

import numpy as np
from astropy import units as u

from ..smoothing import HealpySmoothing
from ..steps import (
    acceleration_factor,
    apply_minimum_and_mask,
    em_delta,
    response_weighting_filter,
    update_background_norm,
)
from .base import DeconvolutionAlgorithm

__all__ = ["RichardsonLucy", "RichardsonLucySimple"]

logger = logging.getLogger(__name__)


class RichardsonLucy(DeconvolutionAlgorithm):
    """The accelerated, smoothed, response-weighted RL with background normalisation (``RL``)."""

    name = "RL"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.do_acceleration = bool(self._get("acceleration:activate", False))
        self.alpha_max = float(self._get("acceleration:alpha_max", 1.0))
        self.do_response_weighting = bool(self._get("response_weighting:activate", False))
        self.response_weighting_index = float(self._get("response_weighting:index", 0.5))
        self.do_smoothing = bool(self._get("smoothing:activate", False))
        self.smoothing_fwhm = self._quantity("smoothing:FWHM", 0.0 * u.deg)
        self.do_bkg_norm_optimization = bool(
            self._get("background_normalization_optimization:activate", False))
        ranges = self._get("background_normalization_optimization:range", {}) or {}
        self.bkg_norm_range = {key: tuple(ranges.get(key, (0.0, np.inf)))
                               for key in self.data.background_names}
        unknown = set(ranges) - set(self.data.background_names)
        if unknown:
            from ...errors import UnknownChoiceError
            raise UnknownChoiceError("background name in background_normalization range",
                                     sorted(unknown)[0], self.data.background_names)
        minimum = self._quantity("minimum_flux", 0.0 * self.model_unit)
        self.minimum_flux = float(u.Quantity(minimum).to_value(self.model_unit))

    def initialize(self) -> None:
        super().initialize()
        self.weight = (response_weighting_filter(self.data.exposure,
                                                 self.response_weighting_index)
                       if self.do_response_weighting else None)
        self.smoother = None
        if self.do_smoothing:
            lb = self.data.model_axes[0]
            self.smoother = HealpySmoothing(self.smoothing_fwhm, lb.nside,
                                            nested=str(lb.scheme).lower() == "nested")

    # --- the steps ------------------------------------------------------------------------
    def e_step(self) -> list[np.ndarray]:
        """Ratios X/ε for the current state (ε is kept up to date by :meth:`post_process`)."""
        return self.data.ratios(self.expectations)

    def m_step(self, ratios: list[np.ndarray]) -> None:
        """Delta map and background norms from the ratios."""
        back = self.data.summed_adjoint(ratios)
        self.delta_model = em_delta(self.model, back, self.data.exposure)
        if self.mask is not None:
            self.delta_model[~self.mask] = 0.0
        if self.do_bkg_norm_optimization:
            for key in self.data.background_names:
                self.bkg_norm[key] = update_background_norm(
                    self.bkg_norm[key], self.data.background_dot(key, ratios),
                    self.data.background_sums[key], self.bkg_norm_range[key])

    def process_delta(self, delta: np.ndarray) -> np.ndarray:
        """Response weighting then smoothing of the delta map."""
        processed = delta.copy()
        if self.weight is not None:
            processed *= self.weight
        if self.smoother is not None:
            shape = self.data.model_shape
            processed = self.smoother(processed.reshape(shape)).reshape(-1)
        return processed

    def post_process(self) -> None:
        """Accelerated model update, clipping, masking; refresh ε and log L."""
        self.processed_delta_model = self.process_delta(self.delta_model)
        self.alpha = (acceleration_factor(self.model, self.processed_delta_model,
                                          self.alpha_max, self.mask)
                      if self.do_acceleration else 1.0)
        self.model = self.model + self.alpha * self.processed_delta_model
        apply_minimum_and_mask(self.model, self.minimum_flux, self.mask)
        self.expectations = self.data.expectations(self.model, self.bkg_norm)
        self.log_likelihoods = self.data.log_likelihoods(self.expectations)

    def iterate(self) -> None:
        self.m_step(self.e_step())
        self.post_process()


class RichardsonLucySimple(RichardsonLucy):
    """Plain ML-EM (``RLsimple``): no acceleration, no smoothing, no response weighting."""

    name = "RLsimple"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.do_acceleration = False
        self.do_smoothing = False
        self.do_response_weighting = False
