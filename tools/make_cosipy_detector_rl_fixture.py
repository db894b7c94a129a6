#!/usr/bin/env python
"""Reference numbers for comptonsky's detector-frame data interface and RL from cosipy 0.3.4.

cosipy is used purely as a behaviour oracle: this script loads cosipy's ``DataIF_COSI_DC2`` with
a spacecraft-frame response and a coordinate-system conversion matrix, evaluates its products
(exposure map, expectation, log-likelihood, T-product, background product) on fixed inputs, runs
its ``RL`` with the 0.3 flat parameters, and stores only the numbers in
``tests/data/cosipy_detector_rl_reference.npz``. It does not import comptonsky. The layout of
the file is described in ``tests/data/README.md``.

Three cases, each a full detector-frame problem:

``time``
    cosipy's time-binned test files: the sparse test response (``is_miniDC2_format=True``, which
    sums SigmaTau and Dist), the matrix ``ccm_time_test.hdf5`` and the local-CDS histogram
    ``test_event_histogram_localCDS.hdf5``.
``scatt``
    the dense test response, cosipy's exposure table ``exposure_table_test_nside1_ring.fits``,
    the averaged-pointing ScAtt matrix cosipy builds from it, and
    ``test_event_histogram_localCDS_scatt.h5``.
``orbit``
    the 20-minute generated orbit of ``make_cosipy_detector_fixtures.py`` binned into 15 ScAtt
    bins (nside 4), the averaged-pointing matrix at model nside 2 with the dense test response,
    and Poisson counts drawn (fixed seed) from cosipy's expectation of a fixed sky plus
    background.

Run it with cosipy 0.3.4 (see ``make_cosipy_detector_fixtures.py`` for the environment):

    /root/.pyenv/versions/3.11.7/bin/python3 -m venv /tmp/cosipy034-venv
    /tmp/cosipy034-venv/bin/pip install cosipy==0.3.4 future "numpy==1.26.4" "pandas<3" \
        "healpy==1.19.0" "astropy<7"
    /tmp/cosipy034-venv/bin/pip install "scipy==1.15.3"   # over cosipy's scipy<=1.13 pin
    /tmp/cosipy034-venv/bin/python tools/make_cosipy_detector_rl_fixture.py [output.npz]
"""

from __future__ import annotations

import logging
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_cosipy_detector_fixtures import (  # noqa: E402  (a sibling tool, no comptonsky)
    TEST_DATA,
    ccm_arrays,
    generated_orbit,
    write_ori,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "tests" / "data" / "cosipy_detector_rl_reference.npz"
SEED = 20261202
ORBIT_NSIDE_TABLE = 4
ORBIT_NSIDE_MODEL = 2
N_ITER = 8
EXPECTATION_BKG_NORM = 0.9
INITIAL_FLUX = 1.0e-2  # cm-2 s-1 sr-1, the flat initial map

#: the RL run: cosipy 0.3's flat parameter names (acceleration always applied)
RL_PARAMETERS = f"""
iteration_max: {N_ITER}
minimum_flux:
  value: 0.0
  unit: "cm-2 s-1 sr-1"
acceleration: true
alpha_max: 10.0
response_weighting: true
response_weighting_index: 0.5
smoothing: false
smoothing_FWHM:
  value: 20.0
  unit: "deg"
background_normalization_optimization: true
background_normalization_range: {{"albedo": [0.01, 10.0]}}
save_results: false
"""


def parfile(nside: int, energy_edges: np.ndarray) -> str:
    edges = ", ".join(repr(float(e)) for e in energy_edges)
    init = ", ".join([repr(INITIAL_FLUX)] * (len(energy_edges) - 1))
    lines = ["deconvolution:", '  algorithm: "RL"', "  parameter:"]
    lines += ["    " + ln for ln in RL_PARAMETERS.strip("\n").splitlines()]
    return f"""model_definition:
  class: "AllSkyImage"
  property:
    coordinate: "galactic"
    nside: {nside}
    scheme: "ring"
    energy_edges:
      value: [{edges}]
      unit: "keV"
    unit: "cm-2 s-1 sr-1"
  initialization:
    algorithm: "flat"
    parameter:
      value: [{init}]
      unit: "cm-2 s-1 sr-1"
""" + "\n".join(lines) + "\n"


def sky_model(npix: int, n_ei: int) -> np.ndarray:
    """A fixed, non-flat (lb, Ei) map in cm-2 s-1 sr-1 (no randomness)."""
    j = np.arange(npix)[:, None]
    e = np.arange(n_ei)[None, :]
    return 1e-2 * (1.0 + 0.6 * np.sin(1.3 * j + 0.4) ** 2) * (1.0 + 0.5 * np.cos(0.7 * e)) \
        * (1.0 + 2.0 * (j == 3))


def background_template(shape: tuple, weights: np.ndarray, total: float | None = None
                        ) -> np.ndarray:
    """A fixed positive background (counts) over (Time|ScAtt, Em, Phi, PsiChi), scaled to
    ``total`` counts when given."""
    n_t, n_em, n_phi, n_psi = shape
    em = 1.0 / (1.0 + np.arange(n_em))
    phi = 0.3 + np.sin(np.radians(3.0 + 6.0 * np.arange(n_phi)))
    psi = 1.0 + 0.3 * np.cos(np.arange(n_psi))
    b = 0.05 * weights[:, None, None, None] * em[None, :, None, None] \
        * phi[None, None, :, None] * psi[None, None, None, :]
    return b if total is None else b * (total / b.sum())


def _vals(h) -> np.ndarray:
    c = h.contents
    if hasattr(c, "todense"):
        c = c.todense()
    return np.array(getattr(c, "value", c), dtype=np.float64)


def run_case(dataif, nside_model: int, energy_edges: np.ndarray, event_counts: np.ndarray,
             bkg: np.ndarray) -> dict:
    from cosipy.image_deconvolution import AllSkyImageModel, ImageDeconvolution
    from histpy import Histogram

    out = {"exposure_map": _vals(dataif.exposure_map)}
    npix, n_ei = dataif.model_axes["lb"].npix, dataif.model_axes["Ei"].nbins
    model = AllSkyImageModel(nside=nside_model, energy_edges=energy_edges * dataif.model_axes["Ei"].unit)
    model[:] = sky_model(npix, n_ei) * model.unit
    out["model_in"] = _vals(model)
    eps = dataif.calc_expectation(model, dict_bkg_norm={"albedo": EXPECTATION_BKG_NORM})
    out["expectation"] = _vals(eps)
    out["loglike"] = np.float64(dataif.calc_loglikelihood(eps))
    ratio = Histogram(dataif.data_axes, contents=event_counts / out["expectation"])
    out["t_product"] = _vals(dataif.calc_T_product(ratio))
    out["bkg_product"] = np.float64(dataif.calc_bkg_model_product("albedo", ratio))

    with tempfile.TemporaryDirectory() as td:
        pf = Path(td) / "par.yml"
        pf.write_text(parfile(nside_model, energy_edges))
        imdec = ImageDeconvolution()
        imdec.set_dataset([dataif])
        imdec.read_parameterfile(str(pf))
        imdec.initialize()
        imdec.run_deconvolution()
        alg = imdec._deconvolution
        results = imdec.results
    out["parfile"] = np.str_(parfile(nside_model, energy_edges))
    out["initial_model"] = _vals(imdec.initial_model)
    out["summed_exposure_map"] = _vals(alg.summed_exposure_map)
    out["rl_model"] = np.stack([_vals(r["model"]) for r in results])
    out["rl_alpha"] = np.array([float(r["alpha"]) for r in results])
    out["rl_bkg_norm"] = np.array([float(r["background_normalization"]["albedo"]) for r in results])
    out["rl_loglike"] = np.array([float(np.sum(r["loglikelihood"])) for r in results])
    out["event"] = event_counts
    out["background"] = bkg
    return out


def main(out_path: Path) -> None:
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    import astropy.units as u
    import cosipy
    import healpy
    import histpy
    from cosipy.image_deconvolution import (
        AllSkyImageModel,
        CoordsysConversionMatrix,
        DataIF_COSI_DC2,
        SpacecraftAttitudeExposureTable,
    )
    from cosipy.response import FullDetectorResponse
    from cosipy.spacecraftfile import SpacecraftFile
    from histpy import Histogram

    out = {"cosipy_version": np.str_(cosipy.__version__),
           "histpy_version": np.str_(histpy.__version__),
           "healpy_version": np.str_(healpy.__version__),
           "numpy_version": np.str_(np.__version__),
           "n_iter": np.int64(N_ITER), "expectation_bkg_norm": np.float64(EXPECTATION_BKG_NORM)}

    def store(name, res):
        for k, v in res.items():
            out[f"{name}/{k}"] = v
        print(f"{name:6s} exposure {res['exposure_map'].sum():.6g}  logL {res['loglike']:.6f}  "
              f"RL logL {res['rl_loglike'][-1]:.6f}  bkg {res['rl_bkg_norm'][-1]:.6f}  "
              f"alpha {np.array2string(res['rl_alpha'], precision=3)}")

    def with_background(event_hist, weights):
        ev = _vals(event_hist)
        bkg = background_template(ev.shape, weights, total=0.3 * ev.sum())
        return ev, bkg, Histogram(event_hist.axes, contents=bkg)

    sparse = FullDetectorResponse.open(TEST_DATA / "test_full_detector_response.h5")
    dense = FullDetectorResponse.open(TEST_DATA / "test_full_detector_response_dense.h5")
    edges = np.asarray(dense.axes["Ei"].edges.to_value(u.keV), np.float64)

    # 1. time binning, cosipy's own files
    ccm = CoordsysConversionMatrix.open(TEST_DATA / "ccm_time_test.hdf5")
    event = Histogram.open(TEST_DATA / "test_event_histogram_localCDS.hdf5").to_dense()
    ev, bkg, bkg_h = with_background(event, np.array([1.0]))
    dataif = DataIF_COSI_DC2.load("time", event, {"albedo": bkg_h}, sparse,
                                  coordsys_conv_matrix=ccm, is_miniDC2_format=True)
    store("time", run_case(dataif, 1, edges, ev, bkg))

    # 2. ScAtt binning from cosipy's exposure table
    table = SpacecraftAttitudeExposureTable.from_fits(TEST_DATA / "exposure_table_test_nside1_ring.fits")
    ccm = CoordsysConversionMatrix.spacecraft_attitude_binning_ccm(dense, table,
                                                                   use_averaged_pointing=True)
    event = Histogram.open(TEST_DATA / "test_event_histogram_localCDS_scatt.h5").to_dense()
    ev, bkg, bkg_h = with_background(event, np.asarray(table["exposure"], np.float64))
    dataif = DataIF_COSI_DC2.load("scatt", event, {"albedo": bkg_h}, dense,
                                  coordsys_conv_matrix=ccm)
    res = run_case(dataif, 1, edges, ev, bkg)
    res.update(ccm_arrays("ccm", ccm))
    store("scatt", res)

    # 3. the generated orbit, 15 ScAtt bins, simulated counts
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_ori(tmp / "gen.ori", generated_orbit())
        ori = SpacecraftFile.parse_from_file(tmp / "gen.ori")
        table = SpacecraftAttitudeExposureTable.from_orientation(ori, nside=ORBIT_NSIDE_TABLE)
        ccm = CoordsysConversionMatrix.spacecraft_attitude_binning_ccm(
            dense, table, nside_model=ORBIT_NSIDE_MODEL, use_averaged_pointing=True)
        ccm.write(tmp / "ccm.h5", overwrite=True)  # cosipy's own file layout, read back
        ccm = CoordsysConversionMatrix.open(tmp / "ccm.h5")
    n_s = ccm.axes["ScAtt"].nbins
    resp_axes = dense.axes
    data_axes = histpy.Axes([histpy.Axis(np.arange(n_s + 1), label="ScAtt"), resp_axes["Em"],
                             resp_axes["Phi"], resp_axes["PsiChi"]])
    weights = np.asarray(table["exposure"], np.float64)
    bkg = background_template(tuple(data_axes.nbins), weights)
    bkg_h = Histogram(data_axes, contents=bkg)
    dataif = DataIF_COSI_DC2.load("orbit", Histogram(data_axes, contents=bkg.copy()),
                                  {"albedo": bkg_h}, dense, coordsys_conv_matrix=ccm)
    truth = AllSkyImageModel(nside=ORBIT_NSIDE_MODEL, energy_edges=edges * u.keV)
    truth[:] = 3.0 * sky_model(truth.axes["lb"].npix, len(edges) - 1) * truth.unit
    mean = _vals(dataif.calc_expectation(truth, dict_bkg_norm={"albedo": 1.0}))
    ev = np.random.default_rng(SEED).poisson(mean).astype(np.float64)
    dataif = DataIF_COSI_DC2.load("orbit", Histogram(data_axes, contents=ev), {"albedo": bkg_h},
                                  dense, coordsys_conv_matrix=ccm)
    res = run_case(dataif, ORBIT_NSIDE_MODEL, edges, ev, bkg)
    res.update(ccm_arrays("ccm", ccm))
    res["truth"] = _vals(truth)
    res["nside_table"] = np.int64(ORBIT_NSIDE_TABLE)
    store("orbit", res)
    sparse.close()
    dense.close()

    out_path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out_path, **out)
    print(f"wrote {out_path} ({out_path.stat().st_size / 1024:.0f} KiB, {len(out)} arrays)")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT)
