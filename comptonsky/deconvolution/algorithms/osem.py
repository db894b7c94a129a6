"""Ordered-subsets EM (``OSEM``) on the binned Compton data space.

The data bins of every dataset are split into K interleaved subsets (``n_subsets``, default 16,
along ``subset_axis``: ``PsiChi`` (default) or ``Phi``; see
:mod:`~comptonsky.deconvolution.subsets`). The results' ``accel_factor`` is the number of
subsets used by the cycle. One OSEM iteration is a cycle over the subsets; for subset k, with
S_k its bins:

1. ε_i = Σ_j R_ij ΔΩ_j λ_j + 1e-12 + Σ_b n_b B_bi for i ∈ S_k (restricted forward product);
2. δλ_j = λ_j (Σ_{i∈S_k} R_ij ΔΩ_j X_i/ε_i / E_kj − 1), E_kj = ΔΩ_j Σ_{i∈S_k} R_ij (zero-exposure
   and masked elements 0); δn_b = n_b (Σ_{i∈S_k} B_bi X_i/ε_i / Σ_{i∈S_k} B_bi − 1);
3. δλ ← response weighting (w = (E/max E)^β with the *full* exposure), then smoothing;
4. λ ← max(λ + δλ, minimum_flux), masked 0; n_b ← n_b + δn_b clipped to its range.

After the cycle, ε and log L are computed on all bins (one full forward product, whose first
subset is reused by the next cycle). With K = 1 an OSEM iteration is an RL iteration without
acceleration. ``subset_schedule: adaptive`` (default; ``constant`` keeps K) halves K down to 1,
where the configured safe accelerator takes over (:meth:`OrderedSubsetsEM.step`; costs and
convergence: docs/algorithms.md).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import numpy as np

from ..dataset import ALMOST_ZERO
from ..state import FitState
from ..steps import shift_norms
from ..subsets import subsets_for
from .base import DeconvolutionAlgorithm
from .rl import em_direction, em_update

__all__ = ["OrderedSubsetsEM"]

logger = logging.getLogger(__name__)


class OrderedSubsetsEM(DeconvolutionAlgorithm):
    """Ordered-subsets EM with RL's filters and norm fitting (``algorithm: "OSEM"``).

    The schedule (``level``: index into :attr:`levels`, ``cycle_gains``) is kept in the fit
    state's ``memory``.
    """

    name = "OSEM"
    #: adaptive schedule: most cycles with one number of subsets
    max_cycles_per_level = 5
    #: the RL direction, used by the safe accelerator once one subset is left
    direction = em_direction

    def bind(self, data) -> None:
        super().bind(data)
        self.n_subsets = int(self.setting("n_subsets", 16))
        self.subset_axis = self.setting("subset_axis", "PsiChi")
        self.subset_schedule = self.setting("subset_schedule", "adaptive")
        self.subsets = [subsets_for(op, self.n_subsets, self.subset_axis)
                        for op in data.operators]
        # levels K, K/2, K/4, ... (while even), then 1: subset k of level L is the union of the
        # base subsets k, k + L, k + 2L, ... (nested interleaving, no new copy of the response)
        levels = [self.n_subsets]
        if self.subset_schedule == "adaptive":
            while levels[-1] > 1:
                levels.append(levels[-1] // 2 if levels[-1] % 2 == 0 else 1)
        self.levels = levels
        self.groups = {K: [list(range(k, self.n_subsets, K)) for k in range(K)] for K in levels}
        base_exposure = [np.sum([s.subset_exposure(k) for s in self.subsets], axis=0)
                         for k in range(self.n_subsets)]
        self.group_exposures = {K: [np.sum([base_exposure[b] for b in g], axis=0)
                                    for g in groups] for K, groups in self.groups.items()}
        self.group_indices = {K: [[s.group_indices(g) for s in self.subsets] for g in groups]
                              for K, groups in self.groups.items()}
        # counts and background templates on each group's bins, gathered once
        self.group_counts = {K: [[ds.counts[i] for ds, i in zip(data.datasets, idx)]
                                 for idx in self.group_indices[K]] for K in levels}
        self.group_backgrounds = {
            K: [[{key: ds.background(key)[i] for key in ds.keys_bkg_models()}
                 for ds, i in zip(data.datasets, idx)] for idx in self.group_indices[K]]
            for K in levels}
        self.group_bkg_sums = {
            K: [{key: float(sum(ds.background(key)[idx[m]].sum()
                                for m, ds in enumerate(data.datasets)
                                if key in ds.keys_bkg_models()))
                 for key in data.background_names} for idx in self.group_indices[K]]
            for K in levels}

    @property
    def current_subsets(self) -> int:
        """Number of subsets used by the next cycle."""
        return self.levels[self.state.memory.get("level", 0) if self.state else 0]

    def _sub_iteration(self, K: int, k: int, model: np.ndarray, norms: dict[str, float],
                       expectations: list[np.ndarray]):
        blocks = self.groups[K][k]
        backgrounds = self.group_backgrounds[K][k]
        ratios = [x / eps for x, eps in zip(self.group_counts[K][k], expectations)]
        back = np.zeros(self.data.n_model)
        for s, r in zip(self.subsets, ratios):
            back += s.adjoint_group(blocks, r)
        direction = em_update(
            self, model, norms, back, self.group_exposures[K][k],
            lambda: {key: sum(float(np.dot(r, b[key])) for b, r in zip(backgrounds, ratios)
                              if key in b) for key in norms},
            self.group_bkg_sums[K][k])
        model, norms = self.constrain(model + direction.processed,
                                      shift_norms(norms, direction.norm_step))
        return model, norms, direction

    def _subset_expectations(self, K: int, k: int, model: np.ndarray,
                             norms: dict[str, float]) -> list[np.ndarray]:
        out = []
        for s, backgrounds in zip(self.subsets, self.group_backgrounds[K][k]):
            eps = s.forward_group(self.groups[K][k], model)
            eps += ALMOST_ZERO
            for key, values in backgrounds.items():
                eps += norms.get(key, 1.0) * values
            out.append(eps)
        return out

    def step(self, state: FitState) -> FitState:
        level = state.memory.get("level", 0)
        gains = list(state.memory.get("cycle_gains", []))
        K = self.levels[level]
        if K == 1 and self.accelerator is not None:
            after = self.accelerator.step(self, state)
            return replace(after, memory={**after.memory, "n_subsets": 1})
        model, norms = state.model, state.norms
        for k in range(K):
            if k == 0:  # the full expectations of the previous cycle are still current
                expectations = [eps[idx] for eps, idx in
                                zip(state.expectations, self.group_indices[K][0])]
            else:
                expectations = self._subset_expectations(K, k, model, norms)
            model, norms, direction = self._sub_iteration(K, k, model, norms, expectations)
        new = self.evaluate(model, norms)
        gain = new.log_likelihood - state.log_likelihood
        gains.append(gain)
        # adaptive schedule: fewer subsets once a cycle loses, gains less than a quarter of the
        # cycle before, or less than 2 % of the first cycle at this number of subsets (signs
        # that the ordered-subsets limit cycle is near), and after at most 5 cycles per level
        if self.subset_schedule == "adaptive" and level + 1 < len(self.levels) and (
                gain < 0 or len(gains) >= self.max_cycles_per_level
                or (len(gains) >= 2 and gain < 0.25 * gains[-2]) or gain < 0.02 * gains[0]):
            level, gains = level + 1, []
            logger.debug("OSEM: %d subsets from the next cycle", self.levels[level])
        return replace(new, direction=direction, alpha=1.0,
                       memory={"level": level, "cycle_gains": gains, "n_subsets": K})

    def make_result(self) -> dict[str, Any]:
        """The record of the current state, with ``n_subsets``: the subsets of its cycle."""
        record = super().make_result()
        record["n_subsets"] = int(self.state.memory.get("n_subsets", self.current_subsets))
        return record
