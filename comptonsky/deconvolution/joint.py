"""The data a fit sees: several datasets together, their products counted and reused.

Exposures and back-projections add over datasets and background norms are shared by name. The
fit owns the operators it multiplies with: each dataset's pure response wrapped for product
reuse (:class:`~comptonsky.response.reuse.ReusedProducts`, unless the dataset turns it off) and
for pass counting (:class:`~comptonsky.deconvolution.passes.CountedProducts`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ..errors import InvalidParameterError
from ..response.linear import LinearOperator
from ..response.reuse import ReusedProducts
from .dataset import ALMOST_ZERO, DataIF_COSI_DC2
from .passes import CountedProducts, PassCounter

__all__ = ["JointData", "background_totals"]


def background_totals(datasets) -> tuple[list[str], dict[str, float]]:
    """The background names of ``datasets`` (in order of first appearance) and, per name,
    Σ_i B_bi over the datasets that have it (counts)."""
    names: list[str] = []
    for ds in datasets:
        names += [k for k in ds.keys_bkg_models() if k not in names]
    sums = {key: float(sum(ds.background(key).sum() for ds in datasets
                           if key in ds.keys_bkg_models()))
            for key in names}
    return names, sums


class JointData:
    """The sum over datasets of everything the RL family needs, on flat float64 arrays.

    Parameters
    ----------
    datasets : sequence of DataIF_COSI_DC2
        All must share the model axes (same sky pixels and energy bands).
    counter : PassCounter, optional
        Receives the response passes of every product made through :attr:`operators` (a new
        one if not given).

    Attributes
    ----------
    operators : list of LinearOperator
        The operator of each dataset that the fit multiplies with.
    counter : PassCounter
    """

    def __init__(self, datasets: Sequence[DataIF_COSI_DC2], counter: PassCounter | None = None):
        if not datasets:
            raise InvalidParameterError("no dataset given: call set_dataset([...]) first")
        self.datasets = list(datasets)
        first = self.datasets[0].response
        for ds in self.datasets[1:]:
            if ds.response.n_model != first.n_model:
                raise InvalidParameterError(
                    f"dataset {ds.name!r} has {ds.response.n_model} model elements, dataset "
                    f"{self.datasets[0].name!r} has {first.n_model}: all datasets must share "
                    "the model axes")
        self.model_axes = first.model_axes
        self.model_shape = first.model_shape
        self.n_model = first.n_model
        self.counter = PassCounter() if counter is None else counter
        self.operators: list[LinearOperator] = [
            CountedProducts(ReusedProducts(ds.response) if ds.reuse_products else ds.response,
                            self.counter)
            for ds in self.datasets]
        self.exposure = np.sum([ds.response.exposure for ds in self.datasets], axis=0)
        #: background names in order of first appearance; Σ_i B_bi over the datasets having b
        self.background_names, self.background_sums = background_totals(self.datasets)

    def expectations(self, model: np.ndarray, bkg_norm: Mapping[str, float]) -> list[np.ndarray]:
        """Expected counts per dataset, each shape (n_data_k,)."""
        return self.add_backgrounds(self.source_expectations(model), bkg_norm)

    def source_expectations(self, model: np.ndarray) -> list[np.ndarray]:
        """Sky-only expected counts s = R·(λΔΩ) + 1e-12 per dataset."""
        return [s + ALMOST_ZERO for s in self.forward(model)]

    def forward(self, model: np.ndarray) -> list[np.ndarray]:
        """R·(λΔΩ) per dataset, each shape (n_data_k,), without the offset."""
        return [op.forward(model) for op in self.operators]

    def add_backgrounds(self, sources: Sequence[np.ndarray],
                        bkg_norm: Mapping[str, float]) -> list[np.ndarray]:
        """ε = s + Σ_b n_b B_b per dataset."""
        return [ds.add_background(s, bkg_norm) for ds, s in zip(self.datasets, sources)]

    def total_log_likelihood(self, expectations: Sequence[np.ndarray]) -> float:
        """Σ over datasets of the Poisson log-likelihood."""
        return float(np.sum(self.log_likelihoods(expectations)))

    def log_likelihoods(self, expectations: Sequence[np.ndarray]) -> list[float]:
        """Poisson log-likelihood per dataset."""
        return [ds.log_likelihood(eps) for ds, eps in zip(self.datasets, expectations)]

    def ratios(self, expectations: Sequence[np.ndarray]) -> list[np.ndarray]:
        """X / ε per dataset."""
        return [ds.counts / eps for ds, eps in zip(self.datasets, expectations)]

    def summed_adjoint(self, data: Sequence[np.ndarray]) -> np.ndarray:
        """Σ_k R_kᵀ y_k (with ΔΩ), shape (n_model,)."""
        total = np.zeros(self.n_model)
        for op, y in zip(self.operators, data):
            total += op.adjoint(y)
        return total

    def background_dot(self, key: str, data: Sequence[np.ndarray]) -> float:
        """Σ_k Σ_i y_ki B_bki over the datasets having background ``key``."""
        return float(sum(np.dot(y, ds.background(key)) for ds, y in zip(self.datasets, data)
                         if key in ds.keys_bkg_models()))
