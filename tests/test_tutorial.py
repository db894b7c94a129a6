"""The 511 keV Galactic tutorial's sections 2–4, as written, with only the import lines changed.

Section 1 (binning the DC2 event files) is covered by the binning tests; here the binned
histograms are produced by the toy generator and written the way the tutorial writes them.
"""

from __future__ import annotations

import os

import matplotlib
import numpy as np
import pytest

from comptonsky.testing import toy_problem

from .conftest import reference_file

pytestmark = pytest.mark.slow  # end-to-end

matplotlib.use("Agg")


@pytest.fixture
def tutorial_dir(tmp_path):
    """Files the tutorial expects: binned event/background with a Time axis, response, parfile."""
    from astropy import units as u
    from histpy import Axis, Histogram

    problem = toy_problem(nside=4, phi_bin_deg=15.0, seed=11)
    time_axis = Axis([1835487300.0, 1843467255.0] * u.s, label="Time")

    def with_time(hist):
        return Histogram([time_axis, *hist.axes], contents=hist.contents[None])

    signal = with_time(Histogram(problem.event.axes,
                                 contents=np.random.default_rng(0).poisson(
                                     problem.signal_expectation).reshape(
                                     problem.event.contents.shape).astype(float)))
    bkg = with_time(problem.background)
    signal.to_sparse().write(tmp_path / "signal_sparse.hdf5")
    bkg.to_sparse().write(tmp_path / "bkg_sparse.hdf5")
    problem.response.write(tmp_path / "psr_gal_511_DC2.h5")
    text = reference_file("imagedeconvolution_parfile_gal_511keV.yml").read_text()
    (tmp_path / "imagedeconvolution_parfile_gal_511keV.yml").write_text(
        text.replace("nside: 16", "nside: 4"))
    cwd = os.getcwd()
    os.chdir(tmp_path)
    yield tmp_path
    os.chdir(cwd)


def test_tutorial_sections_2_to_4(tutorial_dir):
    # ---- imports: the only lines changed (cosipy → comptonsky) ----
    import astropy.units as u
    import healpy as hp
    import matplotlib.pyplot as plt
    from histpy import Histogram
    from mhealpy import HealpixMap

    from comptonsky import DataIF_COSI_DC2, ImageDeconvolution

    # (section 1's outputs, binned sparse histograms, loaded and densified as in the tutorial)
    signal = Histogram.open("signal_sparse.hdf5").to_dense()
    bkg = Histogram.open("bkg_sparse.hdf5").to_dense()
    event = signal + bkg
    signal.write("511keV_dc2_galactic_signal.hdf5", overwrite=True)
    bkg.write("511keV_dc2_galactic_bkg.hdf5", overwrite=True)
    event.write("511keV_dc2_galactic_event.hdf5", overwrite=True)
    signal = Histogram.open("511keV_dc2_galactic_signal.hdf5")
    bkg = Histogram.open("511keV_dc2_galactic_bkg.hdf5")
    event = Histogram.open("511keV_dc2_galactic_event.hdf5")
    bkg.axes['Time'].edges

    # ---- 2. Load the response matrix ----
    path_data = "./"
    response_path = path_data + "psr_gal_511_DC2.h5"
    image_response = Histogram.open(response_path)
    image_response.axes.labels
    image_response.contents.shape

    # ---- 3-1. DataInterface ----
    data_interface = DataIF_COSI_DC2.load(name = "511keV",
                                          event_binned_data = event.project(['Em', 'Phi', 'PsiChi']),
                                          dict_bkg_binned_data = {"albedo": bkg.project(['Em', 'Phi', 'PsiChi'])},
                                          rsp = image_response,
                                          coordsys_conv_matrix=None)

    # ---- 3-2. ImageDeconvolution ----
    parameter_filepath = "imagedeconvolution_parfile_gal_511keV.yml"
    image_deconvolution = ImageDeconvolution()
    image_deconvolution.set_dataset([data_interface])
    image_deconvolution.read_parameterfile(parameter_filepath)

    # ---- 3-3. initialize, overrides ----
    image_deconvolution.initialize()
    image_deconvolution.override_parameter("deconvolution:parameter:iteration_max = 50")
    image_deconvolution.override_parameter("deconvolution:parameter:background_normalization_optimization:activate = True")
    image_deconvolution.override_parameter("deconvolution:parameter:acceleration:accel_factor_max = 2.0")
    image_deconvolution.override_parameter("deconvolution:parameter:smoothing:activate = False")
    #image_deconvolution.override_parameter("deconvolution:parameter:smoothing:activate = True")
    image_deconvolution.override_parameter("deconvolution:parameter:response_weighting:activate = False")

    image_deconvolution.initialize()

    # ---- 3-4. run ----
    image_deconvolution.run_deconvolution()
    image_deconvolution.results

    # ---- 4. results ----
    x, y = [], []
    for result in image_deconvolution.results:
        x.append(result['iteration'])
        y.append(result['log-likelihood'])
    plt.plot(x, y)
    plt.grid()
    plt.xlabel("iteration")
    plt.ylabel("log-likelihood")
    plt.show()

    x, y = [], []
    for result in image_deconvolution.results:
        x.append(result['iteration'])
        y.append(result['accel_factor'])
    plt.plot(x, y)
    plt.show()

    x, y = [], []
    for result in image_deconvolution.results:
        x.append(result['iteration'])
        y.append(result['background_normalization']['albedo'])
    plt.plot(x, y)
    plt.show()

    def plot_reconstructed_image(result, source_position = None): # source_position should be (l,b) in degrees
        iteration = result['iteration']
        image = result['model']

        for energy_index in range(image.axes['Ei'].nbins):
            map_healpxmap = HealpixMap(data = image[:,energy_index], unit = image.unit)

            _, ax = map_healpxmap.plot('mollview')

            _.colorbar.set_label(str(image.unit))

            if source_position is not None:
                ax.scatter(source_position[0]*u.deg, source_position[1]*u.deg, transform=ax.get_transform('world'), color = 'red')

            plt.title(label = f"iteration = {iteration}, energy_index = {energy_index} ({image.axes['Ei'].bounds[energy_index][0]}-{image.axes['Ei'].bounds[energy_index][1]})")

    iteration = 49
    plot_reconstructed_image(image_deconvolution.results[iteration])
    plot_reconstructed_image(image_deconvolution.results[iteration], source_position=(0, 0))

    iteration_idx = 49
    result = image_deconvolution.results[iteration_idx]
    iteration = result['iteration']
    image = result['model']
    data = image[:,0]
    data[data <= 0 * data.unit] = 1e-12 * data.unit
    hp.mollview(data, min = 1e-5, norm ='log', unit = str(data.unit), title = f'511 keV image at {iteration}th iteration', cmap = 'magma')
    plt.show()
    plt.close("all")

    # ---- what the run must have produced ----
    results = image_deconvolution.results
    assert len(results) == 50 and results[-1]["iteration"] == 50
    assert iteration == 50
    assert all(1.0 <= r["accel_factor"] <= 2.0 for r in results)
    assert 0.01 <= results[-1]["background_normalization"]["albedo"] <= 10.0
    assert results[-1]["log-likelihood"][0] > results[0]["log-likelihood"][0]
    assert image.axes.labels.tolist() == ["lb", "Ei"]
    assert image.unit == u.Unit("cm-2 s-1 sr-1")
