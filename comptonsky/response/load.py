"""Turn a response histogram (or its histpy HDF5 file) into a response operator.

A load goes one way: source (:mod:`.source`) → storage strategy (:mod:`.storage`, chosen once
from the :class:`~comptonsky.response.options.ResponseOptions`) → operator. Loading by path
reads the HDF5 dataset in row blocks straight into the chosen dtype and storage and writes a
converted cache (:mod:`.cache`) that the next load memory-maps in well under a second.

:class:`LazyResponse` is a response to be loaded: its source and options, its axes read at once
(without the values), the operator made when first needed, with the options known by then.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
from histpy import Histogram

from ..errors import InvalidDataError
from .operator import ResponseOperator
from .options import ResponseOptions
from .source import open_source, probe_response
from .storage import select_storage

__all__ = ["load_response", "LazyResponse"]

logger = logging.getLogger(__name__)


def load_response(rsp: Histogram | str | os.PathLike, dtype: str | None = None,
                  storage: str | None = None, *, options: ResponseOptions | None = None,
                  **kwargs: Any) -> ResponseOperator:
    """Build a response operator from a histpy response histogram or HDF5 file.

    Parameters
    ----------
    rsp : histpy.Histogram or path-like
        Response with axes ``(NuLambda, Ei, Em, Phi, PsiChi)`` in cm² s, shape
        (n_pix, n_Ei, n_Em, n_Phi, n_PsiChi); the file may carry under/overflow bins.
    dtype, storage, **kwargs
        Options (:class:`~comptonsky.response.options.ResponseOptions`: ``sparse_threshold``,
        ``memory_budget``, ``cache``, ``cache_dir``, ``populate``, ``progress``, ``device``,
        ``reuse_products``), changing ``options`` if given.
    options : ResponseOptions, optional

    Returns
    -------
    ResponseOperator
        :class:`~.operator.DenseResponse`, :class:`~.sparse.SparseResponse`,
        :class:`~.outofcore.OutOfCoreResponse` or :class:`~.gpu.GPUDenseResponse`; its ``info``
        records the storage chosen and why, the dtype, the source, whether the cache was used,
        the cache path and the load time (s).

    Raises
    ------
    UnknownChoiceError
        For an unknown storage, dtype, device or option.
    InvalidParameterError
        For an option value out of range.
    FileFormatError
        For a missing or malformed file.
    InvalidDataError
        If the response has no exposure.
    """
    t0 = time.perf_counter()
    opts = ResponseOptions.from_mapping({"dtype": dtype, "storage": storage, **kwargs},
                                        "load_response", base=options)
    with open_source(rsp) as src:
        dt = np.dtype(opts.dtype) if opts.dtype is not None else src.file_dtype
        strategy, reason = select_storage(src, dt, opts)
        op = strategy.load(src, dt, opts)
    if not np.any(op.exposure > 0):
        raise InvalidDataError(f"{src.name}: the response has no exposure (all entries are zero)")
    op.info.update(storage=strategy.name, reason=reason, dtype=dt.name, source=src.name,
                   seconds=time.perf_counter() - t0, device=getattr(op, "device", "cpu"))
    extra = ""
    if op.storage == "sparse":
        extra = (f", threshold {op.threshold:g}: {op.nnz} elements (density {op.density:.4f}), "
                 f"dropped flux fraction {op.dropped_flux_fraction:.3g} (worst model element "
                 f"{op.max_row_dropped_fraction:.3g})")
    logger.info("response %s: %d model × %d data elements, %s %s, %.1f MB held, %s in %.2f s%s",
                src.name, op.n_model, op.n_data, strategy.name, dt, op.nbytes / 1e6,
                "from cache" if op.info.get("cached") else "converted", op.info["seconds"],
                extra)
    return op


class LazyResponse:
    """A response to be loaded: a Histogram or file, and its options.

    Parameters
    ----------
    rsp : histpy.Histogram or path-like
    options : ResponseOptions

    Raises
    ------
    FileFormatError
        For a missing or malformed file (its axes are read at once).
    InvalidDataError
        For an in-memory response that is all zero.
    """

    def __init__(self, rsp: Histogram | str | os.PathLike, options: ResponseOptions):
        self.source = rsp
        self.options = options
        self.model_axes, self.data_axes, self.unit = probe_response(rsp)
        self._operator: ResponseOperator | None = None

    @property
    def loaded(self) -> bool:
        return self._operator is not None

    def configure(self, mapping: Mapping[str, Any], where: str) -> bool:
        """Change the options; a loaded operator made with other options is dropped.

        Returns True if the options changed.
        """
        new = ResponseOptions.from_mapping(mapping, where, base=self.options)
        if new == self.options:
            return False
        if self._operator is not None:
            logger.info("response %s: options changed to %s; it will be loaded again",
                        self.name, new)
            self._operator = None
        self.options = new
        return True

    def operator(self) -> ResponseOperator:
        """The operator, loaded on the first call with the options set by then."""
        if self._operator is None:
            self._operator = load_response(self.source, options=self.options)
        return self._operator

    @property
    def name(self) -> str:
        return "in-memory histogram" if isinstance(self.source, Histogram) else str(self.source)
