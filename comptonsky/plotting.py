"""Looking at results: all-sky maps (Mollweide, Galactic l/b graticule), model/truth
comparisons, uncertainty maps and convergence curves."""

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

__all__ = ["colour_limits", "image_format", "image_norm", "plot_image", "plot_comparison",
           "plot_profiles", "plot_convergence", "write_uncertainty_images", "save_figure"]

logger = logging.getLogger(__name__)

SCALES = ("linear", "log")

#: Grid of the Mollweide rendering (longitude × latitude samples).
_GRID = (720, 360)

#: Graticule: light grey, semi-transparent: visible on dark and on white backgrounds.
_GRATICULE = {"color": "0.75", "alpha": 0.7, "linewidth": 0.6, "linestyle": ":"}


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


def colour_limits(vmin, vmax, scale: str, names: tuple[str, str] = ("vmin", "vmax"),
                  where: str = "plot_image: ") -> tuple[float | None, float | None]:
    """Checked colour limits: finite numbers, vmin < vmax, positive with a log scale.

    ``names`` and ``where`` are how the messages call the limits and their origin (the
    command line passes ``("--vmin", "--vmax")`` and ``""``).
    """
    for name, v in zip(names, (vmin, vmax)):
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float, np.number)) \
                or not np.isfinite(v):
            raise InvalidParameterError(f"{where}{name} must be a finite number, found {v!r}")
        if scale == "log" and v <= 0:
            raise InvalidParameterError(
                f"{where}{name} must be > 0 with a log colour scale, found {v!r}")
    if vmin is not None and vmax is not None and not vmin < vmax:
        raise InvalidParameterError(
            f"{where}{names[0]} ({vmin!r}) must be smaller than {names[1]} ({vmax!r})")
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


def _band_values(image: Histogram, energy_index: int) -> tuple[np.ndarray, str, str]:
    """Ring-ordered pixel values (npix,) of one band, the band's label and the map's unit."""
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
    unit = "" if image.unit is None else u.Unit(image.unit).to_string("unicode")
    band = _band_label(image, energy_index)
    finite = np.isfinite(values)
    if not finite.any():
        raise InvalidDataError(f"energy band {band}: no finite pixel to show "
                               f"({values.size} pixels, all NaN or infinite)")
    if not finite.all():
        logger.warning("energy band %s: %d of %d pixels are NaN or infinite; shown as blank",
                       band, int((~finite).sum()), values.size)
    return values, band, unit


def image_norm(values: np.ndarray | Sequence[np.ndarray], scale: str = "linear",
               vmin: float | None = None, vmax: float | None = None,
               symmetric: bool = False, band: str = ""):
    """The colour normalisation of one or several maps shown on one scale.

    Parameters
    ----------
    values : array or sequence of arrays
        Pixel values (any shape; NaN and infinities ignored).
    scale : {'linear', 'log'}
        ``'log'``: a :class:`~matplotlib.colors.LogNorm` (default ``vmin``: 1e-3 × max).
    vmin, vmax : float, optional
        Colour limits (default: the range of the finite values).
    symmetric : bool
        Centre a linear scale on zero: limits ±max(|vmin|, |vmax|) (default ±max |value|),
        a :class:`~matplotlib.colors.TwoSlopeNorm` with ``vcenter=0``, for signed maps such as
        residuals.

    Returns
    -------
    matplotlib.colors.Normalize

    Raises
    ------
    InvalidDataError
        With ``'log'`` and no positive value.
    InvalidParameterError
        With ``symmetric`` and a log scale, or limits that end up not increasing.
    """
    from matplotlib.colors import LogNorm, Normalize, TwoSlopeNorm

    if scale not in SCALES:
        raise UnknownChoiceError("colour scale", scale, SCALES)
    vmin, vmax = colour_limits(vmin, vmax, scale)
    arrays = [values] if isinstance(values, np.ndarray) else list(values)
    flat = np.concatenate([np.asarray(a, dtype=float).ravel() for a in arrays])
    flat = flat[np.isfinite(flat)]
    if flat.size == 0:
        raise InvalidDataError(f"energy band {band}: no finite pixel to show")
    if symmetric:
        if scale == "log":
            raise InvalidParameterError("plot_image: a symmetric colour scale must be linear")
        limit = max(abs(v) for v in (vmin, vmax) if v is not None) \
            if vmin is not None or vmax is not None else float(np.abs(flat).max())
        limit = limit or 1.0
        return TwoSlopeNorm(vcenter=0.0, vmin=-limit, vmax=limit)
    if scale == "log":
        positive = flat[flat > 0]
        if positive.size == 0:
            raise InvalidDataError(f"energy band {band}: no positive pixel, cannot use a log "
                                   "colour scale (use the linear scale)")
        vmax = float(positive.max()) if vmax is None else vmax
        vmin = 1e-3 * vmax if vmin is None else vmin
        if vmax <= vmin:
            raise InvalidParameterError(
                f"plot_image: vmax ({vmax!r}) must be greater than vmin ({vmin!r})")
        return LogNorm(vmin=vmin, vmax=vmax, clip=True)
    lo = float(flat.min()) if vmin is None else vmin
    hi = float(flat.max()) if vmax is None else vmax
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    return Normalize(vmin=lo, vmax=hi)


def _sky_grid(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mollweide-axes coordinates (x = −l wrapped to (−π, π], y = b, radians) and the
    ring-ordered map sampled on them."""
    n_lon, n_lat = _GRID
    x_edges = np.linspace(-np.pi, np.pi, n_lon + 1)
    y_edges = np.linspace(-np.pi / 2, np.pi / 2, n_lat + 1)
    x_c = 0.5 * (x_edges[1:] + x_edges[:-1])
    y_c = 0.5 * (y_edges[1:] + y_edges[:-1])
    lon = np.degrees(-x_c) % 360.0
    lat = np.degrees(y_c)
    nside = hp.npix2nside(values.size)
    pix = hp.ang2pix(nside, lon[None, :], lat[:, None], lonlat=True)
    return x_edges, y_edges, np.ma.masked_invalid(values[pix])


def _decorate_sky(ax, graticule: bool) -> None:
    """Galactic l/b labels, longitude ticks (l increases to the left) and the graticule."""
    import matplotlib.patheffects as pe

    ax.set_xlabel("Galactic longitude l (°)")
    ax.set_ylabel("Galactic latitude b (°)")
    xt = np.radians(np.arange(-120, 121, 60))
    ax.set_xticks(xt, [f"{int(round(-np.degrees(x))) % 360}°" for x in xt])
    ax.set_yticks(np.radians(np.arange(-60, 61, 30)),
                  [f"{b}°" for b in range(-60, 61, 30)])
    outline = [pe.withStroke(linewidth=2, foreground="black")]
    for label in ax.get_xticklabels():
        label.set_color("white")
        label.set_fontsize(8)
        label.set_path_effects(outline)
    ax.tick_params(axis="y", labelsize=8)
    ax.grid(graticule, **_GRATICULE)


def _colorbar(fig, ax, mappable, unit: str, scale: str):
    """A horizontal colour bar with a few round ticks (decades as 10ⁿ on a log scale)."""
    from matplotlib.ticker import LogFormatterMathtext, LogLocator, MaxNLocator

    cbar = fig.colorbar(mappable, ax=ax, orientation="horizontal", fraction=0.05, pad=0.1,
                        shrink=0.7)
    if scale == "log":
        cbar.locator = LogLocator(base=10, numticks=8)
        cbar.formatter = LogFormatterMathtext(base=10)
    else:
        cbar.locator = MaxNLocator(nbins=6)
        cbar.formatter.set_powerlimits((-3, 4))
        cbar.formatter.set_useMathText(True)
    cbar.update_ticks()
    cbar.set_label(unit or "(dimensionless)")
    return cbar


def plot_image(image: Histogram, energy_index: int = 0, scale: str = "linear",
               vmin: float | None = None, vmax: float | None = None,
               sources: Mapping[str, tuple[float, float]] | Sequence[tuple[float, float]] |
               None = None, title: str | None = None, cmap: str | None = None,
               graticule: bool = True, fig=None, output: str | os.PathLike | None = None,
               symmetric: bool = False, norm=None, ax=None):
    """Mollweide view, in Galactic coordinates, of one energy band of an all-sky image.

    Parameters
    ----------
    image : histpy.Histogram
        Map with axes ``('lb', 'Ei')`` (e.g. ``results[-1]['model']``).
    energy_index : int
        Energy band to show; its range goes into the title.
    scale : {'linear', 'log'}
        Colour scale. With ``'log'``, pixels ≤ 0 are shown at ``vmin`` (default: 1e-3 × max)
        and the colour bar has decade ticks labelled 10ⁿ.
    vmin, vmax : float, optional
        Colour range in the image's unit (``vmin < vmax``; both > 0 with ``'log'``). NaN or
        infinite pixels are shown blank (with a warning).
    sources : dict of name → (l, b) or sequence of (l, b), optional
        Positions in degrees to mark (and label, when named).
    title : str, optional
        Title; the energy band is appended.
    cmap : str, optional
        Matplotlib colour map (default ``'magma'``, ``'RdBu_r'`` with ``symmetric``).
    graticule : bool
        Draw the Galactic graticule (30° in latitude, 60° in longitude).
    fig : matplotlib Figure, optional
        Figure to draw into (a new one otherwise).
    output : path-like, optional
        Save the figure there (PNG, atomically).
    symmetric : bool
        A signed map (e.g. a residual): linear scale centred on zero, limits ±max |value|
        (or ±max(|vmin|, |vmax|)).
    norm : matplotlib.colors.Normalize, optional
        Colour normalisation to use as is (from :func:`image_norm`), so that several maps share
        one scale; ``vmin``, ``vmax`` and ``symmetric`` are then ignored.
    ax : matplotlib Axes, optional
        A Mollweide axes of ``fig`` to draw into.

    Returns
    -------
    matplotlib.figure.Figure
        Its first axes is the map (title, l/b labels), the last one the colour bar.

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
    values, band, unit = _band_values(image, energy_index)
    if norm is None:
        norm = image_norm(values, scale, vmin, vmax, symmetric=symmetric, band=band)
    if scale == "log":
        finite = np.isfinite(values)
        values = np.where(finite, np.maximum(values, norm.vmin), values)
    if fig is None:
        fig = plt.figure(figsize=(9, 5.5))
    if ax is None:
        ax = fig.add_subplot(projection="mollweide")
    x, y, grid = _sky_grid(values)
    colours = plt.get_cmap(cmap or ("RdBu_r" if symmetric else "magma")).with_extremes(
        bad="lightgrey")
    mesh = ax.pcolormesh(x, y, grid, norm=norm, cmap=colours, shading="flat", rasterized=True)
    _decorate_sky(ax, graticule)
    ax.set_title(f"{title} ({band}), Galactic" if title else f"{band}, Galactic")
    if sources:
        items = sources.items() if isinstance(sources, Mapping) else \
            [(None, pos) for pos in sources]
        for name, (lon, lat) in items:
            xs = -np.radians(((lon + 180.0) % 360.0) - 180.0)
            ys = np.radians(lat)
            ax.plot(xs, ys, marker="+", ms=10, mew=1.5, color="cyan", ls="none")
            if name:
                ax.text(xs, ys, f" {name}", color="cyan", fontsize=9)
    _colorbar(fig, ax, mesh, unit, scale)
    if output is not None:
        save_figure(fig, output)
    return fig


def plot_comparison(model: Histogram, truth: Histogram, energy_index: int = 0,
                    scale: str = "log", vmin: float | None = None,
                    sources: Mapping[str, tuple[float, float]] | None = None,
                    output: str | os.PathLike | None = None,
                    profile_errors: Mapping[str, Mapping[str, Any]] | None = None,
                    profiles: bool = True):
    """Model, truth (one shared colour scale) and the residual model − truth (diverging scale
    centred on zero) of one energy band, side by side; below them the longitude and latitude
    profiles of model and truth (:func:`plot_profiles`).

    Parameters
    ----------
    model, truth : histpy.Histogram
        Maps with the same axes ``('lb', 'Ei')``.
    energy_index : int
        Energy band.
    scale : {'linear', 'log'}
        Scale of the model and truth panels (the residual is linear).
    vmin : float, optional
        Lower limit of the shared scale (log default: 1e-3 × the larger maximum).
    sources : dict of name → (l, b), optional
        Positions to mark on every panel.
    output : path-like, optional
        Save the figure there.
    profile_errors : dict, optional
        Bootstrap profiles (``profiles.json``'s ``profiles_cm-2_s-1``): error bars on the
        model's profiles.
    profiles : bool
        Draw the profile row.

    Returns
    -------
    matplotlib.figure.Figure
        Axes 0, 1, 2: model, truth, residual maps; then their colour bars; then the longitude
        and latitude profiles.

    Raises
    ------
    InvalidParameterError
        If the two maps' shapes differ (or as :func:`plot_image`).
    """
    plt = _pyplot()
    m, band, _ = _band_values(model, energy_index)
    t, _, _ = _band_values(truth, energy_index)
    if m.shape != t.shape:
        raise InvalidParameterError(f"plot_comparison: the model has {m.size} pixels, the "
                                    f"truth {t.size}")
    shared = image_norm([m, t], scale, vmin, None, band=band)
    fig = plt.figure(figsize=(18, 8.6 if profiles else 4.6), layout="constrained")
    grid = fig.add_gridspec(2 if profiles else 1, 6, height_ratios=[1.15, 1] if profiles else None)
    axes = [fig.add_subplot(grid[0, 2 * k:2 * k + 2], projection="mollweide") for k in range(3)]
    residual = Histogram(model.axes, contents=np.asarray(
        getattr(model.contents, "value", model.contents)) - np.asarray(
        getattr(truth.contents, "value", truth.contents)), unit=model.unit)
    for ax, image, label in ((axes[0], model, "model"), (axes[1], truth, "truth")):
        plot_image(image, energy_index, scale, title=label, sources=sources, fig=fig, ax=ax,
                   norm=shared)
    plot_image(residual, energy_index, "linear", title="residual model − truth", fig=fig,
               ax=axes[2], sources=sources, symmetric=True)
    if profiles:
        plot_profiles(model, truth, profile_errors, energy_index, fig=fig,
                      axes=(fig.add_subplot(grid[1, 0:3]), fig.add_subplot(grid[1, 3:6])))
    if output is not None:
        save_figure(fig, output)
    return fig


_PROFILE_AXES = {"longitude": ("Galactic longitude l (°)", "|b| < {band:g}°"),
                 "latitude": ("Galactic latitude b (°)", "|l| < {band:g}°")}


def _profile_settings(errors: Mapping[str, Mapping[str, Any]] | None
                      ) -> tuple[float | None, float | None, float | None]:
    """Bin width and band half-widths of bootstrap profiles (None: the defaults)."""
    if not errors:
        return None, None, None
    centres = np.asarray(errors["longitude"]["centres_deg"], dtype=float)
    width = float(centres[1] - centres[0]) if centres.size > 1 else None
    return (width, float(errors["longitude"]["band_deg"]),
            float(errors["latitude"]["band_deg"]))


def plot_profiles(model: Histogram, truth: Histogram | None = None,
                  errors: Mapping[str, Mapping[str, Any]] | None = None,
                  energy_index: int = 0, fig=None, axes=None,
                  output: str | os.PathLike | None = None, label: str = "model"):
    """Longitude and latitude flux profiles of a map, with bootstrap error bars and a truth.

    The longitude profile sums the flux Σ λ ΔΩ of the pixels with |b| below a band (10° by
    default) in bins of l, the latitude profile that of the pixels with |l| below 30° in bins of
    b (:func:`comptonsky.regions.sky_profiles`); l increases to the left, as on the maps.

    Parameters
    ----------
    model : histpy.Histogram
        Map with axes ``('lb', 'Ei')``.
    truth : histpy.Histogram, optional
        A true map on the same axes, drawn as a line.
    errors : dict, optional
        Bootstrap profiles (``profiles.json``'s ``profiles_cm-2_s-1``, or
        ``BootstrapResult.profiles``): their bins and bands are used, and their ``std`` — the
        standard deviation of the replicates' profiles, which keeps the correlations between
        pixels — gives ±1σ error bars.
    energy_index : int
        Energy band.
    fig, axes : matplotlib Figure and a pair of Axes, optional
        Where to draw (a new figure otherwise).
    output : path-like, optional
        Save the figure there.
    label : str
        Legend label of the model.

    Returns
    -------
    matplotlib.figure.Figure
        Its first two axes (or ``axes``) are the longitude and latitude profiles.

    Raises
    ------
    InvalidParameterError
        On a map without axes ``('lb', 'Ei')``, an energy index out of range, a truth of
        another shape or error bars on other bins.
    """
    from .regions import sky_profiles

    plt = _pyplot()
    values, band, unit = _band_values(model, energy_index)
    nside = hp.npix2nside(values.size)
    width, lat_band, lon_band = _profile_settings(errors)
    mine = sky_profiles(values[:, None], nside, bin_deg=width, lat_band_deg=lat_band,
                        lon_band_deg=lon_band)
    true = None
    if truth is not None:
        t, _, _ = _band_values(truth, energy_index)
        if t.shape != values.shape:
            raise InvalidParameterError(f"plot_profiles: the model has {values.size} pixels, "
                                        f"the truth {t.size}")
        true = sky_profiles(t[:, None], nside, bin_deg=width, lat_band_deg=lat_band,
                            lon_band_deg=lon_band)
    if axes is None:
        fig, axes = plt.subplots(1, 2, figsize=(12, 4), layout="constrained")
    elif fig is None:
        fig = axes[0].figure
    flux_unit = (u.Unit(model.unit) * u.sr).to_string("unicode") if model.unit else ""
    for ax, name in zip(axes, ("longitude", "latitude")):
        profile = mine[name]
        x, y = profile["centres"], profile["values"][:, 0]
        yerr = None
        if errors:
            yerr = np.asarray(errors[name]["std"], dtype=float)[energy_index]
            if yerr.shape != y.shape:
                raise InvalidParameterError(
                    f"plot_profiles: {name} error bars have {yerr.size} bins, the profile "
                    f"{y.size}")
        ax.errorbar(x, y, yerr=yerr, fmt="o-", ms=4, capsize=3, lw=1,
                    label=label + (" ±1σ (bootstrap)" if yerr is not None else ""))
        if true is not None:
            ax.step(x, true[name]["values"][:, 0], where="mid", color="k", lw=1.2,
                    label="truth")
        xlabel, band_text = _PROFILE_AXES[name]
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"flux per {x[1] - x[0]:g}° bin ({flux_unit})" if x.size > 1 else
                      f"flux ({flux_unit})")
        ax.set_title(f"{name} profile, {band_text.format(band=profile['band_deg'])} ({band})")
        if name == "longitude":
            ax.set_xlim(x[-1] + (x[1] - x[0]) / 2, x[0] - (x[1] - x[0]) / 2)  # l to the left
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if output is not None:
        save_figure(fig, output)
    return fig


#: Images written by :func:`write_uncertainty_images`: map name → (title, symmetric scale).
UNCERTAINTY_MAPS = {"std": ("bootstrap standard deviation", False),
                    "significance": ("significance (solution / std)", True)}


def write_uncertainty_images(directory: str | os.PathLike,
                             sources: Mapping[str, tuple[float, float]] | None = None
                             ) -> list[Path]:
    """PNG images ``<name>_E<k>.png`` of the bootstrap maps ``std.hdf5`` and
    ``significance.hdf5`` found in ``directory`` (one per energy band; the significance on a
    scale centred on zero).

    Returns
    -------
    list of pathlib.Path
        The images written (none when the maps are absent).
    """
    from .io.histogram import open_histogram

    plt = _pyplot()
    directory = Path(directory)
    written = []
    for name, (title, symmetric) in UNCERTAINTY_MAPS.items():
        path = directory / f"{name}.hdf5"
        if not path.exists():
            continue
        image = open_histogram(path)
        for k in range(image.axes["Ei"].nbins):
            out = directory / f"{name}_E{k}.png"
            plt.close(plot_image(image, k, title=title, symmetric=symmetric, sources=sources,
                                 output=out))
            written.append(out)
    return written


def _step_panels(results: Sequence[Mapping[str, Any]], algorithm: str | None
                 ) -> list[tuple[str, list[float], bool]]:
    """The step panels of a convergence plot: (y label, values, integer steps).

    ``n_subsets`` (OSEM's subsets per cycle) is its own panel, ``subsets K``; the acceleration
    factor α (``accel_factor``) gets a panel unless it is 1 throughout an OSEM run. Tables written
    before ``n_subsets`` existed hold OSEM's subset count in ``accel_factor``: with
    ``algorithm="OSEM"`` and no ``n_subsets`` that column is shown as ``subsets K``.
    """
    osem = str(algorithm).upper() == "OSEM"
    alpha = [float(r["accel_factor"]) for r in results]
    if "n_subsets" in results[0]:
        panels = [("subsets K", [float(r["n_subsets"]) for r in results], True)]
        if not osem or any(a != 1.0 for a in alpha):
            panels.append(("accel. factor α", alpha, False))
        return panels
    if osem:
        return [("subsets K", alpha, True)]
    if algorithm is None:
        return [("accel_factor (α; subsets K for OSEM)", alpha, False)]
    return [("accel. factor α", alpha, False)]


def plot_convergence(results: Sequence[Mapping[str, Any]],
                     output: str | os.PathLike | None = None, algorithm: str | None = None):
    """Log-likelihood, step (acceleration factor α, OSEM's subsets K) and background norms
    against iteration.

    Parameters
    ----------
    results : list of dict
        ``ImageDeconvolution.results`` (or :func:`~comptonsky.deconvolution.results.
        read_results_table`).
    output : path-like, optional
        Save the figure there (PNG, atomically).
    algorithm : str, optional
        The algorithm that made ``results``: its name goes into the title. ``OSEM`` results get
        a ``subsets K`` panel (their ``n_subsets``) and an α panel only where the safe
        accelerator ran (α ≠ 1); the RL family gets an α panel.

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib.ticker import MaxNLocator

    plt = _pyplot()
    if not results:
        raise InvalidParameterError("plot_convergence: no results (run the deconvolution first)")
    iteration = [r["iteration"] for r in results]
    norms = results[0].get("background_normalization", {}) or {}
    steps = _step_panels(results, algorithm)
    n_panels = 1 + len(steps) + (1 if norms else 0)
    fig, axes = plt.subplots(n_panels, 1, figsize=(7, 2.4 * n_panels + 0.4), sharex=True)
    logl = np.array([np.sum(r["log-likelihood"]) for r in results])
    axes[0].plot(iteration, logl, marker=".", label="log-likelihood")
    if "log-posterior" in results[0]:
        axes[0].plot(iteration, [r["log-posterior"] for r in results], marker=".",
                     label="log-posterior")
        axes[0].legend()
    axes[0].set_ylabel("log L")
    for ax, (label, values, integer) in zip(axes[1:], steps):
        ax.plot(iteration, values, marker=".", drawstyle="steps-post" if integer else "default")
        ax.set_ylabel(label)
        if integer:
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    if norms:
        for key in norms:
            axes[-1].plot(iteration, [r["background_normalization"][key] for r in results],
                          marker=".", label=key)
        axes[-1].set_ylabel("background norm")
        axes[-1].legend()
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[-1].set_xlabel("iteration")
    fig.suptitle(f"Convergence{f' of {algorithm}' if algorithm else ''}: "
                 f"{len(results)} iterations")
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
