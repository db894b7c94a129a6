"""The fit's data on a Dask cluster: blocks held by workers, maps out, partial products back.

:class:`DistributedJointData` stands where :class:`~comptonsky.deconvolution.joint.JointData`
stands for the algorithms. Each dataset is split into blocks (:func:`~.blocks.split_dataset`),
each block held by a :class:`~.blocks.BlockActor` on a worker for the whole run. The data-space
vectors of the fit state (sky expected counts s, expected counts ε, ratios X/ε) stay on the
workers: the state holds :class:`RemoteVector` handles, affine combinations of vectors stored on
the blocks, of the background templates and of constants, which the algorithms combine as they
would arrays (``s0 + α (s1 − s0)``, ``s + Σ n_b B_b``). Per iteration only maps go out, and back
come per-block partial products (Rᵀ(X/ε), Σ (X/ε) B_b) and log-likelihoods.

Sums over blocks are taken on the client in block order; blocks depend on the data and
``n_blocks`` only, so a fit gives the same numbers on 1 or 100 workers, and equals the
one-process fit up to the rounding of summing a product in pieces.

Faults: every stored vector is known on the client by the map it is the product of
(s = R λ; a rebuilt or combined product by the same linearity). When a block's worker is lost,
the block is built again on a live worker from its :class:`~.blocks.BlockSpec` and its stored
vectors are recomputed from those maps; the call is then repeated. With no worker to take it
within ``recovery_timeout_s``, a :class:`~comptonsky.errors.DistributedError` names the block.
"""

from __future__ import annotations

import itertools
import logging
import time
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..deconvolution.dataset import ALMOST_ZERO, DataIF_COSI_DC2
from ..deconvolution.joint import background_totals
from ..deconvolution.passes import PassCounter
from ..errors import DistributedError, InvalidParameterError
from ..response.reuse import reuse_plan
from .blocks import BlockGroup, BlockSpec, _BlockFailure, split_dataset

__all__ = ["DistributedJointData", "RemoteVector", "check_algorithm", "SUPPORTED"]

logger = logging.getLogger(__name__)

#: Algorithms (and accelerators) a fit on a client runs.
SUPPORTED = "RL (max_step, max_step_unchecked, none or SQUAREM acceleration), RLsimple, MAP_RL"
#: A combination of more stored vectors than this is made concrete on the workers.
MAX_TERMS = 4


class _Stored:
    """A vector stored on every block of one dataset under ``key``: the product R·z."""

    __slots__ = ("key", "z", "__weakref__")

    def __init__(self, owner: _RemoteDataset, key: int, z: np.ndarray):
        self.key, self.z = key, z
        weakref.finalize(self, owner._released.append, key)


class RemoteVector:
    """A data-space vector of one dataset kept on its blocks: Σ c_k v_k + const + Σ_b n_b B_b
    + o · offset, with v_k stored vectors, B_b the background templates and offset the
    dataset's own (detector-frame rest bins). Supports +, − and multiplication by numbers."""

    __slots__ = ("owner", "terms", "const", "bkg", "offset")

    def __init__(self, owner: _RemoteDataset, terms: dict[int, tuple[float, _Stored]],
                 const: float = 0.0, bkg: dict[str, float] | None = None, offset: float = 0.0):
        self.owner, self.terms, self.const = owner, terms, float(const)
        self.bkg, self.offset = dict(bkg or {}), float(offset)
        if len(self.terms) > MAX_TERMS:
            stored = owner.combine(self.terms)
            self.terms = {stored.key: (1.0, stored)}

    def _combine(self, other, sign: float) -> RemoteVector:
        if isinstance(other, (int, float, np.floating)):
            return RemoteVector(self.owner, dict(self.terms), self.const + sign * float(other),
                                self.bkg, self.offset)
        if not isinstance(other, RemoteVector) or other.owner is not self.owner:
            return NotImplemented
        terms = dict(self.terms)
        for key, (c, s) in other.terms.items():
            terms[key] = (terms[key][0] + sign * c if key in terms else sign * c, s)
        bkg = dict(self.bkg)
        for name, n in other.bkg.items():
            bkg[name] = bkg.get(name, 0.0) + sign * n
        return RemoteVector(self.owner, terms, self.const + sign * other.const, bkg,
                            self.offset + sign * other.offset)

    def __add__(self, other):
        return self._combine(other, 1.0)

    __radd__ = __add__

    def __sub__(self, other):
        return self._combine(other, -1.0)

    def __rsub__(self, other):
        return (-1.0 * self)._combine(other, 1.0)

    def __mul__(self, a):
        if not isinstance(a, (int, float, np.floating)):
            return NotImplemented
        a = float(a)
        return RemoteVector(self.owner, {k: (a * c, s) for k, (c, s) in self.terms.items()},
                            a * self.const, {k: a * n for k, n in self.bkg.items()},
                            a * self.offset)

    __rmul__ = __mul__

    def __neg__(self):
        return -1.0 * self

    def __getitem__(self, item):
        raise InvalidParameterError(
            "a Dask fit keeps the expected counts on the workers; this algorithm reads them "
            f"element by element, which is not supported there (supported: {SUPPORTED})")

    def expression(self) -> tuple:
        """What a block evaluates: ((coef, key), ...), const, ((name, n_b), ...), offset."""
        return (tuple((c, k) for k, (c, _) in self.terms.items()), self.const,
                tuple(self.bkg.items()), self.offset)

    def __repr__(self) -> str:
        return (f"RemoteVector(dataset={self.owner.name!r}, terms={len(self.terms)}, "
                f"backgrounds={sorted(self.bkg)})")


class _Ratio:
    """X/ε of one dataset, evaluated on the blocks when its products are asked for."""

    __slots__ = ("eps", "products")

    def __init__(self, eps: RemoteVector):
        self.eps = eps
        self.products: tuple[np.ndarray, dict[str, float]] | None = None


class _Group:
    """Blocks ``members`` (indices, ascending) of one dataset held by one actor on ``worker``."""

    __slots__ = ("members", "worker", "actor")

    def __init__(self, members: list[int], worker: str | None):
        self.members, self.worker, self.actor = list(members), worker, None


class _RemoteDataset:
    """The blocks of one dataset: their actors, the stored vectors, product reuse."""

    def __init__(self, fit: DistributedJointData, ds: DataIF_COSI_DC2, specs: list[BlockSpec]):
        self.fit, self.ds, self.name, self.specs = fit, ds, ds.name, specs
        self.groups: list[_Group] = []
        self._keys = itertools.count(1)
        self._released: list[int] = []
        self.live: weakref.WeakValueDictionary[int, _Stored] = weakref.WeakValueDictionary()
        self.history: list[tuple[np.ndarray, _Stored]] = []
        self.reuse = bool(ds.reuse_products)

    @property
    def workers(self) -> list[str | None]:
        """The worker holding each block."""
        out: list[str | None] = [None] * len(self.specs)
        for group in self.groups:
            for b in group.members:
                out[b] = group.worker
        return out

    def names(self, group: _Group) -> str:
        """``block a`` or ``blocks a, b, ...``: the group's blocks for messages."""
        names = [self.specs[b].name for b in group.members]
        return ("block " if len(names) == 1 else "blocks ") + ", ".join(names)

    # stored vectors
    def _new(self, z: np.ndarray) -> _Stored:
        stored = _Stored(self, next(self._keys), z)
        self.live[stored.key] = stored
        return stored

    def _take_released(self) -> list[int]:
        out, self._released[:] = list(self._released), []
        return out

    def forward(self, x: np.ndarray) -> RemoteVector:
        """R x (no offset) as a vector stored on the blocks (rebuilt from the last two when x
        lies on their line)."""
        x = np.array(x, dtype=np.float64).reshape(-1)
        if self.reuse and self.history and np.array_equal(x, self.history[-1][0]):
            stored = self.history[-1][1]
            return RemoteVector(self, {stored.key: (1.0, stored)})
        plan = reuse_plan(self.history, x) if self.reuse else None
        stored = self._new(x.copy())
        release = self._take_released()
        if plan is None:
            self.fit._call(self, "forward", lambda b: (stored.key, x, release))
        else:
            alpha, rows, resid = plan
            k0, k1 = self.history[0][1].key, self.history[1][1].key
            self.fit._call(self, "reuse", lambda b: (stored.key, k0, k1, alpha, rows, resid,
                                                     release))
        if self.reuse:
            self.history = self.history[-1:] + [(x.copy(), stored)]
        return RemoteVector(self, {stored.key: (1.0, stored)})

    def combine(self, terms: dict[int, tuple[float, _Stored]]) -> _Stored:
        """Σ c_k v_k made concrete on the blocks (R · Σ c_k z_k)."""
        z = np.zeros_like(next(iter(terms.values()))[1].z)
        for c, s in terms.values():
            z += c * s.z
        stored = self._new(z)
        pairs = tuple((c, k) for k, (c, _) in terms.items())
        release = self._take_released()
        self.fit._call(self, "combine", lambda b: (stored.key, pairs, release))
        return stored


class DistributedJointData:
    """The sum over datasets of what the RL family needs, computed on blocks held by workers.

    Parameters
    ----------
    datasets : sequence of DataIF_COSI_DC2
        As for :class:`~comptonsky.deconvolution.joint.JointData` (Galactic CDS or detector
        frame; the Galactic responses held dense).
    client : dask.distributed.Client
    n_blocks : int, optional
        Blocks per dataset (default: about 256 MiB of response each); the same number gives
        the same result on any number of workers.
    counter : PassCounter, optional
    recovery_timeout_s : float
        How long to wait for a worker to re-create a lost block on.

    Attributes
    ----------
    datasets, model_axes, model_shape, n_model, counter, exposure, background_names,
    background_sums
        As in JointData.
    blocks : list of list of BlockSpec
        The blocks of each dataset.
    """

    def __init__(self, datasets: Sequence[DataIF_COSI_DC2], client: Any,
                 n_blocks: int | None = None, counter: PassCounter | None = None,
                 recovery_timeout_s: float = 120.0):
        if not datasets:
            raise InvalidParameterError("no dataset given: call set_dataset([...]) first")
        self.datasets = list(datasets)
        self.client = client
        self.recovery_timeout_s = float(recovery_timeout_s)
        first = self.datasets[0]
        self.model_axes = first.model_axes
        self.model_shape = tuple(int(n) for n in self.model_axes.nbins)
        self.n_model = int(np.prod(self.model_shape))
        self.counter = PassCounter() if counter is None else counter
        self.recoveries = 0
        self._submitted = 0
        self._remote = [_RemoteDataset(self, ds, split_dataset(ds, n_blocks))
                        for ds in self.datasets]
        self.blocks = [r.specs for r in self._remote]
        self._place()
        exposures = []
        for r in self._remote:
            parts = self._call(r, "exposure", lambda b: ())
            if parts[0].shape != (self.n_model,):
                raise InvalidParameterError(
                    f"dataset {r.name!r} has {parts[0].size} model elements, dataset "
                    f"{self.datasets[0].name!r} has {self.n_model}: all datasets must share "
                    "the model axes")
            exposures.append(_ordered_sum(parts))
        self.exposure = _ordered_sum(exposures)
        self.background_names, self.background_sums = background_totals(self.datasets)
        logger.info("Dask fit: %d dataset(s) in %s blocks on %d worker(s)", len(self.datasets),
                    "+".join(str(len(b)) for b in self.blocks), len(self._worker_list()))

    # --- placement and calls --------------------------------------------------------------
    def _worker_list(self) -> list[str]:
        return sorted(self.client.scheduler_info()["workers"])

    def _place(self) -> None:
        """Blocks of all datasets dealt round-robin over the workers (in block order); the
        blocks of one dataset on one worker form one group (one actor)."""
        workers = self._worker_list()
        if not workers:
            raise DistributedError("the Dask cluster has no workers")
        slot = 0
        pending = []
        for r in self._remote:
            members: dict[str, list[int]] = {}
            for b in range(len(r.specs)):
                members.setdefault(workers[slot % len(workers)], []).append(b)
                slot += 1
            for w, blocks in members.items():
                group = _Group(blocks, w)
                r.groups.append(group)
                pending.append((r, group, self._submit_group(r, group, [w])))
        for r, group, fut in pending:
            try:
                with self.client.as_current():    # the actor handle binds to this client
                    group.actor = fut.result(timeout=self.recovery_timeout_s)
            except Exception as exc:  # noqa: BLE001 - named below
                raise DistributedError(f"{r.names(group)}: could not be built on a worker: "
                                       f"{exc}") from exc
            group.worker = getattr(group.actor, "_address", group.worker)

    def _submit_group(self, r: _RemoteDataset, group: _Group, workers=None):
        self._submitted += 1
        return self.client.submit(
            BlockGroup, [r.specs[b] for b in group.members], actor=True, workers=workers,
            allow_other_workers=workers is not None, pure=False,
            key=f"blocks-{r.name}-{group.members[0]}-{id(self):x}-{self._submitted}")

    def _call(self, r: _RemoteDataset, method: str, args) -> list:
        """``method(*args(b))`` on every block of ``r`` at once (one message per group); the
        results in block order. A group whose worker is lost is re-created and the call
        repeated."""
        pending = []
        for group in r.groups:
            try:
                pending.append(group.actor.call(method, [args(b) for b in group.members]))
            except Exception as exc:  # noqa: BLE001 - the actor knows its worker is gone
                pending.append(exc)
        out: list = [None] * len(r.specs)
        for group, fut in zip(r.groups, pending):
            try:
                if isinstance(fut, Exception):
                    raise fut
                results = fut.result()
            except Exception as exc:  # noqa: BLE001 - a lost worker
                if not self._lost(group):
                    raise DistributedError(f"{r.names(group)}: {method} failed: "
                                           f"{type(exc).__name__}: {exc}") from exc
                self._recover(r, group, exc)
                results = group.actor.call(method, [args(b) for b in group.members]).result()
            for b, value in zip(group.members, results):
                if isinstance(value, _BlockFailure):
                    raise DistributedError(f"block {value.block}: {method} failed: "
                                           f"{value.message}")
                out[b] = value
        return out

    def _lost(self, group: _Group) -> bool:
        """Whether the group's worker has left the cluster (waits up to 10 s to be told)."""
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            if group.worker not in self._worker_list():
                return True
            time.sleep(0.2)
        return False

    def _recover(self, r: _RemoteDataset, group: _Group, exc: Exception) -> None:
        """Build the group's blocks again on a live worker and recompute their stored
        vectors."""
        names = r.names(group)
        logger.warning("%s: worker %s lost (%s); re-creating", names, group.worker,
                       type(exc).__name__)
        deadline = time.monotonic() + self.recovery_timeout_s
        while not self._worker_list():
            if time.monotonic() > deadline:
                raise DistributedError(
                    f"{names} lost with worker {group.worker} and no worker joined within "
                    f"{self.recovery_timeout_s:g} s to re-create them") from exc
            time.sleep(0.5)
        self.recoveries += 1
        fut = self._submit_group(r, group)
        try:
            with self.client.as_current():
                actor = fut.result(timeout=max(1.0, deadline - time.monotonic()))
            for key, stored in sorted(r.live.items()):
                replay = actor.call("forward", [(key, stored.z)] * len(group.members)).result()
                failed = [v for v in replay if isinstance(v, _BlockFailure)]
                if failed:
                    raise DistributedError(f"block {failed[0].block}: {failed[0].message}")
        except Exception as exc2:  # noqa: BLE001
            raise DistributedError(f"{names} lost with worker {group.worker} and could not "
                                   f"be re-created: {exc2}") from exc
        group.actor = actor
        group.worker = getattr(actor, "_address", None)
        logger.warning("%s re-created on %s", names, group.worker)

    # --- what the algorithms call -------------------------------------------------------------
    def expectations(self, model: np.ndarray, bkg_norm: Mapping[str, float]
                     ) -> list[RemoteVector]:
        return self.add_backgrounds(self.source_expectations(model), bkg_norm)

    def source_expectations(self, model: np.ndarray) -> list[RemoteVector]:
        """s = R·(λΔΩ) + 1e-12 per dataset (kept on the blocks)."""
        return [s + ALMOST_ZERO for s in self.forward(model)]

    def forward(self, model: np.ndarray) -> list[RemoteVector]:
        """R·(λΔΩ) per dataset (kept on the blocks)."""
        out = []
        for r in self._remote:
            self.counter.forward += 1.0
            out.append(r.forward(model))
        return out

    def add_backgrounds(self, sources: Sequence[RemoteVector],
                        bkg_norm: Mapping[str, float]) -> list[RemoteVector]:
        """ε = s + Σ_b n_b B_b (+ the rest-bin offsets of a detector-frame dataset)."""
        out = []
        for r, s in zip(self._remote, sources):
            bkg = {key: float((bkg_norm or {}).get(key, 1.0)) for key in r.ds.keys_bkg_models()}
            eps = s + RemoteVector(r, {}, 0.0, bkg, 1.0)
            out.append(eps)
        return out

    def total_log_likelihood(self, expectations: Sequence[RemoteVector]) -> float:
        return float(np.sum(self.log_likelihoods(expectations)))

    def log_likelihoods(self, expectations: Sequence[RemoteVector]) -> list[float]:
        """Poisson log L per dataset: the blocks' sums added in block order."""
        out = []
        for r, eps in zip(self._remote, expectations):
            expr = eps.expression()
            parts = self._call(r, "log_likelihood", lambda b, e=expr: (e,))
            total = 0.0
            for p in parts:
                total += p
            out.append(float(total))
        return out

    def ratios(self, expectations: Sequence[RemoteVector]) -> list[_Ratio]:
        """X/ε per dataset (evaluated on the blocks by the products that use it)."""
        return [_Ratio(eps) for eps in expectations]

    def _products(self, r: _RemoteDataset, ratio: _Ratio):
        if ratio.products is None:
            expr = ratio.eps.expression()
            names = tuple(r.ds.keys_bkg_models())
            parts = self._call(r, "ratio_products", lambda b: (expr, names))
            back = _ordered_sum([p[0] for p in parts])
            dots = {k: 0.0 for k in names}
            for _, d in parts:
                for k, v in d.items():
                    dots[k] += v
            ratio.products = (back, dots)
        return ratio.products

    def summed_adjoint(self, data: Sequence[_Ratio | RemoteVector]) -> np.ndarray:
        """Σ_k R_kᵀ y_k (with ΔΩ), shape (n_model,); y_k = X/ε from :meth:`ratios` (or a
        :class:`RemoteVector`)."""
        total = np.zeros(self.n_model)
        for r, y in zip(self._remote, data):
            self.counter.adjoint += 1.0
            if isinstance(y, _Ratio):
                total += self._products(r, y)[0]
            elif isinstance(y, np.ndarray):
                pieces = self._spread(r, y)
                total += _ordered_sum(self._call(r, "adjoint_values",
                                                 lambda b, v=pieces: (v[b],)))
            else:
                expr = y.expression()
                total += _ordered_sum(self._call(r, "adjoint", lambda b, e=expr: (e,)))
        return total

    @staticmethod
    def _spread(r: _RemoteDataset, y: np.ndarray) -> list[np.ndarray]:
        """A data-space vector of the dataset cut into its blocks' spans."""
        y = np.asarray(y, dtype=np.float64).reshape(-1)
        ds = r.ds
        if getattr(ds, "_offset", None) is not None:  # detector frame, occupied bins
            rsp = ds.response
            if np.any(y[rsp.n_occupied:] != 0):
                raise InvalidParameterError(
                    f"dataset {ds.name!r}: a Dask fit back-projects detector-frame vectors "
                    "that are zero in the rest bins only")
            y = rsp.expand(y)
        return [y[s.span[0]:s.span[1]] for s in r.specs]

    def background_dot(self, key: str, data: Sequence[_Ratio]) -> float:
        """Σ_k Σ_i y_ki B_bki over the datasets having background ``key``."""
        total = 0.0
        for r, y in zip(self._remote, data):
            if key in r.ds.keys_bkg_models():
                total += self._products(r, y)[1][key]
        return float(total)

    @property
    def operators(self) -> list:
        """No operator is held here (the blocks hold them): an empty list."""
        return []

    def block_info(self) -> list[list[dict[str, Any]]]:
        """Per dataset and block: data bins, response bytes, stored vectors, worker."""
        out = []
        for r in self._remote:
            infos = self._call(r, "info", lambda b: ())
            out.append([dict(i, block=s.name, worker=w)
                        for i, s, w in zip(infos, r.specs, r.workers)])
        return out

    def __reduce__(self):
        # a copy elsewhere (a replicate task) works on the datasets themselves
        from ..deconvolution.joint import JointData

        return (JointData, (self.datasets,))


def _ordered_sum(parts: Sequence[np.ndarray]) -> np.ndarray:
    """Σ parts, added left to right (the reduction order that makes results independent of
    the number of workers)."""
    total = np.array(parts[0], dtype=np.float64, copy=True)
    for p in parts[1:]:
        total += p
    return total


def check_algorithm(parameter) -> None:
    """Raise :class:`InvalidParameterError` for a parameter tree whose algorithm a Dask fit does
    not run (OSEM, the line search, cross-validation stopping)."""
    name = parameter.get("deconvolution:algorithm", "RL")
    prefix = "deconvolution:parameter"
    problem = None
    if name == "OSEM":
        problem = "OSEM"
    elif (name != "RLsimple" and parameter.get(f"{prefix}:acceleration:activate", False)
          and parameter.get(f"{prefix}:acceleration:method", "max_step") == "line_search"):
        problem = f"{name} with acceleration:method line_search"
    elif parameter.get(f"{prefix}:stopping_criteria:statistics") == "cross-validation":
        problem = f"{name} with stopping_criteria:statistics cross-validation"
    if problem is not None:
        raise InvalidParameterError(f"{parameter.source}: {problem} does not run on a Dask "
                                    f"client; supported: {SUPPORTED}")
