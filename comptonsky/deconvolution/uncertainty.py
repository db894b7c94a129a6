"""Uncertainty maps and region fluxes by Poisson bootstrap of the counts.

For b = 1..B: draw X*_i ~ Poisson(X_i) independently in every data bin (equivalent to giving each
event a Poisson(1) weight) and fit X* exactly as the main fit was made: same algorithm and
settings, same initial map and background norms, and the same (fixed) number of iterations
(``start="initial"``, the default). The replicates are then draws of the very estimator whose
value is reported, and their spread is its statistical error *at these settings*. Outputs:

* per-pixel mean, standard deviation and significance (estimate / standard deviation) maps,
  histpy Histograms with axes (lb, Ei) — :func:`write_uncertainty` writes them as histpy HDF5
  and HEALPix FITS (the significance map only with at least
  :data:`MIN_SAMPLES_SIGNIFICANCE` replicates);
* fluxes in regions (``bulge``, ``disk``, ``inner_galaxy`` of :mod:`comptonsky.regions`, plus
  user masks), per energy band: the estimate, the replicates' mean, standard deviation and
  bias (mean − estimate), and percentile intervals when there are enough replicates
  (:data:`MIN_SAMPLES_INTERVAL`);
* longitude and latitude profiles (:func:`comptonsky.regions.sky_profiles`) with their standard
  deviation over the replicate profiles (which keeps the correlations between pixels);
* the background norms, with the same summaries.

Warnings (logged and kept in ``info["warnings"]``) say when a replicate mean differs from the
estimate by more than the replicates' spread (the estimator is biased at these settings, or
non-linear at this noise level) and when there are too few replicates for the numbers quoted.

``start="solution"`` warm-starts every replicate from the main fit's solution and runs
``iterations`` more; that is another estimator (the main fit continued), so its value on the
observed counts — the main fit continued by ``iterations`` on X — is what is then reported.

Replicates run in parallel: ``executor="process"`` forks workers that share the response
copy-on-write (each limited to one BLAS thread), ``executor="thread"`` runs them in threads (the
products release the GIL). Seeds come from one :class:`numpy.random.SeedSequence`, so results do
not depend on the number of workers.

The bootstrap describes the fluctuations of the estimator around its own expectation; a
Richardson-Lucy fit stopped after a fixed number of iterations is a regularised estimator whose
expectation differs from the true sky. See docs/uncertainty.md.
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
from ..regions import region_mask, sky_profiles
from .joint import JointData
from .model import AllSkyImageModel
from .stopping import dataset_with_counts

__all__ = ["BootstrapResult", "bootstrap_uncertainty", "summarize", "write_uncertainty",
           "disc_region", "DEFAULT_REGIONS", "MIN_SAMPLES_INTERVAL", "MIN_SAMPLES_SIGNIFICANCE",
           "STARTS"]

logger = logging.getLogger(__name__)

#: Regions reported by default.
DEFAULT_REGIONS = ("bulge", "disk", "inner_galaxy")
EXECUTORS = ("process", "thread")
#: How replicates start: like the main fit (initial map, norms 1), or from its solution.
STARTS = ("initial", "solution")
#: Fewest replicates for a percentile interval of that probability (about 3 replicates in each
#: tail outside it); with fewer the interval is not quoted, and a ±σ quoted with a warning.
MIN_SAMPLES_INTERVAL = {0.68: 20, 0.95: 100}
#: Fewest replicates for a pixel significance map (with fewer, a pixel's std can be tiny by
#: chance and its "significance" huge).
MIN_SAMPLES_SIGNIFICANCE = 20


@dataclass
class BootstrapResult:
    """Bootstrap samples and their summaries.

    Attributes
    ----------
    solution : AllSkyImageModel
        The estimate: the estimator's value on the observed counts (axes lb, Ei). With
        ``start="initial"`` and the main fit's iteration count this is the main fit's map.
    samples : ndarray, shape (n_samples, npix, n_energy)
        Replicate maps (model unit).
    norms : dict of name → ndarray, shape (n_samples,)
        Replicate background normalisations.
    mean, std, significance : AllSkyImageModel
        Per-pixel mean and standard deviation of the samples, and solution / std (0 where the
        std is 0).
    region_fluxes : dict
        ``{region: {"flux", "mean", "std", "bias", "bias_over_std": [per band], "pixels": n,
        "interval_68", "interval_95": [[lo, hi] per band] when there are enough samples}}`` in
        cm⁻² s⁻¹ (bias = mean − flux).
    profiles : dict
        ``{"longitude"|"latitude": {"edges_deg", "centres_deg", "band_deg",
        "flux", "mean", "std": [per band][per bin]}}`` (cm⁻² s⁻¹ per bin).
    timing_s : float
        Wall time of the replicates.
    info : dict
        Settings (``n_samples``, ``iterations``, ``start``, ``seed``, ...), background-norm
        summaries and ``warnings``.
    """

    solution: AllSkyImageModel
    samples: np.ndarray
    norms: dict[str, np.ndarray]
    mean: AllSkyImageModel
    std: AllSkyImageModel
    significance: AllSkyImageModel
    region_fluxes: dict[str, dict[str, Any]] = field(default_factory=dict)
    timing_s: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)
    profiles: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def warnings(self) -> list[str]:
        """The warnings of :func:`summarize` (bias larger than the spread, too few samples)."""
        return list(self.info.get("warnings", []))


# context shared with forked workers (set before the pool starts)
_CONTEXT: dict[str, Any] = {}


def _fit(ctx: Mapping[str, Any], datasets) -> tuple[np.ndarray, dict[str, float]]:
    """The estimator on ``datasets``: the algorithm of ``ctx`` started as ``ctx["start"]`` says
    and run for exactly ``ctx["iterations"]`` iterations (no stopping criterion)."""
    algo = ctx["algorithm"].for_data(JointData(datasets, ctx["algorithm"].data.counter))
    if ctx["start"] == "initial":
        algo.start()
    else:
        algo.start(algo.evaluate(ctx["model"].copy(), dict(ctx["norms"])))
    for _ in range(ctx["iterations"]):
        algo.iterate(1)
        algo.results.clear()  # keep no per-iteration maps
    return algo.state.model.copy(), dict(algo.state.norms)


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
    model, norms = _fit(ctx, datasets)
    return index, model, norms


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
                          progress: bool = True, start: str = "initial",
                          client: Any = None) -> BootstrapResult:
    """Poisson-bootstrap uncertainty of a finished deconvolution.

    Parameters
    ----------
    deconvolution : ImageDeconvolution
        Initialised and run (its datasets, parameters, mask and last result are used).
    n_samples : int
        Number of bootstrap replicates B (≥ 2; at least 20 for a 68 % interval, 100 for a 95 %
        one and 20 for a significance map).
    iterations : int, optional
        Iterations per replicate. Default: as many as the main fit made, which with
        ``start="initial"`` makes the replicates draws of the main fit's own estimator. Another
        count with ``start="initial"`` defines another estimator: its value on the observed
        counts is then computed and reported in place of the main fit.
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
    start : {'initial', 'solution'}
        ``'initial'``: every replicate starts like the main fit (its initial map, norms 1).
        ``'solution'``: warm start from the main fit's map and norms; the reported estimate is
        then the main fit continued by ``iterations`` on the observed counts.
    client : dask.distributed.Client, optional
        Run the replicates as tasks on this cluster instead (``workers`` and ``executor`` are
        then not used); each worker gets the datasets once. The samples are the same.

    Returns
    -------
    BootstrapResult

    Raises
    ------
    InvalidParameterError
        Before the main fit has run, with fewer than 2 samples or fewer than 1 iteration.
    UnknownChoiceError
        On an unknown ``executor`` or ``start``.
    """
    if not deconvolution.results:
        raise InvalidParameterError("bootstrap_uncertainty: run the deconvolution first "
                                    "(run_deconvolution())")
    if executor not in EXECUTORS:
        raise UnknownChoiceError("executor", executor, EXECUTORS)
    if start not in STARTS:
        raise UnknownChoiceError("start", start, STARTS)
    if n_samples < 2:
        raise InvalidParameterError(f"n_samples: expected at least 2 replicates, found "
                                    f"{n_samples}")
    algo = deconvolution.algorithm
    final = deconvolution.results[-1]
    main_iterations = int(final["iteration"])
    if iterations is None:
        iterations = main_iterations
    if int(iterations) < 1:
        raise InvalidParameterError(f"iterations: expected at least 1 per replicate, found "
                                    f"{iterations}")
    solution = final["model"]
    context = {
        "algorithm": algo,
        "model": np.asarray(solution.contents.value, dtype=np.float64).reshape(-1).copy(),
        "norms": dict(final["background_normalization"]),
        "iterations": int(iterations),
        "start": start,
    }
    messages = []
    if start == "initial" and iterations == main_iterations:
        estimate_model = context["model"]
        estimate_norms = context["norms"]
        estimator = f"the main fit ({main_iterations} iterations from the initial map)"
    else:
        # another estimator than the main fit: its value on the observed counts is reported
        estimate_model, estimate_norms = _fit(context, list(algo.data.datasets))
        estimator = (f"{iterations} iterations from the initial map" if start == "initial" else
                     f"the main fit continued by {iterations} iterations")
        messages.append(f"bootstrap: the estimate quoted is {estimator} on the observed counts, "
                        f"not the main fit's {main_iterations}-iteration map")
        logger.info(messages[-1])
    seeds = np.random.SeedSequence(seed).spawn(n_samples)
    shape = tuple(solution.contents.shape)
    samples = np.empty((n_samples,) + shape)
    norms = {key: np.empty(n_samples) for key in context["norms"]}
    bar = tqdm(total=n_samples, desc="bootstrap", unit="sample", disable=not progress, leave=False)
    t0 = time.perf_counter()

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
            shipped.committed = None
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
    elapsed = time.perf_counter() - t0
    logger.info("bootstrap: %d replicates × %d iterations (start: %s) in %.1f s (%d %s "
                "workers)", n_samples, iterations, start, elapsed, workers, executor)
    estimate = AllSkyImageModel.from_axes(solution.axes, unit=solution.unit,
                                          contents=estimate_model.reshape(shape))
    info = {"n_samples": n_samples, "iterations": int(iterations), "start": start,
            "estimator": estimator, "main_fit_iterations": main_iterations,
            "workers": workers, "executor": executor, "seed": seed,
            "algorithm": deconvolution.parameter.get("deconvolution:algorithm", "RL"),
            "background_normalization": dict(estimate_norms)}
    result = summarize(estimate, samples, norms, regions, estimate_norms=estimate_norms,
                       messages=messages, info=info)
    result.timing_s = elapsed
    return result


def _percentiles(values: np.ndarray, probability: float) -> list[list[float]]:
    """[[lo, hi] per band] central percentile interval of ``values`` (n_samples, n_energy)."""
    tail = 50.0 * (1.0 - probability)
    lo, hi = np.percentile(values, [tail, 100.0 - tail], axis=0)
    return [[float(a), float(b)] for a, b in zip(lo, hi)]


def summarize(solution: AllSkyImageModel, samples: np.ndarray, norms: Mapping[str, np.ndarray],
              regions: Mapping[str, np.ndarray] | None = None,
              estimate_norms: Mapping[str, float] | None = None,
              messages: Sequence[str] = (), info: Mapping[str, Any] | None = None
              ) -> BootstrapResult:
    """Mean/std/significance maps, region fluxes, profiles and warnings from bootstrap samples.

    Parameters
    ----------
    solution : AllSkyImageModel
        The estimate, shape (npix, n_energy).
    samples : ndarray, shape (n_samples, npix, n_energy)
    norms : dict of name → ndarray (n_samples,)
    regions : dict of name → bool mask (npix,), optional
        Added to :data:`DEFAULT_REGIONS`.
    estimate_norms : dict of name → float, optional
        The estimate's background norms (their bias is then checked too).
    messages : sequence of str
        Earlier warnings to keep in ``info["warnings"]``.
    info : dict, optional
        Settings to record in the result's ``info``.

    Returns
    -------
    BootstrapResult
        A warning (logged, and in ``info["warnings"]``) for every region, band and norm whose
        |bias| exceeds the replicates' standard deviation, and when there are too few samples
        for a 68 % interval or a significance map.
    """
    axis = solution.axes[0]
    nest = str(axis.scheme).lower() == "nested"
    unit = solution.unit
    axes = solution.axes
    n = int(samples.shape[0])
    values = np.asarray(getattr(solution.contents, "value", solution.contents), dtype=float)
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
    warned = list(messages)

    def checked(label: str, estimate: np.ndarray, draws: np.ndarray) -> dict[str, Any]:
        """Summary of one quantity (per band), warning when |bias| > spread."""
        m, s = draws.mean(axis=0), draws.std(axis=0, ddof=1)
        bias = m - estimate
        ratio = np.divide(bias, s, out=np.where(bias == 0, 0.0, np.inf), where=s > 0)
        out = {"flux": estimate.tolist(), "mean": m.tolist(), "std": s.tolist(),
               "bias": bias.tolist(),
               "bias_over_std": [float(r) if np.isfinite(r) else None for r in ratio]}
        for k in np.flatnonzero(np.abs(ratio) > 1.0):
            warned.append(
                f"bootstrap: {label}, band {k}: the replicates' mean {m[k]:.4g} differs from the "
                f"estimate {estimate[k]:.4g} by {ratio[k]:+.2f} σ (bias {bias[k]:+.3g}, std "
                f"{s[k]:.3g}): the estimator is biased or non-linear at these settings and "
                f"this noise level; the ± std does not describe its error")
        for probability, needed in MIN_SAMPLES_INTERVAL.items():
            if n >= needed:
                out[f"interval_{round(100 * probability)}"] = _percentiles(draws, probability)
        return out

    fluxes = {}
    for name in masks:
        fluxes[name] = checked(f"region {name}", point_flux[name][0], sample_flux[name])
        fluxes[name]["pixels"] = int(masks[name].sum())
    norm_summary = {}
    for key, draws in norms.items():
        if estimate_norms is not None and key in estimate_norms:
            entry = checked(f"background norm {key}", np.array([estimate_norms[key]]),
                            np.asarray(draws, dtype=float)[:, None])
            norm_summary[key] = {k: (v[0] if isinstance(v, list) else v)
                                 for k, v in entry.items()}
            norm_summary[key]["estimate"] = norm_summary[key].pop("flux")
        else:
            norm_summary[key] = {"mean": float(np.mean(draws)),
                                 "std": float(np.std(draws, ddof=1))}
    profiles = {}
    point_profiles = sky_profiles(values, axis.nside, nest)
    sample_profiles = sky_profiles(samples, axis.nside, nest)
    for name, point in point_profiles.items():
        draws = sample_profiles[name]["values"]  # (n, n_bins, n_energy)
        profiles[name] = {"edges_deg": point["edges"].tolist(),
                          "centres_deg": point["centres"].tolist(),
                          "band_deg": point["band_deg"],
                          "flux": point["values"].T.tolist(),
                          "mean": draws.mean(axis=0).T.tolist(),
                          "std": draws.std(axis=0, ddof=1).T.tolist()}
    needed = MIN_SAMPLES_INTERVAL[0.68]
    if n < needed:
        warned.append(f"bootstrap: only {n} replicates: too few for a 68 % interval (at least "
                      f"{needed}); the quoted std is itself uncertain by ±"
                      f"{100 / np.sqrt(2 * (n - 1)):.0f} % and no percentile interval is given")
    if n < MIN_SAMPLES_SIGNIFICANCE:
        warned.append(f"bootstrap: only {n} replicates: too few for pixel significances (at "
                      f"least {MIN_SAMPLES_SIGNIFICANCE}); no significance map is written")
    for text in warned[len(messages):]:
        logger.warning(text)

    def hist(contents, u=unit):
        return AllSkyImageModel.from_axes(axes, unit=u, contents=contents)

    result = BootstrapResult(solution, samples, dict(norms), hist(mean), hist(std),
                             hist(significance, ""), fluxes, profiles=profiles)
    result.info.update(info or {})
    result.info["n_samples"] = n
    result.info["background_normalization_bootstrap"] = norm_summary
    result.info["significance_map"] = n >= MIN_SAMPLES_SIGNIFICANCE
    result.info["warnings"] = warned
    return result


def write_uncertainty(result: BootstrapResult, directory: str | os.PathLike,
                      samples: bool = False,
                      cards: Sequence[tuple[str, Any, str]] = ()) -> list[Path]:
    """Write the bootstrap outputs into ``directory``, atomically.

    Maps ``mean``, ``std``, ``significance`` (only with at least
    :data:`MIN_SAMPLES_SIGNIFICANCE` replicates) and ``solution`` (the estimate) as histpy
    ``.hdf5`` and HEALPix ``.fits`` (headers: ``cards`` and the bootstrap settings);
    ``region_fluxes.json`` (region fluxes, norms, settings, warnings), ``profiles.json``
    (longitude and latitude profiles with replicate std) and, if asked, ``samples.npz``.

    Returns
    -------
    list of pathlib.Path
        The files written.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    settings = [("NSAMPLES", int(result.info.get("n_samples", len(result.samples))),
                 "bootstrap replicates"),
                ("BOOTITER", int(result.info.get("iterations", 0)), "iterations per replicate"),
                ("BOOTSTRT", str(result.info.get("start", "initial")),
                 "replicates start: initial map or solution"),
                ("BOOTSEED", int(result.info.get("seed", 0)), "seed of the replicates")]
    names = ["mean", "std", "solution"]
    if result.info.get("significance_map", len(result.samples) >= MIN_SAMPLES_SIGNIFICANCE):
        names.insert(2, "significance")
    written = []
    for name in names:
        image = getattr(result, name)
        written.append(write_histogram(image, directory / f"{name}.hdf5"))
        written.append(write_healpix_fits(image, directory / f"{name}.fits",
                                          [*cards, *settings, ("MAPKEY", name, "bootstrap map")]))
    summary = {"region_fluxes_cm-2_s-1": result.region_fluxes, "timing_s": result.timing_s,
               **result.info}
    for name, content in (("region_fluxes.json", summary),
                          ("profiles.json", {"profiles_cm-2_s-1": result.profiles,
                                             "n_samples": len(result.samples)})):
        path = directory / name
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(content, indent=2, default=_json_number) + "\n")
        written.append(path)
    if samples:
        path = directory / "samples.npz"
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, samples=result.samples,
                                    **{f"norm_{k}": v for k, v in result.norms.items()})
        written.append(path)
    return written


def _json_number(obj):
    if isinstance(obj, (np.floating, np.integer, np.bool_)):
        return obj.item()
    return float(obj)


def disc_region(nside: int, lon_deg: float, lat_deg: float, radius_deg: float,
                nest: bool = False) -> np.ndarray:
    """Boolean mask (npix,) of the pixels whose centres lie within ``radius_deg`` of (l, b)."""
    vec = hp.ang2vec(lon_deg, lat_deg, lonlat=True)
    mask = np.zeros(hp.nside2npix(nside), dtype=bool)
    mask[hp.query_disc(nside, vec, np.radians(radius_deg), nest=nest)] = True
    return mask
