"""Independent tasks on a Dask cluster: results back in submission order.

* :func:`map_ordered`: ``fn(item, context)`` for every item, the shared ``context`` sent to each
  worker once (bootstrap replicates, cross-validation folds);
* :func:`map_pixel_blocks`: a per-block function of sky pixels ``[p0, p1)`` (a Galactic
  response) over the workers, each block handed to ``consume`` in pixel order with at most
  ``window`` blocks in flight, so memory stays bounded however large the response;
* :class:`EngineBlock`: such a per-block function built on the in-process Galactic engine.

A task that raises stops the run with a :class:`~comptonsky.errors.DistributedError` naming the
item or pixel block; a task lost with its worker is run again by Dask on another one (its
inputs are in the task), so results do not depend on faults or on the number of workers.
"""

from __future__ import annotations

import logging
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ..errors import DistributedError

__all__ = ["map_ordered", "map_pixel_blocks", "EngineBlock", "pixel_blocks", "galactic_response_on",
           "write_extended_source_response_on"]

logger = logging.getLogger(__name__)


def _call_with_context(fn, item, context):
    return fn(item, context)


def map_ordered(client: Any, fn: Callable[[Any, Any], Any], items: Iterable[Any],
                context: Any = None, name: str = "task", window: int | None = None
                ) -> Iterator[Any]:
    """Yield ``fn(item, context)`` for each item, in the order of ``items``.

    Parameters
    ----------
    client : dask.distributed.Client
    fn : callable
        A picklable function (module level).
    items : iterable
        Its first arguments (each sent with its task).
    context : object, optional
        Its second argument, shared: sent to every worker once.
    name : str
        What the items are, for task keys and messages (``bootstrap``).
    window : int, optional
        Most tasks in flight (default: all).

    Raises
    ------
    DistributedError
        When a task raised; names the item's position.
    """
    shared = client.scatter(context, broadcast=True, hash=False) if context is not None else None
    items = list(items)
    window = len(items) if window is None else max(1, int(window))
    queue: deque = deque()
    it = iter(enumerate(items))

    def submit_next() -> bool:
        try:
            k, item = next(it)
        except StopIteration:
            return False
        queue.append((k, client.submit(_call_with_context, fn, item, shared, pure=False,
                                       key=f"{name}-{k}-{id(queue):x}")))
        return True

    for _ in range(window):
        if not submit_next():
            break
    while queue:
        k, fut = queue.popleft()
        try:
            out = fut.result()
        except Exception as exc:  # noqa: BLE001 - named and re-raised
            for _, other in queue:
                other.cancel()
            raise DistributedError(f"{name} {k}: the task failed on the cluster: "
                                   f"{type(exc).__name__}: {exc}") from exc
        submit_next()
        yield out


def pixel_blocks(n_pix: int, block: int) -> list[tuple[int, int]]:
    """[(p0, p1), ...] covering 0:n_pix in blocks of ``block`` pixels (the last may be short)."""
    block = max(1, int(block))
    return [(p0, min(p0 + block, n_pix)) for p0 in range(0, int(n_pix), block)]


def _run_block(bounds, make):
    p0, p1 = bounds
    return p0, p1, make(p0, p1)


def map_pixel_blocks(client: Any, make_block: Callable[[int, int], np.ndarray], n_pix: int,
                     block: int, consume: Callable[[int, int, np.ndarray], None],
                     window: int | None = None, progress: bool = True) -> None:
    """Compute ``make_block(p0, p1)`` for every pixel block on the workers and hand each to
    ``consume(p0, p1, values)`` in pixel order.

    Parameters
    ----------
    make_block : callable (p0, p1) → ndarray, shape (p1 − p0, ...)
        Picklable; sent to every worker once (it may cache tables between blocks).
    n_pix : int
        Sky pixels.
    block : int
        Pixels per block (the blocks do not depend on the number of workers).
    consume : callable
        Writes a block (runs here, in order).
    window : int, optional
        Blocks in flight (default 2 per worker): bounds the memory held for blocks not written.
    """
    if window is None:
        window = 2 * max(1, len(client.scheduler_info()["workers"]))
    blocks = pixel_blocks(n_pix, block)
    with tqdm(total=int(n_pix), desc="Galactic response", unit="pix", disable=not progress,
              leave=False) as bar:
        for p0, p1, values in map_ordered(client, _run_block, blocks, make_block,
                                          name="pixels", window=window):
            consume(p0, p1, values)
            bar.update(p1 - p0)


#: push tables of the engines used in this process, by token (a few kept)
_TABLES: dict[str, tuple[np.ndarray, np.ndarray]] = {}


class EngineBlock:
    """Sky pixels [p0, p1) of the Galactic response of ``det`` and ``bins``
    (:func:`comptonsky.response.galactic.galactic_response_block`), shape
    (p1 − p0, n_Ei, n_Em, n_Phi, N_PsiChi), ``dtype``, cm² s. The push tables (which do not
    depend on the sky pixels) are made once per process and kept."""

    def __init__(self, det, bins, nside: int | None = None, occultation: bool = True,
                 interpolation: str = "overlap", sky_oversample: int = 0,
                 nside_psichi: int | None = None, dtype: str = "float32"):
        self.det, self.bins = det, bins
        self.nside = int(nside or det.nside_psichi)
        self.nside_psichi = int(nside_psichi or self.nside)
        self.occultation, self.interpolation = bool(occultation), interpolation
        self.sky_oversample, self.dtype = int(sky_oversample), str(dtype)
        self.token = uuid.uuid4().hex      # the push tables of this engine, per process

    @property
    def n_pix(self) -> int:
        return 12 * self.nside ** 2

    def __call__(self, p0: int, p1: int) -> np.ndarray:
        from ..response.galactic import galactic_response_block, push_tables

        tables = _TABLES.get(self.token)
        if tables is None:
            tables = _TABLES[self.token] = push_tables(self.bins.rotations,
                                                       self.det.nside_psichi,
                                                       self.nside_psichi, self.interpolation)
            while len(_TABLES) > 4:
                _TABLES.pop(next(iter(_TABLES)))
        return galactic_response_block(self.det, self.bins, np.arange(int(p0), int(p1)),
                                       self.nside, self.nside_psichi, self.occultation,
                                       self.interpolation, self.sky_oversample, self.dtype,
                                       push=tables)


def galactic_response_on(client: Any, make_block: Callable[[int, int], np.ndarray], n_pix: int,
                         block: int = 128, progress: bool = True) -> np.ndarray:
    """The whole response in memory from ``make_block`` over the workers (small shapes; stream
    into a file with :func:`map_pixel_blocks` for large ones)."""
    parts: list[np.ndarray] = []
    map_pixel_blocks(client, make_block, n_pix, block, lambda p0, p1, v: parts.append(v),
                     progress=progress)
    return np.concatenate(parts)


def write_extended_source_response_on(client: Any, path, fdr, orientation,
                                      nside_image: int | None = None,
                                      nside_scatt_map: int | None = None,
                                      Earth_occ: bool = True,  # noqa: N803
                                      method: str = "scatt_map", block: int = 64,
                                      dtype: str = "float32", overwrite: bool = True,
                                      progress: bool = True, window: int | None = None):
    """:func:`comptonsky.response.extended.write_extended_source_response` with the sky-pixel
    blocks computed on the workers of ``client`` and written here in pixel order.

    The blocks are the same as in one process (``block`` pixels each, independent of the number
    of workers), so the file is the same; at most ``window`` blocks (default 2 per worker) are
    held here at a time.

    Returns
    -------
    pathlib.Path
    """
    from ..response.extended import extended_response_axes, galactic_inputs
    from ..response.galactic import write_response_blocks

    det, bins, opt = galactic_inputs(fdr, orientation, nside_image, nside_scatt_map, Earth_occ,
                                     method)
    axes = extended_response_axes(fdr, opt["nside"])
    engine = EngineBlock(det, bins, nside=opt["nside"], occultation=opt["occultation"],
                         interpolation=opt["interpolation"], nside_psichi=opt["nside_psichi"],
                         dtype=dtype)
    if window is None:
        window = 2 * max(1, len(client.scheduler_info()["workers"]))
    n_pix = engine.n_pix

    def blocks() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        with tqdm(total=n_pix, desc="Galactic response", unit="pix", disable=not progress,
                  leave=False) as bar:
            for p0, p1, values in map_ordered(client, _run_block, pixel_blocks(n_pix, block),
                                              engine, name="pixels", window=window):
                bar.update(p1 - p0)
                yield np.arange(p0, p1), values

    return write_response_blocks(path, axes, blocks(), dtype=dtype, overwrite=overwrite)
