"""The state of a fit: one object every algorithm reads and returns (docs/design.md §4)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["FitState", "Direction"]


@dataclass(frozen=True)
class Direction:
    """The EM step at a state, as the filters left it.

    Attributes
    ----------
    delta : ndarray, shape (n_model,)
        δλ (masked pixels 0), model unit.
    processed : ndarray, shape (n_model,)
        δλ after response weighting and smoothing (the step that is taken).
    norm_step : dict of str → float
        δn_b per background (0 where the norms are not fitted).
    fallbacks : tuple of ndarray
        Other map directions the safe accelerators may try, best first; the last one is the
        plain EM step (for ML-EM with clipping it cannot lower the objective).
    prior_filter : ndarray, optional
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

    Steps never modify a state's arrays; they return a new state.

    Attributes
    ----------
    model : ndarray, shape (n_model,)
        Map λ, flat float64, model unit.
    norms : dict of str → float
        Background normalisations n_b by name.
    sources : list of ndarray, shape (n_data_k,)
        Sky expected counts per dataset, R·(λΔΩ) + 1e-12.
    expectations : list of ndarray, shape (n_data_k,)
        Total expected counts ε per dataset.
    log_likelihoods : list of float
        Poisson log L per dataset.
    objective : float
        Σ log L plus the log-priors (the log-posterior for MAP_RL).
    log_priors : dict of str → float
        MAP_RL's log-prior terms (empty for ML algorithms).
    iteration : int
        Iterations done since the start of the fit.
    alpha : float
        Step length (or OSEM subset count) of the iteration that led here.
    direction : Direction, optional
        The EM step computed in that iteration (None at the start).
    memory : dict
        Accelerator / schedule memory carried between iterations (OSEM: ``level``,
        ``cycle_gains``).
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
