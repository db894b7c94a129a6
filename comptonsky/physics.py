"""Physical constants and Compton kinematics shared by the readers, responses and simulator."""

from __future__ import annotations

import numpy as np

__all__ = ["ELECTRON_MASS_KEV", "MEGALIB_ELECTRON_MASS_KEV", "scattered_energy", "klein_nishina"]

#: Electron rest energy (keV, CODATA 2018).
ELECTRON_MASS_KEV = 510.99895
#: The electron rest energy MEGAlib uses when it writes Compton angles into ``.tra`` files (keV).
MEGALIB_ELECTRON_MASS_KEV = 510.999


def scattered_energy(phi: np.ndarray, energy_kev: float) -> np.ndarray:
    """Energy (keV) of a photon of ``energy_kev`` after Compton scattering by ``phi`` (rad).

    ``E′ = E / (1 + E/mₑc² (1 − cos φ))``; at 511 keV, ``E′ = 511 / (2 − cos φ)``.
    """
    return energy_kev / (1.0 + energy_kev / ELECTRON_MASS_KEV * (1.0 - np.cos(phi)))


def klein_nishina(phi: np.ndarray, energy_kev: float) -> np.ndarray:
    """Klein–Nishina dσ/dΩ (units of r_e²/2) at scatter angle ``phi`` (rad).

    ``dσ/dΩ = (r_e²/2) P² (P + 1/P − sin² φ)`` with ``P = E′/E``.
    """
    p = scattered_energy(phi, energy_kev) / energy_kev
    return p * p * (p + 1.0 / p - np.sin(phi) ** 2)
