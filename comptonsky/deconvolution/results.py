"""Writing deconvolution results: maps as histpy HDF5, the iteration table as FITS."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.table import Table

from ..errors import FileFormatError
from ..io.atomic import atomic_path
from ..io.histogram import write_histogram

__all__ = ["save_results", "results_table", "read_results_table", "MAP_KEYS"]

logger = logging.getLogger(__name__)

MAP_KEYS = ("model", "delta_model", "processed_delta_model")


def results_table(results: Sequence[dict[str, Any]],
                  dataset_names: Sequence[str] | None = None) -> Table:
    """One row per iteration: iteration, accel_factor, background norms, log L per dataset.

    Columns: ``iteration``, ``accel_factor``, ``bkg_norm_<name>`` per background,
    ``log-likelihood_<dataset>`` per dataset, and ``log-posterior`` when present.
    """
    table = Table()
    table["iteration"] = np.array([r["iteration"] for r in results], dtype=np.int64)
    table["accel_factor"] = np.array([r["accel_factor"] for r in results], dtype=np.float64)
    names = list(results[0]["background_normalization"]) if results else []
    for key in names:
        table[f"bkg_norm_{key}"] = np.array([r["background_normalization"][key]
                                             for r in results])
    n_data = len(results[0]["log-likelihood"]) if results else 0
    labels = list(dataset_names or [f"{k}" for k in range(n_data)])
    for k in range(n_data):
        table[f"log-likelihood_{labels[k]}"] = np.array([r["log-likelihood"][k]
                                                         for r in results])
    if results and "log-posterior" in results[0]:
        table["log-posterior"] = np.array([r["log-posterior"] for r in results])
    return table


def save_results(results: Sequence[dict[str, Any]], directory: str | os.PathLike,
                 only_final_result: bool = True,
                 dataset_names: Sequence[str] | None = None) -> list[Path]:
    """Write maps and the iteration table into ``directory`` (atomically, file by file).

    Files: ``<key>_itr<N>.hdf5`` for each key of :data:`MAP_KEYS` (only the last iteration when
    ``only_final_result``) and ``results.fits`` (one row per iteration).

    Returns
    -------
    list of pathlib.Path
        The files written.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    if not results:
        logger.warning("no results to save")
        return written
    chosen = results[-1:] if only_final_result else results
    for result in chosen:
        for key in MAP_KEYS:
            path = directory / f"{key}_itr{result['iteration']}.hdf5"
            written.append(write_histogram(result[key], path))
    table = results_table(results, dataset_names)
    path = directory / "results.fits"
    with atomic_path(path) as tmp:
        hdu = fits.table_to_hdu(table)
        hdu.name = "ITERATIONS"
        fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(tmp)
    written.append(path)
    logger.info("saved %d files into %s", len(written), directory)
    return written


def read_results_table(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read ``results.fits`` back into per-iteration dicts (no maps).

    Keys: ``iteration``, ``accel_factor``, ``background_normalization`` and ``log-likelihood``
    (one entry per dataset), plus ``log-posterior`` when stored.
    """
    try:
        table = Table.read(path, hdu="ITERATIONS")
    except (OSError, KeyError, ValueError) as exc:
        raise FileFormatError(f"{path}: not a comptonsky results table ({exc})") from exc
    norms = [c for c in table.colnames if c.startswith("bkg_norm_")]
    logls = [c for c in table.colnames if c.startswith("log-likelihood_")]
    rows = []
    for row in table:
        entry = {"iteration": int(row["iteration"]), "accel_factor": float(row["accel_factor"]),
                 "background_normalization": {c[len("bkg_norm_"):]: float(row[c])
                                              for c in norms},
                 "log-likelihood": [float(row[c]) for c in logls]}
        if "log-posterior" in table.colnames:
            entry["log-posterior"] = float(row["log-posterior"])
        rows.append(entry)
    return rows
