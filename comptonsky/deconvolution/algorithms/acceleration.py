"""Safe acceleration of the RL family: exact line search and SQUAREM, monotone by construction.

Both methods exploit that the expected counts are affine in the map: for a direction d in model
space and δn in background-norm space,

    ε(α) = ε⁰ + α (R·(d ΔΩ) + Σ_b δn_b B_b)

so once ``u = R·(d ΔΩ)`` is known (one forward pass), the log-likelihood along the whole line is
a cheap data-space function of α, concave in α (a sum of logarithms of affine functions minus an
affine function). Consequences:

* ``line_search``: one adjoint pass (the EM direction) + one forward pass (``u``) per iteration,
  the same two passes as plain RL; α maximises the objective exactly on [0, α_hi] where α_hi keeps
  the map ≥ 0 and the norms inside their ranges (capped at ``alpha_max``). The objective can
  therefore never fall; α ≥ 1 is found whenever the EM step itself is an improvement.
* ``SQUAREM`` (Varadhan & Roland 2008, scheme S3): two EM steps x¹ = F(x⁰), x² = F(x¹), then the
  extrapolation x' = x⁰ − 2α r + α² v (r = x¹ − x⁰, v = x² − 2x¹ + x⁰, α = −‖r‖/‖v‖ capped to
  [−alpha_max, −1]). x' is an affine combination of x⁰, x¹, x² (coefficients summing to 1), so its
  expected counts are the same combination of theirs: no extra pass unless the projection onto
  the constraints (λ ≥ minimum flux, masks, norm ranges) changes x'. x' is kept only if its
  objective is not below that of x²; otherwise α is halved towards −1 (α = −1 gives x²). Passes
  per cycle (= two EM steps): 4, plus 1 when the projection acts, plus 1 per backtrack.

Safety net, both methods: if the accepted state's objective is still below the starting one
(possible only when the processed direction is not an ascent direction, e.g. with smoothing,
or for MAP_RL's one-step-late prior filter), the plain, unfiltered EM step is used instead
(for ML-EM with clipping that step is a generalised EM step and cannot lower the likelihood), and
if even that does not improve the state is kept unchanged.

The algorithm object supplies (see :class:`~.rl.RichardsonLucy`): ``directions()``,
``constrain(model, norms)``, ``extra_objective(model, norms)``, ``data``, ``alpha_max``,
``bkg_norm_range`` and ``accept_state(state)``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

__all__ = ["State", "LineSearch", "SQUAREM", "ACCELERATORS", "line_maximum"]

logger = logging.getLogger(__name__)


@dataclass
class State:
    """A point of the fit with its derived quantities.

    Attributes
    ----------
    model : ndarray, shape (n_model,)
        Map λ (model unit).
    norms : ndarray, shape (n_backgrounds,)
        Background normalisations, in ``data.background_names`` order.
    sources : list of ndarray, shape (n_data_k,)
        Sky expected counts per dataset (with the 1e-12 offset).
    expectations : list of ndarray
        Total expected counts per dataset.
    log_likelihoods : list of float
    objective : float
        Σ log L + the algorithm's extra terms (log-priors for MAP_RL).
    """

    model: np.ndarray
    norms: np.ndarray
    sources: list
    expectations: list
    log_likelihoods: list
    objective: float


def forward_raw(data, x: np.ndarray) -> list[np.ndarray]:
    """R·(x ΔΩ) per dataset, without the 1e-12 offset (one forward pass)."""
    return [ds.response.forward(x) for ds in data.datasets]


def norms_dict(data, norms: np.ndarray) -> dict[str, float]:
    return {k: float(v) for k, v in zip(data.background_names, norms)}


def background_part(data, norms: np.ndarray) -> list[np.ndarray]:
    """Σ_b n_b B_b per dataset (zeros when there is no background)."""
    out = []
    for ds in data.datasets:
        total = np.zeros_like(ds.counts)
        for key, n in zip(data.background_names, norms):
            if key in ds.keys_bkg_models():
                total += n * ds.background(key)
        out.append(total)
    return out


def evaluate(algo, model: np.ndarray, norms: np.ndarray,
             sources: list[np.ndarray] | None = None) -> State:
    """State at (model, norms); computes the sources with one forward pass unless given."""
    data = algo.data
    if sources is None:
        sources = data.source_expectations(model)
    expectations = data.add_backgrounds(sources, norms_dict(data, norms))
    logls = data.log_likelihoods(expectations)
    objective = float(np.sum(logls)) + algo.extra_objective(model, norms_dict(data, norms))
    return State(model, norms, sources, expectations, logls, objective)


def project(algo, model: np.ndarray, norms: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
    """Constraints on (model, norms); also says whether they changed anything material.

    Changes below 1e-12 of the map's largest value (rounding residues at pixels driven exactly to
    zero) do not count: their effect on the expected counts is far below the 1e-12 offset.
    """
    new_model, new_norm = algo.constrain(model, norms_dict(algo.data, norms))
    new_norms = np.array([new_norm[k] for k in algo.data.background_names], dtype=np.float64)
    scale = float(np.max(np.abs(new_model))) if new_model.size else 0.0
    changed = bool(np.any(np.abs(new_model - model) > 1e-12 * scale)) or bool(
        np.any(new_norms != norms))
    return new_model, new_norms, changed


def step_bound(algo, model: np.ndarray, norms: np.ndarray, d: np.ndarray,
               dn: np.ndarray) -> float:
    """Largest α ≤ alpha_max keeping λ + α d ≥ 0 on free pixels and n + α δn inside its range."""
    bound = float(algo.alpha_max)
    free = d < 0
    if algo.mask is not None:
        free &= algo.mask
    if free.any():
        bound = min(bound, float(np.min(model[free] / -d[free])))
    for key, n, step in zip(algo.data.background_names, norms, dn):
        lo, hi = algo.bkg_norm_range[key] if algo.do_bkg_norm_optimization else (0.0, np.inf)
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

    def step(self, algo, start: State) -> tuple[State, float]:
        """The best point along the EM directions from ``start`` (which must be current)."""
        data = algo.data
        for d, dn in algo.directions():
            u = forward_raw(data, d)
            bkg_slope = background_part(data, dn)
            slope = [a + b for a, b in zip(u, bkg_slope)]
            alpha_hi = step_bound(algo, start.model, start.norms, d, dn)
            for e, g in zip(start.expectations, slope):  # keep ε > 0 along the line
                neg = g < 0
                if neg.any():
                    alpha_hi = min(alpha_hi, 0.999 * float(np.min(e[neg] / -g[neg])))
            extra = None
            if algo.has_extra_objective:
                def extra(a: float, d=d, dn=dn) -> float:
                    return algo.extra_objective(start.model + a * d,
                                                norms_dict(data, start.norms + a * dn))
            alpha = line_maximum([ds.counts for ds in data.datasets], start.expectations,
                                 slope, alpha_hi, extra)
            if alpha <= 0:
                continue
            model, norms, changed = project(algo, start.model + alpha * d,
                                            start.norms + alpha * dn)
            sources = None if changed else [s + alpha * x for s, x in zip(start.sources, u)]
            state = evaluate(algo, model, norms, sources)
            if state.objective >= start.objective:
                return state, alpha
        logger.debug("iteration %d: no ascent direction; state kept", algo.iteration_count)
        return start, 0.0

    def iterate(self, algo) -> float:
        """One iteration on ``algo``; returns the step α taken (0 when nothing improved)."""
        state, alpha = self.step(algo, algo.current_state())
        algo.accept_state(state)
        return alpha


class SQUAREM:
    """Squared extrapolation (scheme S3) on two EM steps (``acceleration:method: SQUAREM``)."""

    name = "SQUAREM"
    max_backtracks = 3

    def _em(self, algo, state: State) -> tuple[State, np.ndarray, np.ndarray]:
        """One (processed) EM step from ``state``; returns the new state and the plain step.

        (Using the line-searched step as the base map instead was tried: its step length
        varies from point to point, which spoils the extrapolation, and it was slower.)
        """
        algo.set_state(state)
        directions = algo.directions()
        d, dn = directions[0]
        model, norms, _ = project(algo, state.model + d, state.norms + dn)
        return evaluate(algo, model, norms), *directions[-1]

    def iterate(self, algo) -> float:
        """One cycle (two EM steps and an extrapolation); returns the extrapolation length."""
        x0 = algo.current_state()
        x1, plain_d, plain_dn = self._em(algo, x0)
        x2, _, _ = self._em(algo, x1)
        r = x1.model - x0.model
        v = x2.model - 2.0 * x1.model + x0.model
        rn, vn = float(np.dot(r, r)), float(np.dot(v, v))
        best = x2
        step = 1.0
        if vn > 0 and rn > 0:
            alpha = -np.sqrt(rn / vn)
            alpha = float(min(max(alpha, -algo.alpha_max), -1.0))
            for _ in range(self.max_backtracks + 1):
                if alpha >= -1.0:
                    break
                c0, c1, c2 = (1.0 + alpha) ** 2, -2.0 * alpha * (1.0 + alpha), alpha * alpha
                model = c0 * x0.model + c1 * x1.model + c2 * x2.model
                norms = c0 * x0.norms + c1 * x1.norms + c2 * x2.norms
                model, norms, changed = project(algo, model, norms)
                sources = None if changed else [c0 * a + c1 * b + c2 * c for a, b, c in
                                                zip(x0.sources, x1.sources, x2.sources)]
                trial = evaluate(algo, model, norms, sources)
                if trial.objective >= x2.objective:
                    best, step = trial, -alpha
                    break
                alpha = 0.5 * (alpha - 1.0)
        if best.objective < x0.objective:
            # the processed EM map itself went down (smoothing, prior filter): plain step
            model, norms, _ = project(algo, x0.model + plain_d, x0.norms + plain_dn)
            plain = evaluate(algo, model, norms)
            if plain.objective >= x0.objective:
                best, step = plain, 1.0
            else:
                best, step = x0, 0.0
        algo.accept_state(best)
        return float(step)


#: ``acceleration:method`` values handled here → accelerator class.
ACCELERATORS = {"line_search": LineSearch, "LineSearch": LineSearch, "SQUAREM": SQUAREM,
                "squarem": SQUAREM}
