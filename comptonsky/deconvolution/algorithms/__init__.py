"""Deconvolution algorithms, by the names used in parameter files."""

from __future__ import annotations

from ..registry import ALGORITHM_NAMES
from .base import DeconvolutionAlgorithm
from .map_rl import MAPRichardsonLucy
from .osem import OrderedSubsetsEM
from .rl import RichardsonLucy, RichardsonLucySimple

__all__ = ["ALGORITHMS", "DeconvolutionAlgorithm"]

_CLASSES = {cls.name: cls for cls in (RichardsonLucy, RichardsonLucySimple, MAPRichardsonLucy,
                                      OrderedSubsetsEM)}
#: Parameter-file name (including the cosipy ≥ 0.4 names ``RLadvanced``, ``RLbasic``) → class.
ALGORITHMS: dict[str, type[DeconvolutionAlgorithm]] = {
    name: _CLASSES[canonical] for name, canonical in ALGORITHM_NAMES.items()}
