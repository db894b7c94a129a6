"""Looking at results: all-sky maps (Mollweide, Galactic graticule) and convergence curves."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import healpy as hp
import numpy as np
from astropy import units as u
from histpy import HealpixAxis, Histogram

from .errors import InvalidDataError, InvalidParameterError, UnknownChoiceError

__all__ = ["colour_limits", "image_format", "plot_image", "plot_convergence", "save_figure"]

logger = logging.getLogger(__name__)

SCALES = ("linear", "log")


def _pyplot():
    import matplotlib

    if os.environ.get("DISPLAY") is None and matplotlib.get_backend().lower() not in (
            "agg", "module://matplotlib_inline.backend_inline"):
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _band_label(image: Histogram, energy_index: int) -> str:
    lo, hi = image.axes["Ei"].bounds[energy_index]
    lo, hi = u.Quantity(lo), u.Quantity(hi)
    return f"{lo.value:g}–{hi.to_value(lo.unit):g} {lo.unit}"


def colour_limits(vmin, vmax, scale: str) -> tuple[float | None, float | None]:
    """Checked colour limits: finite numbers, vmin < vmax, positive with a log scale."""
    for name, v in (("vmin", vmin), ("vmax", vmax)):
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float, np.number)) \
                or not np.isfinite(v):
            raise InvalidParameterError(f"plot_image: {name} must be a finite number, found {v!r}")
        if scale == "log" and v <= 0:
            raise InvalidParameterError(
                f"plot_image: {name} must be > 0 with a log colour scale, found {v!r}")
    if vmin is not None and vmax is not None and not vmin < vmax:
        raise InvalidParameterError(
            f"plot_image: vmin ({vmin!r}) must be smaller than vmax ({vmax!r})")
    return (None if vmin is None else float(vmin)), (None if vmax is None else float(vmax))


def image_format(path: str | os.PathLike) -> str:
    """The image format a file name asks for (its suffix; ``"png"`` without one).

    Raises
    ------
    UnknownChoiceError
        If matplotlib cannot write that format (the message lists those it can).
    """
    suffix = Path(path).suffix.lower().lstrip(".")
    fmt = suffix or "png"
    from matplotlib.backend_bases import FigureCanvasBase

    supported = FigureCanvasBase.get_supported_filetypes()
    if fmt not in supported:
        raise UnknownChoiceError("image format", fmt, supported, where=str(path))
    return fmt


def plot_image(image: Histogram, energy_index: int = 0, scale: str = "linear",
               vmin: float | None = None, vmax: float | None = None,
               sources: Mapping[str, tuple[float, float]] | Sequence[tuple[float, float]] |
               None = None, title: str | None = None, cmap: str = "magma",
               graticule: bool = True, fig=None, output: str | os.PathLike | None = None):
    """Mollweide view of one energy band of an all-sky image.

    Parameters
    ----------
    image : histpy.Histogram
        Map with axes ``('lb', 'Ei')`` (e.g. ``results[-1]['model']``).
    energy_index : int
        Energy band to show; its range goes into the title.
    scale : {'linear', 'log'}
        Colour scale. With ``'log'``, pixels ≤ 0 are shown at ``vmin`` (default: 1e-3 × max).
    vmin, vmax : float, optional
        Colour range in the image's unit (``vmin < vmax``; both > 0 with ``'log'``). NaN or
        infinite pixels are shown blank (with a warning).
    sources : dict of name → (l, b) or sequence of (l, b), optional
        Positions in degrees to mark (and label, when named).
    title : str, optional
        Title; the energy band is appended.
    cmap : str
        Matplotlib colour map.
    graticule : bool
        Draw a Galactic graticule (30° in latitude, 60° in longitude).
    fig : matplotlib Figure, optional
        Figure to draw into (a new one otherwise).
    output : path-like, optional
        Save the figure there (PNG, atomically).

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    InvalidParameterError
        On colour limits that are not finite, not increasing, or not positive with ``'log'``,
        an image without axes ``('lb', 'Ei')`` or an energy index out of range.
    InvalidDataError
        If the band has no finite pixel, or no positive one with ``'log'``.
    """
    plt = _pyplot()
    if scale not in SCALES:
        raise UnknownChoiceError("colour scale", scale, SCALES)
    vmin, vmax = colour_limits(vmin, vmax, scale)
    labels = [str(lab) for lab in image.axes.labels]
    if len(labels) != 2 or labels[-1] != "Ei" or not isinstance(image.axes[0], HealpixAxis):
        raise InvalidParameterError(f"plot_image: expected an image with axes ['lb', 'Ei'] "
                                    f"(HEALPix × energy), found {labels}")
    n_energy = image.axes["Ei"].nbins
    if not 0 <= energy_index < n_energy:
        raise InvalidParameterError(f"plot_image: energy_index {energy_index} out of range "
                                    f"0..{n_energy - 1}")
    contents = image.contents
    contents = contents.todense() if hasattr(contents, "todense") else contents
    values = np.asarray(getattr(contents, "value", contents), dtype=float)
    values = values[:, energy_index].copy()
    if str(image.axes[0].scheme).lower() == "nested":
        values = hp.reorder(values, n2r=True)
    unit = str(image.unit) if image.unit is not None else ""
    band = _band_label(image, energy_index)
    finite = np.isfinite(values)
    if not finite.any():
        raise InvalidDataError(f"energy band {band}: no finite pixel to show "
                               f"({values.size} pixels, all NaN or infinite)")
    if not finite.all():
        logger.warning("energy band %s: %d of %d pixels are NaN or infinite; shown as blank",
                       band, int((~finite).sum()), values.size)
    norm = None
    if scale == "log":
        positive = values[finite & (values > 0)]
        if positive.size == 0:
            raise InvalidDataError(f"energy band {band}: no positive pixel, cannot use a log "
                                   "colour scale (use the linear scale)")
        if vmin is None:
            vmin = 1e-3 * positive.max()
        if vmax is not None and vmax <= vmin:
            raise InvalidParameterError(
                f"plot_image: vmax ({vmax!r}) must be greater than vmin ({vmin!r})")
        values = np.where(finite, np.maximum(values, vmin), values)
        norm = "log"
    values[~finite] = hp.UNSEEN
    full_title = f"{title} ({band})" if title else band
    if fig is None:
        fig = plt.figure(figsize=(9, 5.5))
    hp.mollview(values, fig=fig.number, title=full_title, unit=unit, min=vmin, max=vmax,
                norm=norm, cmap=cmap, hold=True)
    if graticule:
        hp.graticule(dpar=30, dmer=60, alpha=0.4)
    if sources:
        items = sources.items() if isinstance(sources, Mapping) else \
            [(None, pos) for pos in sources]
        for name, (lon, lat) in items:
            hp.projscatter(lon, lat, lonlat=True, marker="+", s=80, color="cyan")
            if name:
                hp.projtext(lon, lat, f" {name}", lonlat=True, color="cyan", fontsize=9)
    if output is not None:
        save_figure(fig, output)
    return fig


def plot_convergence(results: Sequence[Mapping[str, Any]],
                     output: str | os.PathLike | None = None):
    """Log-likelihood, acceleration factor and background norms against iteration.

    Parameters
    ----------
    results : list of dict
        ``ImageDeconvolution.results``.
    output : path-like, optional
        Save the figure there (PNG, atomically).

    Returns
    -------
    matplotlib.figure.Figure
    """
    plt = _pyplot()
    if not results:
        raise InvalidParameterError("plot_convergence: no results (run the deconvolution first)")
    iteration = [r["iteration"] for r in results]
    norms = results[0].get("background_normalization", {}) or {}
    n_panels = 2 + (1 if norms else 0)
    fig, axes = plt.subplots(n_panels, 1, figsize=(7, 2.4 * n_panels), sharex=True)
    logl = np.array([np.sum(r["log-likelihood"]) for r in results])
    axes[0].plot(iteration, logl, marker=".", label="log-likelihood")
    if "log-posterior" in results[0]:
        axes[0].plot(iteration, [r["log-posterior"] for r in results], marker=".",
                     label="log-posterior")
        axes[0].legend()
    axes[0].set_ylabel("log L")
    axes[1].plot(iteration, [r["accel_factor"] for r in results], marker=".")
    axes[1].set_ylabel("accel. factor α")
    if norms:
        for key in norms:
            axes[2].plot(iteration, [r["background_normalization"][key] for r in results],
                         marker=".", label=key)
        axes[2].set_ylabel("background norm")
        axes[2].legend()
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("iteration")
    fig.tight_layout()
    if output is not None:
        save_figure(fig, output)
    return fig


def save_figure(fig, path: str | os.PathLike, dpi: int = 110) -> None:
    """Save ``fig`` atomically (PNG unless the suffix says otherwise).

    Raises
    ------
    UnknownChoiceError
        On a suffix that is not an image format matplotlib writes.
    OutputError
        If ``path`` cannot be an output file or writing fails; nothing is left under ``path``.
    """
    from .io.atomic import atomic_path

    path = Path(path)
    fmt = image_format(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format=fmt)
