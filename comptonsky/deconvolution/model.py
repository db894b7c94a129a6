"""Sky models for image deconvolution: the all-sky HEALPix image (axes ``lb`` × ``Ei``)."""

from __future__ import annotations

import logging

import numpy as np
from astropy import units as u
from histpy import Axes, Axis, HealpixAxis, Histogram

from ..config import INTENSITY, Parameters
from ..errors import AxisMismatchError, InvalidParameterError

__all__ = ["AllSkyImageModel", "MODEL_CLASSES", "model_from_parameters", "backprojection_map"]

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
        frame = getattr(lb.coordsys, "name", None) or str(lb.coordsys or "galactic")
        return cls(lb.nside, ei.edges, scheme=lb.scheme, coordsys=frame, unit=unit,
                   contents=contents)

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

    def set_values_from_parameters(self, parameter: Parameters, data=None,
                                   mask: np.ndarray | None = None) -> None:
        """Fill the map following ``model_definition:initialization``.

        ``algorithm``:

        * ``flat`` — ``parameter:value`` (one number per energy band) and ``parameter:unit``;
        * ``map`` — the histpy HDF5 map in ``file`` (axes lb, Ei or lb only; same NSIDE and
          number of bands; converted to the model unit; RING/NESTED reordered as needed), e.g.
          the result of an earlier run;
        * ``backprojection`` — from ``data`` (a :class:`~.joint.JointData`, required) and the
          optional ``mask`` (n_model,), see :func:`backprojection_map`.
        """
        init = "model_definition:initialization"
        algorithm = parameter.get(f"{init}:algorithm", "flat")
        if algorithm == "backprojection":
            if data is None:
                raise InvalidParameterError(f"{parameter.source}: {init}:algorithm "
                                            "'backprojection' needs the datasets")
            self[:] = backprojection_map(data, mask).reshape(self.contents.shape) * self.unit
            logger.info("initial map: back-projection of the counts above the backgrounds")
            return
        if algorithm == "map":
            from .priors import reference_map_from_file

            path = parameter.get(f"{init}:file")
            if path is None:
                raise InvalidParameterError(f"{parameter.source}: {init}:file is not set (the "
                                            "'map' initialization reads a histpy HDF5 map)")
            values = reference_map_from_file(path, self.axes, self.unit)
            if np.any(~np.isfinite(values)) or np.any(values < 0):
                raise InvalidParameterError(f"{parameter.source}: {init}:file {path}: the map "
                                            "has negative or non-finite values")
            self[:] = values * self.unit
            logger.info("initial map read from %s", path)
            return
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
        if not np.all(np.isfinite(flat) & (flat > 0)):
            raise InvalidParameterError(
                f"{parameter.source}: {init}:parameter:value must be finite and > 0 in every "
                f"band (the updates are multiplicative: a pixel at 0 stays 0), found {values}")
        self[:] = np.broadcast_to(flat, self.contents.shape) * self.unit

    def check_axes(self, model_axes: Axes) -> None:
        """Raise :class:`AxisMismatchError` unless ``lb`` and ``Ei`` match ``model_axes``."""
        mine, theirs = self.axes[0], model_axes[0]
        if mine.nside != theirs.nside or mine.scheme != theirs.scheme:
            raise AxisMismatchError(
                f"model axis 'lb' is HEALPix nside={mine.nside} {mine.scheme}, but the response "
                f"has nside={theirs.nside} {theirs.scheme}; set model_definition:property:nside "
                f"and scheme to match")
        e_mine = self.axes["Ei"].edges.to_value(u.keV)
        e_theirs = u.Quantity(model_axes["Ei"].edges, u.keV).to_value(u.keV)
        if e_mine.shape != e_theirs.shape or not np.allclose(e_mine, e_theirs, rtol=1e-9):
            raise AxisMismatchError(
                f"model axis 'Ei' has edges {e_mine} keV, but the response has {e_theirs} keV; "
                f"set model_definition:property:energy_edges to match")


#: ``model_definition:class`` (the names of :data:`.registry.MODEL_CLASSES`) → class.
MODEL_CLASSES = {"AllSkyImage": AllSkyImageModel}


def model_from_parameters(parameter: Parameters, data=None,
                          mask: np.ndarray | None = None) -> AllSkyImageModel:
    """Instantiate and initialise the model named by ``model_definition:class``.

    With ``data`` (JointData) its axes are checked against the response's; ``data`` and ``mask``
    are used as in :meth:`AllSkyImageModel.set_values_from_parameters`.
    """
    name = parameter.get("model_definition:class", "AllSkyImage")
    model = MODEL_CLASSES[name].instantiate_from_parameters(parameter)
    if data is not None:
        model.check_axes(data.model_axes)
    model.set_values_from_parameters(parameter, data, mask)
    return model


def backprojection_map(data, mask: np.ndarray | None = None, floor: float = 1e-3) -> np.ndarray:
    """A starting map from the data: the exposure-normalised back-projection of the counts.

    λ_j ∝ Σ_i R_ij ΔΩ_j y_i / E_j with y = max(X − Σ_b B_b, 0) (backgrounds at norm 1), scaled so
    that the predicted sky counts Σ_j E_j λ_j equal Σ_i y_i, then floored at ``floor`` times its
    mean over free pixels (RL cannot revive a pixel at exactly 0). Costs one adjoint pass.

    Parameters
    ----------
    data : JointData
    mask : ndarray of bool, shape (n_model,), optional
        False for held pixels (set to 0).
    floor : float
        Relative floor.

    Returns
    -------
    ndarray, shape (n_model,), in the model unit.
    """
    excess = [np.maximum(ds.counts - ds.add_background(np.zeros_like(ds.counts)), 0.0)
              for ds in data.datasets]
    back = data.summed_adjoint(excess)
    exposure = data.exposure
    free = exposure > 0
    if mask is not None:
        free &= mask
    lam = np.zeros_like(back)
    lam[free] = back[free] / exposure[free]
    total = float(sum(y.sum() for y in excess))
    predicted = float(np.dot(exposure, lam))
    if total <= 0 or predicted <= 0:
        logger.warning("back-projection start: no counts above the backgrounds; using a flat map")
        lam[free] = max(total, 1.0) / max(float(exposure[free].sum()), 1e-300)
    else:
        lam *= total / predicted
    if free.any():
        lam[free] = np.maximum(lam[free], floor * float(lam[free].mean()))
    return lam
