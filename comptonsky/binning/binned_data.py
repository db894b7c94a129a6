"""The tutorial's :class:`BinnedData`: binning parameters, binning, plots and event files."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path

import healpy as hp
import numpy as np
from histpy import HealpixAxis, Histogram

from ..errors import InvalidParameterError, OutputError, UnknownChoiceError
from ..io.atomic import check_output_path
from ..io.events import (
    DEFAULT_CHUNK_SIZE,
    EventSource,
    read_events,
    read_tra,
    select_events,
    write_events,
)
from ..io.histogram import open_histogram, write_histogram
from .first_axis import POINTING_ALIASES
from .spec import BINNING_KEYS, CDSBinning, phi_bin_edges, read_binning_parameters
from .stream import bin_events

__all__ = ["BinnedData", "UnBinnedData", "bin_by_first_axis", "hdf5_output_path"]

logger = logging.getLogger(__name__)


def hdf5_output_path(output_name: str | os.PathLike) -> Path:
    """``output_name`` as a binned-data file name: ``.hdf5`` is appended unless it ends in
    ``.hdf5`` or ``.h5``.

    Raises
    ------
    OutputError
        If ``output_name`` names a folder (``.``, ``dir/``, an existing folder).
    """
    text = os.fspath(output_name)
    p = Path(output_name)
    if not text or text.endswith(("/", os.sep)) or p.name in ("", ".", "..") or p.is_dir():
        raise OutputError(f"{text or repr(text)}: names a folder; expected an HDF5 file name")
    return p if p.suffix.lower() in (".hdf5", ".h5") else p.with_name(p.name + ".hdf5")


class BinnedData:
    """Bin unbinned COSI events into the Compton data space (the tutorial's API).

    Parameters
    ----------
    input_yaml : path-like, optional
        Binning parameter file with ``time_bins`` (size in s or list of edges), ``tmin``,
        ``tmax`` (s), ``energy_bins`` (keV edges), ``phi_pix_size`` (deg), ``nside``, ``scheme``
        and optionally ``data_file``, ``ori_file``, ``unbinned_output`` ("fits" or "hdf5").
    **parameters
        Binning parameters given directly (override the file's).

    Attributes
    ----------
    binned_data : histpy.Histogram or None
        The result of :meth:`get_binned_data` or :meth:`load_binned_data_from_hdf5`.
    cosi_dataset : dict of str to ndarray or None
        Events read by :meth:`read_tra` or selected by :meth:`select_data` (in memory).
    """

    def __init__(self, input_yaml: str | os.PathLike | None = None, **parameters):
        pars = read_binning_parameters(input_yaml) if input_yaml is not None else {}
        for key in parameters:
            if key not in BINNING_KEYS:
                raise UnknownChoiceError("binning parameter", key, BINNING_KEYS)
        pars.update(parameters)
        self.input_yaml = None if input_yaml is None else str(input_yaml)
        self.parameters = pars
        for key in BINNING_KEYS:
            setattr(self, key, pars.get(key))
        for key in ("data_file", "ori_file"):
            value = pars.get(key)
            if value is not None and not isinstance(value, (str, os.PathLike)):
                raise InvalidParameterError(
                    f"{self.input_yaml or 'binning parameters'}: {key} must be a file name, "
                    f"found {value!r}")
        if self.unbinned_output is None:
            self.unbinned_output = "fits"
        if str(self.unbinned_output).lower() not in ("fits", "hdf5"):
            raise UnknownChoiceError("unbinned_output", self.unbinned_output, ("fits", "hdf5"),
                                     where=self.input_yaml)
        self.binned_data: Histogram | None = None
        self.cosi_dataset: dict[str, np.ndarray] | None = None

    def _data_file_path(self) -> str | None:
        """``data_file`` as given, or relative to the parameter file's folder when it is not
        found relative to the working directory."""
        if not self.data_file:
            return None
        path = Path(self.data_file)
        if not path.is_absolute() and not path.exists() and self.input_yaml is not None:
            beside = Path(self.input_yaml).parent / path
            if beside.exists():
                return str(beside)
        return str(path)

    def _events_or_default(self, given):
        """``given``, else the events read so far (``cosi_dataset``), else ``data_file``.

        Raises
        ------
        InvalidParameterError
            If there are none of these.
        """
        if given is not None:
            return given
        if self.cosi_dataset is not None:
            return self.cosi_dataset
        if self.data_file:
            return self._data_file_path()
        raise InvalidParameterError(
            "get_binned_data: no unbinned_data given, no events read (cosi_dataset) and no "
            "data_file in the parameters")

    @property
    def _where(self) -> str:
        return self.input_yaml or "binning parameters"

    def binning(self, psichi_binning: str = "galactic") -> CDSBinning:
        """The :class:`CDSBinning` these parameters define, for the given PsiChi frame."""
        current = {k: getattr(self, k) for k in BINNING_KEYS}
        return CDSBinning.from_parameters(current, psichi_binning=psichi_binning,
                                          where=self._where)

    # ---------------------------------------------------------------- binning
    def get_binned_data(self, unbinned_data: EventSource | None = None,
                        output_name: str | os.PathLike | None = None,
                        make_binning_plots: bool = False, show_plots: bool = False,
                        psichi_binning: str = "galactic",
                        event_range: tuple[int, int | None] | None = None,
                        chunk_size: int = DEFAULT_CHUNK_SIZE, progress: bool = True
                        ) -> Histogram:
        """Bin events into a (Time, Em, Phi, PsiChi) histogram, stored in ``binned_data``.

        Parameters
        ----------
        unbinned_data : path-like, sequence of path-like, or mapping, optional
            Event file(s) (DC2 FITS/HDF5, MEGAlib .tra), added together; default: the events in
            ``cosi_dataset`` if any, else ``data_file`` from the parameters.
        output_name : path-like, optional
            Also write the histogram to ``output_name`` (``.hdf5`` appended if missing), only
            after binning succeeded, atomically.
        make_binning_plots, show_plots : bool
            Plot the projections (see :meth:`plot_binned_data`).
        psichi_binning : {"galactic", "local"}
            Frame of the PsiChi axis.
        event_range : (int, int or None), optional
            Bin only events ``start <= index < stop`` of each file.
        chunk_size : int
            Events per chunk.
        progress : bool
            Show a progress bar.

        Returns
        -------
        histpy.Histogram
            Counts with axes Time (s), Em (keV), Phi (deg), PsiChi; sparse contents.
        """
        binning = self.binning(psichi_binning)
        out = None if output_name is None else check_output_path(hdf5_output_path(output_name))
        unbinned_data = self._events_or_default(unbinned_data)
        (hist,) = bin_events(unbinned_data, [binning], event_range=event_range,
                             chunk_size=chunk_size, progress=progress)
        self.binned_data = hist
        if out is not None:
            path = write_histogram(hist, out)
            logger.info("binned data written to %s", path)
        if make_binning_plots:
            self.plot_binned_data(show=show_plots,
                                  output_name=None if output_name is None else str(output_name))
        return hist

    def cds_binning(self, psichi_binning: str = "local") -> CDSBinning:
        """The Em, Phi and PsiChi binning of these parameters (``energy_bins``,
        ``phi_pix_size``, ``nside``, ``scheme``), for binning by ScAtt bins or time intervals;
        its time edges are placeholders (no ``time_bins`` needed)."""
        missing = [k for k in ("energy_bins", "phi_pix_size", "nside")
                   if getattr(self, k, None) is None]
        if missing:
            raise InvalidParameterError(f"{self._where}: missing binning parameter(s) {missing}")
        return CDSBinning(time_edges=np.array([0.0, 1.0]),
                          energy_edges=np.asarray(self.energy_bins, dtype=np.float64),
                          phi_edges=phi_bin_edges(self.phi_pix_size, self._where),
                          nside=self.nside, scheme=self.scheme or "ring",
                          psichi_binning=psichi_binning, where=self._where)

    # --- cosipy's dictionary readers (also callable as UnBinnedData.get_dict_from_fits(None, f))
    def get_dict_from_fits(self, input_fits: str | os.PathLike) -> dict[str, np.ndarray]:
        """All columns of a DC2 FITS event file (plain or gzipped), in the canonical units.

        The pointing columns are there under both names, ``Zpointings`` and cosipy's newer
        ``Zpointings (glon,glat)`` (the same array), likewise for X and Y.
        """
        return _with_pointing_aliases(read_events(input_fits, format="fits"))

    def get_dict_from_hdf5(self, input_hdf5: str | os.PathLike) -> dict[str, np.ndarray]:
        """All columns of a DC2 HDF5 event file (see :meth:`get_dict_from_fits`)."""
        return _with_pointing_aliases(read_events(input_hdf5, format="hdf5"))

    def load_binned_data_from_hdf5(self, binned_data: str | os.PathLike) -> Histogram:
        """Open a binned-data HDF5 file (histpy format) into ``binned_data``."""
        self.binned_data = open_histogram(binned_data)
        return self.binned_data

    def _hist(self, binned_data) -> Histogram:
        if binned_data is not None:
            if isinstance(binned_data, Histogram):
                return binned_data
            return self.load_binned_data_from_hdf5(binned_data)
        if self.binned_data is None:
            raise InvalidParameterError(
                "no binned data: call get_binned_data or load_binned_data_from_hdf5 first")
        return self.binned_data

    def get_binning_info(self, binned_data: Histogram | str | os.PathLike | None = None
                         ) -> dict:
        """Describe each axis of the binned data (and log it).

        Returns
        -------
        dict
            ``{label: {"nbins", "edges", "unit", ...}}``, plus ``"total_counts"``.
        """
        hist = self._hist(binned_data)
        info: dict = {}
        for ax in hist.axes:
            entry = {"nbins": int(ax.nbins), "unit": None if ax.unit is None else str(ax.unit)}
            if isinstance(ax, HealpixAxis):
                entry.update(nside=int(ax.nside), scheme=str(ax.scheme),
                             coordsys=None if ax.coordsys is None else ax.coordsys.name)
            else:
                edges = ax.edges
                entry["edges"] = np.asarray(getattr(edges, "value", edges))
            info[str(ax.label)] = entry
            logger.info("axis %s: %s", ax.label, entry)
        info["total_counts"] = float(hist.contents.sum())
        return info

    def plot_binned_data(self, binned_data: Histogram | str | os.PathLike | None = None,
                         output_name: str | None = None,
                         show: bool = False) -> dict:
        """Plot each projection of the binned data: counts versus Time, Em, Phi, and a
        Mollweide map of the PsiChi projection.

        Parameters
        ----------
        binned_data : Histogram or path-like, optional
            Default: ``self.binned_data``.
        output_name : str, optional
            Save figures as ``{output_name}_{axis}.png``.
        show : bool
            Call ``matplotlib.pyplot.show()``.

        Returns
        -------
        dict of str to matplotlib.figure.Figure
            One figure per axis label.
        """
        import matplotlib.pyplot as plt

        hist = self._hist(binned_data)
        figs = {}
        for ax in hist.axes:
            label = str(ax.label)
            proj = hist.project(label)
            values = proj.contents
            values = np.asarray(values.todense() if hasattr(values, "todense") else values)
            if isinstance(ax, HealpixAxis):
                nest = str(ax.scheme).upper() == "NESTED"
                frame = "" if ax.coordsys is None else f" ({ax.coordsys.name})"
                hp.mollview(values, nest=nest, title=f"PsiChi{frame}", unit="counts")
                fig = plt.gcf()
            else:
                fig, pax = plt.subplots(figsize=(7, 4))
                edges = np.asarray(getattr(ax.edges, "value", ax.edges))
                pax.stairs(values, edges)
                unit = "" if ax.unit is None else f" [{ax.unit}]"
                pax.set_xlabel(f"{label}{unit}")
                pax.set_ylabel("counts")
            figs[label] = fig
            if output_name is not None:
                fig.savefig(f"{output_name}_{label}.png", dpi=100)
        if show:
            plt.show()
        return figs

    # ---------------------------------------------------------------- unbinned data
    def _output_path(self, output_name: str | os.PathLike) -> Path:
        ext = ".fits.gz" if str(self.unbinned_output).lower() == "fits" else ".hdf5"
        p = Path(output_name)
        name = p.name.lower()
        if name.endswith((".fits", ".fits.gz", ".hdf5", ".h5")):
            return p
        return p.with_name(p.name + ext)

    def read_tra(self, output_name: str | os.PathLike | None = None,
                 data_file: str | os.PathLike | None = None) -> dict[str, np.ndarray]:
        """Read the Compton events of a MEGAlib ``.tra`` file (default ``data_file``) into
        ``cosi_dataset``; optionally write them as FITS or HDF5 (``unbinned_output``)."""
        src = data_file or self._data_file_path()
        if not src:
            raise InvalidParameterError("read_tra: no data_file given")
        self.cosi_dataset = read_tra(src)
        if output_name is not None:
            write_events(self._output_path(output_name), self.cosi_dataset)
        return self.cosi_dataset

    def select_data(self, unbinned_data: EventSource | None = None,
                    output_name: str | os.PathLike | None = None,
                    tmin: float | None = None, tmax: float | None = None,
                    emin: float | None = None, emax: float | None = None
                    ) -> dict[str, np.ndarray] | Path:
        """Select events by time (default ``tmin``/``tmax``) and energy (keV, ``emin <= E <
        emax``).

        With ``output_name`` the selection is streamed to a file (FITS or HDF5 per
        ``unbinned_output``) and its path returned; otherwise it is kept in ``cosi_dataset``.
        """
        src = unbinned_data if unbinned_data is not None else (self.cosi_dataset
                                                              or self._data_file_path())
        return self._select(src, output_name, tmin=self.tmin if tmin is None else tmin,
                            tmax=self.tmax if tmax is None else tmax, emin=emin, emax=emax)

    def combine_unbinned_data(self, input_files: Iterable[str | os.PathLike],
                              output_name: str | os.PathLike | None = None
                              ) -> dict[str, np.ndarray] | Path:
        """Concatenate several event files (streamed when written to ``output_name``)."""
        return self._select(list(input_files), output_name)

    def _select(self, src: EventSource, output_name, **cuts) -> dict[str, np.ndarray] | Path:
        out = None if output_name is None else self._output_path(output_name)
        result = select_events(src, out, **cuts)
        if out is None:
            self.cosi_dataset = result
        return result


class UnBinnedData(BinnedData):
    """cosipy's ``UnBinnedData``: the same object as :class:`BinnedData` (parameters, reading
    ``.tra`` files, selecting and combining events, ``get_dict_from_fits``/``_hdf5``)."""


def _with_pointing_aliases(events: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``events`` with the pointing columns under both their names (same arrays, no copy)."""
    for alias, name in POINTING_ALIASES.items():
        if name in events and alias not in events:
            events[alias] = events[name]
        elif alias in events and name not in events:
            events[name] = events[alias]
    return events


def _canonical_events(events) -> dict[str, np.ndarray]:
    """A shallow copy of in-memory columns with cosipy's pointing names mapped to ours."""
    out = dict(events)
    for alias, name in POINTING_ALIASES.items():
        if alias in out:
            value = out.pop(alias)
            out.setdefault(name, value)
    return {k: np.asarray(getattr(v, "value", v)) for k, v in out.items()}


def bin_by_first_axis(unbinned_event, first_axis, psichi_binning: str = "local",
                      sparse: bool = False, unbinned_data: EventSource | None = None,
                      chunk_size: int = DEFAULT_CHUNK_SIZE, progress: bool = False
                      ) -> Histogram:
    """Bin events per ScAtt bin or time interval (cosipy's ``get_binned_data`` of an exposure
    table), streaming files in chunks.

    Parameters
    ----------
    unbinned_event : BinnedData or UnBinnedData
        Gives ``energy_bins``, ``phi_pix_size``, ``nside``, ``scheme`` and, unless
        ``unbinned_data`` is given, the events: its ``cosi_dataset`` (in memory; cosipy's pointing
        names ``Zpointings (glon,glat)`` are accepted) or else its ``data_file``.
    first_axis : ScAttAxis or IntervalAxis
    psichi_binning : {"local", "galactic"}
    sparse : bool
        Return sparse (COO) contents; dense by default, as cosipy.
    unbinned_data : path-like, sequence of path-like or mapping, optional
        Events to bin instead (files are streamed).

    Returns
    -------
    histpy.Histogram
        Axes (ScAtt | Time, Em, Phi, PsiChi).
    """
    if not isinstance(unbinned_event, BinnedData):
        raise InvalidParameterError(
            "get_binned_data: unbinned_event must be an UnBinnedData or BinnedData (it gives the "
            f"binning parameters), found {type(unbinned_event).__name__}")
    binning = unbinned_event.cds_binning(psichi_binning).with_first_axis(first_axis)
    source = unbinned_event._events_or_default(unbinned_data)
    if isinstance(source, dict) or hasattr(source, "keys"):
        source = _canonical_events(source)
    (hist,) = bin_events(source, [binning], chunk_size=chunk_size, progress=progress)
    return hist if sparse else hist.to_dense()
