"""Forward products rebuilt from earlier ones when the model moves along a line.

An accelerated RL step evaluates R·x at x0 (the current map) and x1 = x0 + δ (the trial), then
at x = x0 + α δ clipped at the minimum flux on a few pixels J. By linearity
R x = R x0 + α (R x1 − R x0) + R_J d_J, which costs |J| rows of R instead of all of them.
:class:`ReusedProducts` wraps any operator and does that from its last two forward products.
"""

from __future__ import annotations

import numpy as np

from .linear import LinearOperator, OperatorWrapper

__all__ = ["ReusedProducts", "reuse_plan"]

#: Residuals below this fraction of max|x| are left out of a rebuilt product (float64 rounding).
REUSE_TOLERANCE = 1e-12


def reuse_plan(history, x: np.ndarray, tolerance: float = REUSE_TOLERANCE):
    """(α, rows, residuals) with x = x0 + α (x1 − x0) + d, d non-zero on ``rows`` only, from
    the last two maps ``(x0, ·), (x1, ·)`` of ``history``; None when x is not (nearly) on their
    line or d is non-zero on more than max(8, n/64) elements.

    α is first estimated robustly (median over elements that moved), so that elements clipped
    at the minimum flux do not bias it, then refined by least squares over the inliers.
    """
    if len(history) < 2:
        return None
    (x0, _), (x1, _) = history[-2:]
    n = x.size
    step = x1 - x0
    big = np.abs(step) > 1e-6 * float(np.abs(step).max())
    if not big.any():
        return None
    dx = x - x0
    alpha = float(np.median(dx[big] / step[big]))        # robust to clipped elements
    tol = tolerance * max(float(np.abs(x).max()), np.finfo(float).tiny)
    inl = np.abs(dx - alpha * step) <= 1e3 * tol
    if inl.sum() < n - max(8, n // 64):
        return None
    alpha = float(np.dot(dx[inl], step[inl]) / max(np.dot(step[inl], step[inl]),
                                                   np.finfo(float).tiny))
    resid = dx - alpha * step
    rows = np.flatnonzero(np.abs(resid) > tol)
    if rows.size > max(8, n // 64):
        return None
    return alpha, rows, resid[rows]


class ReusedProducts(OperatorWrapper):
    """``op`` (any operator, its other attributes reachable through this wrapper) with forward
    products rebuilt from the last two when the model is on their line. ``reuse_products``
    False streams ``op`` for every call; ``products_computed`` and ``products_reused`` count
    the forward products made by ``op`` and rebuilt here."""

    #: Residuals below this fraction of max|x| are left out of the correction (float64 rounding).
    REUSE_TOLERANCE = REUSE_TOLERANCE

    def __init__(self, op: LinearOperator):
        super().__init__(op)
        self.reuse_products = True
        self.products_computed = 0
        self.products_reused = 0
        self._history: list[tuple[np.ndarray, np.ndarray]] = []

    def _forward(self, x):
        if not self.reuse_products:
            self.products_computed += 1
            return self.inner.forward(x)
        if self._history and np.array_equal(x, self._history[-1][0]):
            self.products_reused += 1
            return self._history[-1][1].copy()
        y = self._from_history(x)
        if y is None:
            y = self.inner.forward(x)
            self.products_computed += 1
        else:
            self.products_reused += 1
        self._history = self._history[-1:] + [(x.copy(), y.copy())]
        return y

    def _from_history(self, x: np.ndarray) -> np.ndarray | None:
        """R·x from the last two products if x = x0 + α (x1 − x0) + d with d non-zero on a few
        elements only, else None."""
        plan = reuse_plan(self._history, x, self.REUSE_TOLERANCE)
        if plan is None:
            return None
        alpha, rows, resid = plan
        (_, y0), (_, y1) = self._history
        y = y0 + alpha * (y1 - y0)
        if rows.size:
            y += self.inner.forward_partial(rows, resid)
        return y
