"""Vectorised sampling of unbinned COSI events (DC2 columns) from sky and Earth-fixed photon fields.

Candidate photons arrive as a Poisson process uniform in time, at ``flux × candidate_area`` (times
a bound of the area factor for Earth-fixed fields); the instrument model keeps each with the
probability that makes the detected rate ``flux × A(ν)`` (:meth:`InstrumentModel.sample_events`),
occulted ones are dropped, and the attitude at each event's time is the orbit's, exactly.
"""

from __future__ import annotations

import logging

import numpy as np
from tqdm.auto import tqdm

from ..geometry import vec_to_lonlat
from .background import EarthFixedBackground
from .instrument import InstrumentModel
from .orbit import OrbitProfile, attitude_at
from .sky import SkyModel

__all__ = ["simulate_sky_events", "simulate_background_events", "events_to_columns"]

logger = logging.getLogger(__name__)

_CHUNK = 1 << 19


def _wrap_pi(lon_deg: np.ndarray) -> np.ndarray:
    return np.radians((lon_deg + 180.0) % 360.0 - 180.0)


def events_to_columns(times: np.ndarray, rotation: np.ndarray, psichi_local: np.ndarray,
                      phi: np.ndarray, energy: np.ndarray, distance: np.ndarray
                      ) -> dict[str, np.ndarray]:
    """DC2 columns (canonical units of :mod:`comptonsky.io.events`) for detected events.

    Parameters
    ----------
    times : ndarray, shape (N,)
        Time tags (s).
    rotation : ndarray, shape (N, 3, 3)
        Detector → Galactic rotation at each event.
    psichi_local : ndarray, shape (N, 3)
        Detector-frame PsiChi unit vectors.
    phi, energy, distance : ndarray, shape (N,)
        Measured Compton angle (rad), energy (keV), first-to-second interaction distance (cm).
    """
    g = np.einsum("nij,nj->ni", rotation, psichi_local)
    gl, gb = vec_to_lonlat(g)
    cols = {"Energies": energy, "TimeTags": times}
    for name, k in (("Xpointings", 0), ("Ypointings", 1), ("Zpointings", 2)):
        lon, lat = vec_to_lonlat(rotation[:, :, k])
        cols[name] = np.stack([_wrap_pi(lon), np.radians(lat)], axis=1)
    cols["Phi"] = phi
    cols["Chi local"] = np.mod(np.arctan2(psichi_local[:, 1], psichi_local[:, 0]), 2 * np.pi)
    cols["Psi local"] = np.arccos(np.clip(psichi_local[:, 2], -1.0, 1.0))
    cols["Distance"] = distance
    cols["Chi galactic"] = gl
    cols["Psi galactic"] = gb
    return cols


def _run(n_candidates: int, draw, instrument: InstrumentModel, orbit: OrbitProfile,
         tmin: float, tmax: float, rng: np.random.Generator, desc: str,
         progress: bool, occult: bool, area_scale: float = 1.0) -> dict[str, np.ndarray]:
    parts = []
    cos_h = np.cos(np.radians(orbit.horizon_deg))
    with tqdm(total=n_candidates, desc=desc, unit="photon", disable=not progress) as bar:
        for c0 in range(0, n_candidates, _CHUNK):
            n = min(_CHUNK, n_candidates - c0)
            t = tmin + rng.random(n) * (tmax - tmin)
            att = attitude_at(orbit, t)
            d = draw(n, att["zenith"])
            visible = (np.sum(d * att["zenith"], axis=1) >= cos_h) if occult else \
                np.ones(n, dtype=bool)
            nu = np.einsum("nji,nj->ni", att["rotation"], d)
            ev = instrument.sample_events(nu, rng, area_scale=area_scale)
            keep = ev["keep"]
            # an occulted photon never reaches the detector (decided after the draws, so the
            # random stream does not depend on the geometry)
            ok = visible[keep]
            sel = np.nonzero(keep)[0][ok]
            parts.append(events_to_columns(t[sel], att["rotation"][sel], ev["psichi"][ok],
                                           ev["phi"][ok], ev["energy"][ok], ev["distance"][ok]))
            bar.update(n)
    if not parts:  # no candidates: the columns of no events
        z = np.zeros(0)
        return events_to_columns(z, np.zeros((0, 3, 3)), np.zeros((0, 3)), z, z, z)
    cols = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    order = np.argsort(cols["TimeTags"], kind="stable")
    return {k: v[order] for k, v in cols.items()}


def simulate_sky_events(sky: SkyModel, instrument: InstrumentModel, orbit: OrbitProfile,
                        rng: np.random.Generator, tmin: float | None = None,
                        tmax: float | None = None, progress: bool = True
                        ) -> dict[str, np.ndarray]:
    """Detected events from a sky model over ``[tmin, tmax)``.

    Parameters
    ----------
    sky : SkyModel
    instrument : InstrumentModel
    orbit : OrbitProfile
    rng : numpy.random.Generator
    tmin, tmax : float, optional
        Time range (s); default the orbit profile's.
    progress : bool

    Returns
    -------
    dict of str to ndarray
        DC2 columns, sorted by time.
    """
    tmin = orbit.tmin if tmin is None else tmin
    tmax = orbit.tmax if tmax is None else tmax
    mean = sky.flux * instrument.candidate_area_cm2 * (tmax - tmin)
    n = int(rng.poisson(mean))
    logger.info("%s: %d candidate photons (mean %.4g)", sky.name, n, mean)
    return _run(n, lambda k, zen: sky.sample(k, rng), instrument, orbit, tmin, tmax, rng,
                f"events {sky.name}", progress, occult=True)


def simulate_background_events(background: EarthFixedBackground, instrument: InstrumentModel,
                               orbit: OrbitProfile, rng: np.random.Generator,
                               tmin: float | None = None, tmax: float | None = None,
                               progress: bool = True) -> dict[str, np.ndarray]:
    """Detected events from an Earth-fixed photon field (albedo, isotropic) over ``[tmin, tmax)``.

    Returns
    -------
    dict of str to ndarray
        DC2 columns, sorted by time.
    """
    tmin = orbit.tmin if tmin is None else tmin
    tmax = orbit.tmax if tmax is None else tmax
    horizon = orbit.horizon_deg
    area_scale = instrument.max_area_factor(background.max_cos_theta(orbit))
    mean = background.flux(horizon) * instrument.candidate_area_cm2 * area_scale * (tmax - tmin)
    n = int(rng.poisson(mean))
    logger.info("%s: %d candidate photons (mean %.4g, area bound %.3g)", background.name, n,
                mean, area_scale)
    return _run(n, lambda k, zen: background.sample(zen, horizon, rng), instrument, orbit,
                tmin, tmax, rng, f"events {background.name}", progress, occult=False,
                area_scale=area_scale)
