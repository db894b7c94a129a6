"""Uncertainty maps by Poisson bootstrap of the counts.

For b = 1..B: draw X*_i ~ Poisson(X_i) independently in every data bin (equivalent to giving each
event a Poisson(1) weight), start from the solution (map and background norms) and iterate the same
algorithm, with the same parameters, ``iterations`` times. The spread of the B maps estimates the
sampling spread of the solution. Outputs:

* per-pixel mean, standard deviation and significance (solution / standard deviation) maps,
  histpy Histograms with axes (lb, Ei) — :func:`write_uncertainty` writes them as histpy HDF5
  and HEALPix FITS;
* fluxes with errors in regions (``bulge``, ``disk``, ``inner_galaxy`` of
  :mod:`comptonsky.regions`, plus user masks), per energy band, and the background norms.

Replicates run in parallel: ``executor="process"`` forks workers that share the response
copy-on-write (each limited to one BLAS thread), ``executor="thread"`` runs them in threads (the
products release the GIL). Seeds come from one :class:`numpy.random.SeedSequence`, so results do
not depend on the number of workers.

Calibration caveat: iterating from the solution with a finite number of RL iterations is itself a
regulariser; the bootstrap spread describes *that* estimator. Check it against repeated
simulations for the quantity you care about (see docs/algorithms.md for our measurement).
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import logging
import multiprocessing
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import healpy as hp
import numpy as np
from tqdm.auto import tqdm

from ..errors import InvalidParameterError, UnknownChoiceError
from ..io.atomic import atomic_path
from ..io.healpix_fits import write_healpix_fits
from ..io.histogram import write_histogram
from ..regions import region_mask
from .joint import JointData
from .model import AllSkyImageModel
from .stopping import dataset_with_counts

__all__ = ["BootstrapResult", "bootstrap_uncertainty", "write_uncertainty", "DEFAULT_REGIONS"]

logger = logging.getLogger(__name__)

#: Regions reported by default.
DEFAULT_REGIONS = ("bulge", "disk", "inner_galaxy")
EXECUTORS = ("process", "thread")


@dataclass
class BootstrapResult:
    """Bootstrap samples and their summaries.

    Attributes
    ----------
    solution : AllSkyImageModel
        The map the replicates started from (axes lb, Ei).
    samples : ndarray, shape (n_samples, npix, n_energy)
        Replicate maps (model unit).
    norms : dict of name → ndarray, shape (n_samples,)
        Replicate background normalisations.
    mean, std, significance : AllSkyImageModel
        Per-pixel mean and standard deviation of the samples, and solution / std (0 where the
        std is 0).
    region_fluxes : dict
        ``{region: {"flux": [per band], "mean": [...], "std": [...]}}`` in cm⁻² s⁻¹.
    timing_s : float
        Wall time of the replicates.
    """

    solution: AllSkyImageModel
    samples: np.ndarray
    norms: dict[str, np.ndarray]
    mean: AllSkyImageModel
    std: AllSkyImageModel
    significance: AllSkyImageModel
    region_fluxes: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    timing_s: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)


# context shared with forked workers (set before the pool starts)
_CONTEXT: dict[str, Any] = {}


def _replicate(index: int, seed: np.random.SeedSequence, context: Mapping[str, Any] | None = None,
               single_thread: bool = False) -> tuple[int, np.ndarray, dict[str, float]]:
    ctx = _CONTEXT if context is None else context
    if single_thread:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(1):
            return _replicate(index, seed, ctx, single_thread=False)
    rng = np.random.default_rng(seed)
    datasets = [dataset_with_counts(ds, rng.poisson(ds.counts).astype(np.float64))
                for ds in ctx["algorithm"].data.datasets]
    algo = ctx["algorithm"].for_data(JointData(datasets, ctx["algorithm"].data.counter))
    algo.start(algo.evaluate(ctx["model"], ctx["norms"]))
    state = algo.iterate(ctx["iterations"])
    return index, state.model, dict(state.norms)


def _replicate_task(item: tuple[int, np.random.SeedSequence], context: Mapping[str, Any]
                    ) -> tuple[int, np.ndarray, dict[str, float]]:
    """One replicate as a task on a Dask worker (single-threaded BLAS)."""
    return _replicate(item[0], item[1], context, single_thread=True)


def _flux_table(maps: np.ndarray, regions: Mapping[str, np.ndarray], pixarea: float
                ) -> dict[str, np.ndarray]:
    """Σ over region pixels × ΔΩ, per map and band: {region: (n_maps, n_energy)}."""
    return {name: maps[:, mask, :].sum(axis=1) * pixarea for name, mask in regions.items()}


def bootstrap_uncertainty(deconvolution, n_samples: int = 50, iterations: int | None = None,
                          workers: int = 1, executor: str = "process", seed: int = 0,
                          regions: Mapping[str, np.ndarray] | None = None,
                          progress: bool = True, client: Any = None) -> BootstrapResult:
    """Poisson-bootstrap uncertainty of a finished deconvolution.

    Parameters
    ----------
    deconvolution : ImageDeconvolution
        Initialised and run (its datasets, parameters, mask and last result are used).
    n_samples : int
        Number of bootstrap replicates B.
    iterations : int, optional
        Iterations per replicate, warm-started from the solution (default: as many as the main
        run made).
    workers : int
        Parallel replicates.
    executor : {'process', 'thread'}
        How they run in parallel (processes are forked; see the module notes).
    seed : int
        Seed of the :class:`numpy.random.SeedSequence` the replicate seeds are spawned from.
    regions : dict of name → bool mask (npix,), optional
        Extra regions (pixel masks in the map's ordering) besides :data:`DEFAULT_REGIONS`.
    progress : bool
        Show a progress bar.
    client : dask.distributed.Client, optional
        Run the replicates as tasks on this cluster instead (``workers`` and ``executor`` are
        then not used); each worker gets the datasets once. The samples are the same.

    Returns
    -------
    BootstrapResult
    """
    if not deconvolution.results:
        raise InvalidParameterError("bootstrap_uncertainty: run the deconvolution first "
                                    "(run_deconvolution())")
    if executor not in EXECUTORS:
        raise UnknownChoiceError("executor", executor, EXECUTORS)
    if n_samples < 2:
        raise InvalidParameterError(f"n_samples: expected at least 2 replicates, found "
                                    f"{n_samples}")
    algo = deconvolution.algorithm
    final = deconvolution.results[-1]
    if iterations is None:
        iterations = int(final["iteration"])
    solution = final["model"]
    context = {
        "algorithm": algo,
        "model": np.asarray(solution.contents.value, dtype=np.float64).reshape(-1).copy(),
        "norms": dict(final["background_normalization"]),
        "iterations": int(iterations),
    }
    seeds = np.random.SeedSequence(seed).spawn(n_samples)
    shape = tuple(solution.contents.shape)
    samples = np.empty((n_samples,) + shape)
    norms = {key: np.empty(n_samples) for key in context["norms"]}
    bar = tqdm(total=n_samples, desc="bootstrap", unit="sample", disable=not progress, leave=False)
    start = time.perf_counter()

    def store(out):
        index, model, norm = out
        samples[index] = model.reshape(shape)
        for key, value in norm.items():
            norms[key][index] = value
        bar.update(1)

    try:
        if client is not None:
            import copy

            from ..distributed.tasks import map_ordered

            shipped = copy.copy(algo)           # the fit's state stays here
            shipped.state, shipped.results, shipped.cross_validation = None, [], None
            for out in map_ordered(client, _replicate_task,
                                   [(k, seeds[k]) for k in range(n_samples)],
                                   dict(context, algorithm=shipped), name="bootstrap"):
                store(out)
        elif workers <= 1 or executor == "thread":
            with cf.ThreadPoolExecutor(max(workers, 1)) as pool:
                for out in pool.map(lambda k: _replicate(k, seeds[k], context), range(n_samples)):
                    store(out)
        else:
            _CONTEXT.clear()
            _CONTEXT.update(context)
            try:
                mp = multiprocessing.get_context("fork")
                with cf.ProcessPoolExecutor(workers, mp_context=mp) as pool:
                    futures = [pool.submit(_replicate, k, seeds[k], None, True)
                               for k in range(n_samples)]
                    for fut in cf.as_completed(futures):
                        store(fut.result())
            finally:
                _CONTEXT.clear()
    finally:
        bar.close()
    elapsed = time.perf_counter() - start
    logger.info("bootstrap: %d replicates × %d iterations in %.1f s (%d %s workers)", n_samples,
                iterations, elapsed, workers, executor)
    result = summarize(solution, samples, norms, regions)
    result.timing_s = elapsed
    result.info = {"n_samples": n_samples, "iterations": iterations, "workers": workers,
                   "executor": executor, "seed": seed,
                   "algorithm": deconvolution.parameter.get("deconvolution:algorithm", "RL"),
                   "background_normalization": dict(final["background_normalization"])}
    return result


def summarize(solution: AllSkyImageModel, samples: np.ndarray, norms: Mapping[str, np.ndarray],
              regions: Mapping[str, np.ndarray] | None = None) -> BootstrapResult:
    """Mean/std/significance maps and region fluxes from bootstrap samples.

    Parameters
    ----------
    solution : AllSkyImageModel
        The point estimate, shape (npix, n_energy).
    samples : ndarray, shape (n_samples, npix, n_energy)
    norms : dict of name → ndarray (n_samples,)
    regions : dict of name → bool mask (npix,), optional
        Added to :data:`DEFAULT_REGIONS`.
    """
    axis = solution.axes[0]
    nest = str(axis.scheme).lower() == "nested"
    unit = solution.unit
    axes = solution.axes
    values = np.asarray(getattr(solution.contents, "value", solution.contents))
    mean = samples.mean(axis=0)
    std = samples.std(axis=0, ddof=1)
    significance = np.divide(values, std, out=np.zeros_like(std), where=std > 0)
    masks = {name: region_mask(name, axis.nside, nest) for name in DEFAULT_REGIONS}
    for name, mask in (regions or {}).items():
        mask = np.asarray(mask, dtype=bool).reshape(-1)
        if mask.size != values.shape[0]:
            raise InvalidParameterError(f"region {name!r}: mask has {mask.size} pixels, the map "
                                        f"has {values.shape[0]}")
        masks[name] = mask
    pixarea = hp.nside2pixarea(axis.nside)
    sample_flux = _flux_table(samples, masks, pixarea)
    point_flux = _flux_table(values[None], masks, pixarea)
    fluxes = {name: {"flux": point_flux[name][0].tolist(),
                     "mean": sample_flux[name].mean(axis=0).tolist(),
                     "std": sample_flux[name].std(axis=0, ddof=1).tolist(),
                     "pixels": int(masks[name].sum())}
              for name in masks}
    norm_summary = {key: {"mean": float(v.mean()), "std": float(v.std(ddof=1))}
                    for key, v in norms.items()}

    def hist(contents, u=unit):
        return AllSkyImageModel.from_axes(axes, unit=u, contents=contents)

    result = BootstrapResult(solution, samples, dict(norms), hist(mean), hist(std),
                             hist(significance, ""), fluxes)
    result.info["background_normalization_bootstrap"] = norm_summary
    return result


def write_uncertainty(result: BootstrapResult, directory: str | os.PathLike,
                      samples: bool = False,
                      cards: Sequence[tuple[str, Any, str]] = ()) -> list[Path]:
    """Write the maps ``mean``, ``std``, ``significance`` and ``solution`` (histpy ``.hdf5``
    and HEALPix ``.fits``, whose headers get ``cards`` and the bootstrap settings),
    ``region_fluxes.json`` (and ``samples.npz`` if asked) into ``directory``, atomically."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    settings = [("NSAMPLES", int(result.info.get("n_samples", len(result.samples))),
                 "bootstrap replicates"),
                ("BOOTITER", int(result.info.get("iterations", 0)), "iterations per replicate"),
                ("BOOTSEED", int(result.info.get("seed", 0)), "seed of the replicates")]
    written = []
    for name in ("mean", "std", "significance", "solution"):
        image = getattr(result, name)
        written.append(write_histogram(image, directory / f"{name}.hdf5"))
        written.append(write_healpix_fits(image, directory / f"{name}.fits",
                                          [*cards, *settings, ("MAPKEY", name, "bootstrap map")]))
    summary = {"region_fluxes_cm-2_s-1": result.region_fluxes, "timing_s": result.timing_s,
               **result.info}
    path = directory / "region_fluxes.json"
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(summary, indent=2, default=float) + "\n")
    written.append(path)
    if samples:
        path = directory / "samples.npz"
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, samples=result.samples,
                                    **{f"norm_{k}": v for k, v in result.norms.items()})
        written.append(path)
    return written


def disc_region(nside: int, lon_deg: float, lat_deg: float, radius_deg: float,
                nest: bool = False) -> np.ndarray:
    """Boolean mask (npix,) of the pixels whose centres lie within ``radius_deg`` of (l, b)."""
    vec = hp.ang2vec(lon_deg, lat_deg, lonlat=True)
    mask = np.zeros(hp.nside2npix(nside), dtype=bool)
    mask[hp.query_disc(nside, vec, np.radians(radius_deg), nest=nest)] = True
    return mask


