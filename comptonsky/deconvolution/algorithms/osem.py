"""Ordered-subsets EM (``OSEM``) on the binned Compton data space.

The data bins of every dataset are split into K interleaved subsets (``n_subsets``, along
``subset_axis``: ``Phi`` or ``PsiChi``; see :mod:`comptonsky.deconvolution.subsets`). One OSEM
iteration is a cycle over the subsets; for subset k, with S_k its bins:

1. ε_i = Σ_j R_ij ΔΩ_j λ_j + 1e-12 + Σ_b n_b B_bi for i ∈ S_k (restricted forward product);
2. δλ_j = λ_j (Σ_{i∈S_k} R_ij ΔΩ_j X_i/ε_i / E_kj − 1), E_kj = ΔΩ_j Σ_{i∈S_k} R_ij (zero-exposure
   and masked elements 0); δn_b = n_b (Σ_{i∈S_k} B_bi X_i/ε_i / Σ_{i∈S_k} B_bi − 1);
3. δλ ← response weighting (w = (E/max E)^β with the *full* exposure), then smoothing;
4. λ ← max(λ + δλ, minimum_flux), masked 0; n_b ← n_b + δn_b clipped to its range.

After the cycle, ε and log L are computed on all bins (one full forward product, whose first
subset is reused by the next cycle). A cycle streams the response 3 − 1/K times (adjoint once,
forward once in pieces, once for the likelihood), against 2 for plain RL, and gains roughly K RL
iterations early on. With K = 1 an OSEM iteration is an RL iteration without acceleration.
OSEM does not converge to the maximum-likelihood point for K > 1 (it approaches a limit cycle);
reduce ``n_subsets`` (or switch to RL) for the final iterations if needed. Acceleration settings
are ignored.
"""

from __future__ import annotations

import logging

import numpy as np

from ..dataset import ALMOST_ZERO
from ..subsets import DataSubsets
from .rl import RichardsonLucy

__all__ = ["OrderedSubsetsEM"]

logger = logging.getLogger(__name__)


class OrderedSubsetsEM(RichardsonLucy):
    """Ordered-subsets EM with all RL options except acceleration (``algorithm: "OSEM"``)."""

    name = "OSEM"
    statistics = ("log-likelihood", "cross-validation")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.do_acceleration:
            logger.info("OSEM ignores acceleration (each cycle already takes n_subsets steps)")
        self.do_acceleration = False
        self.accelerator = None
        self.n_subsets = int(self._get("n_subsets", 8))
        self.subset_axis = self._get("subset_axis", "Phi")

    def initialize(self) -> None:
        super().initialize()
        self.subsets = [DataSubsets(ds.response, self.n_subsets, self.subset_axis)
                        for ds in self.data.datasets]
        self.subset_exposures = [np.sum([s.subset_exposure(k) for s in self.subsets], axis=0)
                                 for k in range(self.n_subsets)]
        self.subset_bkg_sums = [
            {key: float(sum(ds.background(key)[s.indices[k]].sum()
                            for ds, s in zip(self.data.datasets, self.subsets)
                            if key in ds.keys_bkg_models()))
             for key in self.data.background_names}
            for k in range(self.n_subsets)]

    def _sub_iteration(self, k: int, expectations: list[np.ndarray]) -> None:
        datasets = self.data.datasets
        ratios = [ds.counts[s.indices[k]] / eps
                  for ds, s, eps in zip(datasets, self.subsets, expectations)]
        back = np.zeros(self.data.n_model)
        for s, r in zip(self.subsets, ratios):
            back += s.adjoint(k, r)
        exposure = self.subset_exposures[k]
        factor = np.divide(back, exposure, out=np.ones_like(back), where=exposure > 0)
        delta = self.model * (factor - 1.0)
        if self.mask is not None:
            delta[~self.mask] = 0.0
        if self.do_bkg_norm_optimization:
            for key in self.data.background_names:
                total = self.subset_bkg_sums[k][key]
                if total <= 0:
                    continue
                dot = sum(float(np.dot(r, ds.background(key)[s.indices[k]]))
                          for ds, s, r in zip(datasets, self.subsets, ratios)
                          if key in ds.keys_bkg_models())
                self.bkg_norm[key] = self.bkg_norm[key] * dot / total
        self.delta_model = delta
        self.processed_delta_model = self.process_delta(delta)
        self.model = self.model + self.processed_delta_model
        self.apply_constraints()

    def _subset_expectations(self, k: int) -> list[np.ndarray]:
        out = []
        for ds, s in zip(self.data.datasets, self.subsets):
            eps = s.forward(k, self.model)
            eps += ALMOST_ZERO
            for key in ds.keys_bkg_models():
                eps += self.bkg_norm.get(key, 1.0) * ds.background(key)[s.indices[k]]
            out.append(eps)
        return out

    def iterate(self) -> None:
        for k in range(self.n_subsets):
            if k == 0:  # the full expectations of the previous cycle are still current
                expectations = [eps[s.indices[0]]
                                for eps, s in zip(self.expectations, self.subsets)]
            else:
                expectations = self._subset_expectations(k)
            self._sub_iteration(k, expectations)
        self.alpha = 1.0
        self.e_step()
