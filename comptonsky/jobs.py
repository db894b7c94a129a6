"""End-to-end jobs shared by the command line and the demo: files in; maps, tables, the
effective parameter file, ``summary.json`` and ``report.html`` out.

A run directory holds (see docs/outputs.md):

* ``parameters.yml``: the parameters the run used (the parameter file after overrides, with the
  response options of the command line); ``comptonsky deconvolve parameters.yml ...`` repeats
  the run;
* ``<key>_itr<N>.hdf5`` (histpy) and ``<key>_itr<N>.fits`` (HEALPix FITS) maps,
  ``results.fits`` (one row per iteration), PNG images;
* ``summary.json``: headline numbers, timings, the stopping reason, warnings and provenance
  (versions, host, input checksums);
* ``report.html``: one self-contained page of all of the above;
* ``checkpoint.npz`` while the run is unfinished (``--resume`` continues from it).

The folder itself (new, replaced or resumed; ``summary.json``'s ``status``) is handled by
:mod:`comptonsky.rundir`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from histpy import Histogram

from .config import Parameters
from .deconvolution.dataset import DataIF_COSI_DC2
from .deconvolution.driver import DEFAULT_CHECKPOINT_EVERY, ImageDeconvolution
from .deconvolution.results import map_flux, save_results
from .errors import RunInterrupted
from .io.atomic import atomic_path
from .io.histogram import open_histogram
from .provenance import collect, fits_cards
from .rundir import RunDirectory, write_summary

__all__ = ["deconvolve_files", "run_files", "DeconvolutionRun", "write_summary", "map_flux",
           "write_parameters", "effective_parameters", "stopping_reason", "PARAMETER_FILE"]

logger = logging.getLogger(__name__)

#: Name of the effective parameter file in a run directory.
PARAMETER_FILE = "parameters.yml"


def _plain(info: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The JSON-representable entries of a mapping (numbers, strings, paths, flags)."""
    if info is None:
        return None
    keep = (str, int, float, bool, type(None), Path, np.generic)
    return {str(k): (str(v) if isinstance(v, Path) else v) for k, v in info.items()
            if isinstance(v, keep)}


def effective_parameters(parameters: Parameters,
                         response_options: Mapping[str, Any] | None = None) -> Parameters:
    """The parameters a run uses: ``parameters`` with the given response options in its
    ``response:`` section (the parameter file's own entries win, as in
    :meth:`~comptonsky.deconvolution.driver.ImageDeconvolution.initialize`)."""
    tree = parameters.to_dict()
    given = {k: v for k, v in dict(response_options or {}).items() if v is not None}
    section = {**given, **(tree.get("response") or {})}
    if section:
        tree["response"] = section
    return Parameters(tree, source=parameters.source)


def write_parameters(parameters: Parameters, path: str | os.PathLike,
                     comment: str = "") -> Path:
    """Write ``parameters`` as a YAML parameter file (atomically), ``comment`` lines on top."""
    path = Path(path)
    head = "".join(f"# {line}\n" for line in comment.splitlines())
    with atomic_path(path) as tmp:
        tmp.write_text(head + parameters.dump())
    return path


def stopping_reason(deconvolution: ImageDeconvolution, interrupted: bool = False
                    ) -> dict[str, Any]:
    """Why the fit stopped: ``interrupted``, ``cross-validation best``, ``iteration_max
    reached`` or ``threshold`` (the statistic gained less than the threshold), with the limits."""
    algo = deconvolution.algorithm
    made = deconvolution.results[-1]["iteration"] if deconvolution.results else 0
    if interrupted:
        reason = "interrupted"
    elif algo.cross_validation is not None:
        reason = "cross-validation best"
    elif made >= algo.iteration_max:
        reason = "iteration_max reached"
    else:
        reason = "threshold"
    out = {"reason": reason, "iterations": made, "iteration_max": algo.iteration_max,
           "statistic": algo.stopping_statistic, "threshold": algo.stopping_threshold}
    if algo.cross_validation is not None:
        out["cross_validation_best_iteration"] = algo.cross_validation["best_iteration"]
    return out


#: Python warnings that speak of the software's future, not of the run (shown, not recorded).
_NOT_ABOUT_RESULTS = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)


class _ListHandler(logging.Handler):
    def __init__(self, into: list[str]):
        super().__init__(logging.WARNING)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        self.into.append(f"{record.levelname.lower()}: {record.getMessage()}")


@contextlib.contextmanager
def _collect_warnings(into: list[str]) -> Iterator[None]:
    """Record comptonsky's log warnings and Python warnings into ``into`` (both still shown)."""
    handler = _ListHandler(into)
    package = logging.getLogger("comptonsky")
    package.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            try:
                yield
            finally:
                into.extend(f"{w.category.__name__}: {w.message}" for w in caught
                            if not issubclass(w.category, _NOT_ABOUT_RESULTS))
        for w in caught:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    finally:
        package.removeHandler(handler)


@dataclass
class DeconvolutionRun:
    """A finished run: the fit, its dataset, the summary written, where it went."""

    deconvolution: ImageDeconvolution
    dataset: DataIF_COSI_DC2
    summary: dict[str, Any]
    output: Path
    #: header cards (provenance, stopping reason) for further FITS files of the run
    cards: list[tuple[str, Any, str]]
    parameters: Parameters


def run_files(parfile: str | os.PathLike, event: str | os.PathLike | Histogram,
              backgrounds: Mapping[str, str | os.PathLike | Histogram],
              response: str | os.PathLike | Histogram, output: str | os.PathLike,
              overrides: Sequence[str] = (), name: str = "data",
              dtype: str | None = None, storage: str | None = None,
              only_final_result: bool = True, progress: bool = True, plots: bool = True,
              response_options: Mapping[str, Any] | None = None, report: bool = True,
              truth: str | os.PathLike | None = None, overwrite: bool = False,
              resume: bool = False,
              checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY,
              coordsys_conv_matrix: str | os.PathLike | None = None, client: Any = None,
              n_blocks: int | None = None) -> DeconvolutionRun:
    """Run a deconvolution from files and write maps (histpy HDF5 and HEALPix FITS), the FITS
    table, PNGs, ``parameters.yml``, ``summary.json`` and ``report.html``.

    The run directory is checked before any work (:class:`~comptonsky.rundir.RunDirectory`):
    it must be new or empty unless ``overwrite`` (the earlier run's files are removed) or
    ``resume`` (the run continues from its ``checkpoint.npz``) is given. ``summary.json`` is
    written first with ``status: running`` and last with ``complete``, ``interrupted`` or
    ``failed``; a checkpoint is written every ``checkpoint_every`` iterations and when the
    fit is interrupted, and removed once the run is complete.

    Parameters
    ----------
    parfile : path-like
        Parameter file (tutorial layout).
    event : path-like or Histogram
        Binned events (axes Em, Phi, PsiChi; a Time axis is summed).
    backgrounds : dict of name → path-like or Histogram
        Background templates on the same axes.
    response : path-like or Histogram
        Galactic response (NuLambda, Ei, Em, Phi, PsiChi).
    output : path-like
        Output directory.
    overrides : sequence of str
        ``"a:b:c = value"`` parameter overrides.
    name : str
        Dataset name.
    dtype, storage : str, optional
        Response precision and storage (see :func:`comptonsky.response.load.load_response`).
    response_options : dict, optional
        Further ``load_response`` options (``sparse_threshold``, ``memory_budget``, ...).
    only_final_result : bool
        Write maps of the last iteration only (else every iteration).
    progress : bool
        Show a progress bar.
    plots : bool
        Write PNG images (final map, linear and log, and convergence).
    report : bool
        Write ``report.html`` (:func:`comptonsky.report.write_report`).
    truth : path-like, optional
        A true map (histpy HDF5, axes lb, Ei) the report compares with.
    overwrite : bool
        Replace the comptonsky run found in ``output``.
    resume : bool
        Continue the interrupted run in ``output`` from its checkpoint (same inputs and
        parameters, else :class:`~comptonsky.errors.CheckpointError`).
    checkpoint_every : int
        Iterations between checkpoints (0: only when interrupted).
    coordsys_conv_matrix : path-like or CoordsysConversionMatrix, optional
        Image in the detector frame: ``response`` is then the FullDetectorResponse and the
        event and background histograms are binned per ScAtt or Time bin (local PsiChi).
    client : dask.distributed.Client, optional
        Fit on this cluster, the data in ``n_blocks`` blocks per dataset (docs/scaling.md).

    Returns
    -------
    DeconvolutionRun

    Raises
    ------
    RunInterrupted
        After writing the checkpoint, the outputs of the iterations made and the summary
        (``status: interrupted``), when SIGINT or SIGTERM stopped the fit.
    """
    run_dir = RunDirectory.check(output, overwrite=overwrite, resume=resume)
    output = run_dir.path
    start = time.perf_counter()
    inputs = {"parameter file": parfile, "event": event,
              **{f"background {k}": v for k, v in backgrounds.items()}, "response": response}
    if coordsys_conv_matrix is not None:
        inputs["conversion matrix"] = coordsys_conv_matrix
    provenance = collect(inputs)
    given = {"dtype": dtype, "storage": storage, **dict(response_options or {})}

    def as_hist(obj):
        return obj if isinstance(obj, Histogram) else open_histogram(obj)

    messages: list[str] = []
    interrupted: RunInterrupted | None = None
    with _collect_warnings(messages):
        t0 = time.perf_counter()
        dataset = DataIF_COSI_DC2.load(name, as_hist(event),
                                       {k: as_hist(v) for k, v in backgrounds.items()},
                                       response, dtype=dtype, storage=storage,
                                       coordsys_conv_matrix=coordsys_conv_matrix,
                                       **dict(response_options or {}))
        load_s = time.perf_counter() - t0
        deconv = ImageDeconvolution()
        deconv.set_dataset([dataset])
        deconv.read_parameterfile(parfile)
        for text in overrides:
            deconv.override_parameter(text)
        parameters = effective_parameters(deconv.parameter, given)
        deconv.initialize(client, n_blocks)
        deconv.algorithm.keep_maps = "final" if only_final_result else "all"
        if resume:  # checked in full (parameters, inputs, log L) before anything is written
            deconv.resume_from(run_dir.checkpoint)
        resumed_at = deconv.algorithm.state.iteration if resume else None
        run_dir.begin({"command": "deconvolve", "parameter_file": str(output / PARAMETER_FILE),
                       "resumed_from_iteration": resumed_at,
                       "checkpoint": str(run_dir.checkpoint)})
        try:
            parameter_path = write_parameters(
                parameters, output / PARAMETER_FILE,
                f"Effective parameters of this run: {parfile}"
                + "".join(f"\n  with override {text}" for text in overrides)
                + ("\n  with response options " + ", ".join(
                    f"{k}={v}" for k, v in given.items() if v is not None)
                   if any(v is not None for v in given.values()) else "")
                + f"\nwritten by comptonsky {provenance['versions']['comptonsky']}")
            t0 = time.perf_counter()
            try:
                deconv.run_deconvolution(progress=progress, checkpoint=run_dir.checkpoint,
                                         checkpoint_every=checkpoint_every, save=False)
            except RunInterrupted as exc:
                interrupted = exc
                logger.warning("%s; writing the results of the iterations made", exc)
            run_s = time.perf_counter() - t0
            results = deconv.results
            if not results:
                run_dir.update("interrupted", stopping={"reason": "interrupted",
                                                        "iterations": 0})
                raise interrupted
            stopping = stopping_reason(deconv, interrupted is not None)
            cards = [*fits_cards(provenance),
                     ("STOPREAS", stopping["reason"], "why the fit stopped")]
            files = [str(parameter_path)] + [str(p) for p in save_results(
                results, output, only_final_result, [ds.name for ds in deconv.dataset],
                parameters=parameters, cards=cards, healpix_fits=True)]
            final = results[-1]
            if plots and interrupted is None:
                files += _plots(deconv, output)
            response_info = {"shape": list(dataset.response.shape),
                             "dtype": str(getattr(dataset.response, "dtype", "")),
                             "storage": dataset.response.backend,
                             "options": parameters.get("response") or {},
                             "load_info": _plain(getattr(dataset.response, "load_info", None))}
            summary = {
                **run_dir.summary,
                "algorithm": parameters.get("deconvolution:algorithm", "RL"),
                "iterations": final["iteration"],
                "stopping": stopping,
                "log_likelihood": final["log-likelihood"],
                "log_likelihood_per_iteration": [float(np.sum(r["log-likelihood"]))
                                                 for r in results],
                "accel_factor": final["accel_factor"],
                **({"n_subsets": final["n_subsets"]} if "n_subsets" in final else {}),
                "background_normalization": final["background_normalization"],
                "model_flux_per_band_cm-2_s-1": map_flux(final["model"]),
                "events": float(dataset.counts.sum()),
                "response": response_info,
                "parameter_file": str(parameter_path),
                "timing_s": {"hash_inputs": provenance["hash_seconds"], "load": load_s,
                             "iterations": run_s,
                             "per_iteration": run_s / max(len(results) - (resumed_at or 0), 1),
                             "total": time.perf_counter() - start},
                "warnings": messages,
                "provenance": provenance,
                "files": files,
            }
            if interrupted is not None:
                summary["checkpoint"] = str(interrupted.checkpoint)
                run_dir.summary = summary
                run_dir.update("interrupted")
                raise interrupted
            summary.pop("checkpoint", None)
            if report:
                summary["files"].append(str(output / "report.html"))
            run_dir.summary = summary
            run_dir.write(summary)       # status running: the report reads it
            if report:
                from .report import write_report

                write_report(output, truth=truth)
            summary = run_dir.update("complete")
        except RunInterrupted:
            raise
        except BaseException as exc:
            run_dir.fail(exc)
            raise
    with contextlib.suppress(FileNotFoundError):
        run_dir.checkpoint.unlink()
    logger.info("wrote %d files into %s", len(files) + 1, output)
    return DeconvolutionRun(deconv, dataset, summary, output, cards, parameters)


def _plots(deconv: ImageDeconvolution, output: Path) -> list[str]:
    """PNG images of the final map (linear and log, per band) and of the convergence."""
    import matplotlib.pyplot as plt

    from .plotting import plot_convergence, plot_image

    final, files = deconv.results[-1], []
    for k in range(final["model"].axes["Ei"].nbins):
        for scale in ("linear", "log"):
            path = output / f"model_E{k}_{scale}.png"
            fig = plot_image(final["model"], energy_index=k, scale=scale,
                             title=f"{deconv.parameter.get('deconvolution:algorithm', 'RL')} "
                                   f"iteration {final['iteration']}",
                             sources={"GC": (0.0, 0.0)}, output=path)
            plt.close(fig)
            files.append(str(path))
    fig = plot_convergence(deconv.results, output=output / "convergence.png",
                           algorithm=deconv.parameter.get("deconvolution:algorithm", "RL"))
    plt.close(fig)
    files.append(str(output / "convergence.png"))
    return files


def deconvolve_files(*args, **kwargs) -> dict[str, Any]:
    """:func:`run_files` (same arguments), returning the summary also written to
    ``output/summary.json``."""
    return run_files(*args, **kwargs).summary
