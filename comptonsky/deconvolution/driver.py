"""``ImageDeconvolution``: the tutorial's driver (datasets + parameter file → algorithm → results)."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from histpy import Histogram

from ..config import Parameters
from ..errors import InvalidParameterError, RunInterrupted
from ..io.atomic import check_output_path
from .algorithms import ALGORITHMS
from .algorithms.base import DeconvolutionAlgorithm
from .checkpoint import fingerprint, read_checkpoint, restore_checkpoint, write_checkpoint
from .dataset import DataIF_COSI_DC2
from .joint import JointData
from .model import AllSkyImageModel, model_from_parameters
from .passes import PassCounter
from .results import save_results

__all__ = ["ImageDeconvolution", "DEFAULT_CHECKPOINT_EVERY"]

logger = logging.getLogger(__name__)

#: Iterations between two checkpoints when a checkpoint file is given.
DEFAULT_CHECKPOINT_EVERY = 10
_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def _terminate_as_interrupt():
    """SIGTERM raises :class:`RunInterrupted` (as Ctrl-C raises KeyboardInterrupt) inside."""
    if not _in_main_thread():
        yield
        return

    def handler(signum, frame):
        raise RunInterrupted(signum)

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if old is None else old)


@contextlib.contextmanager
def _signals_deferred():
    """Hold SIGINT and SIGTERM while a checkpoint is written; yields the list of those that
    arrived meanwhile."""
    arrived: list[int] = []
    if not _in_main_thread():
        yield arrived
        return
    old = {s: signal.signal(s, lambda signum, frame: arrived.append(signum)) for s in _SIGNALS}
    try:
        yield arrived
    finally:
        for s, handler in old.items():
            signal.signal(s, signal.SIG_DFL if handler is None else handler)


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
        """Read a YAML parameter file (the tutorial's layout).

        Raises
        ------
        InvalidParameterError
            If the file has no ``deconvolution:`` section.
        """
        parameters = Parameters.from_file(parameter_filepath)
        parameters.require_section("deconvolution")
        self._parameter = parameters
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

    def run_deconvolution(self, progress: bool = True,
                          checkpoint: str | os.PathLike | None = None,
                          checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY,
                          resume: bool = False, keep_maps: str | None = None,
                          save: bool | None = None, client: Any = None,
                          n_blocks: int | None = None) -> list[dict[str, Any]]:
        """Iterate until the stopping criteria; results are in :attr:`results`.

        Parameters
        ----------
        progress : bool
            Show a progress bar.
        checkpoint : path-like, optional
            Checkpoint file (``.npz``): written atomically every ``checkpoint_every``
            iterations, at the end, and when SIGINT (Ctrl-C) or SIGTERM stops the fit.
        checkpoint_every : int
            Iterations between checkpoints (0: only at the end and on a signal).
        resume : bool
            Continue from ``checkpoint`` (written by a fit with the same parameters and data,
            else :class:`~comptonsky.errors.CheckpointError`); the result is bit for bit that
            of a fit never interrupted.
        keep_maps : {'final', 'all'}, optional
            Keep the maps of every iteration in :attr:`results`, or only of the last one (the
            others keep their table entries). Default: ``all`` when the parameter file saves
            every iteration (``save_results`` active with ``only_final_result: false``), else
            ``final``.
        save : bool, optional
            Write the results where ``save_results`` says (default: when it is active).
        client, n_blocks
            Run on a Dask cluster (see :meth:`initialize`).

        Raises
        ------
        RunInterrupted
            When SIGINT or SIGTERM stopped the fit (after writing the checkpoint, if any); a
            :class:`KeyboardInterrupt`, naming the last iteration done and the checkpoint.
        """
        if self._algorithm is None or (client is not None and client is not self._client):
            self.initialize(client, n_blocks)
        algo = self._algorithm
        if self._client is not None and (checkpoint is not None or resume):
            if resume:
                raise InvalidParameterError("resume: a fit on a Dask cluster keeps its "
                                            "expected counts on the workers and writes no "
                                            "checkpoint to resume from; run it again")
            logger.warning("a fit on a Dask cluster writes no checkpoint (%s)", checkpoint)
            checkpoint = None
        if keep_maps is not None:
            if keep_maps not in ("final", "all"):
                raise InvalidParameterError(f"keep_maps: expected 'final' or 'all', found "
                                            f"{keep_maps!r}")
            algo.keep_maps = keep_maps
        every = int(checkpoint_every)
        if every < 0:
            raise InvalidParameterError(f"checkpoint_every: expected 0 or more iterations, "
                                        f"found {checkpoint_every}")
        if checkpoint is not None and not resume:
            check_output_path(checkpoint)   # a folder or an unwritable place: before any work
        if resume:
            if checkpoint is None:
                raise InvalidParameterError("resume=True needs the checkpoint file "
                                            "(checkpoint=...)")
            self.resume_from(checkpoint)
        if not algo.resumed:
            self._data.counter.reset()

        prints = None if checkpoint is None else fingerprint(algo)

        def write(fit) -> None:
            with _signals_deferred() as arrived:
                write_checkpoint(checkpoint, fit, prints=prints)
            if arrived:
                raise RunInterrupted(arrived[0])

        def on_iteration(fit) -> None:
            if every and fit.state.iteration % every == 0:
                write(fit)

        with _terminate_as_interrupt():
            try:
                results = algo.run(progress=progress,
                                   on_iteration=None if checkpoint is None else on_iteration)
                if checkpoint is not None:
                    write(algo)
            except KeyboardInterrupt as exc:
                algo.rewind()
                written = None
                if checkpoint is not None and algo.committed is not None:
                    with _signals_deferred():
                        written = write_checkpoint(checkpoint, algo, prints=prints)
                done = algo.committed.state.iteration if algo.committed is not None else None
                raise RunInterrupted(getattr(exc, "signum", signal.SIGINT), done,
                                     written) from None
        prefix = "deconvolution:parameter:save_results"
        if self._parameter.get(f"{prefix}:activate", False) if save is None else save:
            directory = self._parameter.get(f"{prefix}:directory", "./results")
            self.save_results(self._parameter.resolve_path(directory, f"{prefix}:directory"),
                              self._parameter.get(f"{prefix}:only_final_result", True))
        return results

    def resume_from(self, checkpoint: str | os.PathLike) -> int:
        """Put the initialised fit at the iteration saved in ``checkpoint``; the next
        :meth:`run_deconvolution` continues from there. Returns that iteration.

        Raises
        ------
        CheckpointError
            If the file is missing or damaged, or was written with other parameters or data
            (the message names what differs).
        """
        if self._algorithm is None:
            self.initialize()
        restore_checkpoint(self._algorithm, read_checkpoint(checkpoint))
        return self._algorithm.state.iteration

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
