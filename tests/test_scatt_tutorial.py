"""The two 511 keV ScAtt tutorials (data reduction, then image deconvolution), as written, with
only the import lines changed, on small simulated files.

The inputs stand in for the DC2 files the tutorials download: a one-day DC2 orbit at the
20 s cadence (DC2's is 1 s), the simulator's 511 keV thin-disk and albedo events
(with their pointing columns), and the simulator's spacecraft-frame response written in the COSI
team's dense ``FullDetectorResponse`` layout, at nside 4 and 15° Compton-angle bins. The
tutorials' YAML files are the reference copies with nside, Compton-angle bin and time range set to
these files. The cells that download the DC2 files from wasabi are left out (the files are here).
Past ``run_deconvolution`` the result cells are those of the Galactic tutorial (the plots), then
this notebook's last cell (the final map).
"""

from __future__ import annotations

import os
from dataclasses import replace

import matplotlib
import numpy as np
import pytest

from .conftest import reference_file

pytestmark = pytest.mark.slow  # end-to-end (the detector response alone takes ~10 s)

matplotlib.use("Agg")

NSIDE = 4
PHI_DEG = 15.0
DURATION_S = 86400.0
RESPONSE = "SMEXv12.511keV.HEALPixO4.binnedimaging.imagingresponse.nonsparse_nside16.area.h5"
ORI = "20280301_3_month_with_orbital_info.ori"
SIGNAL = "511_thin_disk_3months_unbinned_data.fits.gz"
ALBEDO = "albedo_photons_3months_unbinned_data.fits.gz"


@pytest.fixture
def tutorial_dir(tmp_path):
    """The files both notebooks read, made by the simulator, under the tutorials' names."""
    import astropy.units as u
    from histpy import Axes, Axis, HealpixAxis

    from comptonsky.binning import phi_bin_edges
    from comptonsky.io.drm import write_full_detector_response
    from comptonsky.io.events import write_events
    from comptonsky.io.orientation import write_ori
    from comptonsky.simulate import (
        HealpixMapSource,
        SkyModel,
        attitude_history,
        get_preset,
        simulate_background_events,
        simulate_sky_events,
    )

    pre = get_preset("dc2-511-thin-disk")
    orbit = pre.orbit.with_duration(DURATION_S)
    inst = pre.instrument()
    em = np.asarray(pre.energy_window_kev, dtype=float)
    phi = phi_bin_edges(PHI_DEG)
    det = inst.detector_response(NSIDE, NSIDE, phi, em)
    axes = Axes([HealpixAxis(nside=NSIDE, coordsys="spacecraftframe", label="NuLambda"),
                 Axis(em * u.keV, scale="log", label="Ei"),
                 Axis(em * u.keV, scale="log", label="Em"),
                 Axis(phi * u.deg, label="Phi"),
                 HealpixAxis(nside=NSIDE, coordsys="spacecraftframe", label="PsiChi")])
    write_full_detector_response(tmp_path / RESPONSE, axes,
                                 det.to_dense().reshape(tuple(axes.nbins)))
    write_ori(tmp_path / ORI, attitude_history(orbit, 20.0))
    rng = np.random.default_rng(7)
    lam = pre.sky().intensity_map(NSIDE)
    src = simulate_sky_events(SkyModel([HealpixMapSource(lam, name="thin disk")]), inst, orbit,
                              rng, progress=False)
    write_events(tmp_path / SIGNAL, src)
    albedo = pre.backgrounds()[0]
    albedo = replace(albedo, intensity=albedo.intensity * 40.0)  # a background worth fitting
    write_events(tmp_path / ALBEDO, simulate_background_events(albedo, inst, orbit, rng,
                                                               progress=False))
    inputs = reference_file("inputs_511keV.yaml").read_text()
    inputs = (inputs.replace("nside: 16", f"nside: {NSIDE}")
              .replace("phi_pix_size: 3 ", f"phi_pix_size: {PHI_DEG:g} ")
              .replace("tmin: 1835487300.0", f"tmin: {orbit.tmin!r}")
              .replace("tmax: 1843467255.0", f"tmax: {orbit.tmin + DURATION_S!r}"))
    assert f"nside: {NSIDE}" in inputs and f"phi_pix_size: {PHI_DEG:g}" in inputs
    (tmp_path / "inputs_511keV.yaml").write_text(inputs)
    parfile = reference_file("imagedeconvolution_parfile_scatt_511keV.yml").read_text()
    (tmp_path / "imagedeconvolution_parfile_scatt_511keV.yml").write_text(
        parfile.replace("nside: 16", f"nside: {NSIDE}"))
    cwd = os.getcwd()
    os.chdir(tmp_path)
    yield tmp_path
    os.chdir(cwd)


def test_scatt_tutorials(tutorial_dir):
    data_reduction()
    image_deconvolution = deconvolution()
    # ---- what the two notebooks must have produced ----
    import astropy.units as u

    results = image_deconvolution.results
    assert len(results) == 30 and results[-1]["iteration"] == 30
    assert all(1.0 <= float(r["alpha"]) <= 10.0 for r in results)
    assert 0.01 <= results[-1]["background_normalization"]["albedo"] <= 10.0
    assert results[-1]["log-likelihood"][0] > results[0]["log-likelihood"][0]
    image = results[-1]["model"]
    assert image.axes.labels.tolist() == ["lb", "Ei"]
    assert image.unit == u.Unit("cm-2 s-1 sr-1")
    assert np.all(np.isfinite(image.contents.value)) and image.contents.value.max() > 0


def data_reduction():
    """511keV-ScAtt-DataReduction.ipynb."""
    # ---- imports: the only lines changed (cosipy, scoords → comptonsky; threeML dropped) ----
    from histpy import Histogram, HealpixAxis, Axis, Axes  # noqa: F401
    from mhealpy import HealpixMap  # noqa: F401
    from astropy.coordinates import SkyCoord, cartesian_to_spherical, Galactic  # noqa: F401

    from comptonsky import FullDetectorResponse
    from comptonsky import SpacecraftFile
    from comptonsky import UnBinnedData, BinnedData  # noqa: F401
    from comptonsky import SpacecraftAttitudeExposureTable, CoordsysConversionMatrix
    from comptonsky import fetch_wasabi_file  # noqa: F401

    # cosipy uses astropy units
    import astropy.units as u
    from astropy.units import Quantity  # noqa: F401
    from astropy.time import Time  # noqa: F401
    from astropy.table import Table  # noqa: F401
    from astropy.io import fits  # noqa: F401
    from comptonsky import SpacecraftFrame

    #Other standard libraries
    import numpy as np
    import matplotlib.pyplot as plt
    import os  # noqa: F401

    import healpy as hp
    from tqdm.autonotebook import tqdm  # noqa: F401

    # ---- 0. Prepare the data (the wasabi downloads are skipped: the files are here) ----
    path_data = "./"

    ori_filepath = path_data + ORI
    ori = SpacecraftFile.parse_from_file(ori_filepath)

    full_detector_response_filename = path_data + RESPONSE
    full_detector_response = FullDetectorResponse.open(full_detector_response_filename)

    nside_local = full_detector_response.nside
    npix_local = hp.nside2npix(nside_local)

    nside_local, npix_local

    full_detector_response

    # ---- 1. analyze the orientation file ----
    nside_scatt = nside_local

    exposure_table = SpacecraftAttitudeExposureTable.from_orientation(ori, nside = nside_scatt, start = None, stop = None)
    exposure_table

    exposure_table.save_as_fits("exposure_table_dc2.fits", overwrite = True)

    exposure_table_from_fits = SpacecraftAttitudeExposureTable.from_fits("exposure_table_dc2.fits")
    assert exposure_table == exposure_table_from_fits

    (np.sum(exposure_table['exposure']) * u.s).to("day")

    map_pointing_zx = exposure_table.calc_pointing_trajectory_map()
    map_pointing_zx = map_pointing_zx.to_dense()

    hp.mollview(map_pointing_zx.project('z').contents, rot=(0,0), unit = u.s, title = "Exposure map projected in the Z-axis pointing")
    hp.graticule(color='gray', dpar = 30)
    plt.show()

    hp.mollview(map_pointing_zx.project('x').contents, rot=(0,0), unit = u.s, title = "Exposure map projected in the X-axis pointing")
    hp.graticule(color='gray', dpar = 30)
    plt.show()

    hp.mollview(map_pointing_zx.project('x').contents, rot=(0,90), unit = u.s, title = "Exposure map projected in the X-axis pointing")
    hp.graticule(color='gray', dpar = 30)
    plt.show()

    # ---- 2. Calculate the coordinate conversion matrix ----
    nside_model = nside_local

    coordsys_conv_matrix = CoordsysConversionMatrix.spacecraft_attitude_binning_ccm(full_detector_response, exposure_table, nside_model = nside_model, use_averaged_pointing = True)

    coordsys_conv_matrix.write("ccm_dc2.hdf5", overwrite = True)

    coordsys_conv_matrix = CoordsysConversionMatrix.open("ccm_dc2.hdf5")

    # ---- 3. produce the binned data (the notebook's own helper) ----
    def get_binned_data_scatt(unbinned_event, exposure_table, psichi_binning = 'local', sparse = False):
        exposure_dict = {row['healpix_index']: row['scatt_binning_index'] for _, row in exposure_table.iterrows()}

        # from BinnedData.py

        # Get energy bins:
        energy_bin_edges = np.array(unbinned_event.energy_bins)

        # Get phi bins:
        number_phi_bins = int(180./unbinned_event.phi_pix_size)
        phi_bin_edges = np.linspace(0,180,number_phi_bins+1)

        # Define psichi axis and data for binning:
        if psichi_binning == 'galactic':
            psichi_axis = HealpixAxis(nside = unbinned_event.nside, scheme = unbinned_event.scheme, coordsys = 'galactic', label='PsiChi')
            coords = SkyCoord(l=unbinned_event.cosi_dataset['Chi galactic']*u.deg, b=unbinned_event.cosi_dataset['Psi galactic']*u.deg, frame = 'galactic')
        if psichi_binning == 'local':
            psichi_axis = HealpixAxis(nside = unbinned_event.nside, scheme = unbinned_event.scheme, coordsys = SpacecraftFrame(), label='PsiChi')
            coords = SkyCoord(lon=unbinned_event.cosi_dataset['Chi local']*u.rad, lat=((np.pi/2.0) - unbinned_event.cosi_dataset['Psi local'])*u.rad, frame = SpacecraftFrame())

        # Define scatt axis and data for binning
        n_scatt_bins = len(exposure_table)
        scatt_axis = Axis(np.arange(n_scatt_bins + 1), label='ScAtt')

        is_nest = True if exposure_table.scheme == 'nested' else False

        nside_scatt = exposure_table.nside

        zindex = hp.ang2pix(nside_scatt, unbinned_event.cosi_dataset['Zpointings (glon,glat)'].T[0] * 180 / np.pi,
                            unbinned_event.cosi_dataset['Zpointings (glon,glat)'].T[1] * 180 / np.pi, nest=is_nest, lonlat=True)
        xindex = hp.ang2pix(nside_scatt, unbinned_event.cosi_dataset['Xpointings (glon,glat)'].T[0] * 180 / np.pi,
                            unbinned_event.cosi_dataset['Xpointings (glon,glat)'].T[1] * 180 / np.pi, nest=is_nest, lonlat=True)
        scatt_data = np.array( [ exposure_dict[(z, x)] + 0.5 if (z,x) in exposure_dict.keys() else -1 for z, x in zip(zindex, xindex)] ) # should this "0.5" be needed?

        # Initialize histogram:
        binned_data = Histogram([scatt_axis,
                                  Axis(energy_bin_edges*u.keV, label='Em'),
                                  Axis(phi_bin_edges*u.deg, label='Phi'),
                                  psichi_axis],
                                  sparse=sparse)

        # Fill histogram:
        binned_data.fill(scatt_data, unbinned_event.cosi_dataset['Energies']*u.keV, np.rad2deg(unbinned_event.cosi_dataset['Phi'])*u.deg, coords)

        return binned_data

    signal_filepath = path_data + SIGNAL

    unbinned_signal = UnBinnedData(input_yaml = "inputs_511keV.yaml")

    unbinned_signal.cosi_dataset = unbinned_signal.get_dict_from_fits(signal_filepath)

    binned_signal = get_binned_data_scatt(unbinned_signal, exposure_table, psichi_binning = 'local', sparse = False)

    bkg_filepath = path_data + ALBEDO

    unbinned_bkg = UnBinnedData(input_yaml = "inputs_511keV.yaml")

    unbinned_bkg.cosi_dataset = unbinned_bkg.get_dict_from_fits(bkg_filepath)

    binned_bkg = get_binned_data_scatt(unbinned_bkg, exposure_table, psichi_binning = 'local', sparse = False)

    binned_event = binned_signal + binned_bkg

    binned_bkg.write(path_data + "511keV_dc2_scatt_bkg.hdf5")
    binned_signal.write(path_data + "511keV_dc2_scatt_signal.hdf5")
    binned_event.write(path_data + "511keV_dc2_scatt_event.hdf5")
    plt.close("all")

    # ---- checks (not in the notebook): the helper agrees with comptonsky's streaming binner ----
    ours = exposure_table.get_binned_data(unbinned_signal, psichi_binning='local')
    np.testing.assert_array_equal(ours.contents, binned_signal.contents)
    streamed = exposure_table.get_binned_data(unbinned_bkg, unbinned_data=bkg_filepath,
                                              sparse=True)
    np.testing.assert_array_equal(streamed.to_dense().contents, binned_bkg.contents)
    assert binned_signal.contents.sum() > 100 and binned_bkg.contents.sum() > 100
    assert len(exposure_table) > 5


def deconvolution():
    """511keV-ScAtt-ImageDeconvolution.ipynb."""
    # ---- imports: the only lines changed (cosipy, scoords → comptonsky; threeML dropped) ----
    from histpy import Histogram, HealpixAxis, Axis, Axes  # noqa: F401
    from mhealpy import HealpixMap
    from astropy.coordinates import SkyCoord, cartesian_to_spherical, Galactic  # noqa: F401

    from comptonsky import FullDetectorResponse
    from comptonsky import SpacecraftFile  # noqa: F401
    from comptonsky import UnBinnedData, BinnedData  # noqa: F401
    from comptonsky import SpacecraftAttitudeExposureTable, CoordsysConversionMatrix, DataIF_COSI_DC2, ImageDeconvolution  # noqa: F401

    # cosipy uses astropy units
    import astropy.units as u
    from astropy.units import Quantity  # noqa: F401
    from astropy.time import Time  # noqa: F401
    from astropy.table import Table  # noqa: F401
    from astropy.io import fits  # noqa: F401
    from comptonsky import SpacecraftFrame  # noqa: F401

    #Other standard libraries
    import numpy as np  # noqa: F401
    import matplotlib.pyplot as plt
    from matplotlib.gridspec import GridSpec  # noqa: F401

    import healpy as hp
    from tqdm.autonotebook import tqdm  # noqa: F401

    # ---- 1. Read the response matrix ----
    path_data = "./"

    response_path = path_data + RESPONSE

    response = FullDetectorResponse.open(response_path)

    response

    # ---- 2. Read binned 511keV binned files (source and background) ----
    #  background
    data_bkg = BinnedData("inputs_511keV.yaml")
    data_bkg.load_binned_data_from_hdf5("511keV_dc2_scatt_bkg.hdf5")

    ##  signal + background
    data_511keV = BinnedData("inputs_511keV.yaml")
    data_511keV.load_binned_data_from_hdf5("511keV_dc2_scatt_event.hdf5")

    # ---- 3. Load the coordsys conversion matrix ----
    ccm = CoordsysConversionMatrix.open("ccm_dc2.hdf5")

    # ---- 4-1. Prepare DataInterface containing all necessary datasets ----
    data_interface = DataIF_COSI_DC2.load(name = "511keV",
                                          event_binned_data = data_511keV.binned_data,
                                          dict_bkg_binned_data = {"albedo": data_bkg.binned_data},
                                          rsp = response,
                                          coordsys_conv_matrix=ccm,
                                          is_miniDC2_format=False)

    # ---- 4-2. Initialize the instance of the image deconvolution class ----
    parameter_filepath = "imagedeconvolution_parfile_scatt_511keV.yml"

    image_deconvolution = ImageDeconvolution()

    # set data_interface to image_deconvolution
    image_deconvolution.set_dataset([data_interface])

    # set a parameter file for the image deconvolution
    image_deconvolution.read_parameterfile(parameter_filepath)

    image_deconvolution.initialize()

    image_deconvolution.override_parameter("deconvolution:parameter:iteration_max = 30")
    image_deconvolution.override_parameter("deconvolution:parameter:background_normalization_optimization:activate = True")
    image_deconvolution.override_parameter("deconvolution:parameter:acceleration:alpha_max = 10")
    image_deconvolution.override_parameter("deconvolution:parameter:smoothing:FWHM:value = 3.0")

    image_deconvolution.initialize()

    # ---- 4-3. Start the image deconvolution ----
    image_deconvolution.run_deconvolution()

    image_deconvolution.results

    # ---- 5. results (the plots of log-likelihood, alpha, background norm and the map are those
    # of the Galactic tutorial; the last cell is this notebook's) ----
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
        y.append(result['alpha'])
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

    plot_reconstructed_image(image_deconvolution.results[29])

    iteration_idx = 29

    result = image_deconvolution.results[iteration_idx]

    iteration = result['iteration']
    image = result['model']

    data = image[:,0]
    data[data <= 0 * data.unit] = 1e-12 * data.unit

    hp.mollview(data, min = 2e-5, norm ='log', unit = str(data.unit), title = f'511 keV image at {iteration}th iteration', cmap = 'magma')

    plt.show()
    plt.close("all")
    return image_deconvolution
