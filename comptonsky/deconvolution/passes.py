"""Counting response passes (products streaming the whole matrix).

A *pass* is one forward or one adjoint product over all data bins: the unit of cost of the RL
family (docs/design.md §5: each streams the whole response). OSEM's restricted products count
as the fraction of data bins they touch. Every fit counts its passes
(:attr:`~comptonsky.deconvolution.driver.ImageDeconvolution.passes`).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..response.linear import LinearOperator, OperatorWrapper

__all__ = ["PassCounter", "CountedProducts"]


@dataclass(eq=False)
class PassCounter:
    """Running total of response passes."""

    forward: float = 0.0
    adjoint: float = 0.0

    @property
    def total(self) -> float:
        return self.forward + self.adjoint

    def reset(self) -> None:
        """Start counting from zero."""
        self.forward = self.adjoint = 0.0


class CountedProducts(OperatorWrapper):
    """``op`` whose forward and adjoint products add to ``counter``.

    Each product counts ``op.pass_fraction`` passes (the share of the data bins a restricted
    response streams; 1 for a whole response or one that streams it all).
    """

    def __init__(self, op: LinearOperator, counter: PassCounter):
        super().__init__(op)
        self.counter = counter
        self.pass_fraction = float(getattr(op, "pass_fraction", 1.0))

    def _forward(self, x):
        self.counter.forward += self.pass_fraction
        return self.inner.forward(x)

    def _adjoint(self, y):
        self.counter.adjoint += self.pass_fraction
        return self.inner.adjoint(y)

    def subset(self, k: int, n_subsets: int, axis: str = "Phi") -> CountedProducts:
        """The counted restriction (see ``ResponseOperator.subset``)."""
        return CountedProducts(self.inner.subset(k, n_subsets, axis), self.counter)
