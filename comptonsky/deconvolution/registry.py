"""Every name a parameter file may choose, and the parameters each algorithm takes.

Plain data, read by :mod:`comptonsky.config` to
validate parameter files and by the modules that map the names to code. Those maps
(``ALGORITHMS`` in :mod:`.algorithms`, ``SMOOTHING_METHODS`` in :mod:`.smoothing`, the
accelerators of :mod:`.algorithms.acceleration`) have exactly the keys listed here.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..response.operator import SUBSET_AXES  # noqa: F401  (the axes a response splits along)

#: ``deconvolution:algorithm`` spellings → canonical name (cosipy ≥ 0.4 names included).
ALGORITHM_NAMES = {"RL": "RL", "RLsimple": "RLsimple", "MAP_RL": "MAP_RL", "OSEM": "OSEM",
                   "RLadvanced": "RL", "RLbasic": "RLsimple"}

#: ``acceleration:method`` spellings → canonical name.
ACCELERATION_METHODS = {"max_step": "max_step", "MaxStep": "max_step",
                        "max_step_unchecked": "max_step_unchecked",
                        "line_search": "line_search", "LineSearch": "line_search",
                        "SQUAREM": "SQUAREM", "squarem": "SQUAREM"}
#: Accelerators that replace the whole iteration and never lower the objective.
SAFE_ACCELERATIONS = ("line_search", "SQUAREM")

SMOOTHING_METHODS = ("healpy", "pixel")
SUBSET_SCHEDULES = ("adaptive", "constant")
STOPPING_STATISTICS = ("log-likelihood", "log-posterior", "cross-validation")
PRIORS = ("TSV", "entropy", "energy_TSV", "gamma")
INITIALIZATIONS = ("flat", "map", "backprojection")
MODEL_CLASSES = ("AllSkyImage",)


@dataclass(frozen=True)
class AlgorithmSpec:
    """What one algorithm reads from ``deconvolution:parameter``: the keys it uses
    (``parameters``; a section of a feature it lacks is accepted only with ``activate: false``),
    the canonical acceleration methods it can apply and the stopping statistics it offers."""

    parameters: tuple[str, ...]
    accelerations: tuple[str, ...] = ()
    statistics: tuple[str, ...] = ("log-likelihood", "cross-validation")


_COMMON = ("iteration_max", "minimum_flux", "stopping_criteria", "save_results")
_RL = _COMMON + ("acceleration", "response_weighting", "smoothing",
                 "background_normalization_optimization")

#: Canonical algorithm name → its parameters.
ALGORITHM_SPECS = {
    "RL": AlgorithmSpec(_RL, ("max_step", "max_step_unchecked") + SAFE_ACCELERATIONS),
    "RLsimple": AlgorithmSpec(_COMMON),
    "MAP_RL": AlgorithmSpec(_COMMON + ("acceleration", "response_weighting",
                                       "background_normalization_optimization", "prior"),
                            SAFE_ACCELERATIONS, STOPPING_STATISTICS),
    "OSEM": AlgorithmSpec(_RL + ("n_subsets", "subset_axis", "subset_schedule"),
                          SAFE_ACCELERATIONS),
}

