"""Stopping on evidence: cross-validation by binomial thinning of the counts.

If X_i ~ Poisson(ε_i), splitting every count independently with probability p gives two
*independent* Poisson data sets, X_fit ~ Poisson(p ε) and X_val = X − X_fit ~ Poisson((1 − p) ε).
The deconvolution is run on X_fit (backgrounds, initial map and minimum flux scaled by p, so the
fitted map estimates p λ); after every iteration the fit's expected counts, rescaled by
(1 − p)/p, predict X_val, and the validation log-likelihood

    L_val(k) = Σ_i X_val,i log(q ε_fit,i(k)) − q ε_fit,i(k),     q = (1 − p)/p

measures how well iteration k generalises. Early iterations fit the sky (L_val rises), late ones
fit the noise of X_fit (L_val falls). The chosen iteration count k* is the peak of L_val (the
search ends ``patience`` iterations after the best one, or at ``iteration_max``); the run on the
full counts then stops at k* iterations. ``stopping_criteria`` sets ``validation_fraction``
(1 − p, default 0.5), ``patience`` (3) and ``seed`` (0) of the split (docs/algorithms.md).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
from histpy import Histogram
from tqdm.auto import tqdm

from ..errors import InvalidParameterError
from ..response.options import ResponseOptions
from .dataset import DataIF_COSI_DC2, DetectorFrameDataset
from .joint import JointData
from .model import backprojection_map

__all__ = ["thin_counts", "dataset_with_counts", "validation_log_likelihood", "choose_iterations"]

logger = logging.getLogger(__name__)


def thin_counts(counts: np.ndarray, fraction: float,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Split counts binomially: (X_fit, X_val) with X_fit ~ Binomial(X, fraction).

    Parameters
    ----------
    counts : ndarray of float (integer-valued), shape (n,)
    fraction : float
        Probability p that a count goes to the fitting part.
    rng : numpy.random.Generator

    Returns
    -------
    (ndarray, ndarray), each shape (n,), float64, summing to ``counts``.
    """
    x = np.asarray(counts)
    if np.any(x != np.round(x)):
        raise InvalidParameterError("cross-validation needs integer counts (binned events); "
                                    "found non-integer values")
    fit = rng.binomial(x.astype(np.int64), fraction).astype(np.float64)
    return fit, x - fit


def dataset_with_counts(ds: DataIF_COSI_DC2, counts: np.ndarray,
                        background_scale: float = 1.0) -> DataIF_COSI_DC2:
    """A copy of ``ds`` with other counts (and backgrounds scaled), sharing its response."""
    if isinstance(ds, DetectorFrameDataset):
        return ds.with_counts(counts, background_scale)
    shape = ds.response.data_shape
    event = Histogram(ds.data_axes, contents=np.asarray(counts, dtype=np.float64).reshape(shape))
    backgrounds = {key: Histogram(ds.data_axes,
                                  contents=(background_scale * ds.background(key)).reshape(shape))
                   for key in ds.keys_bkg_models()}
    return DataIF_COSI_DC2(ds.name, event, backgrounds, ds.response,
                           ResponseOptions(reuse_products=ds.reuse_products))


def validation_log_likelihood(validation: Sequence[np.ndarray], fit_expectations:
                              Sequence[np.ndarray], scale: float) -> float:
    """Σ X_val log(q ε_fit) − q ε_fit summed over datasets (q = ``scale``)."""
    total = 0.0
    for x, eps in zip(validation, fit_expectations):
        pred = scale * eps
        total += float(np.dot(x, np.log(pred)) - pred.sum())
    return total


def choose_iterations(algorithm, progress: bool = True) -> dict[str, Any]:
    """Run the thinned fit and return {best_iteration, validation_log_likelihood: [...], ...}.

    ``algorithm`` is an algorithm object built on the full data (not modified); the thinned fit
    is :meth:`~.algorithms.base.DeconvolutionAlgorithm.for_data` of it, with the intensities
    scaled by p.
    """
    validation_fraction = float(algorithm.setting("stopping_criteria:validation_fraction", 0.5))
    if not 0.0 < validation_fraction < 1.0:
        raise InvalidParameterError(
            f"{algorithm.parameter.source}: deconvolution:parameter:stopping_criteria:"
            f"validation_fraction must be in (0, 1), found {validation_fraction}")
    patience = int(algorithm.setting("stopping_criteria:patience", 3))
    seed = int(algorithm.setting("stopping_criteria:seed", 0))
    p = 1.0 - validation_fraction
    rng = np.random.default_rng(seed)
    fit_sets, validation = [], []
    for ds in algorithm.data.datasets:
        x_fit, x_val = thin_counts(ds.counts, p, rng)
        fit_sets.append(dataset_with_counts(ds, x_fit, background_scale=p))
        validation.append(x_val)
    clone = algorithm.for_data(JointData(fit_sets, algorithm.data.counter), intensity_scale=p)
    start = None
    if algorithm.parameter.get("model_definition:initialization:algorithm") == "backprojection":
        start = backprojection_map(clone.data, clone.mask)  # from the fitting part only
    state = clone.start(clone.initial_state(start))
    q = (1.0 - p) / p
    history = [validation_log_likelihood(validation, state.expectations, q)]
    best = 0
    with tqdm(total=algorithm.iteration_max, desc="cross-validation", unit="it",
              disable=not progress, leave=False) as bar:
        for k in range(1, algorithm.iteration_max + 1):
            state = clone.iterate()
            history.append(validation_log_likelihood(validation, state.expectations, q))
            bar.update(1)
            if history[k] > history[best]:
                best = k
            elif k - best >= patience:
                break
    logger.info("cross-validation: validation log L peaks at iteration %d (of %d tried, "
                "fraction held out %.2f)", best, len(history) - 1, validation_fraction)
    return {"best_iteration": max(best, 1), "validation_log_likelihood": history,
            "validation_fraction": validation_fraction, "seed": seed}
