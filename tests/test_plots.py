"""Figures: Galactic sky maps, shared and zero-centred colour scales, colour-bar ticks, the
convergence plot's labels and the bootstrap map images."""

from __future__ import annotations

import healpy as hp
import numpy as np
import pytest
from astropy import units as u
from astropy.io import fits
from astropy.table import Table
from histpy import Axis, HealpixAxis, Histogram
from matplotlib.colors import LogNorm, TwoSlopeNorm, to_rgba

from comptonsky.cli import main
from comptonsky.io.histogram import write_histogram
from comptonsky.plotting import (
    image_norm,
    plot_comparison,
    plot_convergence,
    plot_image,
    plot_profiles,
    write_uncertainty_images,
)
from comptonsky.regions import sky_profiles

NSIDE = 4
UNIT = "1/(cm2 s sr)"


def _map(values_per_band) -> Histogram:
    axes = [HealpixAxis(nside=NSIDE, label="lb", coordsys="galactic"),
            Axis([100, 500, 1000] * u.keV, label="Ei")]
    return Histogram(axes, contents=np.stack(values_per_band, axis=1), unit=UNIT)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


@pytest.fixture
def maps():
    lon, lat = hp.pix2ang(NSIDE, np.arange(hp.nside2npix(NSIDE)), lonlat=True)
    truth = np.exp(-(lat / 15.0) ** 2) * 1e-3 + 1e-7
    model = truth * np.random.default_rng(1).uniform(0.5, 1.8, truth.size)
    return _map([model, model / 2]), _map([truth, truth / 2])


def _mesh(ax):
    return ax.collections[0]


def _ticklabels(cbar_ax):
    return [t.get_text() for t in cbar_ax.get_xticklabels() if t.get_text()]


def test_sky_map_is_labelled_galactic_with_a_visible_graticule(maps):
    fig = plot_image(maps[0], title="m", sources={"GC": (0, 0)})
    ax = fig.axes[0]
    assert "Galactic" in ax.get_xlabel() and "l" in ax.get_xlabel()
    assert "Galactic" in ax.get_ylabel() and "b" in ax.get_ylabel()
    assert "Galactic" in ax.get_title() and "100–500 keV" in ax.get_title()
    lines = ax.xaxis.get_gridlines()
    assert lines and all(line.get_visible() for line in lines)
    r, g, b, _ = to_rgba(lines[0].get_color())
    assert min(r, g, b) >= 0.6          # light lines on a dark colour map
    assert [t.get_text() for t in ax.get_xticklabels()][2] == "0°"


def test_residual_scale_is_centred_on_zero(maps):
    model, truth = maps
    residual = Histogram(model.axes, contents=model.contents - truth.contents, unit=UNIT)
    fig = plot_image(residual, title="residual model − truth", symmetric=True)
    norm = _mesh(fig.axes[0]).norm
    assert isinstance(norm, TwoSlopeNorm) and norm.vcenter == 0
    assert norm.vmin == pytest.approx(-norm.vmax)
    r = np.asarray(residual.contents.value)[:, 0]
    assert norm.vmax == pytest.approx(np.abs(r).max())
    assert "model − truth" in fig.axes[0].get_title()
    assert _mesh(fig.axes[0]).get_cmap().name.startswith("RdBu")
    with pytest.raises(Exception, match="linear"):
        image_norm(r, "log", symmetric=True)


def test_comparison_shares_one_scale_and_centres_the_residual(maps):
    model, truth = maps
    fig = plot_comparison(model, truth, energy_index=1, scale="log")
    m, t, r = (_mesh(ax) for ax in fig.axes[:3])
    assert m.norm is t.norm and isinstance(m.norm, LogNorm)
    assert (m.norm.vmin, m.norm.vmax) == (t.norm.vmin, t.norm.vmax)
    both = np.concatenate([np.asarray(model.contents.value)[:, 1],
                           np.asarray(truth.contents.value)[:, 1]])
    assert m.norm.vmax == pytest.approx(both.max())
    assert isinstance(r.norm, TwoSlopeNorm) and r.norm.vmin == pytest.approx(-r.norm.vmax)
    assert "model − truth" in fig.axes[2].get_title()
    assert all("Galactic" in ax.get_xlabel() for ax in fig.axes[:3])


def test_log_colour_bar_has_decade_ticks_and_units(maps):
    fig = plot_image(maps[0], scale="log")
    cbar_ax = fig.axes[-1]
    labels = _ticklabels(cbar_ax)
    assert len(labels) >= 2
    assert all(lab.startswith("$\\mathdefault{10^{") for lab in labels), labels
    ticks = [t for t in cbar_ax.get_xticks() if cbar_ax.get_xlim()[0] <= t <= cbar_ax.get_xlim()[1]]
    assert np.allclose(np.log10(ticks), np.round(np.log10(ticks)))
    assert "cm" in cbar_ax.get_xlabel() and "sr" in cbar_ax.get_xlabel()


def test_linear_colour_bar_has_a_few_round_ticks(maps):
    fig = plot_image(maps[0])
    cbar_ax = fig.axes[-1]
    fig.canvas.draw()
    labels = _ticklabels(cbar_ax)
    assert 3 <= len(labels) <= 8, labels
    ticks = np.array([t for t in cbar_ax.get_xticks()
                      if cbar_ax.get_xlim()[0] <= t <= cbar_ax.get_xlim()[1]])
    scaled = ticks / 10.0 ** np.floor(np.log10(np.abs(ticks).max()))
    assert np.allclose(scaled * 100, np.round(scaled * 100))      # at most 3 figures
    assert all(len(lab) < 30 for lab in labels), labels
    assert cbar_ax.get_xlabel()


def _profile_errors(nside, n_energy, scale=1e-5, seed=0):
    """Bootstrap-like profiles: the std of the profiles of noisy replicate maps."""
    rng = np.random.default_rng(seed)
    samples = rng.normal(1e-3, scale, (12, hp.nside2npix(nside), n_energy))
    profiles = sky_profiles(samples, nside)
    return {name: {"centres_deg": p["centres"].tolist(), "edges_deg": p["edges"].tolist(),
                   "band_deg": p["band_deg"],
                   "std": p["values"].std(axis=0, ddof=1).T.tolist()}
            for name, p in profiles.items()}


def test_profiles_have_error_bars_from_the_bootstrap_and_the_truth(maps, tmp_path):
    model, truth = maps
    errors = _profile_errors(NSIDE, 2)
    fig = plot_profiles(model, truth, errors, energy_index=1, output=tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 1000
    lon_ax, lat_ax = fig.axes[:2]
    assert "longitude" in lon_ax.get_xlabel() and "latitude" in lat_ax.get_xlabel()
    assert "|b| < 10°" in lon_ax.get_title() and "|l| < 30°" in lat_ax.get_title()
    assert lon_ax.get_xlim()[0] > lon_ax.get_xlim()[1]  # l increases to the left
    want = sky_profiles(np.asarray(model.contents.value), NSIDE)
    for ax, name in ((lon_ax, "longitude"), (lat_ax, "latitude")):
        container = ax.containers[0]
        x, y = container.lines[0].get_data()
        np.testing.assert_allclose(y, want[name]["values"][:, 1])
        segments = container.lines[2][0].get_segments()  # the error bars
        half = np.array([abs(seg[1][1] - seg[0][1]) / 2 for seg in segments])
        np.testing.assert_allclose(half, np.asarray(errors[name]["std"])[1], rtol=1e-10)
        labels = [t.get_text() for t in ax.get_legend().get_texts()]
        assert any("bootstrap" in t for t in labels) and "truth" in labels
        truth_line = [line for line in ax.lines if line.get_label() == "truth"][0]
        np.testing.assert_allclose(truth_line.get_ydata(),
                                   sky_profiles(np.asarray(truth.contents.value), NSIDE)[name]
                                   ["values"][:, 1])
    bare = plot_profiles(model)
    assert not any(seg for seg in bare.axes[0].containers[0].lines[2])  # no error bars
    bad = {**errors, "longitude": {**errors["longitude"], "std": [[1.0, 2.0]] * 2}}
    with pytest.raises(Exception, match="error bars"):
        plot_profiles(model, errors=bad)


def test_comparison_has_a_profile_row(maps):
    model, truth = maps
    fig = plot_comparison(model, truth, profile_errors=_profile_errors(NSIDE, 2))
    profile_axes = [ax for ax in fig.axes if "profile" in ax.get_title()]
    assert len(profile_axes) == 2 and fig.axes[-2:] == profile_axes
    assert all(ax.containers for ax in profile_axes)
    assert not any("profile" in ax.get_title() for ax in plot_comparison(
        model, truth, profiles=False).axes)


def test_osem_subsets_are_not_plotted_as_an_acceleration_factor():
    results = [{"iteration": i, "accel_factor": 1.0 if i < 6 else 1.7,
                "n_subsets": [8, 8, 4, 2, 1, 1, 1][i - 1],
                "background_normalization": {"albedo": 1.0},
                "log-likelihood": [-1e4 + i]} for i in range(1, 8)]
    fig = plot_convergence(results, algorithm="OSEM")
    labels = [ax.get_ylabel() for ax in fig.axes]
    assert labels == ["log L", "subsets K", "accel. factor α", "background norm"]
    np.testing.assert_array_equal(fig.axes[1].lines[0].get_ydata(), [8, 8, 4, 2, 1, 1, 1])
    np.testing.assert_array_equal(fig.axes[2].lines[0].get_ydata(),
                                  [r["accel_factor"] for r in results])
    plain = [{**r, "accel_factor": 1.0} for r in results]  # no accelerator: no α panel
    assert [ax.get_ylabel() for ax in plot_convergence(plain, algorithm="OSEM").axes] == \
        ["log L", "subsets K", "background norm"]


@pytest.mark.parametrize("algorithm, label", [("RL", "accel. factor α"), ("OSEM", "subsets K")])
def test_convergence_labels_the_step_by_algorithm(algorithm, label):
    results = [{"iteration": i, "accel_factor": 16 / 2 ** (i // 3),
                "background_normalization": {"albedo": 1 + 0.01 * i},
                "log-likelihood": [-1e4 + i]} for i in range(1, 8)]
    fig = plot_convergence(results, algorithm=algorithm)
    assert fig.axes[1].get_ylabel() == label
    if algorithm == "OSEM":
        assert all("α" not in ax.get_ylabel() for ax in fig.axes)
    assert algorithm in fig._suptitle.get_text()
    fig.canvas.draw()
    ticks = fig.axes[-1].get_xticks()
    assert np.allclose(ticks, np.round(ticks))


def test_plot_command_names_osem_subsets(tmp_path):
    path = tmp_path / "results.fits"
    table = Table({"iteration": np.arange(1, 5), "accel_factor": [16.0, 8.0, 4.0, 1.0],
                   "log-likelihood_0": [-4.0, -3.0, -2.5, -2.4]})
    hdu = fits.table_to_hdu(table)
    hdu.name = "ITERATIONS"
    primary = fits.PrimaryHDU()
    primary.header["ALGORITH"] = "OSEM"
    fits.HDUList([primary, hdu]).writeto(path)
    import matplotlib.pyplot as plt

    assert main(["plot", str(path)]) == 0
    assert (tmp_path / "results.png").stat().st_size > 1000
    fig = plt.gcf()
    assert fig.axes[1].get_ylabel() == "subsets K"


def test_bootstrap_maps_get_images(maps, tmp_path):
    std, significance = maps[0], maps[1]
    write_histogram(std, tmp_path / "std.hdf5")
    write_histogram(Histogram(significance.axes, contents=significance.contents.value - 4e-4),
                    tmp_path / "significance.hdf5")
    written = write_uncertainty_images(tmp_path)
    assert sorted(p.name for p in written) == ["significance_E0.png", "significance_E1.png",
                                               "std_E0.png", "std_E1.png"]
    assert all(p.stat().st_size > 1000 for p in written)
    assert write_uncertainty_images(tmp_path / "nothing") == []
