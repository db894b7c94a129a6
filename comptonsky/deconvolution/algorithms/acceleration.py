"""Step lengths of the RL family: the max-step rules, and the safe line search and SQUAREM.

* :func:`em_step` with ``rule`` ``none`` (λ + δλ), ``max_step_unchecked`` (λ + α δλ with the
  largest α ≤ alpha_max keeping λ ≥ 0: cosipy 0.3.4) or ``max_step`` (the same α, kept only if
  log L at α is not below log L at α = 1: cosipy 0.4.3);
* :class:`LineSearch` and :class:`SQUAREM` replace the whole iteration and never lower the
  objective. The expected counts are affine in the map: along a direction (d, δn),
  ε(α) = ε⁰ + α (R·(d ΔΩ) + Σ_b δn_b B_b), so once u = R·(d ΔΩ) is known (one forward pass) the
  objective along the line is a cheap, concave data-space function of α.

``line_search`` maximises the objective exactly on [0, α_hi] (α_hi keeps the map ≥ 0 and the
norms in their ranges, capped at ``alpha_max``), at the cost of plain RL. ``SQUAREM``
(Varadhan & Roland 2008, scheme S3) extrapolates x' = x⁰ − 2α r + α² v from two EM steps
(r = x¹ − x⁰, v = x² − 2x¹ + x⁰); x' is an affine combination of x⁰, x¹, x², so are its expected
counts, and no extra pass is needed unless the constraints change x' (docs/algorithms.md). If the
objective still fell (the processed direction need not ascend, e.g. with smoothing or MAP_RL's
prior filter), both fall back to the plain EM step, or else keep the state. Each takes the
algorithm ``fit`` (:class:`~.base.DeconvolutionAlgorithm`) and a :class:`~..state.FitState`, and
returns the next state with its ``direction`` and ``alpha``.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np

from ..state import FitState
from ..steps import acceleration_factor, shift_norms

__all__ = ["em_step", "LineSearch", "SQUAREM", "ACCELERATORS", "line_maximum", "step_bound"]

logger = logging.getLogger(__name__)


def em_step(fit, state: FitState, rule: str = "none") -> FitState:
    """One EM iteration with the step-length ``rule`` (``none``, ``max_step_unchecked``,
    ``max_step``); costs one adjoint and one forward pass (plus one for ``max_step`` when α > 1).
    """
    direction = fit.direction(state)
    processed = direction.processed
    norms = shift_norms(state.norms, direction.norm_step)
    alpha = 1.0 if rule == "none" else acceleration_factor(state.model, processed,
                                                           fit.alpha_max, fit.mask)
    model = state.model + alpha * processed
    if rule == "max_step" and alpha > 1.0:
        data = fit.data
        trial = state.model + processed
        trial_sources = data.source_expectations(trial)
        eps_trial = data.add_backgrounds(trial_sources, norms)
        eps_alpha = data.add_backgrounds(
            [s0 + alpha * (s1 - s0) for s0, s1 in zip(state.sources, trial_sources)], norms)
        if data.total_log_likelihood(eps_alpha) < data.total_log_likelihood(eps_trial):
            logger.debug("iteration %d: accelerated step α=%.4g rejected", state.iteration + 1,
                         alpha)
            model, alpha = trial, 1.0
    model, norms = fit.constrain(model, norms)
    return replace(fit.evaluate(model, norms), direction=direction, alpha=alpha)


def step_bound(model: np.ndarray, norms: dict[str, float], d: np.ndarray,
               dn: dict[str, float], alpha_max: float, mask: np.ndarray | None,
               ranges: dict[str, tuple[float, float]]) -> float:
    """Largest α ≤ alpha_max keeping λ + α d ≥ 0 on free pixels and n + α δn inside its range
    (``ranges`` of the fitted norms; others in [0, ∞))."""
    bound = float(alpha_max)
    free = d < 0
    if mask is not None:
        free &= mask
    if free.any():
        bound = min(bound, float(np.min(model[free] / -d[free])))
    for key, n in norms.items():
        lo, hi = ranges.get(key, (0.0, np.inf))
        step = dn[key]
        if step > 0 and np.isfinite(hi):
            bound = min(bound, (hi - n) / step)
        elif step < 0:
            bound = min(bound, (n - lo) / -step)
    return max(bound, 0.0)


def line_maximum(counts: list[np.ndarray], eps0: list[np.ndarray], slope: list[np.ndarray],
                 alpha_hi: float, extra=None, tol: float = 1e-10) -> float:
    """α in [0, alpha_hi] maximising Σ_k Σ_i X log(ε⁰ + α g) − (ε⁰ + α g) (+ ``extra(α)``).

    Parameters
    ----------
    counts, eps0, slope : lists of ndarray, shape (n_data_k,)
        Counts X, expected counts ε⁰ at α = 0 and their derivative g, per dataset.
    alpha_hi : float
        Upper end of the interval (ε stays > 0 on it).
    extra : callable, optional
        Additional concave term of α (log-priors); then a bounded scalar search is used.

    Returns
    -------
    float
        The maximiser (0 when the line does not ascend).
    """
    if alpha_hi <= 0:
        return 0.0
    nz = [(x > 0) for x in counts]
    xs = [x[m] for x, m in zip(counts, nz)]
    e0s = [e[m] for e, m in zip(eps0, nz)]
    gs = [g[m] for g, m in zip(slope, nz)]
    gsum = float(sum(g.sum() for g in slope))

    def loglike(alpha: float) -> float:
        total = 0.0
        for x, e, g in zip(xs, e0s, gs):
            total += float((x * np.log(e + alpha * g)).sum())
        return total - alpha * gsum

    if extra is not None:
        from scipy.optimize import minimize_scalar

        res = minimize_scalar(lambda a: -(loglike(a) + extra(a)), bounds=(0.0, alpha_hi),
                              method="bounded", options={"xatol": tol * max(alpha_hi, 1.0)})
        best = float(res.x)
        candidates = [0.0, best, alpha_hi]
        values = [loglike(a) + extra(a) for a in candidates]
        return candidates[int(np.argmax(values))]

    # Σ x g/(e + αg) and its derivative with h = g/e precomputed (plain vector ops, no BLAS:
    # BLAS threads still spinning after a big product slow small BLAS calls down)
    hs = [g / e for g, e in zip(gs, e0s)]

    def derivatives(alpha: float) -> tuple[float, float]:
        d1, d2 = -gsum, 0.0
        for x, h in zip(xs, hs):
            q = h / (1.0 + alpha * h)
            wq = x * q
            d1 += float(wq.sum())
            d2 -= float((wq * q).sum())
        return d1, d2

    d_lo, _ = derivatives(0.0)
    if not d_lo > 0:
        return 0.0
    d_hi, _ = derivatives(alpha_hi)
    if d_hi >= 0:
        return alpha_hi
    lo, hi = 0.0, alpha_hi
    alpha = min(1.0, 0.5 * alpha_hi)
    for _ in range(60):  # safeguarded Newton on the decreasing derivative
        d1, d2 = derivatives(alpha)
        if d1 > 0:
            lo = alpha
        else:
            hi = alpha
        if hi - lo <= tol * max(hi, 1.0):
            break
        newton = alpha - d1 / d2 if d2 < 0 else np.nan
        alpha = newton if lo < newton < hi else 0.5 * (lo + hi)
    return float(0.5 * (lo + hi)) if hi - lo <= tol * max(hi, 1.0) else float(alpha)


class LineSearch:
    """Exact line search along the processed EM direction (``acceleration:method: line_search``)."""

    name = "line_search"

    def step(self, fit, start: FitState) -> FitState:
        """The best point along the EM directions from ``start``."""
        data = fit.data
        direction = fit.direction(start)
        for d, dn in direction.directions:
            u = data.forward(d)
            slope = data.add_backgrounds(u, dn)
            alpha_hi = step_bound(start.model, start.norms, d, dn, fit.alpha_max, fit.mask,
                                  fit.norm_ranges)
            for e, g in zip(start.expectations, slope):  # keep ε > 0 along the line
                neg = g < 0
                if neg.any():
                    alpha_hi = min(alpha_hi, 0.999 * float(np.min(e[neg] / -g[neg])))
            extra = None
            if fit.has_priors:
                def extra(a: float, d=d, dn=dn) -> float:
                    return float(sum(fit.log_priors(start.model + a * d,
                                                    shift_norms(start.norms, dn, a)).values()))
            alpha = line_maximum([ds.counts for ds in data.datasets], start.expectations,
                                 slope, alpha_hi, extra)
            if alpha <= 0:
                continue
            model, norms, changed = fit.project(start.model + alpha * d,
                                                shift_norms(start.norms, dn, alpha))
            sources = None if changed else [s + alpha * x for s, x in zip(start.sources, u)]
            state = fit.evaluate(model, norms, sources)
            if state.objective >= start.objective:
                return replace(state, direction=direction, alpha=alpha)
        logger.debug("iteration %d: no ascent direction; state kept", start.iteration + 1)
        return replace(start, direction=direction, alpha=0.0)


class SQUAREM:
    """Squared extrapolation (scheme S3) on two EM steps (``acceleration:method: SQUAREM``)."""

    name = "SQUAREM"
    max_backtracks = 3

    @staticmethod
    def _em(fit, state: FitState) -> tuple[FitState, tuple[np.ndarray, dict[str, float]]]:
        """One (processed) EM step from ``state``; returns the new state and the plain step."""
        direction = fit.direction(state)
        model, norms, _ = fit.project(state.model + direction.processed,
                                      shift_norms(state.norms, direction.norm_step))
        return replace(fit.evaluate(model, norms), direction=direction), direction.directions[-1]

    def step(self, fit, x0: FitState) -> FitState:
        """One cycle (two EM steps and an extrapolation); ``alpha`` is the extrapolation length."""
        x1, (plain_d, plain_dn) = self._em(fit, x0)
        x2, _ = self._em(fit, x1)
        r = x1.model - x0.model
        v = x2.model - 2.0 * x1.model + x0.model
        rn, vn = float(np.dot(r, r)), float(np.dot(v, v))
        best, step = x2, 1.0
        if vn > 0 and rn > 0:
            alpha = float(min(max(-np.sqrt(rn / vn), -fit.alpha_max), -1.0))
            for _ in range(self.max_backtracks + 1):
                if alpha >= -1.0:
                    break
                c0, c1, c2 = (1.0 + alpha) ** 2, -2.0 * alpha * (1.0 + alpha), alpha * alpha
                model = c0 * x0.model + c1 * x1.model + c2 * x2.model
                norms = {k: c0 * x0.norms[k] + c1 * x1.norms[k] + c2 * x2.norms[k]
                         for k in x0.norms}
                model, norms, changed = fit.project(model, norms)
                sources = None if changed else [c0 * a + c1 * b + c2 * c for a, b, c in
                                                zip(x0.sources, x1.sources, x2.sources)]
                trial = fit.evaluate(model, norms, sources)
                if trial.objective >= x2.objective:
                    best, step = trial, -alpha
                    break
                alpha = 0.5 * (alpha - 1.0)
        if best.objective < x0.objective:
            # the processed EM map itself went down (smoothing, prior filter): plain step
            model, norms, _ = fit.project(x0.model + plain_d, shift_norms(x0.norms, plain_dn))
            plain = fit.evaluate(model, norms)
            best, step = (plain, 1.0) if plain.objective >= x0.objective else (x0, 0.0)
        return replace(best, direction=x2.direction, alpha=float(step))


#: Canonical ``acceleration:method`` of the safe accelerators → class.
ACCELERATORS = {"line_search": LineSearch, "SQUAREM": SQUAREM}
