"""Shared machinery of iterative deconvolution algorithms: state, loop, stopping, results."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from typing import Any

import numpy as np
from astropy import units as u
from tqdm.auto import tqdm

from ...config import Parameters
from ..joint import JointData
from ..model import AllSkyImageModel

__all__ = ["DeconvolutionAlgorithm", "PARAMETER_PREFIX"]

logger = logging.getLogger(__name__)

PARAMETER_PREFIX = "deconvolution:parameter"


class DeconvolutionAlgorithm(ABC):
    """Base class: holds the model and background norms, runs the loop, records results.

    Subclasses implement :meth:`iterate` (one full update of ``self.model`` and
    ``self.bkg_norm``, leaving ``self.expectations`` and ``self.log_likelihoods`` consistent with
    them) and may extend :meth:`initialize`, :meth:`statistic` and :meth:`make_result`.

    Parameters
    ----------
    initial_model : AllSkyImageModel
        Starting map (axes lb, Ei).
    data : JointData
        The datasets.
    mask : ndarray of bool, shape (n_model,), optional
        True where the map is free; False pixels are held at 0.
    parameter : Parameters
        The full parameter tree; this algorithm reads ``deconvolution:parameter:*``.
    """

    #: Name used in parameter files.
    name = ""
    #: Statistic used by default for stopping.
    default_statistic = "log-likelihood"

    def __init__(self, initial_model: AllSkyImageModel, data: JointData,
                 mask: np.ndarray | None, parameter: Parameters):
        self.initial_model = initial_model
        self.data = data
        self.user_mask = mask
        self.parameter = parameter
        self.model_unit = initial_model.unit
        self.iteration_max = int(self._get("iteration_max", 1))
        self.stopping_statistic = self._get("stopping_criteria:statistics",
                                            self.default_statistic)
        self.stopping_threshold = float(self._get("stopping_criteria:threshold", 1e-2))
        self.results: list[dict[str, Any]] = []
        self.iteration_count = 0

    # --- parameters -----------------------------------------------------------------------
    def _get(self, key: str, default: Any = None) -> Any:
        return self.parameter.get(f"{PARAMETER_PREFIX}:{key}", default)

    def _quantity(self, key: str, default: u.Quantity) -> u.Quantity:
        return self.parameter.quantity(f"{PARAMETER_PREFIX}:{key}", default)

    # --- life cycle -----------------------------------------------------------------------
    def initialize(self) -> None:
        """Set the starting state: model, masks, norms, expectations, likelihood."""
        self.model = np.asarray(getattr(self.initial_model.contents, "value",
                                        self.initial_model.contents),
                                dtype=np.float64).reshape(-1).copy()
        self.mask = None if self.user_mask is None else self.user_mask.copy()
        if np.any(self.data.exposure == 0):
            zero = self.data.exposure > 0
            self.mask = zero if self.mask is None else (self.mask & zero)
            logger.info("%d model elements have zero exposure; they are masked (held at 0)",
                        int((~zero).sum()))
        if self.parameter.get("model_definition:initialization:algorithm") == "backprojection":
            from ..model import backprojection_map

            self.model = backprojection_map(self.data, self.mask)
            logger.info("initial map: back-projection of the counts above the backgrounds")
        if self.mask is not None:
            self.model[~self.mask] = 0.0
        self.bkg_norm = {key: 1.0 for key in self.data.background_names}
        self.e_step()
        self.delta_model = np.zeros_like(self.model)
        self.processed_delta_model = np.zeros_like(self.model)
        self.alpha = 1.0
        self.results = []
        self.iteration_count = 0

    def e_step(self) -> None:
        """Expected counts (sky part ``self.sources`` and total ``self.expectations``) and log L
        for the current model and background norms."""
        self.sources = self.data.source_expectations(self.model)
        self.expectations = self.data.add_backgrounds(self.sources, self.bkg_norm)
        self.log_likelihoods = self.data.log_likelihoods(self.expectations)

    @abstractmethod
    def iterate(self) -> None:
        """One iteration: update model and background norms and the derived quantities."""

    def statistic(self) -> float:
        """The value watched by the stopping rule (summed log-likelihood by default)."""
        return float(np.sum(self.log_likelihoods))

    def check_stopping_criteria(self) -> bool:
        """True when the loop should stop after the current iteration."""
        if self.iteration_count >= self.iteration_max:
            return True
        if len(self.results) < 2:
            return False
        key = self.stopping_statistic
        now = np.sum(self.results[-1][key])
        before = np.sum(self.results[-2][key])
        gain = now - before
        if gain < 0:
            logger.warning("iteration %d: the %s decreased by %.4g; the reconstruction may be "
                           "unstable", self.iteration_count, key, -gain)
            return False
        return gain < self.stopping_threshold

    def _map(self, flat: np.ndarray, unit=None) -> AllSkyImageModel:
        return AllSkyImageModel.from_axes(self.data.model_axes,
                                          unit=self.model_unit if unit is None else unit,
                                          contents=flat.reshape(self.data.model_shape).copy())

    def make_result(self) -> dict[str, Any]:
        """The per-iteration record (the tutorial's keys)."""
        return {
            "iteration": self.iteration_count,
            "model": self._map(self.model),
            "delta_model": self._map(self.delta_model),
            "processed_delta_model": self._map(self.processed_delta_model),
            "background_normalization": dict(self.bkg_norm),
            "alpha": self.alpha,
            "accel_factor": self.alpha,
            "log-likelihood": list(self.log_likelihoods),
        }

    def run(self, progress: bool = True) -> list[dict[str, Any]]:
        """Iterate until a stopping criterion is met; returns ``self.results``.

        With ``stopping_criteria:statistics: cross-validation`` the number of iterations is
        chosen first on a binomially thinned copy of the counts (see
        :mod:`comptonsky.deconvolution.stopping`).
        """
        if self.stopping_statistic == "cross-validation":
            from ..stopping import run_cross_validated

            return run_cross_validated(self, progress=progress)
        return self._loop(progress)

    def _loop(self, progress: bool = True) -> list[dict[str, Any]]:
        """The iteration loop with the configured stopping rule."""
        bar = tqdm(total=self.iteration_max, desc=f"{self.name} iterations", unit="it",
                   disable=not progress, leave=False)
        try:
            while True:
                self.iteration_count += 1
                self.iterate()
                self.results.append(self.make_result())
                bar.update(1)
                bar.set_postfix(logL=f"{self.statistic():.6g}", alpha=f"{self.alpha:.3g}")
                logger.debug("iteration %d: %s %.8g, alpha %.4g, norms %s", self.iteration_count,
                             self.stopping_statistic, self.statistic(), self.alpha,
                             self.bkg_norm)
                if self.check_stopping_criteria():
                    break
        finally:
            bar.close()
        logger.info("%s stopped after %d iterations, log L = %s", self.name,
                    self.iteration_count, self.log_likelihoods)
        return self.results
