"""Counting response passes (products streaming the whole matrix), for benchmarks and tests.

A *pass* is one forward or one adjoint product over all data bins: the unit of cost of the RL
family (docs/design.md §5: each streams the whole response). OSEM's restricted products count
as the fraction of data bins they touch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

from ..response.linear import LinearOperator, OperatorWrapper
from .subsets import shared_subsets

__all__ = ["PassCounter", "CountedProducts", "count_passes"]


class PassCounter:
    """Running total of response passes."""

    def __init__(self):
        self.forward = 0.0
        self.adjoint = 0.0

    @property
    def total(self) -> float:
        return self.forward + self.adjoint


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


@contextlib.contextmanager
def count_passes(datasets: Sequence) -> Iterator[PassCounter]:
    """Count forward/adjoint products of the datasets' responses inside the ``with`` block.

    For the duration of the block each dataset's ``response`` is replaced by a
    :class:`CountedProducts` of it, and so are the operators of the OSEM subsets made for it
    (:func:`~comptonsky.deconvolution.subsets.subsets_for`); all are put back on exit.
    """
    counter = PassCounter()
    swapped = []
    for ds in datasets:
        op = ds.response
        for s in shared_subsets(op):
            swapped.append((s, s.response, s.operators))
            s.response = CountedProducts(op, counter)
            s.operators = [CountedProducts(o, counter) for o in s.operators]
        swapped.append((ds, op, None))
        ds.response = CountedProducts(op, counter)
    try:
        yield counter
    finally:
        for obj, op, operators in reversed(swapped):
            obj.response = op
            if operators is not None:
                obj.operators = operators
