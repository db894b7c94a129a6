"""Deconvolution algorithms, by the names used in parameter files."""

from __future__ import annotations

from .base import DeconvolutionAlgorithm
from .map_rl import MAPRichardsonLucy
from .osem import OrderedSubsetsEM
from .rl import RichardsonLucy, RichardsonLucySimple

__all__ = ["ALGORITHMS", "DeconvolutionAlgorithm", "register_algorithm"]

#: Parameter-file name → algorithm class.
ALGORITHMS: dict[str, type[DeconvolutionAlgorithm]] = {
    "RL": RichardsonLucy,
    "RLsimple": RichardsonLucySimple,
    "MAP_RL": MAPRichardsonLucy,
    "OSEM": OrderedSubsetsEM,
    # cosipy ≥ 0.4 names of the same algorithms
    "RLadvanced": RichardsonLucy,
    "RLbasic": RichardsonLucySimple,
}


def register_algorithm(cls: type[DeconvolutionAlgorithm]) -> type[DeconvolutionAlgorithm]:
    """Class decorator adding an algorithm under ``cls.name``."""
    ALGORITHMS[cls.name] = cls
    return cls
