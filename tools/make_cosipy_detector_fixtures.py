#!/usr/bin/env python
"""Reference numbers for comptonsky's detector-frame classes from cosipy 0.3.4.

cosipy is used purely as a behaviour oracle: this script runs its ``SpacecraftFile``,
``SpacecraftAttitudeExposureTable``, ``CoordsysConversionMatrix`` and ``FullDetectorResponse``
on the COSI test files (``../shared/reference/cosipy-test-data``) and on a small generated orbit,
and stores only the resulting numbers in ``tests/data/cosipy_detector_reference.npz``. It does
not import comptonsky. The layout of the file is described in ``tests/data/README.md``.

cosipy 0.3.4 is the release whose API the ScAtt tutorials use (``SpacecraftFile.parse_from_file``,
``exposure``/``delta_time`` columns, ``time_binning_ccm``); it reads the version-1 DRM files.
It needs Python 3.11 with numpy < 2 and histpy < 2, and scipy ≥ 1.15 (whose
``Rotation.from_matrix`` returns the nearest rotation of the not-quite-orthogonal averaged axes;
older scipy versions return an approximation that differs by up to ~1e-3):

    /root/.pyenv/versions/3.11.7/bin/python3 -m venv /tmp/cosipy034-venv
    /tmp/cosipy034-venv/bin/pip install cosipy==0.3.4 future "numpy==1.26.4" "pandas<3" \
        "healpy==1.19.0" "astropy<7"
    /tmp/cosipy034-venv/bin/pip install "scipy==1.15.3"   # over cosipy's scipy<=1.13 pin
    /tmp/cosipy034-venv/bin/python tools/make_cosipy_detector_fixtures.py [output.npz]
"""

from __future__ import annotations

import logging
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
TEST_DATA = REPO_ROOT.parent / "shared" / "reference" / "cosipy-test-data"
DEFAULT_OUT = REPO_ROOT / "tests" / "data" / "cosipy_detector_reference.npz"

#: generated orbit: 1-s samples, 20 minutes, zenith pointing, 550 km, live time = spacing
GEN_T0 = 1835487300.0
GEN_N = 1201
GEN_PERIOD = 5730.0
GEN_INCLINATION = 20.0  # deg, orbit plane tilt w.r.t. the equator
GEN_NSIDE_TABLE = 4
GEN_NSIDE_DRM = 4
GEN_NSIDE_MODEL = 2
GEN_TIME_EDGES = GEN_T0 + np.array([0.0, 150.0, 300.5, 600.0, 900.0, 1200.0])
ORI_FORMAT = "OG %.17g %.17g %.17g %.17g %.17g %.17g %.17g %.17g %.17g"


def generated_orbit() -> np.ndarray:
    """(N, 9) .ori rows: t, x_b, x_l, z_b, z_l, altitude, zenith_b, zenith_l, livetime.

    z follows a circular orbit (zenith pointing); x is the Galactic-north tangent at z. The
    start phase is the first (in 5° steps) for which neither axis comes within 15° of a
    Galactic pole nor crosses l = 0° between consecutive samples (cosipy 0.3 averages l and b
    of the interval end points, which is only meaningful away from those places).
    """
    from astropy.coordinates import ICRS, SkyCoord

    eye = SkyCoord(x=[1.0, 0.0, 0.0], y=[0.0, 1.0, 0.0], z=[0.0, 0.0, 1.0],
                   representation_type="cartesian", frame=ICRS())
    g = eye.galactic.cartesian.xyz.value
    inc = np.radians(GEN_INCLINATION)
    tilt = np.array([[1, 0, 0], [0, np.cos(inc), -np.sin(inc)], [0, np.sin(inc), np.cos(inc)]])
    t = GEN_T0 + np.arange(GEN_N, dtype=np.float64)
    for phase0 in np.arange(0.0, 360.0, 5.0):
        ph = np.radians(phase0) + 2 * np.pi * (t - GEN_T0) / GEN_PERIOD
        zi = np.stack([np.cos(ph), np.sin(ph), np.zeros_like(ph)], -1) @ tilt.T
        z = zi @ g.T
        zl = np.degrees(np.arctan2(z[:, 1], z[:, 0])) % 360.0
        zb = np.degrees(np.arcsin(np.clip(z[:, 2], -1, 1)))
        xl = np.where(zb >= 0, zl + 180.0, zl) % 360.0
        xb = 90.0 - np.abs(zb)
        ok = (np.abs(zb).max() < 75) and (xb.max() < 75) and (xb.min() > -75)
        ok = ok and np.all(np.abs(np.diff(zl)) < 180) and np.all(np.abs(np.diff(xl)) < 180)
        if ok:
            live = np.ones(GEN_N)
            live[-1] = 0.0
            return np.column_stack([t, xb, xl, zb, zl, np.full(GEN_N, 550.0), zb, zl, live])
    raise RuntimeError("no orbit phase satisfies the constraints")


def write_ori(path: Path, table: np.ndarray) -> None:
    with open(path, "w") as fh:
        fh.write("Type OrientationsGalactic\n")
        for row in table:
            fh.write(ORI_FORMAT % tuple(row) + "\n")
        fh.write("EN\n")


def write_axes_only_drm(path: Path, nside: int) -> None:
    """A dense DRM with a NuLambda axis of ``nside`` and one bin elsewhere (zero contents)."""
    import h5py

    npix = 12 * nside * nside
    with h5py.File(path, "w") as f:
        drm = f.create_group("DRM")
        drm.attrs["UNIT"] = "cm2"
        drm.attrs["SPARSE"] = False
        axes = drm.create_group("AXES", track_order=True)
        for label, data, attrs in (
                ("NuLambda", np.arange(npix + 1), {"TYPE": "healpix", "NSIDE": nside,
                                                   "SCHEME": "ring"}),
                ("Ei", np.array([500.0, 520.0]), {"TYPE": "log", "UNIT": "keV"}),
                ("Em", np.array([500.0, 520.0]), {"TYPE": "log", "UNIT": "keV"}),
                ("Phi", np.array([0.0, 180.0]), {"TYPE": "linear", "UNIT": "deg"}),
                ("PsiChi", np.arange(13), {"TYPE": "healpix", "NSIDE": 1, "SCHEME": "ring"})):
            ds = axes.create_dataset(label, data=data)
            for k, v in attrs.items():
                ds.attrs[k] = v
            ds.attrs["DESCRIPTION"] = label
        drm.create_dataset("CONTENTS", data=np.zeros((npix, 1, 1, 1, 12)), compression="gzip")


def table_arrays(prefix: str, table) -> dict:
    out = {}
    out[f"{prefix}/scatt_binning_index"] = np.asarray(table["scatt_binning_index"], np.int64)
    hp_idx = np.array([tuple(p) for p in table["healpix_index"]], dtype=np.int64).reshape(-1, 2)
    out[f"{prefix}/healpix_index"] = hp_idx
    out[f"{prefix}/exposure"] = np.asarray(table["exposure"], np.float64)
    out[f"{prefix}/num_pointings"] = np.asarray(table["num_pointings"], np.int64)
    out[f"{prefix}/bkg_group"] = np.asarray(table["bkg_group"], np.int64)
    out[f"{prefix}/zpointing_averaged"] = np.stack([np.asarray(a, float)
                                                    for a in table["zpointing_averaged"]])
    out[f"{prefix}/xpointing_averaged"] = np.stack([np.asarray(a, float)
                                                    for a in table["xpointing_averaged"]])
    out[f"{prefix}/zpointing"] = np.concatenate([np.asarray(a, float).reshape(-1, 2)
                                                 for a in table["zpointing"]])
    out[f"{prefix}/xpointing"] = np.concatenate([np.asarray(a, float).reshape(-1, 2)
                                                 for a in table["xpointing"]])
    out[f"{prefix}/delta_time"] = np.concatenate([np.asarray(a, float)
                                                  for a in table["delta_time"]])
    return out


def ccm_arrays(prefix: str, ccm) -> dict:
    c = ccm.contents
    c = c if hasattr(c, "coords") else __import__("sparse").COO.from_numpy(np.asarray(c))
    return {f"{prefix}/coords": np.asarray(c.coords, dtype=np.int32),
            f"{prefix}/data": np.asarray(c.data, dtype=np.float64),
            f"{prefix}/shape": np.asarray(c.shape, dtype=np.int64),
            f"{prefix}/edges0": np.asarray(ccm.axes[0].edges.value
                                           if hasattr(ccm.axes[0].edges, "value")
                                           else ccm.axes[0].edges, dtype=np.float64),
            f"{prefix}/lb_scheme": np.str_(str(ccm.axes["lb"].scheme).lower())}


def main(out_path: Path) -> None:
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    import astropy.units as u
    import cosipy
    import healpy
    import histpy
    from cosipy.image_deconvolution import CoordsysConversionMatrix, SpacecraftAttitudeExposureTable
    from cosipy.response import FullDetectorResponse
    from cosipy.spacecraftfile import SpacecraftFile

    out = {"cosipy_version": np.str_(cosipy.__version__),
           "histpy_version": np.str_(histpy.__version__),
           "healpy_version": np.str_(healpy.__version__),
           "numpy_version": np.str_(np.__version__)}

    # 1. the 10-second test orientation
    ori = SpacecraftFile.parse_from_file(TEST_DATA / "20280301_first_10sec.ori")
    out["ori10/time"] = np.asarray(ori.get_time().unix, np.float64)
    out["ori10/x_lb"] = np.column_stack([ori.x_pointings.l.deg, ori.x_pointings.b.deg])
    out["ori10/z_lb"] = np.column_stack([ori.z_pointings.l.deg, ori.z_pointings.b.deg])
    out["ori10/livetime"] = np.asarray(ori.livetime, np.float64)
    out["ori10/altitude"] = np.asarray(ori.get_altitude(), np.float64)
    t = ori.get_time()
    et10 = SpacecraftAttitudeExposureTable.from_orientation(ori, nside=1, start=t[0], stop=t[-1],
                                                            min_exposure=0, min_num_pointings=1)
    out.update(table_arrays("et10", et10))
    fdr = FullDetectorResponse.open(TEST_DATA / "test_full_detector_response.h5")
    for avg in (False, True):
        ccm = CoordsysConversionMatrix.spacecraft_attitude_binning_ccm(
            fdr, et10, use_averaged_pointing=avg)
        out.update(ccm_arrays(f"ccm10_scatt_avg{int(avg)}", ccm))

    # 2. detector response pixels (sparse test file, SigmaTau and Dist summed)
    imaging = ["Ei", "Em", "Phi", "PsiChi"]
    proj = {lab: [] for lab in imaging}
    totals = []
    for pix in range(fdr.npix):
        dr = fdr[pix].project(imaging)
        dense = np.asarray(dr.contents.todense() if hasattr(dr.contents, "todense")
                           else dr.contents)
        dense = np.asarray(getattr(dense, "value", dense), dtype=np.float64)
        totals.append(dense.sum())
        for k, lab in enumerate(imaging):
            proj[lab].append(dense.sum(axis=tuple(i for i in range(4) if i != k)))
        if pix == 3:
            out["drm/pixel3"] = dense
    out["drm/total"] = np.array(totals)
    for lab in imaging:
        out[f"drm/proj_{lab}"] = np.array(proj[lab])
    fdr.close()

    # 3. the generated orbit
    table = generated_orbit()
    out["gen/ori_table"] = table
    out["gen/ori_format"] = np.str_(ORI_FORMAT)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_ori(tmp / "gen.ori", table)
        write_axes_only_drm(tmp / "drm4.h5", GEN_NSIDE_DRM)
        gori = SpacecraftFile.parse_from_file(tmp / "gen.ori")
        fdr4 = FullDetectorResponse.open(tmp / "drm4.h5")
        tables = {}
        for scheme in ("ring", "nested"):
            et = SpacecraftAttitudeExposureTable.from_orientation(gori, nside=GEN_NSIDE_TABLE,
                                                                  scheme=scheme)
            tables[scheme] = et
            out.update(table_arrays(f"gen_et_{scheme}", et))
        cut = SpacecraftAttitudeExposureTable.from_orientation(
            gori, nside=GEN_NSIDE_TABLE, min_exposure=60.0, min_num_pointings=1)
        out["gen_et_min60/healpix_index"] = np.array(
            [tuple(p) for p in cut["healpix_index"]], dtype=np.int64).reshape(-1, 2)
        out["gen_et_min60/scatt_binning_index"] = np.asarray(cut["scatt_binning_index"])
        for avg in (False, True):
            ccm = CoordsysConversionMatrix.spacecraft_attitude_binning_ccm(
                fdr4, tables["ring"], nside_model=GEN_NSIDE_MODEL, use_averaged_pointing=avg)
            out.update(ccm_arrays(f"gen_ccm_scatt_avg{int(avg)}", ccm))
        ccm = CoordsysConversionMatrix.time_binning_ccm(fdr4, gori, GEN_TIME_EDGES * u.s,
                                                        nside_model=GEN_NSIDE_MODEL)
        out.update(ccm_arrays("gen_ccm_time", ccm))
        fdr4.close()
    out["gen/nside_table"] = np.int64(GEN_NSIDE_TABLE)
    out["gen/nside_drm"] = np.int64(GEN_NSIDE_DRM)
    out["gen/nside_model"] = np.int64(GEN_NSIDE_MODEL)
    out["gen/time_edges"] = GEN_TIME_EDGES
    out_path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out_path, **out)
    print(f"wrote {out_path} ({out_path.stat().st_size / 1024:.0f} KiB, {len(out)} arrays)")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT)
