"""Turn a response histogram (or its HDF5 file) into a :class:`ResponseOperator`."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
from histpy import Axes, HealpixAxis, Histogram

from ..errors import FileFormatError, InvalidDataError, UnknownChoiceError
from ..io.histogram import open_histogram
from .operator import DenseResponse, ResponseOperator

__all__ = ["load_response", "response_axes", "STORAGES", "DTYPES"]

logger = logging.getLogger(__name__)

#: Axis labels of a Galactic point-source response, in order. The first may also be 'lb'.
RESPONSE_LABELS = ("NuLambda", "Ei", "Em", "Phi", "PsiChi")
IMAGE_AXIS_LABELS = ("NuLambda", "lb")
STORAGES = ("dense",)
DTYPES = ("float64", "float32")


def response_axes(rsp: Histogram, source: str = "response") -> tuple[Axes, Axes]:
    """Split a response histogram's axes into model axes ``(lb, Ei)`` and data axes.

    Raises
    ------
    FileFormatError
        If the labels are not ``(NuLambda|lb, Ei, Em, Phi, PsiChi)``.
    """
    labels = tuple(str(lab) for lab in rsp.axes.labels)
    if len(labels) != 5 or labels[0] not in IMAGE_AXIS_LABELS or labels[1:] != RESPONSE_LABELS[1:]:
        raise FileFormatError(
            f"{source}: response axes are {list(labels)}, expected "
            f"['NuLambda' (or 'lb'), 'Ei', 'Em', 'Phi', 'PsiChi']"
        )
    image = rsp.axes[0]
    if not isinstance(image, HealpixAxis):
        raise FileFormatError(f"{source}: axis {labels[0]!r} must be a HEALPix axis, "
                              f"found {type(image).__name__}")
    lb = HealpixAxis(nside=image.nside, scheme=image.scheme, coordsys=image.coordsys,
                     label="lb")
    model_axes = Axes([lb, rsp.axes["Ei"]])
    data_axes = Axes([rsp.axes["Em"], rsp.axes["Phi"], rsp.axes["PsiChi"]])
    return model_axes, data_axes


def _raw_contents(rsp: Histogram) -> np.ndarray:
    """The histogram's contents as a plain ndarray (a view where possible)."""
    contents = rsp.contents
    if hasattr(contents, "todense"):  # sparse.COO
        contents = contents.todense()
    return np.asarray(getattr(contents, "value", contents))


def load_response(rsp: Histogram | str | os.PathLike, dtype: str | None = None,
                  storage: str = "dense") -> ResponseOperator:
    """Build a response operator from a histpy response histogram or HDF5 file.

    Parameters
    ----------
    rsp : histpy.Histogram or path-like
        Response with axes ``(NuLambda, Ei, Em, Phi, PsiChi)`` in cm² s.
    dtype : {'float64', 'float32'} or None
        Precision of the stored matrix; None keeps the file's (float64 is exact).
    storage : {'dense'}
        How the matrix is held.

    Returns
    -------
    ResponseOperator
    """
    if storage not in STORAGES:
        raise UnknownChoiceError("response storage", storage, STORAGES)
    if dtype is not None and str(dtype) not in DTYPES:
        raise UnknownChoiceError("response dtype", str(dtype), DTYPES)
    source = "response"
    if not isinstance(rsp, Histogram):
        source = str(rsp)
        if not Path(rsp).exists():
            raise FileFormatError(f"{rsp}: response file not found")
        rsp = open_histogram(rsp)
    model_axes, data_axes = response_axes(rsp, source)
    raw = _raw_contents(rsp)
    matrix = raw.reshape(int(np.prod(model_axes.nbins)), int(np.prod(data_axes.nbins)))
    if dtype is not None and matrix.dtype != np.dtype(dtype):
        matrix = matrix.astype(dtype)
    solid = model_axes["lb"].pixarea().to_value("sr")
    n_energy = model_axes["Ei"].nbins
    op = DenseResponse(matrix, model_axes, data_axes,
                       np.repeat(np.full(model_axes["lb"].nbins, solid), n_energy).reshape(-1),
                       rsp.unit if rsp.unit is not None else "cm2 s")
    if not np.any(op.exposure > 0):
        raise InvalidDataError(f"{source}: the response has no exposure (all entries are zero)")
    logger.info("response %s: %d model × %d data elements, %s, %.1f MB", source, op.n_model,
                op.n_data, op.dtype, op.nbytes / 1e6)
    return op
