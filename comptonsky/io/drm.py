"""The COSI team's detector-response files (``FullDetectorResponse``, HDF5 group ``DRM``).

A detector response R[ν, e, (π,) m, φ, p] gives, for a photon of energy Ei = e arriving from the
spacecraft-frame direction ν (``NuLambda`` HEALPix pixel), the effective area (cm²) of detecting
it with measured energy Em = m, Compton angle Phi = φ and scattered direction PsiChi = p (a
spacecraft-frame HEALPix pixel); files with polarization carry a ``Pol`` axis π after Ei.

Two layouts exist (docs/design.md §9):

* dense: ``DRM/CONTENTS`` float array shaped like the axes (NuLambda first), gzip-chunked;
* sparse (``SPARSE`` attribute absent or true): ``DRM/BIN_NUMBERS`` and ``DRM/CONTENTS``,
  variable-length arrays, one per NuLambda pixel, holding the COO coordinates (all non-NuLambda
  axes, axis by axis) and the values of that pixel's non-zero bins. Sparse files add the axes
  ``SigmaTau`` (electron recoil direction) and ``Dist`` (first-interaction distance).

Axes are ``DRM/AXES/<label>`` datasets of edges (HEALPix axes: pixel numbers 0..npix) with
attributes ``TYPE`` ('healpix' | 'log' | 'linear'), ``NSIDE``/``SCHEME`` (HEALPix) or ``UNIT``,
and ``DESCRIPTION``, in the order NuLambda, Ei, [Pol], Em, Phi, PsiChi[, SigmaTau, Dist].

Imaging does not use SigmaTau and Dist: :class:`FullDetectorResponse` sums them out, so both
layouts of the same response give the same :attr:`~FullDetectorResponse.axes` and contents.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import astropy.units as u
import h5py
import healpy as hp
import numpy as np
from histpy import Axes, Axis, HealpixAxis, Histogram

from ..errors import FileFormatError, InvalidParameterError
from ..frames import register_spacecraft_frame
from .atomic import atomic_path
from .hdf5 import open_hdf5
from .hdf5_chunks import ChunkedDatasetReader

__all__ = ["FullDetectorResponse", "write_full_detector_response", "IMAGING_AXES",
           "SUMMED_AXES"]

logger = logging.getLogger(__name__)

#: Axis labels imaging keeps, in file order (``Pol`` only in polarization responses).
IMAGING_AXES = ("NuLambda", "Ei", "Pol", "Em", "Phi", "PsiChi")
#: Axis labels imaging sums over.
SUMMED_AXES = ("SigmaTau", "Dist")
_HEALPIX = ("NuLambda", "PsiChi", "SigmaTau")
_REQUIRED = ("NuLambda", "Ei", "Em", "Phi", "PsiChi")
_DESCRIPTION = {"NuLambda": "Location of the simulated source in the spacecraft coordinates",
                "Ei": "Initial simulated energy", "Pol": "Polarization angle",
                "Em": "Measured energy", "Phi": "Compton angle",
                "PsiChi": "Location in the Compton Data Space",
                "SigmaTau": "Electron recoil angle", "Dist": "Distance from first interaction"}
_SCHEMES = {"ring": "ring", "nested": "nested", "nest": "nested"}


def _attr(path: Path, ds, key: str, label: str):
    if key not in ds.attrs:
        raise FileFormatError(f"{path}: DRM axis {label!r} has no attribute {key!r}")
    v = ds.attrs[key]
    return v.decode() if isinstance(v, bytes) else v


def _read_axis(path: Path, label: str, ds) -> Axis:
    kind = str(_attr(path, ds, "TYPE", label)).lower()
    edges = np.asarray(ds[()])
    if kind == "healpix":
        nside = int(_attr(path, ds, "NSIDE", label))
        scheme = _SCHEMES.get(str(_attr(path, ds, "SCHEME", label)).lower())
        if scheme is None:
            raise FileFormatError(f"{path}: DRM axis {label!r} has SCHEME "
                                  f"{ds.attrs['SCHEME']!r}; expected 'ring' or 'nested'")
        if nside < 1 or nside & (nside - 1):
            raise FileFormatError(f"{path}: DRM axis {label!r} has NSIDE {nside}; expected a "
                                  "power of 2")
        npix = hp.nside2npix(nside)
        if edges.shape != (npix + 1,) or np.any(edges != np.arange(npix + 1)):
            raise FileFormatError(
                f"{path}: DRM axis {label!r} with NSIDE {nside} must hold pixel edges 0..{npix}, "
                f"found {edges.size} values")
        return HealpixAxis(nside=nside, scheme=scheme, coordsys="spacecraftframe", label=label)
    if kind not in ("log", "linear"):
        raise FileFormatError(f"{path}: DRM axis {label!r} has TYPE {kind!r}; expected "
                              "'healpix', 'log' or 'linear'")
    unit = u.Unit(str(_attr(path, ds, "UNIT", label)))
    if edges.ndim != 1 or edges.size < 2 or np.any(np.diff(edges) <= 0):
        raise FileFormatError(f"{path}: DRM axis {label!r} edges must increase, found {edges!r}")
    return Axis(edges * unit, scale=kind, label=label)


def _ordered_labels(path: Path, group) -> list[str]:
    tracked = group.id.get_create_plist().get_link_creation_order() != 0
    labels = list(group.keys())
    known = IMAGING_AXES + SUMMED_AXES
    unknown = [lab for lab in labels if lab not in known]
    if unknown:
        raise FileFormatError(f"{path}: unknown DRM axis {unknown[0]!r}; expected labels among "
                              f"{', '.join(known)}")
    missing = [lab for lab in _REQUIRED if lab not in labels]
    if missing:
        raise FileFormatError(f"{path}: DRM/AXES lacks axis {missing[0]!r} (found "
                              f"{', '.join(labels)})")
    if not tracked:  # no creation order stored: use the documented order
        labels = [lab for lab in known if lab in labels]
    if labels[0] != "NuLambda":
        raise FileFormatError(f"{path}: the first DRM axis must be 'NuLambda', found "
                              f"{labels[0]!r}")
    return labels


class FullDetectorResponse:
    """A detector-frame response file, read lazily one NuLambda pixel at a time.

    Open with :meth:`open` (also a context manager). ``fdr[pix]`` is the response of one
    spacecraft-frame source direction as a histpy ``Histogram`` on the axes Ei, [Pol], Em, Phi,
    PsiChi (unit :attr:`unit`), with SigmaTau and Dist summed out; :meth:`read_rows` reads many
    pixels at once into a plain array.

    A polarization axis ``Pol`` is kept as an axis. Imaging of unpolarised emission sums over
    it (a sky pixel's expected counts add over polarization angles); the reader never does.

    Attributes
    ----------
    filename : pathlib.Path
    is_sparse : bool
    pa_convention : str or None
        Polarization-angle convention given to :meth:`open` (kept for reference).
    """

    def __init__(self, path: Path, file: h5py.File, file_axes: Axes, unit: u.UnitBase,
                 sparse: bool, dtype, pa_convention: str | None):
        self.filename = Path(path)
        self._file = file
        self._drm = file["DRM"]
        self.file_axes = file_axes
        self.is_sparse = sparse
        self.pa_convention = pa_convention
        self._unit = unit
        keep = [i for i, lab in enumerate(file_axes.labels) if lab not in SUMMED_AXES]
        self._keep = keep
        self._summed = tuple(i - 1 for i, lab in enumerate(file_axes.labels) if lab in SUMMED_AXES)
        self._axes = Axes([file_axes[i] for i in keep])
        self._rest_shape = tuple(int(n) for n in self._axes.nbins[1:])
        self._file_rest_shape = tuple(int(n) for n in file_axes.nbins[1:])
        self.dtype = np.dtype(dtype) if dtype is not None else np.dtype(np.float64)
        self._chunked: ChunkedDatasetReader | None = None
        if sparse:
            self._bins, self._values = self._drm["BIN_NUMBERS"], self._drm["CONTENTS"]
        else:
            self._values = self._drm["CONTENTS"]
            if ChunkedDatasetReader.supports(self._values):
                self._chunked = ChunkedDatasetReader(self.filename, self._values)

    # --- opening ----------------------------------------------------------------------------
    @classmethod
    def open(cls, filename: str | os.PathLike, dtype=None,
             pa_convention: str | None = None) -> FullDetectorResponse:
        """Open a ``DRM`` HDF5 file (dense or sparse) and check its layout before any work.

        Parameters
        ----------
        filename : path-like
            The ``.h5`` file.
        dtype : numpy dtype, optional
            Dtype of the arrays returned (default float64).
        pa_convention : str, optional
            Polarization-angle convention of a polarization response ('RelativeX',
            'RelativeY' or 'RelativeZ'), kept as :attr:`pa_convention`.

        Raises
        ------
        FileFormatError
            Missing, truncated or non-HDF5 file; no ``DRM`` group; a missing attribute, axis
            or dataset; datasets whose shape does not match the axes. The message names the
            file and what is missing.
        """
        register_spacecraft_frame()
        path = Path(filename)
        if not path.exists():
            raise FileFormatError(f"{path}: no such file")
        f = open_hdf5(path)
        try:
            return cls._from_file(path, f, dtype, pa_convention)
        except Exception:
            f.close()
            raise

    @classmethod
    def _from_file(cls, path, f, dtype, pa_convention):
        if "DRM" not in f:
            raise FileFormatError(f"{path}: no 'DRM' group (found {sorted(f.keys())}); is this "
                                  "a detector-response file?")
        drm = f["DRM"]
        if "COUNTS" in drm and "CONTENTS" not in drm:
            raise FileFormatError(
                f"{path}: DRM format version {drm.attrs.get('VERSION', 2)} (COUNTS and EFF_AREA) "
                "is not supported; expected DRM/CONTENTS (version 1)")
        if "UNIT" not in drm.attrs:
            raise FileFormatError(f"{path}: DRM group has no attribute 'UNIT'")
        unit = u.Unit(drm.attrs["UNIT"].decode() if isinstance(drm.attrs["UNIT"], bytes)
                      else str(drm.attrs["UNIT"]))
        if "AXES" not in drm:
            raise FileFormatError(f"{path}: DRM group has no 'AXES' group")
        labels = _ordered_labels(path, drm["AXES"])
        file_axes = Axes([_read_axis(path, lab, drm["AXES"][lab]) for lab in labels])
        sparse = bool(drm.attrs.get("SPARSE", True))
        npix = int(file_axes["NuLambda"].nbins)
        rest = tuple(int(n) for n in file_axes.nbins[1:])
        if sparse:
            for name in ("BIN_NUMBERS", "CONTENTS"):
                if name not in drm:
                    raise FileFormatError(f"{path}: sparse DRM has no dataset {name!r}")
                if drm[name].shape != (npix,):
                    raise FileFormatError(
                        f"{path}: DRM/{name} must hold one array per NuLambda pixel ({npix}), "
                        f"found shape {drm[name].shape}")
        else:
            if "CONTENTS" not in drm:
                raise FileFormatError(f"{path}: dense DRM (SPARSE false) has no dataset "
                                      "'CONTENTS'")
            if drm["CONTENTS"].shape != (npix,) + rest:
                raise FileFormatError(
                    f"{path}: DRM/CONTENTS has shape {drm['CONTENTS'].shape}; the axes "
                    f"{', '.join(labels)} give {(npix,) + rest}")
        new = cls(path, f, file_axes, unit, sparse, dtype, pa_convention)
        logger.debug("opened %s DRM %s: axes %s", "sparse" if sparse else "dense", path,
                     ", ".join(new.axes.labels))
        return new

    # --- properties -------------------------------------------------------------------------
    @property
    def axes(self) -> Axes:
        """Imaging axes NuLambda, Ei, [Pol], Em, Phi, PsiChi (SigmaTau and Dist summed out)."""
        return self._axes

    @property
    def unit(self) -> u.UnitBase:
        """Unit of the contents (cm² for effective areas)."""
        return self._unit

    @property
    def ndim(self) -> int:
        """Number of imaging axes."""
        return self._axes.ndim

    @property
    def shape(self) -> tuple[int, ...]:
        """Number of bins of each imaging axis."""
        return (self.npix,) + self._rest_shape

    @property
    def nside(self) -> int:
        """HEALPix nside of the NuLambda axis."""
        return int(self._axes["NuLambda"].nside)

    @property
    def scheme(self) -> str:
        """HEALPix scheme of the NuLambda axis ('ring' or 'nested')."""
        return str(self._axes["NuLambda"].scheme).lower()

    @property
    def npix(self) -> int:
        """Number of NuLambda pixels."""
        return int(self._axes["NuLambda"].nbins)

    @property
    def has_polarization(self) -> bool:
        return "Pol" in self._axes.labels

    # --- reading ----------------------------------------------------------------------------
    def _check_pixel(self, pix) -> int:
        if not isinstance(pix, (int, np.integer)) or isinstance(pix, bool):
            raise InvalidParameterError(f"NuLambda pixel must be an integer, found {pix!r}")
        if not 0 <= pix < self.npix:
            raise IndexError(f"NuLambda pixel {pix} out of range 0..{self.npix - 1} "
                             f"in {self.filename}")
        return int(pix)

    def _read_sparse(self, pix: int, out: np.ndarray) -> None:
        try:
            bins = np.asarray(self._bins[pix], dtype=np.int64)
            values = np.asarray(self._values[pix])
        except OSError as exc:
            raise FileFormatError(f"{self.filename}: cannot read NuLambda pixel {pix} "
                                  f"({exc})") from exc
        ndim = len(self._file_rest_shape)
        if bins.size != ndim * values.size:
            raise FileFormatError(
                f"{self.filename}: NuLambda pixel {pix} has {bins.size} bin numbers for "
                f"{values.size} values; expected {ndim} per value")
        coords = bins.reshape(ndim, values.size)
        if values.size and (coords.min() < 0 or np.any(coords.max(axis=1)
                                                        >= np.array(self._file_rest_shape))):
            raise FileFormatError(f"{self.filename}: NuLambda pixel {pix} has bin numbers outside "
                                  f"the axes {self._file_rest_shape}")
        keep = [i for i in range(ndim) if i not in self._summed]
        flat = np.ravel_multi_index(tuple(coords[keep]), self._rest_shape)
        out.reshape(-1)[:] = np.bincount(flat, weights=values, minlength=out.size)

    @property
    def row_chunk(self) -> int:
        """NuLambda pixels per stored chunk of a dense file (1 for a sparse or unchunked one):
        read in multiples of it."""
        if self.is_sparse or self._values.chunks is None:
            return 1
        return int(self._values.chunks[0])

    def _read_dense(self, pixels: np.ndarray) -> np.ndarray:
        lo, hi = int(pixels[0]), int(pixels[-1]) + 1
        try:
            if self._chunked is not None and hi - lo <= 2 * len(pixels):
                data = self._chunked.read(lo, hi)[np.asarray(pixels) - lo]
            elif hi - lo <= 2 * len(pixels):  # nearly contiguous: one slab read
                data = self._values[lo:hi][np.asarray(pixels) - lo]
            else:
                data = self._values[np.asarray(pixels)]
        except OSError as exc:
            raise FileFormatError(f"{self.filename}: cannot read NuLambda pixels "
                                  f"{pixels[0]}..{pixels[-1]} ({exc})") from exc
        if self._summed:
            data = data.sum(axis=tuple(i + 1 for i in self._summed))
        return data

    def read_rows(self, pixels=None, dtype=None) -> np.ndarray:
        """Contents of several NuLambda pixels as one array.

        Parameters
        ----------
        pixels : array_like of int, optional
            NuLambda pixels (any order, repeats allowed); default all.
        dtype : numpy dtype, optional
            Output dtype (default :attr:`dtype`).

        Returns
        -------
        ndarray, shape (len(pixels), Ei, [Pol,] Em, Phi, PsiChi)
            In :attr:`unit`.
        """
        pixels = np.arange(self.npix) if pixels is None else np.asarray(pixels, dtype=np.int64)
        pixels = pixels.reshape(-1)
        if len(pixels) and (pixels.min() < 0 or pixels.max() >= self.npix):
            raise IndexError(f"NuLambda pixels must be in 0..{self.npix - 1} in {self.filename}")
        out = np.zeros((len(pixels),) + self._rest_shape, dtype=dtype or self.dtype)
        uniq, inverse = np.unique(pixels, return_inverse=True)
        if self.is_sparse:
            row = np.zeros(self._rest_shape)
            for k, pix in enumerate(uniq):
                self._read_sparse(int(pix), row)
                out[inverse == k] = row
        else:
            block = 64
            for s in range(0, len(uniq), block):
                sel = uniq[s: s + block]
                data = self._read_dense(sel)
                for k in range(len(sel)):
                    out[inverse == s + k] = data[k]
        return out

    def __getitem__(self, pix) -> Histogram:
        """Response of NuLambda pixel ``pix``: Histogram on Ei, [Pol], Em, Phi, PsiChi."""
        pix = self._check_pixel(pix)
        data = self.read_rows([pix])[0]
        return Histogram(Axes(list(self._axes[1:])), contents=data, unit=self._unit,
                         copy_contents=False)

    def __len__(self) -> int:
        return self.npix

    # --- Galactic responses -----------------------------------------------------------------
    def get_extended_source_response(self, orientation, coordsys="galactic", nside_image=None,
                                     nside_scatt_map=None, Earth_occ=True,  # noqa: N803
                                     **kwargs):
        """The Galactic response of every sky pixel (cosipy's name and arguments).

        Provided by :mod:`comptonsky.response.extended`, which replaces this method when it is
        imported (``comptonsky.FullDetectorResponse`` imports it); see
        :func:`comptonsky.response.extended.get_extended_source_response`.
        """
        raise InvalidParameterError(
            "get_extended_source_response needs comptonsky.response.extended: use "
            "comptonsky.FullDetectorResponse or import comptonsky.response.extended first")

    # --- lifetime ---------------------------------------------------------------------------
    def close(self) -> None:
        """Close the HDF5 file."""
        if self._chunked is not None:
            self._chunked.close()
        if self._file.id.valid:
            self._file.close()

    def __enter__(self) -> FullDetectorResponse:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        kind = "sparse" if self.is_sparse else "dense"
        dims = ", ".join(f"{lab} {n}" for lab, n in zip(self._axes.labels, self.shape))
        return f"<FullDetectorResponse {self.filename.name} ({kind}; {dims}; {self._unit})>"


def write_full_detector_response(path: str | os.PathLike, axes, contents, unit="cm2",
                                 sparse: bool = False, overwrite: bool = True,
                                 dtype=None, rows_per_block: int = 64) -> Path:
    """Write a detector response in the ``DRM`` layout cosipy reads, atomically.

    Parameters
    ----------
    path : path-like
        Output ``.h5`` file.
    axes : histpy Axes or sequence of Axis
        NuLambda first, then Ei, [Pol], Em, Phi, PsiChi and optionally SigmaTau, Dist.
        HEALPix axes must be ``HealpixAxis``; the others need units.
    contents : ndarray or callable
        Shaped like ``axes``; or a function ``contents(start, stop)`` returning the rows of the
        NuLambda pixels ``start..stop-1`` (shape ``(stop - start, *axes.nbins[1:])``), so that a
        response larger than memory is written block by block (dense layout only).
    unit : str or astropy unit
        Unit of the contents (the team's files use 'cm2').
    sparse : bool
        Write the sparse layout (per-pixel COO arrays) instead of a dense array.
    overwrite : bool
        Replace an existing file.
    dtype : numpy dtype, optional
        Dtype of the stored contents (default: that of ``contents``, float64 for a callable).
    rows_per_block : int
        NuLambda pixels asked from a callable ``contents`` at a time.

    Returns
    -------
    pathlib.Path
    """
    axes = axes if isinstance(axes, Axes) else Axes(list(axes))
    labels = list(axes.labels)
    shape = tuple(int(n) for n in axes.nbins)
    blocks = callable(contents)
    if blocks:
        if sparse:
            raise InvalidParameterError("a DRM written block by block must be dense "
                                        "(sparse=False)")
        dtype = np.dtype(dtype or np.float64)
    else:
        contents = np.asarray(contents)
        dtype = np.dtype(dtype or contents.dtype)
        if contents.shape != shape:
            raise InvalidParameterError(
                f"contents shape {contents.shape} does not match the axes {shape}")
    if labels[0] != "NuLambda" or any(lab not in labels for lab in _REQUIRED):
        raise InvalidParameterError(
            f"DRM axes must be NuLambda, Ei, [Pol], Em, Phi, PsiChi[, SigmaTau, Dist]; found "
            f"{', '.join(labels)}")
    bad = [lab for lab in labels if lab not in IMAGING_AXES + SUMMED_AXES]
    if bad:
        raise InvalidParameterError(f"unknown DRM axis {bad[0]!r}")
    path = Path(path)
    npix = int(axes["NuLambda"].nbins)
    with atomic_path(path, overwrite=overwrite) as tmp, h5py.File(tmp, "w") as f:
        drm = f.create_group("DRM")
        drm.attrs["UNIT"] = u.Unit(unit).to_string()
        drm.attrs["SPARSE"] = bool(sparse)
        group = drm.create_group("AXES", track_order=True)
        for ax in axes:
            if ax.label in _HEALPIX:
                if not isinstance(ax, HealpixAxis):
                    raise InvalidParameterError(f"DRM axis {ax.label!r} must be a HealpixAxis")
                ds = group.create_dataset(ax.label, data=np.arange(ax.nbins + 1, dtype=np.int64))
                ds.attrs["TYPE"] = "healpix"
                ds.attrs["NSIDE"] = np.int64(ax.nside)
                ds.attrs["SCHEME"] = str(ax.scheme).lower()
            else:
                if ax.unit is None:
                    raise InvalidParameterError(f"DRM axis {ax.label!r} needs a unit")
                ds = group.create_dataset(ax.label, data=np.asarray(ax.edges.value, np.float64))
                ds.attrs["TYPE"] = "log" if ax.axis_scale == "log" else "linear"
                ds.attrs["UNIT"] = ax.unit.to_string()
            ds.attrs["DESCRIPTION"] = _DESCRIPTION[ax.label]
        if sparse:
            bins = drm.create_dataset("BIN_NUMBERS", (npix,), dtype=h5py.vlen_dtype(np.int64),
                                      compression="gzip")
            vals = drm.create_dataset("CONTENTS", (npix,), dtype=h5py.vlen_dtype(np.float64),
                                      compression="gzip")
            for b in range(npix):
                nz = np.nonzero(contents[b])
                bins[b] = np.stack(nz).astype(np.int64).reshape(-1) if nz else np.zeros(0)
                vals[b] = contents[b][nz].astype(np.float64)
        else:
            rest = list(shape[1:])
            chunk = [1] + rest
            while np.prod(chunk) > (1 << 20):  # keep chunks near 8 MB of float64 or less
                k = int(np.argmax(chunk[1:])) + 1
                chunk[k] = max(1, chunk[k] // 2)
            if not blocks:
                drm.create_dataset("CONTENTS", data=contents.astype(dtype, copy=False),
                                   chunks=tuple(chunk), compression="gzip")
            else:
                ds = drm.create_dataset("CONTENTS", shape, dtype=dtype, chunks=tuple(chunk),
                                        compression="gzip")
                step = max(1, int(rows_per_block))
                for lo in range(0, npix, step):
                    hi = min(npix, lo + step)
                    block = np.asarray(contents(lo, hi))
                    if block.shape != (hi - lo,) + shape[1:]:
                        raise InvalidParameterError(
                            f"contents({lo}, {hi}) returned shape {block.shape}; expected "
                            f"{(hi - lo,) + shape[1:]}")
                    ds[lo:hi] = block.astype(dtype, copy=False)
    logger.info("wrote %s DRM %s (%s)", "sparse" if sparse else "dense", path,
                " × ".join(str(n) for n in shape))
    return path
