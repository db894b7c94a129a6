"""End-to-end jobs shared by the command line and the demo: files in, maps and a summary out."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from histpy import Histogram

from .deconvolution.dataset import DataIF_COSI_DC2
from .deconvolution.driver import ImageDeconvolution
from .io.atomic import atomic_path
from .io.histogram import open_histogram

__all__ = ["deconvolve_files", "write_summary", "map_flux"]

logger = logging.getLogger(__name__)


def map_flux(image: Histogram) -> list[float]:
    """Total flux per energy band, Σ_j λ_j ΔΩ_j (cm⁻² s⁻¹ for an intensity map)."""
    values = np.asarray(getattr(image.contents, "value", image.contents), dtype=float)
    pixarea = image.axes[0].pixarea().to_value("sr")
    return [float(v) for v in values.sum(axis=0) * pixarea]


def write_summary(summary: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write ``summary`` as indented JSON, atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(summary, indent=2, default=_json_default) + "\n")
    return path


def _plain(info: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The JSON-representable entries of a mapping (numbers, strings, paths, flags)."""
    if info is None:
        return None
    keep = (str, int, float, bool, type(None), Path, np.generic)
    return {str(k): (str(v) if isinstance(v, Path) else v) for k, v in info.items()
            if isinstance(v, keep)}


def _json_default(obj):
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def deconvolve_files(parfile: str | os.PathLike, event: str | os.PathLike | Histogram,
                     backgrounds: Mapping[str, str | os.PathLike | Histogram],
                     response: str | os.PathLike | Histogram, output: str | os.PathLike,
                     overrides: Sequence[str] = (), name: str = "data",
                     dtype: str | None = None, storage: str | None = None,
                     only_final_result: bool = True, progress: bool = True,
                     plots: bool = True,
                     response_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Run a deconvolution from files and write maps, the FITS table, PNGs and ``summary.json``.

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

    Returns
    -------
    dict
        The summary also written to ``output/summary.json``.
    """
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    def as_hist(obj):
        return obj if isinstance(obj, Histogram) else open_histogram(obj)

    t0 = time.perf_counter()
    dataset = DataIF_COSI_DC2.load(name, as_hist(event),
                                   {k: as_hist(v) for k, v in backgrounds.items()},
                                   response, dtype=dtype, storage=storage,
                                   **dict(response_options or {}))
    load_s = time.perf_counter() - t0
    deconv = ImageDeconvolution()
    deconv.set_dataset([dataset])
    deconv.read_parameterfile(parfile)
    for text in overrides:
        deconv.override_parameter(text)
    deconv.initialize()
    t0 = time.perf_counter()
    results = deconv.run_deconvolution(progress=progress)
    run_s = time.perf_counter() - t0
    files = [str(p) for p in deconv.save_results(output, only_final_result=only_final_result)]
    final = results[-1]
    if plots:
        from .plotting import plot_convergence, plot_image

        plt = __import__("matplotlib.pyplot", fromlist=["close"])
        for k in range(final["model"].axes["Ei"].nbins):
            for scale in ("linear", "log"):
                path = output / f"model_E{k}_{scale}.png"
                fig = plot_image(final["model"], energy_index=k, scale=scale,
                                 title=f"{deconv.parameter.get('deconvolution:algorithm')} "
                                       f"iteration {final['iteration']}",
                                 sources={"GC": (0.0, 0.0)}, output=path)
                plt.close(fig)
                files.append(str(path))
        fig = plot_convergence(results, output=output / "convergence.png")
        plt.close(fig)
        files.append(str(output / "convergence.png"))
    summary = {
        "algorithm": deconv.parameter.get("deconvolution:algorithm", "RL"),
        "iterations": final["iteration"],
        "log_likelihood": final["log-likelihood"],
        "log_likelihood_per_iteration": [float(np.sum(r["log-likelihood"])) for r in results],
        "accel_factor": final["accel_factor"],
        "background_normalization": final["background_normalization"],
        "model_flux_per_band_cm-2_s-1": map_flux(final["model"]),
        "events": float(dataset.counts.sum()),
        "response": {"shape": list(dataset.response.shape),
                     "dtype": str(getattr(dataset.response, "dtype", "")),
                     "storage": dataset.response.backend,
                     "load_info": _plain(getattr(dataset.response, "load_info", None))},
        "timing_s": {"load": load_s, "iterations": run_s,
                     "per_iteration": run_s / max(len(results), 1),
                     "total": time.perf_counter() - start},
        "files": files,
    }
    write_summary(summary, output / "summary.json")
    logger.info("wrote %d files into %s", len(files) + 1, output)
    return summary
