"""Detector-frame imaging: attitude exposure tables and sky → detector conversion matrices.

``SpacecraftAttitudeExposureTable`` groups an attitude history into spacecraft-attitude (ScAtt)
bins, ``TimeBinnedExposureTable`` into time intervals, and ``CoordsysConversionMatrix`` carries
Galactic sky pixels into spacecraft-frame response pixels per bin (docs/design.md §8).
"""

from .conversion_matrix import CoordsysConversionMatrix
from .exposure_table import SpacecraftAttitudeExposureTable, TimeBinnedExposureTable

__all__ = ["SpacecraftAttitudeExposureTable", "TimeBinnedExposureTable",
           "CoordsysConversionMatrix"]
