"""Unbinned events -> Compton-data-space histograms (Time, Em, Phi, PsiChi), streamed in chunks.

The tutorial's entry point is :class:`BinnedData`::

    binned = BinnedData(input_yaml="inputs_511keV_DC2.yaml")
    binned.get_binned_data(unbinned_data="511_thin_disk_3months_unbinned_data.fits.gz",
                           psichi_binning="galactic")
    counts = binned.binned_data.to_dense()

Several files, or several binning configurations, are binned in one pass over the data with
:func:`bin_events`.

Binning rules (identical to ``numpy.histogramdd`` on the columns, except that the last upper
edge is excluded as well):

- every bin includes its lower edge and excludes its upper edge; events outside an axis' range,
  or with a NaN coordinate, are not counted;
- Time: ``TimeTags`` (s); Em: ``Energies`` (keV); Phi: ``numpy.rad2deg(Phi)`` (deg);
- PsiChi, local frame: ``healpy.ang2pix(nside, Psi local, Chi local)`` (Psi local is a polar angle);
  Galactic frame: ``healpy.ang2pix(nside, Chi galactic, Psi galactic, lonlat=True)`` ((l, b),
  deg).
  Events whose direction is not on the sphere (what healpy would reject) are skipped.
- Events left out are counted per file and binning, by reason, and logged once (a warning for
  invalid values, times outside the range, or when nothing was binned).

Modules: :mod:`.spec` (parameters, :class:`CDSBinning`), :mod:`.psichi` (frames), :mod:`.kernel`
(counting), :mod:`.stream` (:func:`bin_events`), :mod:`.binned_data` (:class:`BinnedData`).
"""

from .binned_data import BinnedData, UnBinnedData, bin_by_first_axis, hdf5_output_path
from .first_axis import IntervalAxis, ScAttAxis, ScAttByTimeAxis
from .psichi import PSICHI_FRAMES
from .spec import BINNING_KEYS, CDSBinning, phi_bin_edges, read_binning_parameters, time_bin_edges
from .stream import bin_events

__all__ = [
    "BINNING_KEYS", "BinnedData", "CDSBinning", "IntervalAxis", "PSICHI_FRAMES", "ScAttAxis", "ScAttByTimeAxis",
    "UnBinnedData", "bin_by_first_axis", "bin_events", "hdf5_output_path", "phi_bin_edges", "read_binning_parameters", "time_bin_edges",
]
