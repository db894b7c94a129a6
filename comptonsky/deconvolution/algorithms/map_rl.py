"""Maximum-a-posteriori Richardson–Lucy (``MAP_RL``) with gamma, TSV and entropy priors.

One iteration is the published algorithm of docs/reference-algorithms.md §6: the EM map under the
gamma prior (:func:`~..steps.map_em`), the one-step-late filter F = exp(G / (E + 1/θ)) of the
smoothness and entropy priors at it, δλ = F λᴱᴹ − λ, MAP background norms, response weighting and
the constraints; it stops on the log-posterior by default.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from astropy import units as u

from ...errors import InvalidParameterError
from ..priors import EnergyTSVPrior, EntropyPrior, GammaPrior, TSVPrior, reference_map_from_file
from ..state import Direction, FitState
from ..steps import filter_delta, map_background_norms, map_em, prior_filter
from .base import PARAMETER_PREFIX, DeconvolutionAlgorithm

__all__ = ["MAPRichardsonLucy"]


class MAPRichardsonLucy(DeconvolutionAlgorithm):
    """RL with a gamma prior on the map and background norms and TSV / entropy priors."""

    name = "MAP_RL"
    default_statistic = "log-posterior"
    has_priors = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        prior = self.setting("prior")
        if not prior:
            raise InvalidParameterError(
                f"{self.parameter.source}: MAP_RL needs a {PARAMETER_PREFIX}:prior section "
                "(TSV, gamma and/or entropy)")
        self.gamma_model = GammaPrior()
        self.gamma_bkg = GammaPrior()
        if "gamma" in prior:
            for part in ("model:theta:value", "model:k:value", "background:theta:value",
                         "background:k:value"):
                if self.setting(f"prior:gamma:{part}") is None:
                    raise InvalidParameterError(
                        f"{self.parameter.source}: {PARAMETER_PREFIX}:prior:gamma:{part} is "
                        "not set (a gamma prior needs model theta and k, background theta and k)")
            theta = self.quantity("prior:gamma:model:theta", None)
            theta = float(u.Quantity(theta, self.model_unit).to_value(self.model_unit))
            self.gamma_model = GammaPrior(self.setting("prior:gamma:model:k:value"), theta)
            self.gamma_bkg = GammaPrior(self.setting("prior:gamma:background:k:value"),
                                        self.setting("prior:gamma:background:theta:value"))
        lb = self.data.model_axes[0]
        nested = str(lb.scheme).lower() == "nested"
        self.smooth_priors: dict[str, Any] = {}
        if "TSV" in prior:
            self.smooth_priors["TSV"] = TSVPrior(self.setting("prior:TSV:coefficient", 0.0),
                                                 lb.nside, nested)
        if "entropy" in prior:
            reference_file = self.setting("prior:entropy:reference_map:file")
            if reference_file is not None:
                reference = reference_map_from_file(reference_file, self.data.model_axes,
                                                    self.model_unit)
            else:
                value = self.quantity("prior:entropy:reference_map", None)
                if value is None:
                    raise InvalidParameterError(
                        f"{self.parameter.source}: {PARAMETER_PREFIX}:prior:entropy:"
                        "reference_map is not set (give value and unit, or file)")
                reference = float(u.Quantity(value).to_value(self.model_unit))
            self.smooth_priors["entropy"] = EntropyPrior(
                self.setting("prior:entropy:coefficient", 0.0), reference)
        if "energy_TSV" in prior:
            self.smooth_priors["energy_TSV"] = EnergyTSVPrior(
                self.setting("prior:energy_TSV:coefficient", 0.0))

    def for_data(self, data, intensity_scale: float = 1.0) -> MAPRichardsonLucy:
        clone = super().for_data(data, intensity_scale)
        clone.gamma_model = GammaPrior(self.gamma_model.k, self.gamma_model.theta * intensity_scale)
        return clone

    def log_priors(self, model: np.ndarray, norms: dict[str, float]) -> dict[str, float]:
        shape = self.data.model_shape
        out = {"gamma_model": self.gamma_model.log_prior(model),
               "gamma_bkg": (sum(self.gamma_bkg.log_prior(np.array([n]))
                                 for n in norms.values())
                             if self.fit_backgrounds else 0.0)}
        for name, prior in self.smooth_priors.items():
            out[name] = prior.log_prior(model.reshape(shape))
        return out

    def direction(self, state: FitState) -> Direction:
        """MAP step δ = F λᴱᴹ − λ (weighted first, then unweighted), and the gamma-EM step
        λᴱᴹ − λ without the prior filter last."""
        data, model, mask = self.data, state.model, self.mask
        ratios = data.ratios(state.expectations)
        em_map, denominator = map_em(model, data.summed_adjoint(ratios), data.exposure,
                                     self.gamma_model.k, self.gamma_model.inverse_theta,
                                     self.minimum_flux)
        shape = data.model_shape
        gradient = np.zeros(shape)
        for prior in self.smooth_priors.values():
            gradient += prior.grad_log_prior(em_map.reshape(shape))
        factor = prior_filter(gradient.reshape(-1), denominator)
        with np.errstate(over="ignore", invalid="ignore"):
            delta = factor * em_map - model
        plain = em_map - model
        if mask is not None:  # masked pixels are reset to 0 by the constraints; keep NaN/inf out
            factor[~mask] = 1.0
            delta[~mask] = 0.0
            plain[~mask] = 0.0
        norm_step = {key: 0.0 for key in state.norms}
        if self.fit_backgrounds:
            dots = {key: data.background_dot(key, ratios) for key in data.background_names}
            new = map_background_norms(state.norms, dots, data.background_sums,
                                       self.gamma_bkg.k, self.gamma_bkg.inverse_theta)
            norm_step = {key: new[key] - n for key, n in state.norms.items()}
        fallbacks = ((delta,) if self.weight is not None else ()) + (plain,)
        return Direction(delta, filter_delta(delta, self.weight), norm_step, fallbacks, factor)

    def make_result(self) -> dict[str, Any]:
        result = super().make_result()
        direction = self.state.direction
        factor = np.ones_like(self.state.model) if direction is None else direction.prior_filter
        result["prior_filter"] = self._map(factor, unit=u.dimensionless_unscaled)
        result["log-prior"] = dict(self.state.log_priors)
        result["log-posterior"] = self.state.objective
        return result
