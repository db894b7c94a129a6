"""Checkpoints of a fit: everything needed to continue it bit for bit.

A checkpoint (one ``.npz`` file, written atomically) holds the last completed iteration's
state: the map λ, the background norms, the sky expectations R·(λΔΩ) per dataset (the
expectations ε, log L and the objective are recomputed from them and must come out identical:
that checks the data and response), the EM step of that iteration (for its result maps), the
accelerator and subset schedule memory (``FitState.memory``: OSEM's level and cycle gains), the
forward products the product-reuse wrapper remembers, the response pass counts, the
per-iteration table (and the maps of every iteration when all are kept), the chosen iteration
count of cross-validation, and a fingerprint of the parameters and inputs it was made with.

Algorithms record what a checkpoint needs after every iteration (:func:`capture`, references
only, no copies); :func:`write_checkpoint` writes the last such record, so a checkpoint written
while an iteration is half done (on Ctrl-C) is the consistent state before it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from histpy import Histogram

from ..errors import CheckpointError
from ..io.atomic import atomic_path
from ..response.reuse import ReusedProducts
from .dataset import ALMOST_ZERO
from .state import Direction, FitState

__all__ = ["Committed", "capture", "reuse_wrapper", "fingerprint", "write_checkpoint", "read_checkpoint",
           "restore_checkpoint", "CHECKPOINT_FORMAT"]

logger = logging.getLogger(__name__)

#: Format version written into every checkpoint.
CHECKPOINT_FORMAT = 1

#: Parameter-file entries that do not change the numbers (left out of the fingerprint).
_NOT_NUMERIC = (("author",), ("date",), ("deconvolution", "parameter", "save_results"))


@dataclass(frozen=True)
class Committed:
    """What an algorithm had after its last completed iteration (references, no copies).

    Attributes
    ----------
    state : FitState
    n_results : int
        Number of records in ``results`` that belong to ``state``.
    products : list
        Per dataset: (history, computed, reused) of its product-reuse wrapper, or None.
    passes : (float, float)
        Forward and adjoint passes counted so far.
    """

    state: FitState
    n_results: int
    products: list
    passes: tuple[float, float]


def reuse_wrapper(op) -> ReusedProducts | None:
    """The product-reuse wrapper inside ``op`` (a chain of wrappers), or None."""
    while op is not None:
        if isinstance(op, ReusedProducts):
            return op
        op = op.__dict__.get("inner")
    return None


def capture(algorithm) -> Committed:
    """The :class:`Committed` record of ``algorithm``'s current state."""
    products = []
    for op in algorithm.data.operators:
        wrapper = reuse_wrapper(op)
        products.append(None if wrapper is None else
                        (wrapper._history, wrapper.products_computed, wrapper.products_reused))
    counter = algorithm.data.counter
    return Committed(algorithm.state, len(algorithm.results), products,
                     (counter.forward, counter.adjoint))


# --- fingerprint ------------------------------------------------------------------------------
def _digest(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        if a is None:
            h.update(b"none")
            continue
        a = np.ascontiguousarray(getattr(a, "value", a))
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()[:20]


def _numeric_parameters(parameter) -> dict:
    tree = parameter.to_dict()
    for path in _NOT_NUMERIC:
        node = tree
        for key in path[:-1]:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(path[-1], None)
    return tree


def fingerprint(algorithm) -> dict[str, str]:
    """Digests of what a fit's numbers depend on, keyed by a readable name.

    Keys: ``algorithm``, ``parameters`` (the parameter tree without author, date and
    save_results), ``initial map``, ``mask``, and per dataset its ``counts``, each background
    template and its ``response`` (shape, dtype, storage and exposure).
    """
    parts = {"algorithm": algorithm.name,
             "parameters": hashlib.sha256(yaml.safe_dump(
                 _numeric_parameters(algorithm.parameter), sort_keys=True).encode()
             ).hexdigest()[:20],
             "initial map": _digest(algorithm.initial_model.contents),
             "mask": _digest(algorithm.mask)}
    for ds in algorithm.data.datasets:
        where = f"dataset {ds.name!r}"
        parts[f"counts of {where}"] = _digest(ds.counts)
        for key in ds.keys_bkg_models():
            parts[f"background {key!r} of {where}"] = _digest(ds.background(key))
        resp = ds.response
        shape = "x".join(str(n) for n in getattr(resp, "shape", ()))
        parts[f"response of {where}"] = (f"{shape}:{getattr(resp, 'dtype', '')}:"
                                        f"{getattr(resp, 'storage', '')}:"
                                        f"{_digest(resp.exposure)}")
    return parts


# --- writing ----------------------------------------------------------------------------------
def _json_value(obj):
    if isinstance(obj, (np.floating, np.integer, np.bool_)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.tolist(), "dtype": obj.dtype.str}
    if isinstance(obj, tuple):
        return list(obj)
    raise TypeError(f"checkpoint: cannot store a {type(obj).__name__}")


def _from_json(obj):
    if isinstance(obj, dict):
        if "__ndarray__" in obj:
            return np.array(obj["__ndarray__"], dtype=obj["dtype"])
        return {k: _from_json(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_from_json(v) for v in obj]
    return obj


def _table_record(record: dict) -> dict:
    """The record without its maps (the total flux of its map kept)."""
    from .results import map_flux

    out = {k: v for k, v in record.items() if not isinstance(v, Histogram)}
    if "model_flux" not in out and isinstance(record.get("model"), Histogram):
        out["model_flux"] = map_flux(record["model"])
    return out


def write_checkpoint(path: str | os.PathLike, algorithm, extra: dict | None = None,
                     prints: dict[str, str] | None = None) -> Path:
    """Write the last completed iteration of ``algorithm`` to ``path`` (atomically).

    Parameters
    ----------
    path : path-like
        The checkpoint file (``.npz``).
    algorithm : DeconvolutionAlgorithm
        A started fit.
    extra : dict, optional
        JSON-representable entries kept in the checkpoint (``meta["extra"]``).
    prints : dict, optional
        :func:`fingerprint` of ``algorithm`` when already known (it does not change during a
        fit).

    Returns
    -------
    pathlib.Path
    """
    from .. import __version__

    path = Path(path)
    done = algorithm.committed
    if done is None:
        raise CheckpointError(f"{path}: the fit has not started; nothing to write")
    state = done.state
    records = algorithm.results[:done.n_results]
    arrays: dict[str, np.ndarray] = {"model": state.model}
    for k, s in enumerate(state.sources):
        arrays[f"sources_{k}"] = s
    direction = state.direction
    if direction is not None:
        arrays["direction_delta"] = direction.delta
        arrays["direction_processed"] = direction.processed
        if direction.prior_filter is not None:
            arrays["direction_prior_filter"] = direction.prior_filter
    products = []
    for k, item in enumerate(done.products):
        if item is None:
            products.append(None)
            continue
        history, computed, reused = item
        for m, (x, y) in enumerate(history):
            arrays[f"reuse_{k}_x{m}"] = x
            arrays[f"reuse_{k}_y{m}"] = y
        products.append({"history": len(history), "computed": computed, "reused": reused})
    maps = []
    if algorithm.keep_maps == "all":
        for record in records[:-1]:
            for key, value in record.items():
                if isinstance(value, Histogram):
                    arrays[f"map_{record['iteration']}_{key}"] = np.asarray(
                        getattr(value.contents, "value", value.contents))
                    maps.append([record["iteration"], key, str(value.unit or "")])
    meta = {
        "format": CHECKPOINT_FORMAT,
        "comptonsky": __version__,
        "algorithm": algorithm.name,
        "iteration": state.iteration,
        "fingerprint": fingerprint(algorithm) if prints is None else prints,
        "norms": state.norms,
        "log_likelihoods": state.log_likelihoods,
        "objective": state.objective,
        "alpha": state.alpha,
        "norm_step": None if direction is None else direction.norm_step,
        "memory": state.memory,
        "records": [_table_record(r) for r in records],
        "maps": maps,
        "keep_maps": algorithm.keep_maps,
        "products": products,
        "passes": list(done.passes),
        "cross_validation": algorithm.cross_validation,
        "extra": extra or {},
    }
    text = json.dumps(meta, default=_json_value)
    arrays["meta"] = np.frombuffer(text.encode(), dtype=np.uint8)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
            fh.flush()
            os.fsync(fh.fileno())
    logger.info("checkpoint of iteration %d written to %s", state.iteration, path)
    return path


# --- reading ----------------------------------------------------------------------------------
@dataclass
class Checkpoint:
    """A checkpoint as read: its metadata and arrays."""

    path: Path
    meta: dict[str, Any]
    arrays: dict[str, np.ndarray]

    @property
    def iteration(self) -> int:
        return int(self.meta["iteration"])


def read_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a checkpoint file.

    Raises
    ------
    CheckpointError
        If the file is missing or is not a readable comptonsky checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no checkpoint there (nothing to resume)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
        meta = json.loads(arrays.pop("meta").tobytes().decode())
    except (OSError, ValueError, KeyError, EOFError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not a readable comptonsky checkpoint "
                              f"({' '.join(str(exc).split())})") from exc
    except Exception as exc:  # zipfile.BadZipFile and the like from a damaged file
        raise CheckpointError(f"{path}: not a readable comptonsky checkpoint "
                              f"({type(exc).__name__}: {' '.join(str(exc).split())})") from exc
    if not isinstance(meta, dict) or meta.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: checkpoint format {meta.get('format')!r} is not "
                              f"{CHECKPOINT_FORMAT} (written by another comptonsky version)")
    return Checkpoint(path, meta, arrays)


def _same(a, b) -> bool:
    """Equal floats (NaN equal to NaN) or lists of them."""
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a)
                      and math.isnan(b))


def restore_checkpoint(algorithm, checkpoint: Checkpoint) -> None:
    """Put ``algorithm`` (built from the same parameters and data, not run) at the checkpoint.

    Raises
    ------
    CheckpointError
        If the checkpoint was written for other parameters or data (naming what differs), or
        if its state does not reproduce its log-likelihoods on these data.
    """
    from .. import __version__
    from .results import IterationRecord

    meta, arrays, where = checkpoint.meta, checkpoint.arrays, checkpoint.path
    mine = fingerprint(algorithm)
    theirs = meta.get("fingerprint") or {}
    differ = [k for k in sorted(set(mine) | set(theirs)) if mine.get(k) != theirs.get(k)]
    if differ:
        raise CheckpointError(
            f"{where}: the checkpoint (iteration {checkpoint.iteration}) was made with other "
            f"{', '.join(differ)}; resume with the parameters and inputs of that run, or start "
            "again without resuming")
    if algorithm.keep_maps == "all" and meta.get("keep_maps") != "all" \
            and len(meta.get("records", [])) > 1:
        raise CheckpointError(
            f"{where}: the checkpoint keeps only the last iteration's maps; resume without "
            "keeping every iteration's maps (no --all-iterations, keep_maps='final')")
    if meta.get("comptonsky") != __version__:
        logger.warning("%s: written by comptonsky %s, resumed by %s: the result may differ in "
                       "the last bits from an uninterrupted run", where, meta.get("comptonsky"),
                       __version__)
    try:
        model = arrays["model"]
        sources = [arrays[f"sources_{k}"] for k in range(len(algorithm.data.datasets))]
        for ds, s in zip(algorithm.data.datasets, sources):
            # one plain pass (not counted, not remembered): the map gives the stored products
            direct = ds.response.forward(model)
            scale = float(np.max(np.abs(s))) if s.size else 0.0
            if direct.shape != s.shape or not np.all(np.abs(direct + ALMOST_ZERO - s)
                                                     <= 1e-8 * scale):
                raise CheckpointError(
                    f"{where}: the checkpoint's map does not give its expected counts for "
                    f"dataset {ds.name!r} with this response; the checkpoint is damaged or the "
                    "response changed since it was written")
        state = algorithm.evaluate(model, {k: float(v) for k, v in meta["norms"].items()},
                                   sources)
        if not (_same(state.log_likelihoods, meta["log_likelihoods"])
                and _same(state.objective, meta["objective"])):
            raise CheckpointError(
                f"{where}: the checkpoint's state does not reproduce its log-likelihood on "
                f"these data ({state.log_likelihoods} ≠ {meta['log_likelihoods']}); the data "
                "or response changed since it was written")
        direction = None
        if "direction_delta" in arrays:
            direction = Direction(arrays["direction_delta"], arrays["direction_processed"],
                                  {k: float(v) for k, v in (meta["norm_step"] or {}).items()},
                                  (), arrays.get("direction_prior_filter"))
        state = replace(state, iteration=int(meta["iteration"]), alpha=float(meta["alpha"]),
                        direction=direction, memory=_from_json(meta["memory"]))
        records = [IterationRecord(_from_json(r)) for r in meta["records"]]
        maps = {(int(i), key): unit for i, key, unit in meta.get("maps", [])}
        for record in records:
            for (i, key), unit in maps.items():
                if i == record["iteration"]:
                    record[key] = algorithm._map(arrays[f"map_{i}_{key}"].reshape(-1),
                                                 unit=unit or None)
        products = meta["products"]
        operators = algorithm.data.operators
        if len(products) != len(operators):
            raise CheckpointError(f"{where}: written for {len(products)} datasets, this fit "
                                  f"has {len(operators)}")
        for k, (op, item) in enumerate(zip(operators, products)):
            wrapper = reuse_wrapper(op)
            if (wrapper is None) != (item is None):
                raise CheckpointError(f"{where}: product reuse of dataset {k} differs from "
                                      "the run that wrote the checkpoint")
            if wrapper is not None:
                wrapper._history = [(arrays[f"reuse_{k}_x{m}"], arrays[f"reuse_{k}_y{m}"])
                                    for m in range(int(item["history"]))]
                wrapper.products_computed = int(item["computed"])
                wrapper.products_reused = int(item["reused"])
    except KeyError as exc:
        raise CheckpointError(f"{where}: incomplete checkpoint (no {exc})") from None
    algorithm.start(state)
    algorithm.results = records
    if records:  # the last record again from the state: its maps (and a check of the table)
        again = IterationRecord(algorithm.make_result())
        if not _same(list(again["log-likelihood"]), list(records[-1]["log-likelihood"])):
            raise CheckpointError(f"{where}: the checkpoint's table does not match its state")
        algorithm.results[-1] = again
    algorithm.cross_validation = meta.get("cross_validation")
    algorithm.data.counter.forward, algorithm.data.counter.adjoint = map(float, meta["passes"])
    algorithm.resumed = True
    algorithm.committed = capture(algorithm)
    logger.info("resumed %s at iteration %d from %s", algorithm.name, state.iteration, where)
