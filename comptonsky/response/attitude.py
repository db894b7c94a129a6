"""Attitude bins: groups of time sharing one attitude, from a sampled attitude history."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import healpy as hp
import numpy as np

from ..errors import InvalidParameterError
from ..geometry import horizon_angle_deg
from ..io.orientation import Orientation

__all__ = ["AttitudeBins", "bin_attitudes"]

logger = logging.getLogger(__name__)


@dataclass
class AttitudeBins:
    """Groups of time sharing one attitude: for each of T bins its detector → Galactic
    ``rotations`` (T, 3, 3), Galactic ``zenith`` unit vector (T, 3), ``horizon_deg`` (T,) (angle
    from the zenith beyond which the Earth blocks the sky) and ``livetime`` (T,) in s.

    Optionally the samples the bins were made from: ``sample_bin`` (N,) int (bin of each
    sample), ``sample_zenith`` (N, 3), ``sample_horizon_deg`` (N,) and ``sample_livetime`` (N,)
    s. When they are given, Earth occultation is decided per sample (the time a sky direction
    is visible in bin t is the live time of those samples of t that see it) instead of from
    the bin's mean zenith.
    """

    rotations: np.ndarray
    zenith: np.ndarray
    horizon_deg: np.ndarray
    livetime: np.ndarray
    sample_bin: np.ndarray | None = None
    sample_zenith: np.ndarray | None = None
    sample_horizon_deg: np.ndarray | None = None
    sample_livetime: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.livetime)

    @property
    def total_livetime(self) -> float:
        """Sum of live times (s)."""
        return float(self.livetime.sum())


def _quantize_attitudes(x, z, zen, cell_deg):
    """Integer cell index of each attitude: z-axis pixel, roll of x about z, zenith pixel."""
    nside_q = 1
    while hp.nside2resol(nside_q, arcmin=True) / 60.0 > cell_deg and nside_q < 8192:
        nside_q *= 2
    zpix = hp.vec2pix(nside_q, z[:, 0], z[:, 1], z[:, 2]).astype(np.int64)
    # roll: angle of x about z, measured from the projection of the Galactic pole (or x axis)
    ref = np.where(np.abs(z[:, 2:3]) < 0.99, np.array([0.0, 0.0, 1.0]), np.array([1.0, 0, 0]))
    e1 = ref - np.sum(ref * z, axis=1, keepdims=True) * z
    e1 /= np.linalg.norm(e1, axis=1, keepdims=True)
    e2 = np.cross(z, e1)
    roll = np.arctan2(np.sum(x * e2, axis=1), np.sum(x * e1, axis=1))
    rbin = np.floor((roll + np.pi) / np.radians(cell_deg)).astype(np.int64)
    rot = np.stack([x, np.cross(z, x), z], axis=-1)
    zen_loc = np.einsum("nji,nj->ni", rot, zen)
    zlpix = hp.vec2pix(nside_q, zen_loc[:, 0], zen_loc[:, 1], zen_loc[:, 2]).astype(np.int64)
    _, inv = np.unique(np.stack([zpix, rbin, zlpix], axis=1), axis=0, return_inverse=True)
    return inv.ravel(), zen_loc


def _frame(x, z):
    """Rotations (n, 3, 3) with columns x (made orthogonal to z, unit), z × x and z."""
    x = x - np.sum(x * z, axis=1, keepdims=True) * z
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return np.stack([x, np.cross(z, x), z], axis=-1)


def _weighted_unit_mean(inv, w, v, n):
    s = np.stack([np.bincount(inv, weights=w * v[:, c], minlength=n) for c in range(3)], axis=1)
    return s / np.linalg.norm(s, axis=1, keepdims=True)


def _leader_clusters(rot9, zl, weight, radius_rad):
    """Greedy clustering: each cell joins the nearest leader within ``radius_rad`` (rotation
    angle and zenith direction), else becomes a leader. Heaviest cells lead first."""
    order = np.argsort(-weight, kind="stable")
    cos_rot = 1.0 + 2.0 * np.cos(radius_rad)  # trace of R1^T R2 at the radius
    cos_zen = np.cos(radius_rad)
    lead_rot = np.empty((len(order), 9))
    lead_zl = np.empty((len(order), 3))
    nlead = 0
    label = np.empty(len(order), dtype=np.int64)
    for i in order:
        if nlead:
            tr = lead_rot[:nlead] @ rot9[i]
            ok = (tr >= cos_rot) & (lead_zl[:nlead] @ zl[i] >= cos_zen)
            if ok.any():
                label[i] = int(np.argmax(np.where(ok, tr, -np.inf)))
                continue
        lead_rot[nlead] = rot9[i]
        lead_zl[nlead] = zl[i]
        label[i] = nlead
        nlead += 1
    return label, nlead


def bin_attitudes(orientation: Orientation, resolution_deg: float = 1.0,
                  horizon_deg: float | None = None, tmin: float | None = None,
                  tmax: float | None = None) -> AttitudeBins:
    """Group an attitude history into attitude bins about ``resolution_deg`` across.

    Time stamps are first gathered into fine cells (z-axis pixel, roll of x about z, zenith
    pixel in the detector frame, a third of the resolution wide); the cells are then clustered
    greedily so that every cell lies within half the resolution (rotation angle, and zenith
    direction) of its cluster's leader. A rotation about a fixed axis (the DC2 attitude) thus
    needs about 2 × 360°/resolution bins. Each bin's attitude is the live-time-weighted mean of
    its members (re-orthonormalised).

    Parameters
    ----------
    orientation : Orientation
        Sampled history; each row's live time belongs to that row's attitude.
    resolution_deg : float
        Target angular size of a bin (deg).
    horizon_deg : float, optional
        Earth-limb angle from the zenith (deg). Default: from each row's altitude
        (113° at 550 km); rows with unknown altitude use 550 km.
    tmin, tmax : float, optional
        Restrict to this time range first.
    """
    if not resolution_deg > 0:
        raise InvalidParameterError(f"attitude resolution must be positive, got {resolution_deg}")
    o = orientation
    if tmin is not None or tmax is not None:
        o = o.select(-np.inf if tmin is None else tmin, np.inf if tmax is None else tmax)
    live = o.livetime
    keep = live > 0
    if not np.any(keep):
        raise InvalidParameterError("the attitude history has no live time in the range")
    x, z, zen, alt, live = (o.x_axis[keep], o.z_axis[keep], o.zenith[keep], o.altitude[keep],
                            live[keep])
    fine, zen_loc = _quantize_attitudes(x, z, zen, resolution_deg / 3.0)
    nf = int(fine.max()) + 1
    wf = np.bincount(fine, weights=live, minlength=nf)
    rotf = _frame(_weighted_unit_mean(fine, live, x, nf),
                  _weighted_unit_mean(fine, live, z, nf)).reshape(nf, 9)
    zlf = _weighted_unit_mean(fine, live, zen_loc, nf)
    label, nb = _leader_clusters(rotf, zlf, wf, np.radians(resolution_deg) / 2.0)
    inv = label[fine]
    w = np.bincount(inv, weights=live, minlength=nb)
    zb, xb, zenb = (_weighted_unit_mean(inv, live, v, nb) for v in (z, x, zen))
    rotb = _frame(xb, zb)
    if horizon_deg is None:
        altb = np.bincount(inv, weights=live * np.where(alt > 0, alt, 550.0), minlength=nb) / w
        hor = np.array([horizon_angle_deg(a) for a in altb])
    else:
        hor = np.full(nb, float(horizon_deg))
    logger.info("attitude binning: %d samples -> %d bins (%.2f deg), live time %.6g s",
                len(live), nb, resolution_deg, w.sum())
    return AttitudeBins(rotations=rotb, zenith=zenb, horizon_deg=hor, livetime=w)
