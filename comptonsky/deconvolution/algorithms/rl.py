"""Richardson–Lucy (``RL``) and plain ML-EM (``RLsimple``), as in cosipy 0.4.3.

One iteration is that of docs/design.md §4: the EM direction (:func:`em_direction`; masked and
zero-exposure elements 0, background norms when fitted), response weighting and smoothing, a step
length of :mod:`.acceleration` (``acceleration:method``), the constraints, then ε and log L.
``RLsimple`` takes no weighting, smoothing or acceleration and does not fit background norms
(backgrounds enter at norm 1); it stops at ``iteration_max`` unless a threshold is given.
"""

from __future__ import annotations

import math

import numpy as np

from ..state import Direction, FitState
from ..steps import background_steps, em_delta, filter_delta
from .base import DeconvolutionAlgorithm

__all__ = ["RichardsonLucy", "RichardsonLucySimple", "em_direction", "em_update"]


def em_update(fit: DeconvolutionAlgorithm, model: np.ndarray, norms: dict[str, float],
              back: np.ndarray, exposure: np.ndarray, dots, sums) -> Direction:
    """The ML-EM step from the back-projected ratios ``back`` = Rᵀ(X/ε), the ``exposure``, the
    ratio·template ``dots`` and template ``sums`` (of all data, or of one OSEM subset), with
    ``fit``'s mask, norm fitting and filters."""
    delta = em_delta(model, back, exposure)
    if fit.mask is not None:
        delta[~fit.mask] = 0.0
    norm_step = (background_steps(norms, dots(), sums) if fit.fit_backgrounds
                 else {key: 0.0 for key in norms})
    processed = filter_delta(delta, fit.weight, fit.smoother, fit.data.model_shape)
    filtered = fit.weight is not None or fit.smoother is not None
    return Direction(delta, processed, norm_step, (delta,) if filtered else ())


def em_direction(fit: DeconvolutionAlgorithm, state: FitState) -> Direction:
    """The ML-EM step at ``state`` (one adjoint pass)."""
    data = fit.data
    ratios = data.ratios(state.expectations)
    return em_update(fit, state.model, state.norms, data.summed_adjoint(ratios), data.exposure,
                     lambda: {k: data.background_dot(k, ratios) for k in data.background_names},
                     data.background_sums)


class RichardsonLucy(DeconvolutionAlgorithm):
    """The accelerated, smoothed, response-weighted RL with background normalisation (``RL``)."""

    name = "RL"
    direction = em_direction


class RichardsonLucySimple(DeconvolutionAlgorithm):
    """Plain ML-EM (``RLsimple``): backgrounds at norm 1, no filters, no acceleration."""

    name = "RLsimple"
    default_threshold = -math.inf
    direction = em_direction
