"""Synthetic COSI data: a physically grounded model of the instrument, orbit, sky and background.

This is a model of COSI built from published numbers (see ``docs/simulator.md``), not the COSI
team's Monte-Carlo response. The pieces compose::

    from comptonsky.simulate import (DC2_ORBIT, InstrumentModel, dc2_511_thin_disk,
                                     attitude_history, simulate_sky_events, simulate_dataset)
    from comptonsky.response.galactic import bin_attitudes, galactic_response

and :func:`simulate_dataset` writes a whole DC2-like data set in the real file formats.
"""

from __future__ import annotations

from .background import AlbedoBackground, EarthFixedBackground, IsotropicBackground
from .events import events_to_columns, simulate_background_events, simulate_sky_events
from .instrument import InstrumentModel, klein_nishina, scattered_energy
from .orbit import (
    DC2_ORBIT,
    DC3_ORBIT,
    OrbitProfile,
    attitude_at,
    attitude_history,
    horizon_angle_deg,
    orbital_period,
)
from .pipeline import simulate_dataset
from .presets import PRESETS, Preset, get_preset
from .sky import (
    EllipticalGaussianSource,
    GaussianSource,
    HealpixMapSource,
    PointSource,
    SkyModel,
    dc2_511_thick_disk,
    dc2_511_thin_disk,
)

__all__ = [
    "AlbedoBackground", "EarthFixedBackground", "IsotropicBackground",
    "events_to_columns", "simulate_background_events", "simulate_sky_events",
    "InstrumentModel", "klein_nishina", "scattered_energy",
    "DC2_ORBIT", "DC3_ORBIT", "OrbitProfile", "attitude_at", "attitude_history",
    "horizon_angle_deg", "orbital_period",
    "simulate_dataset", "PRESETS", "Preset", "get_preset",
    "EllipticalGaussianSource", "GaussianSource", "HealpixMapSource", "PointSource", "SkyModel",
    "dc2_511_thick_disk", "dc2_511_thin_disk",
]
