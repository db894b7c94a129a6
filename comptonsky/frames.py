"""Coordinate frames used by COSI data products.

COSI files label local (detector-frame) HEALPix axes with ``coordsys = "spacecraftframe"``. That
name is not an astropy built-in, so histpy cannot open such files unless a frame of that name is
known to astropy's transform graph. Importing this module (the histogram readers do, and so does
importing a tutorial name from ``comptonsky``) registers a minimal :class:`SpacecraftFrame`: enough
to read, write and compare such axes. Transforms between the spacecraft frame and the sky depend on
the attitude at each time and are done explicitly with rotation matrices (see
:mod:`comptonsky.io.orientation`).
"""

from __future__ import annotations

import numpy as np
from astropy.coordinates import (
    BaseCoordinateFrame,
    StaticMatrixTransform,
    UnitSphericalRepresentation,
    frame_transform_graph,
)

__all__ = ["SpacecraftFrame", "register_spacecraft_frame"]


class SpacecraftFrame(BaseCoordinateFrame):
    """Detector (spacecraft) frame: z along the instrument boresight, x along the reference axis."""

    default_representation = UnitSphericalRepresentation
    name = "spacecraftframe"


def register_spacecraft_frame() -> None:
    """Make ``"spacecraftframe"`` resolvable by name in astropy (idempotent)."""
    if frame_transform_graph.lookup_name(SpacecraftFrame.name) is None:
        identity = StaticMatrixTransform(np.eye(3), SpacecraftFrame, SpacecraftFrame)
        frame_transform_graph.add_transform(SpacecraftFrame, SpacecraftFrame, identity)


register_spacecraft_frame()
