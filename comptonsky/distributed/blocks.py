"""A dataset split into blocks of data bins, and the actor that holds one block on a worker.

A block is a contiguous range of the data bins a fit sees: whole (Em, Phi) rows of PsiChi bins
(Phi ranges) of a Galactic-CDS dataset, a range of ScAtt or Time bins of a detector-frame one.
The split depends on the data and ``n_blocks`` only, never on the number of workers, so sums
over blocks taken in block order give the same numbers on any cluster.

Each block is described by a :class:`BlockSpec`: picklable, it carries what re-creates the block
(the slice of an in-memory matrix, the file and columns to read, or the detector response and the
attitude bins), so a block lost with its worker is built again on another one from the same
description. :class:`BlockActor` holds the built block for the whole run together with the
data-space vectors the fit keeps there (expected counts), each stored under a key;
:class:`BlockGroup`, the actor on a worker, holds its blocks of one dataset.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

from ..deconvolution.dataset import ALMOST_ZERO, DataIF_COSI_DC2, DetectorFrameDataset
from ..errors import InvalidParameterError
from ..response.dense import DenseResponse
from ..response.detector_frame import DetectorFrameResponse, OccupiedBinsResponse
from ..response.linear import LinearOperator
from ..response.operator import ResponseOperator

__all__ = ["BlockSpec", "Block", "BlockActor", "BlockGroup", "split_dataset", "default_n_blocks",
           "BLOCK_TARGET_BYTES", "evaluate_expression"]

logger = logging.getLogger(__name__)

#: Response bytes per block aimed at when ``n_blocks`` is not given.
BLOCK_TARGET_BYTES = 256 * 2 ** 20


# --- operators of one block ------------------------------------------------------------------
class DenseColumns(LinearOperator):
    """Columns c0:c1 of a dense (n_model, n_data) response, ΔΩ folded in (as
    :class:`~comptonsky.response.dense.DenseResponse` computes its products)."""

    storage = "dense"

    def __init__(self, matrix: np.ndarray, pixel_solid_angle: np.ndarray):
        matrix = np.ascontiguousarray(matrix)
        super().__init__((matrix.shape[0],), (matrix.shape[1],), matrix.dtype)
        self.matrix = matrix
        self.pixel_solid_angle = np.asarray(pixel_solid_angle, dtype=np.float64)

    def _forward(self, x):
        v = (x * self.pixel_solid_angle).astype(self.dtype, copy=False)
        return np.asarray(v @ self.matrix, dtype=np.float64)

    def _adjoint(self, y):
        return np.asarray(self.matrix @ y.astype(self.dtype, copy=False),
                          dtype=np.float64) * self.pixel_solid_angle

    def forward_partial(self, indices, values):
        rows = np.asarray(indices, dtype=np.int64)
        coef = np.asarray(values, dtype=np.float64) * self.pixel_solid_angle[rows]
        return coef @ self.matrix[rows].astype(np.float64)

    def _compute_exposure(self):
        return self.matrix.sum(axis=1, dtype=np.float64) * self.pixel_solid_angle

    @property
    def nbytes(self) -> int:
        return int(self.matrix.nbytes)


def detector_frame_parts(parent: DetectorFrameResponse, s0: int, s1: int) -> dict[str, Any]:
    """What :func:`detector_frame_slice` needs of ``parent`` for its attitude bins s0:s1: the
    detector response R (shared), the conversion matrix rows of those bins, the model axes."""
    return {"columns": parent.columns,
            "conversion": parent.conversion[s0 * parent.n_nu:s1 * parent.n_nu],
            "n_bins": int(s1 - s0), "n_sky": parent.n_sky, "n_nu": parent.n_nu,
            "n_e": parent.n_e, "n_columns": parent.n_columns,
            "model_axes": parent.model_axes, "solid": parent.pixel_solid_angle,
            "unit": parent.unit, "data_shape": tuple(parent.data_shape[1:]),
            "info": dict(parent.info, attitude_bins=(int(s0), int(s1)))}


def detector_frame_slice(parts: dict[str, Any]) -> DetectorFrameResponse:
    """A :class:`DetectorFrameResponse` on some attitude bins from
    :func:`detector_frame_parts` (R not copied)."""
    sub = object.__new__(DetectorFrameResponse)
    n_bins = parts["n_bins"]
    ResponseOperator.__init__(sub, parts["model_axes"], None, parts["solid"], parts["unit"],
                              dtype=parts["columns"].dtype,
                              data_shape=(n_bins,) + parts["data_shape"])
    sub.n_bins, sub.n_sky, sub.n_nu, sub.n_e = n_bins, parts["n_sky"], parts["n_nu"], \
        parts["n_e"]
    sub.n_columns = parts["n_columns"]
    sub.columns = parts["columns"]
    sub.conversion = parts["conversion"]
    sub.conversion_t = sub.conversion.T.tocsr()
    coo = sub.conversion.tocoo()                      # Σ_s C over the block's bins, (j, ν)
    sub.summed_conversion_t = sp.csr_matrix((coo.data, (coo.col, coo.row % sub.n_nu)),
                                            shape=(sub.n_sky, sub.n_nu))
    sub.info = parts["info"]
    return sub


# --- what a block is made of -----------------------------------------------------------------
@dataclass
class Block:
    """One block as held on a worker.

    Attributes
    ----------
    op : LinearOperator
        The response on the block's data bins (n_model → n_b).
    counts : ndarray, shape (n_b,)
    backgrounds : dict of str → ndarray, shape (n_b,)
    offset : ndarray, shape (n_b,), optional
        Added to ε after the backgrounds (a detector-frame rest bin's 1e-12 per empty bin).
    nonzero_log : bool
        log L takes log ε only where X > 0 (detector frame) instead of everywhere.
    """

    op: LinearOperator
    counts: np.ndarray
    backgrounds: dict[str, np.ndarray]
    offset: np.ndarray | None = None
    nonzero_log: bool = False


@dataclass
class BlockSpec:
    """Everything that builds one block, anywhere (picklable).

    Attributes
    ----------
    dataset : str
        Name of the dataset the block belongs to.
    index, n_blocks : int
        Block k of that dataset's n blocks.
    label : str
        The data bins the block covers, e.g. ``"Phi rows 0:15"`` or ``"ScAtt 0:120"``.
    kind : str
        ``columns`` (a dense matrix's columns, given), ``file`` (read from a histpy HDF5
        response), ``detector`` (detector-frame attitude bins).
    payload : dict
        The kind's inputs (matrix slice, path and columns, detector response and bins, ...).
    counts, backgrounds, offset, nonzero_log
        As in :class:`Block` (for ``detector`` blocks: full-space values of the bins, restricted
        to the occupied bins when the block is built).
    """

    dataset: str
    index: int
    n_blocks: int
    label: str
    kind: str
    payload: dict[str, Any]
    counts: np.ndarray
    backgrounds: dict[str, np.ndarray] = field(default_factory=dict)
    offset: np.ndarray | None = None
    nonzero_log: bool = False
    #: the block's data bins start:stop in the dataset's data space (detector frame: the full
    #: space over every attitude bin)
    span: tuple[int, int] = (0, 0)

    @property
    def name(self) -> str:
        """``dataset[k/n] (label)``: how messages name the block."""
        return f"{self.dataset}[{self.index}/{self.n_blocks}] ({self.label})"

    def build(self) -> Block:
        """The block (reads or slices its response)."""
        p = self.payload
        if self.kind == "columns":
            op = DenseColumns(p["matrix"], p["solid"])
        elif self.kind == "file":
            op = DenseColumns(_read_columns(p["path"], p["c0"], p["c1"], p["dtype"]), p["solid"])
        elif self.kind == "detector":
            sub = detector_frame_slice(p["parts"])
            if p["occupied"]:
                occ = OccupiedBinsResponse(sub, self.counts > 0)
                offset = np.zeros(occ.n_data)
                offset[occ.n_occupied:] = (occ.rest_sizes - 1) * ALMOST_ZERO
                return Block(occ, occ.restrict(self.counts),
                             {k: occ.restrict(v) for k, v in self.backgrounds.items()},
                             offset, True)
            return Block(sub, self.counts, dict(self.backgrounds), None, True)
        else:  # pragma: no cover - specs are made by split_dataset
            raise InvalidParameterError(f"block {self.name}: unknown kind {self.kind!r}")
        return Block(op, self.counts, dict(self.backgrounds), self.offset, self.nonzero_log)


def _read_columns(path, c0: int, c1: int, dtype) -> np.ndarray:
    """Columns c0:c1 (whole (Em, Phi) rows of PsiChi bins) of the (n_model, n_data) matrix of
    a dense histpy HDF5 response, read as hyperslabs."""
    from ..response.source import open_source

    with open_source(path) as src:
        n_psi = src.n_data // int(np.prod(src.data_axes.nbins[:-1]))
        n_phi = int(src.data_axes.nbins[1])
        r0, r1 = c0 // n_psi, c1 // n_psi
        out = np.empty((src.n_model, c1 - c0), dtype=np.dtype(dtype))
        view = out.reshape(src.model_axes.nbins[0], src.model_axes.nbins[1], r1 - r0, n_psi)
        sel = src.sel_template
        pos = 0
        for em in range(r0 // n_phi, (r1 - 1) // n_phi + 1):
            a = max(r0, em * n_phi) - em * n_phi
            b = min(r1, (em + 1) * n_phi) - em * n_phi
            chunk = src.ds[sel[0], sel[1], sel[2].start + em, slice(sel[3].start + a,
                                                                    sel[3].start + b), sel[4]]
            view[:, :, pos:pos + b - a, :] = chunk
            pos += b - a
        return out


# --- splitting a dataset ---------------------------------------------------------------------
def default_n_blocks(nbytes: int, n_units: int) -> int:
    """Blocks of about :data:`BLOCK_TARGET_BYTES` of response, at least 1, at most n_units."""
    return int(min(max(1, -(-int(nbytes) // BLOCK_TARGET_BYTES)), max(1, n_units)))


def _ranges(n_units: int, n_blocks: int) -> list[tuple[int, int]]:
    edges = np.linspace(0, n_units, n_blocks + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]


def split_dataset(ds: DataIF_COSI_DC2, n_blocks: int | None = None) -> list[BlockSpec]:
    """The blocks of ``ds``: contiguous (Em, Phi) rows of a Galactic-CDS dataset, attitude bins
    of a detector-frame one.

    Parameters
    ----------
    ds : DataIF_COSI_DC2 or DetectorFrameDataset
    n_blocks : int, optional
        Number of blocks (default: about 256 MiB of response each). Capped at the number of
        rows or attitude bins.

    Raises
    ------
    InvalidParameterError
        For a response held in a way that cannot be cut into blocks (sparse, out of core, on a
        GPU), or n_blocks < 1.
    """
    if n_blocks is not None and int(n_blocks) < 1:
        raise InvalidParameterError(f"n_blocks: expected at least 1, found {n_blocks}")
    if isinstance(ds, DetectorFrameDataset):
        return _split_detector(ds, n_blocks)
    names = ds.keys_bkg_models()
    pending = ds._pending
    opts = ds.response_options
    from_file = (pending is not None and not pending.loaded and not hasattr(pending.source, "axes")
                 and (opts.storage in ("auto", "dense", None)) and opts.device in (None, "cpu"))
    if from_file:
        from ..response.source import HDF5Source, open_source

        with open_source(pending.source) as src:
            if not isinstance(src, HDF5Source):
                from_file = False
            else:
                dtype = np.dtype(opts.dtype) if opts.dtype is not None else src.file_dtype
                solid = src.operator_args[2]
                data_shape = tuple(int(n) for n in src.data_axes.nbins)
                nbytes = src.n_model * src.n_data * dtype.itemsize
    if not from_file:
        op = ds.response
        matrix = getattr(op, "matrix", None)
        if type(op) is not DenseResponse or not isinstance(matrix, np.ndarray):
            raise InvalidParameterError(
                f"dataset {ds.name!r}: a response held as {op.storage!r} ({type(op).__name__}) "
                "cannot be cut into blocks for a Dask fit; load it dense (storage: dense)")
        solid, data_shape, nbytes = op.pixel_solid_angle, tuple(op.data_shape), op.nbytes
    n_em, n_phi, n_psi = data_shape
    n_rows = n_em * n_phi
    n = int(n_blocks) if n_blocks is not None else default_n_blocks(nbytes, n_rows)
    n = min(n, n_rows)
    specs = []
    for k, (r0, r1) in enumerate(_ranges(n_rows, n)):
        c0, c1 = r0 * n_psi, r1 * n_psi
        label = (f"Phi {r0}:{r1}" if n_em == 1 else f"(Em, Phi) rows {r0}:{r1}")
        if from_file:
            payload = {"path": str(pending.source), "c0": c0, "c1": c1, "dtype": dtype.name,
                       "solid": solid}
            kind = "file"
        else:
            payload = {"matrix": matrix[:, c0:c1], "solid": solid}
            kind = "columns"
        specs.append(BlockSpec(ds.name, k, n, label, kind, payload, ds.counts[c0:c1],
                               {key: ds.background(key)[c0:c1] for key in names},
                               span=(c0, c1)))
    return specs


def _split_detector(ds: DetectorFrameDataset, n_blocks: int | None) -> list[BlockSpec]:
    full = ds.full_response
    n_bins = full.n_bins
    n = int(n_blocks) if n_blocks is not None else default_n_blocks(full.nbytes, n_bins)
    n = min(n, n_bins)
    occupied = ds._offset is not None
    label0 = str(full.data_axes.labels[0]) if full.data_axes is not None else "bins"
    cols = full.n_columns
    specs = []
    for k, (s0, s1) in enumerate(_ranges(n_bins, n)):
        sl = slice(s0 * cols, s1 * cols)
        specs.append(BlockSpec(ds.name, k, n, f"{label0} {s0}:{s1}", "detector",
                               {"parts": detector_frame_parts(full, s0, s1),
                                "occupied": occupied},
                               ds._full_counts[sl],
                               {key: v[sl] for key, v in ds._full_bkg.items()},
                               nonzero_log=True, span=(sl.start, sl.stop)))
    return specs


# --- evaluation on a block -------------------------------------------------------------------
def evaluate_expression(block: Block, store: dict[int, np.ndarray], expr) -> np.ndarray:
    """ε of an expression ``(terms, const, bkg, offset)`` on ``block``: Σ coef · stored[key]
    + const + Σ_b n_b B_b + offset · (the block's offset), a new array."""
    terms, const, bkg, offset = expr
    out = np.full(block.counts.shape, float(const))
    for coef, key in terms:
        out += coef * store[key] if coef != 1.0 else store[key]
    for name, norm in bkg:
        out += block.backgrounds[name] * norm
    if offset and block.offset is not None:
        out += offset * block.offset
    return out


class BlockActor:
    """One block on a worker (a Dask actor), with the data-space vectors the fit keeps there.

    Every method takes and returns small things: maps (n_model,), keys, floats. Vectors are
    stored by integer key; ``release`` drops them.
    """

    def __init__(self, spec: BlockSpec):
        self.spec = spec
        self.block = spec.build()
        self.store: dict[int, np.ndarray] = {}
        logger.debug("block %s built: %d data bins, %.1f MB", spec.name, self.block.counts.size,
                     self.block.op.nbytes / 1e6)

    def info(self) -> dict[str, Any]:
        """Size of the block: data bins, response bytes, stored vectors."""
        return {"n_data": int(self.block.counts.size), "nbytes": int(self.block.op.nbytes),
                "stored": len(self.store)}

    def release(self, keys) -> None:
        for key in keys:
            self.store.pop(key, None)

    def forward(self, key: int, x: np.ndarray, release=()) -> int:
        """Store R_b x under ``key`` (no offset)."""
        self.release(release)
        self.store[key] = self.block.op.forward(x)
        return key

    def reuse(self, key: int, key0: int, key1: int, alpha: float, rows: np.ndarray,
              resid: np.ndarray, release=()) -> int:
        """Store y0 + α (y1 − y0) + R_J d_J (a product rebuilt from two earlier ones)."""
        self.release(release)
        y0, y1 = self.store[key0], self.store[key1]
        y = y0 + alpha * (y1 - y0)
        if len(rows):
            y += self.block.op.forward_partial(rows, resid)
        self.store[key] = y
        return key

    def combine(self, key: int, terms, release=()) -> int:
        """Store Σ coef · stored[k] (an expression made concrete)."""
        self.release(release)
        out = np.zeros(self.block.counts.shape)
        for coef, k in terms:
            out += coef * self.store[k]
        self.store[key] = out
        return key

    def log_likelihood(self, expr) -> float:
        """Σ X log ε − Σ ε on the block."""
        eps = evaluate_expression(self.block, self.store, expr)
        x = self.block.counts
        if self.block.nonzero_log:
            nz = x > 0
            return float(np.dot(x[nz], np.log(eps[nz])) - eps.sum())
        return float(np.dot(x, np.log(eps)) - eps.sum())

    def ratio_products(self, expr, names) -> tuple[np.ndarray, dict[str, float]]:
        """R_bᵀ (X/ε) (n_model,) and Σ (X/ε) B for each background in ``names``."""
        eps = evaluate_expression(self.block, self.store, expr)
        r = self.block.counts / eps
        dots = {k: float(np.dot(r, self.block.backgrounds[k])) for k in names
                if k in self.block.backgrounds}
        return self.block.op.adjoint(r), dots

    def adjoint(self, expr) -> np.ndarray:
        """R_bᵀ y for y the expression's value (no division)."""
        return self.block.op.adjoint(evaluate_expression(self.block, self.store, expr))

    def adjoint_values(self, values: np.ndarray) -> np.ndarray:
        """R_bᵀ y for y given on the block's span of the data (detector frame: the full space
        of its attitude bins, restricted here)."""
        op = self.block.op
        y = op.restrict(values) if isinstance(op, OccupiedBinsResponse) else values
        return op.adjoint(y)

    def exposure(self) -> np.ndarray:
        """R_bᵀ 1 (n_model,)."""
        return np.asarray(self.block.op.exposure, dtype=np.float64)


class BlockGroup:
    """The blocks of one dataset held by one worker (a Dask actor): one message per worker and
    step instead of one per block. Each block computes alone; the client sums the results in
    block order."""

    def __init__(self, specs: list[BlockSpec]):
        self.members = [BlockActor(spec) for spec in specs]

    def call(self, method: str, per_block_args) -> list:
        """``method(*args)`` on each member with its own ``args``; a member that raises gives
        ``("error", block name, message)`` in its place."""
        out = []
        for member, args in zip(self.members, per_block_args):
            try:
                out.append(getattr(member, method)(*args))
            except Exception as exc:  # noqa: BLE001 - sent back named
                out.append(_BlockFailure(member.spec.name, f"{type(exc).__name__}: {exc}"))
        return out


@dataclass
class _BlockFailure:
    block: str
    message: str
