"""Counting response passes (products streaming the whole matrix), for benchmarks and tests.

A *pass* is one forward or one adjoint product over all data bins: the unit of cost of the RL
family (DESIGN §5: each streams the whole response). OSEM's restricted products count as the
fraction of data bins they touch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

__all__ = ["PassCounter", "count_passes"]


class PassCounter:
    """Running total of response passes."""

    def __init__(self):
        self.forward = 0.0
        self.adjoint = 0.0

    @property
    def total(self) -> float:
        return self.forward + self.adjoint


@contextlib.contextmanager
def count_passes(datasets: Sequence) -> Iterator[PassCounter]:
    """Count forward/adjoint products of the datasets' responses inside the ``with`` block.

    Wraps ``response.forward``/``adjoint`` of each dataset (instance attributes, removed on
    exit) and enables the counters of OSEM's :class:`~comptonsky.deconvolution.subsets.DataSubsets`
    (which report their restricted products to :data:`ACTIVE`).
    """
    counter = PassCounter()
    wrapped = []
    for ds in datasets:
        resp = ds.response
        if "forward" in vars(resp):  # already wrapped by an outer counter
            continue
        fwd, adj = resp.forward, resp.adjoint

        def forward(x, _f=fwd):
            counter.forward += 1
            return _f(x)

        def adjoint(y, _a=adj):
            counter.adjoint += 1
            return _a(y)

        resp.forward, resp.adjoint = forward, adjoint
        wrapped.append(resp)
    ACTIVE.append(counter)
    try:
        yield counter
    finally:
        ACTIVE.remove(counter)
        for resp in wrapped:
            del resp.forward
            del resp.adjoint


#: Counters currently active (restricted products add to all of them).
ACTIVE: list[PassCounter] = []


def add_partial(kind: str, fraction: float) -> None:
    """Record a restricted product covering ``fraction`` of the data bins."""
    for counter in ACTIVE:
        setattr(counter, kind, getattr(counter, kind) + fraction)
