"""``ImageDeconvolution``: the tutorial's driver (datasets + parameter file → algorithm → results)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from histpy import Histogram

from ..config import Parameters
from ..errors import InvalidParameterError
from .algorithms import ALGORITHMS
from .algorithms.base import DeconvolutionAlgorithm
from .dataset import DataIF_COSI_DC2
from .joint import JointData
from .model import AllSkyImageModel, model_from_parameters
from .passes import PassCounter
from .results import save_results

__all__ = ["ImageDeconvolution"]

logger = logging.getLogger(__name__)


class ImageDeconvolution:
    """Run image deconvolution on one or more datasets following a parameter file.

    The tutorial's workflow::

        deconv = ImageDeconvolution()
        deconv.set_dataset([data_interface])
        deconv.read_parameterfile("imagedeconvolution_parfile_gal_511keV.yml")
        deconv.override_parameter("deconvolution:parameter:iteration_max = 50")
        deconv.initialize()
        deconv.run_deconvolution()
        deconv.results[-1]["model"]
    """

    def __init__(self):
        self._dataset: list[DataIF_COSI_DC2] = []
        self._parameter = Parameters()
        self._mask: np.ndarray | None = None
        self._initial_model: AllSkyImageModel | None = None
        self._algorithm: DeconvolutionAlgorithm | None = None
        self._data: JointData | None = None
        self._client: Any = None

    # --- set-up ---------------------------------------------------------------------------
    def set_dataset(self, dataset: Sequence[DataIF_COSI_DC2]) -> None:
        """Register the datasets (a list of :class:`DataIF_COSI_DC2`)."""
        if isinstance(dataset, DataIF_COSI_DC2):
            dataset = [dataset]
        dataset = list(dataset)
        for ds in dataset:
            if not isinstance(ds, DataIF_COSI_DC2):
                raise InvalidParameterError(f"set_dataset: expected DataIF_COSI_DC2 objects, "
                                            f"found {type(ds).__name__}")
        self._dataset = dataset
        self._data = None
        self._algorithm = None

    @property
    def dataset(self) -> list[DataIF_COSI_DC2]:
        return self._dataset

    def set_mask(self, mask: Histogram | np.ndarray | None) -> None:
        """Restrict the fit to pixels where ``mask`` is True (shape (npix,) or (npix, n_energy)).

        Masked pixels are held at 0. Pass None to remove the mask.
        """
        if mask is None:
            self._mask = None
            return
        values = mask.contents if isinstance(mask, Histogram) else mask
        values = np.asarray(getattr(values, "value", values))
        if values.dtype != bool:
            if not np.all(np.isin(values, (0, 1))):
                raise InvalidParameterError("set_mask: the mask must be boolean (True = fit)")
            values = values.astype(bool)
        self._mask = values

    @property
    def mask(self) -> np.ndarray | None:
        return self._mask

    def read_parameterfile(self, parameter_filepath: str | os.PathLike) -> None:
        """Read a YAML parameter file (the tutorial's layout)."""
        self._parameter = Parameters.from_file(parameter_filepath)
        self._algorithm = None
        logger.info("parameters read from %s", parameter_filepath)

    def override_parameter(self, *overrides: str) -> None:
        """Change parameters with ``"a:b:c = value"`` strings (call :meth:`initialize` after)."""
        for text in overrides:
            self._parameter.override(text)
        self._algorithm = None

    @property
    def parameter(self) -> Parameters:
        return self._parameter

    # --- run ------------------------------------------------------------------------------
    def initialize(self, client: Any = None, n_blocks: int | None = None) -> None:
        """Build and initialise the model and the algorithm from the parameters and datasets.

        With ``client`` (a ``dask.distributed.Client``) each dataset is split into ``n_blocks``
        blocks held by its workers (:mod:`comptonsky.distributed.fit`; docs/scaling.md).
        """
        if not self._dataset:
            raise InvalidParameterError("no dataset: call set_dataset([...]) before initialize()")
        if self._parameter.get("model_definition") is None:
            raise InvalidParameterError("no parameters: call read_parameterfile(...) first")
        self._parameter.check_algorithm()
        response_options = self._parameter.get("response") or {}
        if response_options:
            for ds in self._dataset:
                ds.set_response_options(response_options, "parameter file response section")
        if client is None:
            self._data = JointData(self._dataset)
        else:
            from ..distributed.fit import DistributedJointData, check_algorithm

            check_algorithm(self._parameter)
            self._data = DistributedJointData(self._dataset, client, n_blocks)
        self._client = client
        name = self._parameter.get("deconvolution:algorithm", "RL")
        mask = None
        shape = self._data.model_shape
        if self._mask is not None:
            try:
                mask = np.broadcast_to(self._mask.reshape(self._mask.shape[0], -1),
                                       shape).reshape(-1).copy()
            except ValueError:
                raise InvalidParameterError(f"set_mask: mask has shape {self._mask.shape}, "
                                            f"expected {shape} or ({shape[0]},)") from None
        model = model_from_parameters(self._parameter, self._data, mask)
        if mask is not None:
            model[:] = np.where(mask.reshape(shape), model.contents.value, 0.0) * model.unit
        self._initial_model = model
        self._algorithm = ALGORITHMS[name](model, self._data, mask, self._parameter)
        self._algorithm.start()
        logger.info("initialised %s on %d dataset(s)", name, len(self._dataset))

    def run_deconvolution(self, progress: bool = True, client: Any = None,
                          n_blocks: int | None = None) -> list[dict[str, Any]]:
        """Iterate until the stopping criteria; results are in :attr:`results`.

        ``client`` and ``n_blocks``: run on a Dask cluster (see :meth:`initialize`).
        """
        if self._algorithm is None or (client is not None and client is not self._client):
            self.initialize(client, n_blocks)
        self._data.counter.reset()
        results = self._algorithm.run(progress=progress)
        prefix = "deconvolution:parameter:save_results"
        if self._parameter.get(f"{prefix}:activate", False):
            self.save_results(self._parameter.get(f"{prefix}:directory", "./results"),
                              self._parameter.get(f"{prefix}:only_final_result", True))
        return results

    def save_results(self, directory: str | os.PathLike,
                     only_final_result: bool = True) -> list[Path]:
        """Write maps (histpy HDF5) and the per-iteration FITS table into ``directory``."""
        return save_results(self.results, directory, only_final_result,
                            [ds.name for ds in self._dataset])

    @property
    def algorithm(self) -> DeconvolutionAlgorithm | None:
        return self._algorithm

    @property
    def results(self) -> list[dict[str, Any]]:
        return [] if self._algorithm is None else self._algorithm.results

    @property
    def passes(self) -> PassCounter | None:
        """Response passes of the last :meth:`run_deconvolution` (so far, while it runs; None
        before :meth:`initialize`): each forward or adjoint product over all data bins counts 1,
        a product over a subset of the bins its share of them; products rebuilt from earlier ones
        count too."""
        return None if self._data is None else self._data.counter

    @property
    def initial_model(self) -> AllSkyImageModel | None:
        return self._initial_model
