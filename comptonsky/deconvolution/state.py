"""The state of a fit: the one object every algorithm reads and returns (docs/design.md §4).

Steps never modify a state's arrays; they return a new state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["FitState", "Direction"]


@dataclass(frozen=True)
class Direction:
    """The EM step at a state.

    Attributes
    ----------
    delta : ndarray, shape (n_model,)
        δλ (masked pixels 0), model unit.
    processed : ndarray, shape (n_model,)
        δλ after response weighting and smoothing: the step taken.
    norm_step : dict of str → float
        δn_b per background (0 where the norms are not fitted).
    fallbacks : tuple of ndarray, shape (n_model,)
        Other map directions for the safe accelerators, best first; the last one is the plain
        EM step (for ML-EM with clipping it cannot lower the objective).
    prior_filter : ndarray, shape (n_model,), optional
        MAP_RL's one-step-late prior factor F.
    """

    delta: np.ndarray
    processed: np.ndarray
    norm_step: dict[str, float]
    fallbacks: tuple[np.ndarray, ...] = ()
    prior_filter: np.ndarray | None = None

    @property
    def directions(self) -> list[tuple[np.ndarray, dict[str, float]]]:
        """(map direction, norm step) pairs, ``processed`` first."""
        return [(d, self.norm_step) for d in (self.processed, *self.fallbacks)]


@dataclass(frozen=True)
class FitState:
    """A point of the fit with everything derived from it.

    Attributes
    ----------
    model : ndarray, shape (n_model,)
        Map λ, float64, model unit.
    norms : dict of str → float
        Background normalisations n_b.
    sources, expectations : list of ndarray, shape (n_data_k,)
        Sky expected counts R·(λΔΩ) + 1e-12 and total expected counts ε, per dataset.
    log_likelihoods : list of float
        Poisson log L per dataset.
    objective : float
        Σ log L plus the log-priors (MAP_RL's log-posterior).
    log_priors : dict of str → float
        MAP_RL's log-prior terms (empty for ML algorithms).
    iteration : int
        Iterations done since the start of the fit.
    alpha : float
        Step length α of the iteration that led here (1 for an OSEM subset cycle).
    direction : Direction or None
        The EM step computed in that iteration (None at the start).
    memory : dict
        Accelerator and schedule memory carried between iterations (OSEM: ``level``,
        ``cycle_gains`` and ``n_subsets``, the subsets of the last cycle).
    """

    model: np.ndarray
    norms: dict[str, float]
    sources: list[np.ndarray]
    expectations: list[np.ndarray]
    log_likelihoods: list[float]
    objective: float
    log_priors: dict[str, float] = field(default_factory=dict)
    iteration: int = 0
    alpha: float = 1.0
    direction: Direction | None = None
    memory: dict[str, Any] = field(default_factory=dict)

    @property
    def log_likelihood(self) -> float:
        """Σ over datasets of log L."""
        return float(np.sum(self.log_likelihoods))
