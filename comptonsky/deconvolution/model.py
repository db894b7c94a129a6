"""Sky models for image deconvolution: the all-sky HEALPix image (axes ``lb`` × ``Ei``)."""

from __future__ import annotations

import logging

import numpy as np
from astropy import units as u
from histpy import Axes, Axis, HealpixAxis, Histogram

from ..config import INTENSITY, Parameters
from ..errors import AxisMismatchError, InvalidParameterError, UnknownChoiceError

__all__ = ["AllSkyImageModel", "MODEL_CLASSES", "model_from_parameters"]

logger = logging.getLogger(__name__)


class AllSkyImageModel(Histogram):
    """All-sky image: intensity per HEALPix pixel and true-energy band.

    A histpy :class:`~histpy.Histogram` with axes ``('lb', 'Ei')`` in cm⁻² s⁻¹ sr⁻¹, so the
    tutorial's plotting code (``image.axes['Ei']``, ``image[:, 0]``, ``image.unit``) works.

    Parameters
    ----------
    nside : int
        HEALPix NSIDE of the image.
    energy_edges : astropy.units.Quantity, shape (n_energy + 1,)
        True-energy band edges.
    scheme : {'ring', 'nested'}
        HEALPix ordering.
    coordsys : str
        Coordinate frame of the image (``'galactic'``).
    unit : str or astropy.units.Unit
        Intensity unit.
    contents : array_like, shape (12 nside², n_energy), optional
        Initial values (default zeros).
    """

    def __init__(self, nside: int, energy_edges: u.Quantity, scheme: str = "ring",
                 coordsys: str = "galactic", unit=INTENSITY, contents=None,
                 label_image: str = "lb"):
        energy_edges = u.Quantity(energy_edges, u.keV)
        axes = Axes([HealpixAxis(nside=int(nside), scheme=scheme, coordsys=coordsys,
                                 label=label_image),
                     Axis(energy_edges, label="Ei")])
        if contents is not None:
            contents = np.asarray(getattr(contents, "value", contents), dtype=np.float64)
        super().__init__(axes, contents=contents, unit=u.Unit(unit))

    @classmethod
    def from_axes(cls, axes: Axes, unit=INTENSITY, contents=None) -> AllSkyImageModel:
        """Build from histpy axes ``(lb, Ei)`` (e.g. a response's model axes)."""
        lb, ei = axes[0], axes[1]
        return cls(lb.nside, ei.edges, scheme=lb.scheme, coordsys=str(_frame_name(lb)),
                   unit=unit, contents=contents)

    @classmethod
    def instantiate_from_parameters(cls, parameter: Parameters) -> AllSkyImageModel:
        """Build an empty model from the ``model_definition:property`` section."""
        prop = "model_definition:property"
        nside = parameter.get(f"{prop}:nside")
        if nside is None:
            raise InvalidParameterError(f"{parameter.source}: {prop}:nside is not set")
        edges = parameter.quantity(f"{prop}:energy_edges")
        if edges is None:
            raise InvalidParameterError(f"{parameter.source}: {prop}:energy_edges is not set")
        return cls(nside, edges, scheme=parameter.get(f"{prop}:scheme", "ring"),
                   coordsys=parameter.get(f"{prop}:coordinate", "galactic"),
                   unit=parameter.get(f"{prop}:unit", str(INTENSITY)))

    def set_values_from_parameters(self, parameter: Parameters) -> None:
        """Fill the map following ``model_definition:initialization`` (``flat``)."""
        init = "model_definition:initialization"
        algorithm = parameter.get(f"{init}:algorithm", "flat")
        if algorithm != "flat":
            raise UnknownChoiceError("initialization algorithm", algorithm, ("flat",))
        values = parameter.get(f"{init}:parameter:value")
        if values is None:
            raise InvalidParameterError(f"{parameter.source}: {init}:parameter:value is not set")
        unit = u.Unit(parameter.get(f"{init}:parameter:unit", str(self.unit)))
        n_energy = self.axes["Ei"].nbins
        if len(values) != n_energy:
            raise InvalidParameterError(
                f"{parameter.source}: {init}:parameter:value has {len(values)} entries, expected "
                f"one per energy band ({n_energy}, from energy_edges)")
        flat = (np.asarray(values) * unit).to_value(self.unit)
        self[:] = np.broadcast_to(flat, self.contents.shape) * self.unit

    def check_axes(self, model_axes: Axes, what: str = "response") -> None:
        """Raise :class:`AxisMismatchError` unless ``lb`` and ``Ei`` match ``model_axes``."""
        mine, theirs = self.axes[0], model_axes[0]
        if mine.nside != theirs.nside or mine.scheme != theirs.scheme:
            raise AxisMismatchError(
                f"model axis 'lb' is HEALPix nside={mine.nside} {mine.scheme}, but the {what} "
                f"has nside={theirs.nside} {theirs.scheme}; set model_definition:property:nside "
                f"and scheme to match")
        e_mine = self.axes["Ei"].edges.to_value(u.keV)
        e_theirs = u.Quantity(model_axes["Ei"].edges, u.keV).to_value(u.keV)
        if e_mine.shape != e_theirs.shape or not np.allclose(e_mine, e_theirs, rtol=1e-9):
            raise AxisMismatchError(
                f"model axis 'Ei' has edges {e_mine} keV, but the {what} has {e_theirs} keV; "
                f"set model_definition:property:energy_edges to match")


def _frame_name(axis: HealpixAxis) -> str:
    frame = axis.coordsys
    return getattr(frame, "name", None) or str(frame or "galactic")


MODEL_CLASSES = {"AllSkyImage": AllSkyImageModel}


def model_from_parameters(parameter: Parameters) -> AllSkyImageModel:
    """Instantiate and initialise the model named by ``model_definition:class``."""
    name = parameter.get("model_definition:class", "AllSkyImage")
    try:
        cls = MODEL_CLASSES[name]
    except KeyError:
        raise UnknownChoiceError("model class", name, MODEL_CLASSES) from None
    model = cls.instantiate_from_parameters(parameter)
    model.set_values_from_parameters(parameter)
    return model
