"""Writing deconvolution results: maps as histpy HDF5 (and HEALPix FITS), the iteration table
as FITS.

``results.fits`` has an empty primary HDU whose header holds the run's settings (``ALGORITH``,
``NITER``, one ``HIERARCH`` card per ``deconvolution:parameter`` setting, the whole parameter
tree as ``COMMENT`` lines) and any provenance cards, and the ``ITERATIONS`` table: one row per
iteration with units on its columns.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from astropy import units as u
from astropy.io import fits
from astropy.table import Table
from histpy import Histogram

from ..errors import FileFormatError, MapsNotKeptError
from ..io.atomic import atomic_path
from ..io.healpix_fits import write_healpix_fits
from ..io.histogram import write_histogram

__all__ = ["save_results", "results_table", "read_results_table", "map_flux",
           "parameter_cards", "MAP_KEYS", "IterationRecord", "strip_maps"]

logger = logging.getLogger(__name__)

MAP_KEYS = ("model", "delta_model", "processed_delta_model")
_ONE = u.dimensionless_unscaled


def map_flux(image: Histogram) -> list[float]:
    """Total flux per energy band, Σ_j λ_j ΔΩ_j (cm⁻² s⁻¹ for an intensity map)."""
    values = np.asarray(getattr(image.contents, "value", image.contents), dtype=float)
    pixarea = image.axes[0].pixarea().to_value("sr")
    return [float(v) for v in values.sum(axis=0) * pixarea]


class IterationRecord(dict):
    """One entry of ``ImageDeconvolution.results``: a dict of the tutorial's keys.

    Only the last iteration's record holds maps unless all of them are kept (see
    :meth:`~comptonsky.deconvolution.driver.ImageDeconvolution.run_deconvolution`); asking an
    earlier one for a map raises :class:`~comptonsky.errors.MapsNotKeptError` (a ``KeyError``)
    saying so. Records without maps keep ``model_flux``, the total flux per band of the map.
    """

    def __missing__(self, key):
        if key in (*MAP_KEYS, "prior_filter") and "model_flux" in self:
            raise MapsNotKeptError(
                f"results: the maps of iteration {self.get('iteration')} were not kept (only "
                "the last iteration's are); to keep every iteration's maps use "
                "run_deconvolution(keep_maps='all') or save_results:only_final_result: false")
        raise KeyError(key)


def strip_maps(record: dict) -> None:
    """Drop the maps of ``record`` in place, keeping ``model_flux`` (Σ λ ΔΩ per band)."""
    if isinstance(record.get("model"), Histogram):
        record["model_flux"] = map_flux(record["model"])
    for key in [k for k, v in record.items() if isinstance(v, Histogram)]:
        del record[key]


def _record_flux(record: dict) -> list[float]:
    model = record.get("model")
    return map_flux(model) if isinstance(model, Histogram) else list(record["model_flux"])


def results_table(results: Sequence[dict[str, Any]],
                  dataset_names: Sequence[str] | None = None) -> Table:
    """One row per iteration: iteration, accel_factor, background norms, log L, map flux.

    Columns: ``iteration``, ``accel_factor`` (the acceleration factor α; 1 without
    acceleration), ``n_subsets`` (OSEM only: the subsets of each cycle), ``bkg_norm_<name>`` per
    background,
    ``log-likelihood_<dataset>`` per dataset, ``log-posterior`` when present (all
    dimensionless) and ``flux_E<k>`` per energy band (Σ λ ΔΩ of the map, in the map's unit × sr:
    cm⁻² s⁻¹ for an intensity map).
    """
    table = Table()
    table["iteration"] = np.array([r["iteration"] for r in results], dtype=np.int64)
    table["accel_factor"] = u.Quantity([r["accel_factor"] for r in results], _ONE,
                                       dtype=np.float64)
    if results and "n_subsets" in results[0]:
        table["n_subsets"] = np.array([r["n_subsets"] for r in results], dtype=np.int64)
    names = list(results[0]["background_normalization"]) if results else []
    for key in names:
        table[f"bkg_norm_{key}"] = u.Quantity([r["background_normalization"][key]
                                               for r in results], _ONE)
    n_data = len(results[0]["log-likelihood"]) if results else 0
    labels = list(dataset_names or [f"{k}" for k in range(n_data)])
    for k in range(n_data):
        table[f"log-likelihood_{labels[k]}"] = u.Quantity([r["log-likelihood"][k]
                                                           for r in results], _ONE)
    if results and "log-posterior" in results[0]:
        table["log-posterior"] = u.Quantity([r["log-posterior"] for r in results], _ONE)
    if results:
        unit = (results[-1]["model"].unit or _ONE) * u.sr
        fluxes = np.array([_record_flux(r) for r in results])
        for k in range(fluxes.shape[1]):
            table[f"flux_E{k}"] = u.Quantity(fluxes[:, k], unit)
    return table


def parameter_cards(parameters) -> list[tuple[str, Any, str]]:
    """Header cards of a run's settings: ``ALGORITH`` and one ``HIERARCH`` card per
    ``deconvolution:parameter`` entry (``HIERARCH ACCELERATION ALPHA_MAX = 2.0``) and per
    ``response`` option (``HIERARCH RESPONSE DTYPE = 'float32'``).

    Parameters
    ----------
    parameters : comptonsky.config.Parameters
    """
    cards: list[tuple[str, Any, str]] = [
        ("ALGORITH", str(parameters.get("deconvolution:algorithm", "RL")),
         "deconvolution algorithm")]

    def walk(node: Any, path: list[str]) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, path + [str(key)])
            return
        if node is None:
            return
        value = node if isinstance(node, (bool, int, float, str)) else str(node)
        key = "HIERARCH " + " ".join(path).upper()
        try:
            str(fits.Card(key, value))
        except ValueError:  # too long even for HIERARCH: the COMMENT copy has it
            return
        cards.append((key, value, ""))

    walk(parameters.get("deconvolution:parameter") or {}, [])
    walk(parameters.get("response") or {}, ["RESPONSE"])
    return cards


def save_results(results: Sequence[dict[str, Any]], directory: str | os.PathLike,
                 only_final_result: bool = True,
                 dataset_names: Sequence[str] | None = None, parameters=None,
                 cards: Sequence[tuple[str, Any, str]] = (),
                 healpix_fits: bool = False) -> list[Path]:
    """Write maps and the iteration table into ``directory`` (atomically, file by file).

    Files: ``<key>_itr<N>.hdf5`` for each key of :data:`MAP_KEYS` (only the last iteration when
    ``only_final_result``), the same maps as HEALPix FITS ``<key>_itr<N>.fits`` when
    ``healpix_fits``, and ``results.fits`` (one row per iteration).

    Parameters
    ----------
    results : list of dict
        ``ImageDeconvolution.results``.
    directory : path-like
    only_final_result : bool
    dataset_names : list of str, optional
        Names for the log-likelihood columns.
    parameters : comptonsky.config.Parameters, optional
        The run's parameters, recorded in the FITS headers (:func:`parameter_cards`).
    cards : sequence of (keyword, value, comment)
        Further header cards for every FITS file (provenance).
    healpix_fits : bool
        Also write each map as a HEALPix FITS file.

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
    header_cards = [*(parameter_cards(parameters) if parameters is not None else []), *cards]
    chosen = results[-1:] if only_final_result else results
    for result in chosen:
        if "model" not in result:
            raise MapsNotKeptError(f"save_results: the maps of iteration {result['iteration']} "
                                   "were not kept; only_final_result=False needs a fit run "
                                   "with keep_maps='all'")
        for key in MAP_KEYS:
            path = directory / f"{key}_itr{result['iteration']}.hdf5"
            written.append(write_histogram(result[key], path))
            if healpix_fits:
                written.append(write_healpix_fits(
                    result[key], path.with_suffix(".fits"),
                    [*header_cards, ("ITER", int(result["iteration"]), "iteration of this map"),
                     ("MAPKEY", key, "result entry")]))
    table = results_table(results, dataset_names)
    path = directory / "results.fits"
    primary = fits.PrimaryHDU()
    for key, value, comment in header_cards:
        primary.header[key] = (value, comment)
    primary.header["NITER"] = (int(results[-1]["iteration"]), "iterations made")
    if parameters is not None:
        for line in parameters.dump().splitlines():
            primary.header.add_comment(line)
    with atomic_path(path) as tmp:
        hdu = fits.table_to_hdu(table)
        hdu.name = "ITERATIONS"
        fits.HDUList([primary, hdu]).writeto(tmp)
    written.append(path)
    logger.info("saved %d files into %s", len(written), directory)
    return written


def read_results_table(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read ``results.fits`` back into per-iteration dicts (no maps).

    Keys: ``iteration``, ``accel_factor``, ``background_normalization`` and ``log-likelihood``
    (one entry per dataset), plus ``n_subsets`` and ``log-posterior`` when stored.
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
        if "n_subsets" in table.colnames:
            entry["n_subsets"] = int(row["n_subsets"])
        rows.append(entry)
    return rows
