#!/usr/bin/env python
"""Reference numbers for comptonsky's Galactic responses from cosipy 0.3.4.

cosipy is used purely as a behaviour oracle: this script runs its
``FullDetectorResponse.get_extended_source_response`` on the COSI test files
(``../shared/reference/cosipy-test-data``: the dense test response, the 10-s orientation, and
the 20-minute generated orbit of ``tools/make_cosipy_detector_fixtures.py``, whose rows carry a
real zenith and altitude, unlike the 10-s file) and stores only numbers in
``tests/data/cosipy_galactic_response_reference.npz``. It does not import comptonsky. cosipy
accepts only dense responses here (``Coord + scatt_map currently only supported for dense
responses``).

The file is kept small (< 1 MB): per case it holds at most ``N_KEEP`` entries (a fixed random
choice) among those above 1e-3 of the case's maximum, as flat indices into the full array and
float32 values, and the sums over (Ei, Em, Phi, PsiChi) of every sky pixel; the orbit's rows are
stored too (``orbit_rows``) so that the test can rebuild the same orientation.

Environment (as for ``tools/make_cosipy_detector_fixtures.py``)::

    python3.11 -m venv /tmp/cosipy-venv
    /tmp/cosipy-venv/bin/pip install cosipy==0.3.4 future "scipy==1.15.3"
    /tmp/cosipy-venv/bin/python tools/make_cosipy_galactic_fixture.py [output.npz]
"""

from __future__ import annotations

import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
TEST_DATA = REPO_ROOT.parent / "shared" / "reference" / "cosipy-test-data"
DEFAULT_OUT = REPO_ROOT / "tests" / "data" / "cosipy_galactic_response_reference.npz"
DRM = "test_full_detector_response_dense.h5"
ORI = "20280301_first_10sec.ori"
#: (case name, orientation, nside_image, nside_scatt_map, Earth_occ)
CASES = [("ori10s_no_occ", "ori10s", None, None, False),
         ("orbit_default", "orbit", None, None, True),
         ("orbit_no_occ", "orbit", None, None, False),
         ("orbit_image2_scatt2", "orbit", 2, 2, True)]
KEEP_ABOVE = 1e-3
N_KEEP = 12000


def main(out: Path) -> None:
    warnings.simplefilter("ignore")
    import cosipy
    import histpy
    import scipy
    from cosipy.response import FullDetectorResponse
    from cosipy.spacecraftfile import SpacecraftFile

    data = {"cosipy_version": np.str_(cosipy.__version__),
            "histpy_version": np.str_(histpy.__version__),
            "scipy_version": np.str_(scipy.__version__),
            "numpy_version": np.str_(np.__version__),
            "drm": np.str_(DRM), "ori": np.str_(ORI), "keep_above": np.float64(KEEP_ABOVE),
            "cases": np.array([c[0] for c in CASES])}
    sys.path.insert(0, str(REPO_ROOT / "tools"))
    from make_cosipy_detector_fixtures import generated_orbit, write_ori

    rows = generated_orbit()
    data["orbit_rows"] = rows
    rng = np.random.default_rng(13)
    with tempfile.TemporaryDirectory() as tmp:
        write_ori(Path(tmp) / "orbit.ori", rows)
        oris = {"ori10s": SpacecraftFile.parse_from_file(str(TEST_DATA / ORI)),
                "orbit": SpacecraftFile.parse_from_file(str(Path(tmp) / "orbit.ori"))}
    with FullDetectorResponse.open(TEST_DATA / DRM) as fdr:
        for name, which, nside_image, nside_scatt, occ in CASES:
            ori = oris[which]
            esr = fdr.get_extended_source_response(ori, coordsys="galactic",
                                                   nside_image=nside_image,
                                                   nside_scatt_map=nside_scatt, Earth_occ=occ)
            c = np.asarray(esr.contents.value if hasattr(esr.contents, "value")
                           else esr.contents, dtype=np.float64)
            flat = c.ravel()
            idx = np.nonzero(flat > KEEP_ABOVE * flat.max())[0]
            if len(idx) > N_KEEP:
                idx = np.sort(rng.choice(idx, N_KEEP, replace=False))
            data[f"{name}/shape"] = np.array(c.shape, dtype=np.int64)
            data[f"{name}/orientation"] = np.str_(which)
            data[f"{name}/n_above"] = np.int64(np.sum(flat > KEEP_ABOVE * flat.max()))
            data[f"{name}/nside_image"] = np.int64(nside_image or 0)
            data[f"{name}/nside_scatt_map"] = np.int64(nside_scatt or 0)
            data[f"{name}/earth_occ"] = np.bool_(occ)
            data[f"{name}/index"] = idx.astype(np.int32)
            data[f"{name}/value"] = flat[idx].astype(np.float32)
            data[f"{name}/pixel_sum"] = c.reshape(c.shape[0], -1).sum(axis=1)
            data[f"{name}/max"] = np.float64(flat.max())
            print(name, c.shape, len(idx), "entries kept, max", flat.max(), "unit", esr.unit)
    np.savez_compressed(out, **data)
    print("wrote", out, out.stat().st_size, "bytes")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT)
