"""One self-contained HTML page about a run directory: maps, convergence, region fluxes,
settings, provenance and warnings.

The page has no outside references: images are PNGs embedded as base64 ``data:`` URIs, so it
can be mailed or archived alone. It reads what :func:`comptonsky.jobs.run_files` (and
``comptonsky uncertainty``) write: ``summary.json``, ``results.fits``, ``model_itr<N>.hdf5``,
``parameters.yml`` and, when present, ``std.hdf5``, ``significance.hdf5``,
``region_fluxes.json`` and ``profiles.json``; the bootstrap maps are also written as
``std_E<k>.png`` and ``significance_E<k>.png`` beside them.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .deconvolution.results import read_results_table
from .errors import FileFormatError
from .io.atomic import atomic_path
from .io.histogram import open_histogram
from .regions import REGIONS, region_fluxes

__all__ = ["write_report", "REPORT_NAME"]

logger = logging.getLogger(__name__)

#: File name of the report in a run directory.
REPORT_NAME = "report.html"

_STYLE = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:1em auto;padding:0 1em;color:#222}
h1{font-size:1.5em} h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0;max-width:100%}
td,th{border:1px solid #ccc;padding:.2em .6em;overflow-wrap:anywhere;text-align:left;
font-size:.92em} th{background:#f3f3f3} img{max-width:100%}
pre{background:#f7f7f7;padding:.6em;overflow-x:auto;font-size:.85em}
.warn{background:#fff4d6;border:1px solid #e0b000;padding:.5em 1em}
.ok{color:#2a7a2a} figure{display:inline-block;width:48%;margin:.3em;vertical-align:top}
figcaption{font-size:.85em;color:#555;text-align:center}
"""


def _png(fig) -> str:
    """The figure as an ``<img>`` with a base64 PNG (the figure is closed)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return _img(buf.getvalue())


def _img(png: bytes) -> str:
    """An ``<img>`` holding the PNG bytes ``png`` (base64 ``data:`` URI)."""
    data = base64.b64encode(png).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="">'


def _figure(img: str, caption: str) -> str:
    return f"<figure>{img}<figcaption>{html.escape(caption)}</figcaption></figure>"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_text(v))}</td>" for v in row) + "</tr>"
                   for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_text(v) for v in value)
    return str(value)


def _map_images(image, label: str, scale: str, symmetric: bool = False) -> list[str]:
    from .plotting import plot_image

    return [_figure(_png(plot_image(image, energy_index=k, scale=scale, title=label,
                                    symmetric=symmetric, sources={"GC": (0.0, 0.0)})),
                    f"{label}, band {k} ({scale})")
            for k in range(image.axes["Ei"].nbins)]


def _comparison_images(model, truth, profile_errors=None) -> list[str]:
    from .plotting import plot_comparison

    return [_figure(_png(plot_comparison(model, truth, energy_index=k, scale="log",
                                         sources={"GC": (0.0, 0.0)},
                                         profile_errors=profile_errors)),
                    f"model, truth (one colour scale), model − truth and their profiles, "
                    f"band {k}")
            for k in range(model.axes["Ei"].nbins)]


def _profiles_fit(model, errors) -> bool:
    """Whether bootstrap profiles ``errors`` have the model's bins and energy bands."""
    from .regions import sky_profiles

    try:
        centres = np.asarray(errors["longitude"]["centres_deg"], dtype=float)
        mine = sky_profiles(np.zeros((model.contents.shape[0], 1)), model.axes[0].nside,
                            bin_deg=float(centres[1] - centres[0]),
                            lat_band_deg=float(errors["longitude"]["band_deg"]),
                            lon_band_deg=float(errors["latitude"]["band_deg"]))
        return all(np.shape(errors[name]["std"]) == (model.axes["Ei"].nbins,
                                                      mine[name]["centres"].size)
                   for name in mine)
    except (KeyError, IndexError, TypeError, ValueError):
        return False


def _profile_images(model, truth, errors) -> list[str]:
    """Longitude and latitude profiles per band (bootstrap error bars when ``errors``)."""
    from .plotting import plot_profiles

    what = "±1σ from the bootstrap replicates' profiles" if errors else "no error bars"
    return [_figure(_png(plot_profiles(model, truth, errors, energy_index=k)),
                    f"longitude and latitude profiles, band {k} ({what}"
                    + (", truth as a line)" if truth is not None else ")"))
            for k in range(model.axes["Ei"].nbins)]


def _final_model(run_dir: Path, summary: Mapping[str, Any]) -> Path:
    path = run_dir / f"model_itr{summary.get('iterations')}.hdf5"
    if path.exists():
        return path
    found = sorted(run_dir.glob("model_itr*.hdf5"),
                   key=lambda p: int(p.stem.rsplit("itr", 1)[1] or 0))
    if not found:
        raise FileFormatError(f"{run_dir}: no model_itr<N>.hdf5 map (is this a run directory?)")
    return found[-1]


def _flux_section(model, truth, errors: Mapping[str, Any] | None) -> str:
    """Region fluxes per band: table and an error-bar plot (errors from the bootstrap)."""
    import matplotlib.pyplot as plt

    names = list(REGIONS)
    parts, rows = [], []
    for k in range(model.axes["Ei"].nbins):
        flux = region_fluxes(model, energy_index=k)
        true = region_fluxes(truth, energy_index=k) if truth is not None else {}
        err = {name: (errors.get(name) or {}).get("std", [None] * (k + 1))[k]
               for name in names} if errors else {}
        for name in names:
            row = [k, name, flux[name], err.get(name) if err.get(name) is not None else "—"]
            if errors:
                entry = errors.get(name) or {}
                bias = entry.get("bias", [None] * (k + 1))[k]
                interval = entry.get("interval_68", [None] * (k + 1))[k]
                row += [bias if bias is not None else "—",
                        f"[{interval[0]:.4g}, {interval[1]:.4g}]" if interval else "—"]
            if truth is not None:
                row += [true[name], flux[name] / true[name] if true[name] else "—"]
            rows.append(row)
        fig, ax = plt.subplots(figsize=(6.5, 3.2))
        x = np.arange(len(names))
        yerr = [err.get(n) or 0.0 for n in names] if err else None
        ax.errorbar(x, [flux[n] for n in names], yerr=yerr, fmt="o", capsize=4,
                    label="reconstructed" + (" (±1σ bootstrap)" if err else ""))
        if truth is not None:
            ax.plot(x, [true[n] for n in names], "s", mfc="none", color="k", label="truth")
        ax.set_xticks(x, names)
        ax.set_ylabel("flux (cm⁻² s⁻¹)")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        parts.append(_figure(_png(fig), f"region fluxes, band {k}"))
    header = ["band", "region", "flux (cm⁻² s⁻¹)", "±1σ (bootstrap)"]
    if errors:
        header += ["bias (replicate mean − flux)", "68 % interval (replicates)"]
    if truth is not None:
        header += ["truth (cm⁻² s⁻¹)", "ratio"]
    note = ("<p>Errors are the spread of the bootstrap replicates, each fitted with the same "
            "settings (iterations, prior) as the map: statistical errors of this estimator, "
            "not of its bias against the true sky.</p>" if errors else
            "<p>No error bars: run <code>comptonsky uncertainty</code> for bootstrap "
            "errors.</p>")
    return _table(header, rows) + note + "".join(parts)


def _provenance_section(prov: Mapping[str, Any]) -> str:
    if not prov:
        return "<p>No provenance recorded.</p>"
    versions = _table(["package", "version"], sorted(prov.get("versions", {}).items()))
    host = _table(["host", "value"], list(prov.get("host", {}).items()))
    inputs = []
    for role, item in prov.get("inputs", {}).items():
        if isinstance(item, Mapping):
            inputs.append([role, item["path"], item["bytes"], item["sha256"], item["method"],
                           item["seconds"]])
        else:
            inputs.append([role, item, "", "", "", ""])
    files = _table(["input", "path", "bytes", "sha256", "method", "hash time (s)"], inputs)
    command = html.escape(" ".join(prov.get("command", [])))
    return (f"<p>Created {html.escape(str(prov.get('created', '')))} by "
            f"<code>{command}</code></p>{files}{versions}{host}")


def write_report(run_dir: str | os.PathLike, truth: str | os.PathLike | None = None,
                 output: str | os.PathLike | None = None) -> Path:
    """Write one self-contained HTML page about the run in ``run_dir``.

    Parameters
    ----------
    run_dir : path-like
        A directory written by ``comptonsky deconvolve`` (or ``uncertainty``, or the demo's
        ``results/``).
    truth : path-like, optional
        A true map (histpy HDF5, axes lb, Ei): the page adds it, the residual and the true
        region fluxes.
    output : path-like, optional
        The page (default ``run_dir/report.html``).

    Returns
    -------
    pathlib.Path
        The page written.

    Raises
    ------
    FileFormatError
        If ``run_dir`` has no ``summary.json`` or no model map.
    """
    run_dir = Path(run_dir)
    summary_path = run_dir / "summary.json"
    if not summary_path.exists():
        raise FileFormatError(f"{run_dir}: no summary.json (is this a run directory?)")
    summary = json.loads(summary_path.read_text())
    model_path = _final_model(run_dir, summary)
    model = open_histogram(model_path)
    truth_map = open_histogram(truth) if truth is not None else None
    sections: list[tuple[str, str]] = []

    warnings = list(summary.get("warnings", []))
    stopping = summary.get("stopping", {})
    if stopping.get("reason") == "interrupted":
        warnings.insert(0, "the run was interrupted: these are the results of the iterations "
                           "made so far")

    norms = summary.get("background_normalization", {})
    timing = summary.get("timing_s", {})
    rows = [["algorithm", summary.get("algorithm", "")],
            ["iterations", summary.get("iterations", "")],
            ["stopping reason", stopping.get("reason", "unknown")],
            ["iteration_max", stopping.get("iteration_max", "")],
            ["log-likelihood", summary.get("log_likelihood", "")],
            *([["subsets K (last cycle)", summary["n_subsets"]]] if "n_subsets" in summary
              else []),
            ["acceleration factor α (last iteration)", summary.get("accel_factor", "")],
            ["events", summary.get("events", "")],
            *[[f"background norm {k}", v] for k, v in norms.items()],
            ["model flux per band (cm⁻² s⁻¹)", summary.get("model_flux_per_band_cm-2_s-1", "")],
            ["response", f"{summary.get('response', {}).get('storage', '')} "
                         f"{summary.get('response', {}).get('dtype', '')}"],
            *[[f"time: {k} (s)", v] for k, v in timing.items()]]
    sections.append(("Summary", _table(["quantity", "value"], rows)))

    errors = None
    fluxes_path = run_dir / "region_fluxes.json"
    if fluxes_path.exists():
        bootstrap = json.loads(fluxes_path.read_text())
        errors = bootstrap.get("region_fluxes_cm-2_s-1")
        warnings += [f"warning: {w}" for w in bootstrap.get("warnings", [])
                     if f"warning: {w}" not in warnings]
    profile_errors = None
    if (run_dir / "profiles.json").exists():
        profile_errors = json.loads((run_dir / "profiles.json").read_text()).get(
            "profiles_cm-2_s-1")
        if not _profiles_fit(model, profile_errors):
            warnings.append("profiles.json does not match the model map (other bins or "
                            "bands): profiles shown without error bars")
            profile_errors = None

    images = _map_images(model, f"model ({model_path.name})", "log")
    images += _map_images(model, "model", "linear")
    if truth_map is not None:
        t, m = truth_map.contents, model.contents
        if m.shape == t.shape:
            images += _comparison_images(model, truth_map, profile_errors)
        else:
            warnings.append(f"the truth map has shape {t.shape}, the model {m.shape}: no "
                            f"residual map")
    from .plotting import UNCERTAINTY_MAPS, write_uncertainty_images

    for path in write_uncertainty_images(run_dir, sources={"GC": (0.0, 0.0)}):
        name, band = path.stem.rsplit("_E", 1)
        images.append(_figure(_img(path.read_bytes()),
                              f"{UNCERTAINTY_MAPS[name][0]}, band {band} ({path.name})"))
    sections.append(("Maps", "".join(images)))

    fits_table = run_dir / "results.fits"
    if fits_table.exists():
        from .plotting import plot_convergence

        algorithm = summary.get("algorithm")
        step = "subsets" if str(algorithm).upper() == "OSEM" else "acceleration"
        sections.append(("Convergence", _figure(_png(plot_convergence(
            read_results_table(fits_table), algorithm=algorithm)),
            f"log-likelihood, {step}, background norms")))

    same_shape = truth_map is None or truth_map.contents.shape == model.contents.shape
    sections.append(("Profiles", "".join(_profile_images(
        model, truth_map if same_shape else None, profile_errors))))
    sections.append(("Region fluxes", _flux_section(model, truth_map, errors)))

    parfile = run_dir / "parameters.yml"
    settings = (f"<p>The effective parameter file (<code>{parfile.name}</code>): "
                f"<code>comptonsky deconvolve {parfile.name} ...</code> repeats the run.</p>"
                f"<pre>{html.escape(parfile.read_text())}</pre>"
                if parfile.exists() else "<p>No parameters.yml in the run directory.</p>")
    sections.append(("Settings", settings))
    sections.append(("Provenance", _provenance_section(summary.get("provenance", {}))))
    sections.insert(0, ("Warnings", "<div class='warn'><ul>" + "".join(
        f"<li>{html.escape(w)}</li>" for w in warnings) + "</ul></div>" if warnings
        else "<p class='ok'>No warnings.</p>"))

    title = (f"comptonsky: {summary.get('algorithm', '')}, {summary.get('iterations', '')} "
             f"iterations — {run_dir.resolve().name}")
    body = "".join(f"<h2>{html.escape(name)}</h2>{content}" for name, content in sections)
    page = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>"
            f"<body><h1>{html.escape(title)}</h1>{body}</body></html>\n")
    path = Path(output) if output is not None else run_dir / REPORT_NAME
    with atomic_path(path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    logger.info("report written to %s", path)
    return path
