"""Named simulation presets: orbit, instrument, sky and backgrounds of a DC-like data set."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..errors import UnknownChoiceError
from .background import AlbedoBackground, EarthFixedBackground, IsotropicBackground
from .instrument import InstrumentModel
from .orbit import DC2_ORBIT, DC3_ORBIT, OrbitProfile
from .sky import SkyModel, dc2_511_thick_disk, dc2_511_thin_disk

__all__ = ["Preset", "PRESETS", "get_preset", "DC2_BACKGROUND_RATE_HZ"]

#: DC2 background count rate near 511 keV, all components (counts s⁻¹; docs/design.md §6: 0.185 s⁻¹ in
#: 508–512 keV, ≈ 1.5e6 counts in 3 months).
DC2_BACKGROUND_RATE_HZ = 0.185


@dataclass(frozen=True)
class Preset:
    """A recipe for a synthetic data set.

    Attributes
    ----------
    name : str
        Preset name (``comptonsky simulate --preset``).
    description : str
    orbit : OrbitProfile
    sky : callable returning SkyModel
    instrument : callable returning InstrumentModel
    albedo_flux : float
        Earth-albedo line flux from the whole Earth disk (ph cm⁻² s⁻¹).
    isotropic_intensity : float or None
        Isotropic cosmic intensity (ph cm⁻² s⁻¹ sr⁻¹), or None for none.
    background_rate_hz : float or None
        Expected albedo count rate in the analysis window (counts s⁻¹) to which the albedo is
        scaled, or None to keep the albedo line flux ``albedo_flux`` as it is. The DC presets
        use :data:`DC2_BACKGROUND_RATE_HZ`: the albedo then stands in, with its Earth-fixed
        angular shape, for the whole background (docs/simulator.md, "Backgrounds").
    energy_window_kev : tuple of float
        Analysis window (Ei and Em edges).
    """

    name: str
    description: str
    orbit: OrbitProfile
    sky: Callable[[], SkyModel]
    instrument: Callable[[], InstrumentModel] = InstrumentModel
    albedo_flux: float = 4.4e-4
    isotropic_intensity: float | None = None
    background_rate_hz: float | None = None
    energy_window_kev: tuple[float, float] = (509.0, 513.0)

    def backgrounds(self) -> list[EarthFixedBackground]:
        """The background photon fields of the preset (albedo first)."""
        out = [AlbedoBackground(self.albedo_flux, self.orbit.horizon_deg)]
        if self.isotropic_intensity:
            out.append(IsotropicBackground(self.isotropic_intensity))
        return out


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("dc2-511-thin-disk",
               "DC2 orbit (550 km, 0 deg, zenith pointing, 3 months); 511 keV thin-disk sky "
               "(point + narrow/broad bulge + thin disk, 2.83e-3 ph/cm2/s); Earth albedo at the "
               "DC2 background level (0.185 counts/s)",
               DC2_ORBIT, dc2_511_thin_disk, background_rate_hz=DC2_BACKGROUND_RATE_HZ),
        Preset("dc2-511-thick-disk",
               "DC2 orbit; 511 keV sky with the thick disk (sigma_l 60, sigma_b 10.5 deg); "
               "Earth albedo at the DC2 background level",
               DC2_ORBIT, dc2_511_thick_disk, background_rate_hz=DC2_BACKGROUND_RATE_HZ),
        Preset("dc3-511-thin-disk",
               "DC3 orbit (530 km, +-22 deg rocking every 12 h); 511 keV thin-disk sky; albedo "
               "at the DC2 background level",
               DC3_ORBIT, dc2_511_thin_disk, background_rate_hz=DC2_BACKGROUND_RATE_HZ),
        Preset("dc2-511-thin-disk-cosmic",
               "as dc2-511-thin-disk plus an isotropic cosmic component (1.5e-4 ph/cm2/s/sr)",
               DC2_ORBIT, dc2_511_thin_disk, isotropic_intensity=1.5e-4,
               background_rate_hz=DC2_BACKGROUND_RATE_HZ),
        Preset("dc2-511-thin-disk-line-albedo",
               "as dc2-511-thin-disk with the albedo at its physical line flux only "
               "(4.4e-4 ph/cm2/s from the Earth disk: ~5e3 counts in 3 months)",
               DC2_ORBIT, dc2_511_thin_disk),
    )
}


def get_preset(name: str | Preset) -> Preset:
    """Return the preset called ``name`` (a :class:`Preset` is returned unchanged).

    Raises
    ------
    UnknownChoiceError
        If there is no such preset (the message suggests the nearest name).
    """
    if isinstance(name, Preset):
        return name
    if name not in PRESETS:
        raise UnknownChoiceError("simulation preset", name, PRESETS)
    return PRESETS[name]
