"""What every algorithm shares: options, the fit state, the iteration loop, stopping, results.

An algorithm is a composition of the pure steps of :mod:`..steps` and a step-length rule or
accelerator of :mod:`.acceleration`. It holds one :class:`~..state.FitState` and replaces it at
every iteration. The public fit API::

    algo.start()                # the initial state (or algo.start(state) to warm-start)
    algo.iterate(5)             # five iterations, recorded in algo.results
    state = algo.state          # everything needed to continue elsewhere
    other.start(state); other.iterate(5)   # the same as 10 iterations in one go
    algo.run()                  # iterate until the stopping rule

Only the last record of :attr:`results` keeps its maps unless :attr:`keep_maps` is ``"all"``
(memory flat in the iteration count); after every iteration :attr:`committed` records what a
checkpoint of it needs (:mod:`..checkpoint`).
"""

from __future__ import annotations

import copy
import logging
import math
from abc import ABC, abstractmethod
from dataclasses import replace
from typing import Any

import numpy as np
from astropy import units as u
from tqdm.auto import tqdm

from ...config import Parameters
from ...errors import InvalidParameterError, UnknownChoiceError
from ..checkpoint import Committed, capture, reuse_wrapper
from ..joint import JointData
from ..model import AllSkyImageModel
from ..registry import ACCELERATION_METHODS, ALGORITHM_SPECS
from ..results import IterationRecord, strip_maps
from ..smoothing import make_smoother
from ..state import Direction, FitState
from ..steps import clip_norms, constrain, response_weighting_filter
from ..stopping import choose_iterations
from .acceleration import ACCELERATORS, em_step

__all__ = ["DeconvolutionAlgorithm", "PARAMETER_PREFIX", "DEFAULT_BKG_RANGE"]

logger = logging.getLogger(__name__)

PARAMETER_PREFIX = "deconvolution:parameter"
#: Range of a fitted background normalisation not listed in ``range``.
DEFAULT_BKG_RANGE = (0.0, 100.0)


class DeconvolutionAlgorithm(ABC):
    """Base class: options, fit state, loop, stopping, results.

    Subclasses set :attr:`name` (its :data:`~..registry.ALGORITHM_SPECS` entry says which
    parameters it takes) and implement :meth:`direction`; they may override :meth:`step`,
    :meth:`log_priors`, :meth:`bind` and :meth:`make_result`.

    Parameters
    ----------
    initial_model : AllSkyImageModel
        Starting map (axes lb, Ei).
    data : JointData
        The datasets.
    mask : ndarray of bool, shape (n_model,), optional
        True where the map is free; False pixels are held at 0.
    parameter : Parameters
        The full parameter tree; checked against what this algorithm takes.
    """

    #: Name used in parameter files.
    name = ""
    #: Statistic used by default for stopping.
    default_statistic = "log-likelihood"
    #: Threshold on the gain of the statistic when ``stopping_criteria:threshold`` is unset.
    default_threshold = 1e-2
    #: Whether the objective has log-prior terms.
    has_priors = False

    def __init__(self, initial_model: AllSkyImageModel, data: JointData,
                 mask: np.ndarray | None, parameter: Parameters):
        parameter.check_algorithm(self.name)
        self.spec = ALGORITHM_SPECS[self.name]
        self.initial_model = initial_model
        self.user_mask = mask
        self.parameter = parameter
        self.model_unit = initial_model.unit
        self.iteration_max = int(self.setting("iteration_max", 1))
        self.stopping_statistic = self.setting("stopping_criteria:statistics",
                                               self.default_statistic)
        self.stopping_threshold = float(self.setting("stopping_criteria:threshold",
                                                     self.default_threshold))
        minimum = self.quantity("minimum_flux", 0.0 * self.model_unit)
        self.minimum_flux = float(u.Quantity(minimum).to_value(self.model_unit))
        self._read_backgrounds(data.background_names)
        self.alpha_max = float(self.setting("acceleration:alpha_max", 10.0))
        self.acceleration_method = ACCELERATION_METHODS[self.setting("acceleration:method",
                                                                     "max_step")]
        accelerate = self.uses("acceleration")
        #: safe accelerator replacing the iteration (line search, SQUAREM), else None
        self.accelerator = (ACCELERATORS[self.acceleration_method]()
                            if accelerate and self.acceleration_method in ACCELERATORS else None)
        #: step-length rule of the plain EM iteration (``none`` or a max-step rule)
        self.step_rule = self.acceleration_method if accelerate and not self.accelerator \
            else "none"
        self.smoother = None
        if self.uses("smoothing"):
            fwhm = self.quantity("smoothing:FWHM", None)
            if fwhm is None:
                raise InvalidParameterError(f"{parameter.source}: smoothing is activated but "
                                            f"{PARAMETER_PREFIX}:smoothing:FWHM is not set")
            lb = data.model_axes[0]
            self.smoother = make_smoother(self.setting("smoothing:method", "healpy"), fwhm,
                                          lb.nside, nested=str(lb.scheme).lower() == "nested")
        self.results: list[dict[str, Any]] = []
        self.state: FitState | None = None
        #: which records of :attr:`results` hold maps: ``"final"`` (the last one; the others
        #: keep the table values and ``model_flux``) or ``"all"`` (the default when the
        #: parameter file saves every iteration)
        self.keep_maps = ("all" if self.setting("save_results:activate", False)
                          and not self.setting("save_results:only_final_result", True)
                          else "final")
        #: the state after the last completed iteration and what a checkpoint needs of it
        self.committed: Committed | None = None
        #: whether the fit continues from a checkpoint (the stopping rule is checked first)
        self.resumed = False
        #: summary of the cross-validation run (when the stopping rule uses it)
        self.cross_validation: dict[str, Any] | None = None
        self.bind(data)

    # --- options ----------------------------------------------------------------------------
    def setting(self, key: str, default: Any = None) -> Any:
        """``deconvolution:parameter:<key>`` of the parameter tree, or ``default``."""
        return self.parameter.get(f"{PARAMETER_PREFIX}:{key}", default)

    def quantity(self, key: str, default: u.Quantity | None) -> u.Quantity | None:
        """The ``{value, unit}`` setting ``key`` as a Quantity, or ``default``."""
        return self.parameter.quantity(f"{PARAMETER_PREFIX}:{key}", default)

    def uses(self, feature: str) -> bool:
        """Whether this algorithm has ``feature`` (a section with ``activate``) and it is on."""
        return feature in self.spec.parameters and bool(self.setting(f"{feature}:activate", False))

    def _read_backgrounds(self, names: list[str]) -> None:
        key = "background_normalization_optimization"
        self.fit_backgrounds = self.uses(key)
        ranges = (self.setting(f"{key}:range", {}) or {}) if key in self.spec.parameters else {}
        unknown = set(ranges) - set(names)
        if unknown:
            raise UnknownChoiceError("background name in background_normalization range",
                                     sorted(unknown)[0], names)
        #: [low, high] of each fitted norm (empty when the norms are not fitted)
        self.norm_ranges = {k: tuple(ranges.get(k, DEFAULT_BKG_RANGE)) for k in names} \
            if self.fit_backgrounds else {}
        for name, (lo, hi) in self.norm_ranges.items():
            if not 0 <= lo <= hi:
                raise InvalidParameterError(
                    f"{self.parameter.source}: {key}:range:{name} must be [low, high] with "
                    f"0 ≤ low ≤ high, found [{lo}, {hi}]")

    def bind(self, data: JointData) -> None:
        """Attach the datasets: masks (zero exposure held at 0) and response weighting."""
        self.data = data
        self.mask = None if self.user_mask is None else self.user_mask.copy()
        if np.any(data.exposure == 0):
            exposed = data.exposure > 0
            self.mask = exposed if self.mask is None else (self.mask & exposed)
            logger.info("%d model elements have zero exposure; they are masked (held at 0)",
                        int((~exposed).sum()))
        index = float(self.setting("response_weighting:index", 0.5))
        self.weight = (response_weighting_filter(data.exposure, index)
                       if self.uses("response_weighting") else None)

    def for_data(self, data: JointData, intensity_scale: float = 1.0) -> DeconvolutionAlgorithm:
        """The same algorithm and options on other datasets (not started).

        ``intensity_scale`` multiplies the intensity-valued options and the initial map (a fit
        of p·X estimates p·λ: cross-validation's thinned counts).
        """
        clone = copy.copy(self)
        clone.results, clone.state, clone.cross_validation = [], None, None
        clone.committed, clone.resumed = None, False
        clone.minimum_flux = self.minimum_flux * intensity_scale
        if intensity_scale != 1.0:
            clone.initial_model = self.initial_model.copy()
            clone.initial_model[:] = clone.initial_model.contents * intensity_scale
        clone.bind(data)
        return clone

    # --- the steps --------------------------------------------------------------------------
    @abstractmethod
    def direction(self, state: FitState) -> Direction:
        """The EM step at ``state`` (one adjoint pass)."""

    def log_priors(self, model: np.ndarray, norms: dict[str, float]) -> dict[str, float]:
        """Log-prior terms of the objective (none for ML algorithms)."""
        return {}

    def evaluate(self, model: np.ndarray, norms: dict[str, float],
                 sources: list[np.ndarray] | None = None) -> FitState:
        """The state at (model, norms): E-step (one forward pass unless ``sources`` is given),
        log L and objective."""
        if sources is None:
            sources = self.data.source_expectations(model)
        expectations = self.data.add_backgrounds(sources, norms)
        logls = self.data.log_likelihoods(expectations)
        priors = self.log_priors(model, norms)
        return FitState(model, dict(norms), sources, expectations, logls,
                        float(np.sum(logls)) + sum(priors.values()), priors)

    def constrain(self, model: np.ndarray,
                  norms: dict[str, float]) -> tuple[np.ndarray, dict[str, float]]:
        """M-step constraints: minimum flux and masks on the map, ranges on fitted norms."""
        return constrain(model, self.minimum_flux, self.mask), clip_norms(norms, self.norm_ranges)

    def project(self, model: np.ndarray, norms: dict[str, float]
                ) -> tuple[np.ndarray, dict[str, float], bool]:
        """:meth:`constrain`, and whether it changed anything material.

        Changes below 1e-12 of the map's largest value (rounding residues at pixels driven exactly
        to zero) do not count: their effect on the expected counts is far below the 1e-12 offset.
        """
        new_model, new_norms = self.constrain(model, norms)
        scale = float(np.max(np.abs(new_model))) if new_model.size else 0.0
        changed = bool(np.any(np.abs(new_model - model) > 1e-12 * scale)) or any(
            new_norms[k] != norms[k] for k in norms)
        return new_model, new_norms, changed

    def step(self, state: FitState) -> FitState:
        """One iteration from ``state`` (its iteration counter is set by :meth:`iterate`)."""
        if self.accelerator is not None:
            return self.accelerator.step(self, state)
        return em_step(self, state, self.step_rule)

    # --- the fit ----------------------------------------------------------------------------
    def initial_state(self, model: np.ndarray | None = None) -> FitState:
        """The state at ``model`` (default: the initial map), masked, with all norms 1."""
        if model is None:
            model = getattr(self.initial_model.contents, "value", self.initial_model.contents)
        model = np.asarray(model, dtype=np.float64).reshape(-1).copy()
        if self.mask is not None:
            model[~self.mask] = 0.0
        return self.evaluate(model, {key: 1.0 for key in self.data.background_names})

    def start(self, state: FitState | None = None) -> FitState:
        """Begin a fit at ``state`` (warm start) or at :meth:`initial_state`; clears results."""
        self.state = self.initial_state() if state is None else state
        self.results = []
        self.resumed = False
        self.committed = capture(self)
        return self.state

    def iterate(self, n: int = 1) -> FitState:
        """``n`` iterations from the current state, each recorded in :attr:`results`."""
        if self.state is None:
            self.start()
        for _ in range(n):
            before = self.state
            after = self.step(before)
            self.state = replace(after, iteration=before.iteration + 1,
                                 memory={**before.memory, **after.memory})
            record = IterationRecord(self.make_result())
            if self.keep_maps != "all" and self.results:
                strip_maps(self.results[-1])
            self.results.append(record)
            self.committed = capture(self)   # one assignment: a checkpoint sees all or nothing
        return self.state

    def rewind(self) -> None:
        """Go back to :attr:`committed`, the last completed iteration (after one cut short):
        state, records, remembered products and pass counts."""
        done = self.committed
        if done is None:
            return
        self.state = done.state
        del self.results[done.n_results:]
        if self.results and "model" not in self.results[-1]:
            self.results[-1] = IterationRecord(self.make_result())
        for op, item in zip(self.data.operators, done.products):
            if item is not None:
                wrapper = reuse_wrapper(op)
                wrapper._history, wrapper.products_computed, wrapper.products_reused = item
        self.data.counter.forward, self.data.counter.adjoint = done.passes

    def _should_stop(self, limit: int, threshold: float, key: str) -> bool:
        """Stop after ``limit`` iterations, or once ``key`` gains less than ``threshold`` (a
        fall only warns; the first iteration never stops)."""
        if self.state.iteration >= limit:
            return True
        if len(self.results) < 2:
            return False
        gain = np.sum(self.results[-1][key]) - np.sum(self.results[-2][key])
        if gain < 0:
            logger.warning("iteration %d: the %s decreased by %.4g; the reconstruction may be "
                           "unstable", self.state.iteration, key, -gain)
            return False
        return gain < threshold

    def run(self, progress: bool = True, on_iteration=None) -> list[dict[str, Any]]:
        """Iterate from the current state until a stopping criterion is met; returns
        :attr:`results`.

        With ``stopping_criteria:statistics: cross-validation`` the number of iterations is
        chosen first on a binomially thinned copy of the counts (see
        :mod:`comptonsky.deconvolution.stopping`); every record then gains
        ``validation-log-likelihood``. A fit resumed from a checkpoint checks the stopping rule
        before its first iteration (the run that wrote the checkpoint may have stopped there).

        Parameters
        ----------
        progress : bool
            Show a progress bar.
        on_iteration : callable, optional
            Called with this algorithm after every iteration (checkpoints).
        """
        if self.state is None:
            self.start()
        limit, threshold, key = self.iteration_max, self.stopping_threshold, self.stopping_statistic
        if key == "cross-validation":
            if self.cross_validation is None:
                self.cross_validation = choose_iterations(self, progress)
            limit, threshold = self.cross_validation["best_iteration"], -math.inf
            key = self.default_statistic
        stop = self.resumed and bool(self.results) and self._should_stop(limit, threshold, key)
        with tqdm(total=limit, initial=min(len(self.results), limit),
                  desc=f"{self.name} iterations", unit="it", disable=not progress,
                  leave=False) as bar:
            while not stop:
                self.iterate()
                bar.update(1)
                bar.set_postfix(logL=f"{self.state.log_likelihood:.6g}",
                                alpha=f"{self.state.alpha:.3g}")
                if on_iteration is not None:
                    on_iteration(self)
                stop = self._should_stop(limit, threshold, key)
        if self.cross_validation is not None:
            history = self.cross_validation["validation_log_likelihood"]
            for record in self.results:
                k = record["iteration"]
                record["validation-log-likelihood"] = history[k] if k < len(history) else math.nan
        logger.info("%s stopped after %d iterations, log L = %s", self.name,
                    self.state.iteration, self.state.log_likelihoods)
        return self.results

    # --- results ----------------------------------------------------------------------------
    def _map(self, flat: np.ndarray, unit=None) -> AllSkyImageModel:
        return AllSkyImageModel.from_axes(self.data.model_axes,
                                          unit=self.model_unit if unit is None else unit,
                                          contents=flat.reshape(self.data.model_shape).copy())

    def make_result(self) -> dict[str, Any]:
        """The record of the current state (the tutorial's keys)."""
        state, zeros = self.state, np.zeros_like(self.state.model)
        direction = state.direction
        return {
            "iteration": state.iteration,
            "model": self._map(state.model),
            "delta_model": self._map(zeros if direction is None else direction.delta),
            "processed_delta_model": self._map(zeros if direction is None
                                               else direction.processed),
            "background_normalization": dict(state.norms),
            "alpha": state.alpha,
            "accel_factor": state.alpha,
            "log-likelihood": list(state.log_likelihoods),
        }

    # shortcuts to the current state
    model = property(lambda self: self.state.model, doc="Current map λ, shape (n_model,).")
    expectations = property(lambda self: self.state.expectations, doc="ε per dataset.")
    log_likelihoods = property(lambda self: self.state.log_likelihoods, doc="log L per dataset.")
