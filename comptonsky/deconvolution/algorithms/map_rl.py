"""Maximum-a-posteriori Richardson–Lucy (``MAP_RL``) with gamma, TSV and entropy priors.

One iteration (the published algorithm; see ``docs/reference-algorithms.md`` §6):

1. r = X/ε, T = Rᵀ r;
2. EM map with the gamma prior: λᴱᴹ = (λ T + k − 1) / (E + 1/θ), clipped at minimum_flux;
3. smoothness/entropy priors: G = Σ ∂log P/∂λ at λᴱᴹ, filter F = exp(G / (E + 1/θ));
   δλ = F λᴱᴹ − λ;
4. backgrounds: n'_b = (n_b Σ r B_b + k_b − 1) / (Σ B_b + 1/θ_b);
5. response weighting of δλ; λ ← λ + δλ, clipped and masked; n_b ← n'_b clipped to range;
6. ε, log L, log-priors and the log-posterior; stop on the log-posterior (default).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from astropy import units as u

from ...errors import InvalidParameterError
from ..priors import EnergyTSVPrior, EntropyPrior, GammaPrior, TSVPrior, reference_map_from_file
from .base import PARAMETER_PREFIX
from .rl import RichardsonLucy

__all__ = ["MAPRichardsonLucy"]

logger = logging.getLogger(__name__)


class MAPRichardsonLucy(RichardsonLucy):
    """RL with a gamma prior on the map and background norms and TSV / entropy priors."""

    name = "MAP_RL"
    default_statistic = "log-posterior"
    statistics = ("log-posterior", "log-likelihood", "cross-validation")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # MAP_RL has no smoothing and none of the max-step rules; the safe accelerators
        # (SQUAREM, line_search) work on the log-posterior
        if self.accelerator is None:
            if self.do_acceleration:
                logger.info("MAP_RL ignores acceleration method %r (use 'SQUAREM' or "
                            "'line_search')", self.acceleration_method)
            self.do_acceleration = False
        self.do_smoothing = False
        prior = self._get("prior")
        if not prior:
            raise InvalidParameterError(
                f"{self.parameter.source}: MAP_RL needs a {PARAMETER_PREFIX}:prior section "
                "(TSV, gamma and/or entropy)")
        self.gamma_model = GammaPrior()
        self.gamma_bkg = GammaPrior()
        if "gamma" in prior:
            for part in ("model:theta:value", "model:k:value", "background:theta:value",
                         "background:k:value"):
                if self._get(f"prior:gamma:{part}") is None:
                    raise InvalidParameterError(
                        f"{self.parameter.source}: {PARAMETER_PREFIX}:prior:gamma:{part} is "
                        "not set (a gamma prior needs model theta and k, background theta and k)")
            theta = self._quantity("prior:gamma:model:theta", None)
            theta = float(u.Quantity(theta, self.model_unit).to_value(self.model_unit))
            self.gamma_model = GammaPrior(self._get("prior:gamma:model:k:value"), theta)
            self.gamma_bkg = GammaPrior(self._get("prior:gamma:background:k:value"),
                                        self._get("prior:gamma:background:theta:value"))
        lb = self.data.model_axes[0]
        nested = str(lb.scheme).lower() == "nested"
        self.smooth_priors: dict[str, Any] = {}
        if "TSV" in prior:
            self.smooth_priors["TSV"] = TSVPrior(self._get("prior:TSV:coefficient", 0.0),
                                                 lb.nside, nested)
        if "entropy" in prior:
            reference_file = self._get("prior:entropy:reference_map:file")
            if reference_file is not None:
                reference = reference_map_from_file(reference_file, self.data.model_axes,
                                                    self.model_unit)
            else:
                value = self._quantity("prior:entropy:reference_map", None)
                if value is None:
                    raise InvalidParameterError(
                        f"{self.parameter.source}: {PARAMETER_PREFIX}:prior:entropy:"
                        "reference_map is not set (give value and unit, or file)")
                reference = float(u.Quantity(value).to_value(self.model_unit))
            self.smooth_priors["entropy"] = EntropyPrior(
                self._get("prior:entropy:coefficient", 0.0), reference)
        if "energy_TSV" in prior:
            self.smooth_priors["energy_TSV"] = EnergyTSVPrior(
                self._get("prior:energy_TSV:coefficient", 0.0))

    def initialize(self) -> None:
        super().initialize()
        self.prior_filter = np.ones_like(self.model)
        self.log_priors = self._log_priors()

    def _log_priors(self, model: np.ndarray | None = None,
                    norms: dict[str, float] | None = None) -> dict[str, float]:
        model = self.model if model is None else model
        norms = self.bkg_norm if norms is None else norms
        shape = self.data.model_shape
        out = {"gamma_model": self.gamma_model.log_prior(model),
               "gamma_bkg": (sum(self.gamma_bkg.log_prior(np.array([n]))
                                 for n in norms.values())
                             if self.do_bkg_norm_optimization else 0.0)}
        for name, prior in self.smooth_priors.items():
            out[name] = prior.log_prior(model.reshape(shape))
        return out

    # --- safe accelerators: objective = log-posterior ------------------------------------
    has_extra_objective = True

    def extra_objective(self, model: np.ndarray, norms: dict[str, float]) -> float:
        """Σ of the log-priors at (model, norms)."""
        return float(sum(self._log_priors(model, norms).values()))

    def accept_state(self, state) -> None:
        super().accept_state(state)
        self.log_priors = self._log_priors()

    def directions(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """MAP step (weighted), unweighted MAP step, gamma-EM step without the prior filter."""
        em_map, new_norm = self._map_update()
        dn = np.array([new_norm[k] - self.bkg_norm[k] for k in self.data.background_names])
        self.processed_delta_model = self.process_delta(self.delta_model)
        out = [(self.processed_delta_model, dn)]
        if self.weight is not None:
            out.append((self.delta_model, dn))
        plain = em_map - self.model
        if self.mask is not None:
            plain[~self.mask] = 0.0
        out.append((plain, dn))
        return out

    def _map_update(self) -> tuple[np.ndarray, dict[str, float]]:
        """EM map λᴱᴹ, δ = F λᴱᴹ − λ (sets delta_model, prior_filter) and the new norms."""
        ratios = self.data.ratios(self.expectations)
        back = self.data.summed_adjoint(ratios)
        denominator = self.data.exposure + self.gamma_model.inverse_theta
        with np.errstate(divide="ignore", invalid="ignore"):
            em_map = (self.model * back + (self.gamma_model.k - 1.0)) / denominator
        em_map = np.where(denominator > 0, em_map, 0.0)  # zero exposure, flat prior: no info
        em_map = np.where(em_map < self.minimum_flux, self.minimum_flux, em_map)
        shape = self.data.model_shape
        gradient = np.zeros(shape)
        for prior in self.smooth_priors.values():
            gradient += prior.grad_log_prior(em_map.reshape(shape))
        with np.errstate(divide="ignore", invalid="ignore"):
            exponent = np.where(denominator > 0, gradient.reshape(-1) / denominator, 0.0)
        with np.errstate(over="ignore", invalid="ignore"):
            self.prior_filter = np.exp(exponent)
            self.delta_model = self.prior_filter * em_map - self.model
        if self.mask is not None:  # masked pixels are reset to 0 below; keep NaN/inf out
            self.prior_filter[~self.mask] = 1.0
            self.delta_model[~self.mask] = 0.0
        new_norm = dict(self.bkg_norm)
        if self.do_bkg_norm_optimization:
            for key in self.data.background_names:
                n = self.bkg_norm[key]
                new_norm[key] = ((n * self.data.background_dot(key, ratios)
                                  + self.gamma_bkg.k - 1.0)
                                 / (self.data.background_sums[key]
                                    + self.gamma_bkg.inverse_theta))
        return em_map, new_norm

    def iterate(self) -> None:
        if self.accelerator is not None:
            self.alpha = self.accelerator.iterate(self)
            return
        _, new_norm = self._map_update()
        if self.do_bkg_norm_optimization:
            self.bkg_norm = new_norm
        self.processed_delta_model = self.process_delta(self.delta_model)
        self.alpha = 1.0
        self.model = self.model + self.processed_delta_model
        self.apply_constraints()
        self.e_step()
        self.log_priors = self._log_priors()

    def statistic(self) -> float:
        if self.stopping_statistic == "log-posterior":
            return self.log_posterior
        return super().statistic()

    @property
    def log_posterior(self) -> float:
        return float(np.sum(self.log_likelihoods) + sum(self.log_priors.values()))

    def make_result(self) -> dict[str, Any]:
        result = super().make_result()
        result["prior_filter"] = self._map(self.prior_filter, unit=u.dimensionless_unscaled)
        result["log-prior"] = dict(self.log_priors)
        result["log-posterior"] = self.log_posterior
        return result
