"""Forward and adjoint products restricted to subsets of the Compton data space (for OSEM).

Subsets are interleaved along one data axis, ``Phi`` or ``PsiChi`` (OSEM's default: better
balanced subsets, faster convergence); each is the response operator restricted to its bins
(:meth:`~comptonsky.response.operator.ResponseOperator.subset`), whose products cost about the
subset's share of a full product where the storage allows (see :mod:`comptonsky.response.dense`
for how each backend does it, and what extra memory PsiChi subsets hold). Where it does not
(``mode='fallback'``) every subset product streams the whole matrix; a warning says so.
"""

from __future__ import annotations

import logging
import weakref

import numpy as np

from ..response.linear import BlockStack, LinearOperator
from ..response.operator import SUBSET_AXES

__all__ = ["DataSubsets", "SUBSET_AXES", "subsets_for"]

logger = logging.getLogger(__name__)


class DataSubsets:
    """Interleaved subsets of one dataset's data bins, with restricted products.

    Parameters
    ----------
    response : ResponseOperator
        The dataset's response (n_model × n_data, data axes (Em, Phi, PsiChi)).
    n_subsets : int
        Number of subsets K (≤ number of bins along ``axis``).
    axis : {'Phi', 'PsiChi'}
        Data axis along which the subsets interleave.

    Attributes
    ----------
    operators : list of ResponseOperator
        The response restricted to each subset.
    indices : list of ndarray of int
        Flat data indices of each subset (ascending within a subset).
    mode : str
        How the restricted products run ('views', 'permuted', 'segments', ..., 'fallback').
    """

    def __init__(self, response: LinearOperator, n_subsets: int, axis: str = "Phi"):
        self.response = response
        self.n_subsets = int(n_subsets)
        self.axis = axis
        self.operators = [response.subset(k, self.n_subsets, axis) for k in range(n_subsets)]
        self.indices = [op.data_indices for op in self.operators]
        self.mode = self.operators[0].mode
        if self.mode == "fallback" and n_subsets > 1:
            logger.warning("OSEM on a %s response with %s subsets: each subset product streams "
                           "the whole matrix (%d× the bytes of RL per cycle)", response.storage,
                           axis, n_subsets)

    def subset_exposure(self, k: int) -> np.ndarray:
        """ΔΩ_j Σ_{i ∈ subset k} R_ij, shape (n_model,), cm² s sr."""
        return self.operators[k].exposure

    def group_indices(self, blocks) -> np.ndarray:
        """Flat data indices of the union of subsets ``blocks`` (in the order of the blocks)."""
        return np.concatenate([self.indices[k] for k in blocks])

    def forward(self, k: int, model: np.ndarray) -> np.ndarray:
        """Σ_j R_ij ΔΩ_j λ_j for the bins i of subset k, shape (len(indices[k]),), counts."""
        return self.operators[k].forward(model)

    def adjoint(self, k: int, data: np.ndarray) -> np.ndarray:
        """ΔΩ_j Σ_{i ∈ subset k} R_ij y_i, shape (n_model,), for y on subset k's bins."""
        return self.operators[k].adjoint(data)

    def forward_group(self, blocks, model: np.ndarray) -> np.ndarray:
        """:meth:`forward` over several subsets, concatenated in the order of ``blocks``."""
        if self.mode == "fallback" and len(blocks) > 1:
            return self.response.forward(model)[self.group_indices(blocks)]
        return BlockStack([self.operators[k] for k in blocks]).forward(model)

    def adjoint_group(self, blocks, data: np.ndarray) -> np.ndarray:
        """:meth:`adjoint` of data on the union of subsets ``blocks`` (ordered as given)."""
        if self.mode == "fallback" and len(blocks) > 1:
            full = np.zeros(self.response.n_data)
            full[self.group_indices(blocks)] = data
            return self.response.adjoint(full)
        return BlockStack([self.operators[k] for k in blocks]).adjoint(data)


_SHARED: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


def subsets_for(response: LinearOperator, n_subsets: int, axis: str) -> DataSubsets:
    """A :class:`DataSubsets` for ``response``, shared while anyone holds it.

    Datasets that share a response (the thinned copies of cross-validation, bootstrap replicates)
    then share the permuted copy of the matrix instead of making one each.
    """
    key = (id(response), int(n_subsets), axis)
    found = _SHARED.get(key)
    if found is not None and found.response is response:
        return found
    made = DataSubsets(response, n_subsets, axis)
    _SHARED[key] = made
    return made
