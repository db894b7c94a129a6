"""Fits, replicates and response blocks on a local Dask cluster (127.0.0.1, no dashboard).

The references are the one-process runs: maps equal to 1e-12 (relative to the map's maximum),
bit for bit the same on 1 and 2 workers for the same blocks; a worker killed mid-run is
replaced and the run ends on the same map, or the run stops naming the lost block.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip("distributed")

from dask.distributed import Client, LocalCluster  # noqa: E402

from comptonsky import DataIF_COSI_DC2  # noqa: E402
from comptonsky.distributed.blocks import split_dataset  # noqa: E402
from comptonsky.distributed.fit import DistributedJointData  # noqa: E402
from comptonsky.errors import DistributedError, InvalidParameterError  # noqa: E402
from comptonsky.io.histogram import write_histogram  # noqa: E402

from .conftest import prepared_deconvolution, write_parfile  # noqa: E402
from .test_detector_frame import NSIDE as DF_NSIDE  # noqa: E402
from .test_detector_frame import fit as df_fit  # noqa: E402
from .test_detector_frame import problem  # noqa: E402, F401  (fixture)

TOL = 1e-12
pytestmark = pytest.mark.filterwarnings("ignore:Port 8787 is already in use")


def _cluster(n: int, processes: bool = False) -> LocalCluster:
    kw = {} if processes else {"protocol": "tcp"}
    return LocalCluster(n_workers=n, threads_per_worker=1, processes=processes,
                        host="127.0.0.1", dashboard_address=None, **kw)


@pytest.fixture(scope="module")
def clients():
    """{1: client of a 1-worker cluster, 2: client of a 2-worker cluster} (threads)."""
    with _cluster(1) as c1, Client(c1, timeout=60) as k1, _cluster(2) as c2, \
            Client(c2, timeout=60) as k2:
        yield {1: k1, 2: k2}


def _map(deconv) -> np.ndarray:
    return np.asarray(deconv.results[-1]["model"].contents.value, dtype=np.float64)


def _close(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


CASES = {
    "RL max_step": ("RL", {"accel": True}, ()),
    "RL SQUAREM": ("RL", {"accel": True, "method": "SQUAREM"}, ()),
    "RLsimple": ("RLsimple", {"bkg": False}, ()),
    "MAP_RL": ("MAP_RL", {}, ()),
}


def _parfile(tmp_path, algorithm, settings, iterations=8):
    path = write_parfile(tmp_path, algorithm=algorithm, iterations=iterations, **settings)
    if algorithm == "MAP_RL":
        path.write_text(path.read_text().replace(
            "    save_results:", "    prior:\n        TSV:\n            coefficient: 1.0e+2\n"
            "    save_results:"))
    return path


@pytest.mark.parametrize("case", list(CASES))
def test_fit_equals_one_process_and_ignores_worker_count(small_problem, tmp_path, clients, case):
    algorithm, settings, overrides = CASES[case]
    par = _parfile(tmp_path, algorithm, settings)
    ref = prepared_deconvolution(small_problem, par, overrides)
    ref.run_deconvolution(progress=False)
    maps = {}
    for n, client in clients.items():
        d = prepared_deconvolution(small_problem, par, overrides)
        d.run_deconvolution(progress=False, client=client, n_blocks=3)
        maps[n] = _map(d)
        assert _close(maps[n], _map(ref)) < TOL
        norms, ref_norms = (x.results[-1]["background_normalization"] for x in (d, ref))
        assert norms["albedo"] == pytest.approx(ref_norms["albedo"], rel=TOL)
        assert np.sum(d.results[-1]["log-likelihood"]) == pytest.approx(
            np.sum(ref.results[-1]["log-likelihood"]), rel=TOL)
        assert d.passes.total == ref.passes.total      # same products, reused alike
    np.testing.assert_array_equal(maps[1], maps[2])    # blocks, not workers, fix the sums


def test_blocks_cover_the_data_once_and_do_not_depend_on_workers(small_problem):
    ds = DataIF_COSI_DC2.load("toy", small_problem.event, {"albedo": small_problem.background},
                              small_problem.response)
    specs = split_dataset(ds, 5)
    n_psi = ds.response.data_shape[2]
    assert [s.index for s in specs] == list(range(5))
    assert specs[0].span[0] == 0 and specs[-1].span[1] == ds.counts.size
    for a, b in zip(specs[:-1], specs[1:]):
        assert a.span[1] == b.span[0] and a.span[1] % n_psi == 0
    np.testing.assert_array_equal(np.concatenate([s.counts for s in specs]), ds.counts)
    assert "toy[2/5] (Phi" in specs[2].name
    with pytest.raises(InvalidParameterError, match="n_blocks"):
        split_dataset(ds, 0)


def test_response_read_from_its_file_in_blocks(small_problem, tmp_path, clients):
    path = tmp_path / "rsp.h5"
    write_histogram(small_problem.response, path)
    par = _parfile(tmp_path, "RL", {"accel": True}, iterations=5)

    def deconv(rsp):
        from comptonsky import ImageDeconvolution

        ds = DataIF_COSI_DC2.load("toy", small_problem.event,
                                  {"albedo": small_problem.background}, rsp, storage="dense",
                                  dtype="float64")
        d = ImageDeconvolution()
        d.set_dataset([ds])
        d.read_parameterfile(par)
        return d

    ref = deconv(path)
    ref.run_deconvolution(progress=False)
    d = deconv(path)
    d.run_deconvolution(progress=False, client=clients[2], n_blocks=4)
    assert {s.kind for s in d._data.blocks[0]} == {"file"}
    assert _close(_map(d), _map(ref)) < TOL


def test_several_datasets_on_different_workers(small_problem, tmp_path, clients):
    from comptonsky import ImageDeconvolution

    par = _parfile(tmp_path, "RL", {"accel": True}, iterations=6)
    half = small_problem.event.contents * 0.5

    def deconv():
        from histpy import Histogram

        sets = [DataIF_COSI_DC2.load(f"part{k}", Histogram(small_problem.event.axes,
                                                             contents=np.round(half + k)),
                                     {"albedo": small_problem.background},
                                     small_problem.response) for k in range(2)]
        d = ImageDeconvolution()
        d.set_dataset(sets)
        d.read_parameterfile(par)
        return d

    ref = deconv()
    ref.run_deconvolution(progress=False)
    d = deconv()
    d.run_deconvolution(progress=False, client=clients[2], n_blocks=1)
    info = d._data.block_info()
    assert {info[0][0]["worker"], info[1][0]["worker"]} == set(
        clients[2].scheduler_info()["workers"])
    assert _close(_map(d), _map(ref)) < TOL


def test_detector_frame_dataset(problem, tmp_path, clients):  # noqa: F811
    from comptonsky import ImageDeconvolution

    ref = df_fit([problem.ds], tmp_path, "RL", iterations=5, accel=True)
    d = ImageDeconvolution()
    d.set_dataset([problem.ds])
    d.read_parameterfile(write_parfile(tmp_path, nside=DF_NSIDE, iterations=5, accel=True))
    d.run_deconvolution(progress=False, client=clients[2], n_blocks=3)
    labels = [s.label for s in d._data.blocks[0]]
    assert labels[0].startswith("ScAtt 0:") and len(labels) == 3
    assert _close(_map(d), _map(ref)) < TOL
    assert np.sum(d.results[-1]["log-likelihood"]) == pytest.approx(
        np.sum(ref.results[-1]["log-likelihood"]), rel=TOL)


def test_algorithms_the_cluster_does_not_run_are_refused(small_problem, tmp_path, clients):
    for algorithm, settings in (("OSEM", {}), ("RL", {"accel": True,
                                                      "method": "line_search"})):
        d = prepared_deconvolution(small_problem, _parfile(tmp_path, algorithm, settings))
        with pytest.raises(InvalidParameterError, match="does not run on a Dask client"):
            d.initialize(client=clients[1])


def test_backprojection_start_and_reduction(small_problem, clients):
    ds = DataIF_COSI_DC2.load("toy", small_problem.event, {"albedo": small_problem.background},
                              small_problem.response)
    data = DistributedJointData([ds], clients[2], n_blocks=4)
    np.testing.assert_allclose(data.exposure, ds.response.exposure, rtol=1e-13)
    y = np.random.default_rng(0).random(ds.counts.size)
    np.testing.assert_allclose(data.summed_adjoint([y]), ds.response.adjoint(y), rtol=1e-12)
    model = np.random.default_rng(1).random(data.n_model)
    eps = data.expectations(model, {"albedo": 1.3})
    direct = ds.expectation(model, {"albedo": 1.3})
    assert data.log_likelihoods(eps)[0] == pytest.approx(ds.log_likelihood(direct), rel=1e-13)
    with pytest.raises(InvalidParameterError, match="element by element"):
        eps[0][3]
    with pytest.raises(DistributedError, match=r"block toy\[0/4\] \(Phi 0:3\): forward "
                       "failed: ValueError"):           # a block that raises is named
        data._call(data._remote[0], "forward", lambda b: (10**6, np.zeros(3), ()))


def test_bootstrap_replicates_as_tasks(small_problem, tmp_path, clients):
    from comptonsky.deconvolution.uncertainty import bootstrap_uncertainty

    d = prepared_deconvolution(small_problem, _parfile(tmp_path, "RL", {"accel": True}, 4))
    d.run_deconvolution(progress=False)
    local = bootstrap_uncertainty(d, n_samples=3, iterations=2, workers=1, executor="thread",
                                  progress=False)
    remote = bootstrap_uncertainty(d, n_samples=3, iterations=2, progress=False,
                                   client=clients[2])
    np.testing.assert_allclose(remote.samples, local.samples, rtol=1e-12, atol=0)


def test_galactic_response_blocks_equal_the_engine(clients):
    from comptonsky.distributed.tasks import EngineBlock, galactic_response_on
    from comptonsky.response.galactic import DetectorResponse, galactic_response

    from .test_galactic_response import NPIX, _bins, _random_det, _rot_z

    det = DetectorResponse.from_dense(_random_det(seed=2))
    bins = _bins([np.eye(3), _rot_z(40.0), _rot_z(95.0)], [10.0, 5.0, 2.0])
    ref = galactic_response(det, bins, occultation=False, progress=False)
    engine = EngineBlock(det, bins, occultation=False)
    for _n, client in clients.items():
        out = galactic_response_on(client, engine, NPIX, block=5, progress=False)
        assert out.shape == ref.shape
        np.testing.assert_allclose(out, ref, rtol=1e-12, atol=0)


def test_a_killed_worker_is_replaced_and_the_map_is_the_same(small_problem, tmp_path):
    import threading

    par = _parfile(tmp_path, "RL", {"accel": True}, iterations=12)
    ref = prepared_deconvolution(small_problem, par)
    ref.run_deconvolution(progress=False)
    with _cluster(2, processes=True) as cluster, Client(cluster, timeout=60) as client:
        d = prepared_deconvolution(small_problem, par)
        d.initialize(client=client, n_blocks=4)
        pids = client.run(os.getpid)
        victim = sorted(pids)[0]

        def kill_mid_run():                              # while the fit iterates
            deadline = time.monotonic() + 60
            while len(d.results) < 3 and time.monotonic() < deadline:
                time.sleep(0.001)
            os.kill(pids[victim], signal.SIGKILL)

        killer = threading.Thread(target=kill_mid_run)
        killer.start()
        d.run_deconvolution(progress=False)
        killer.join()
        assert d._data.recoveries >= 1                   # its blocks were built again
        assert victim not in client.scheduler_info()["workers"]
    assert d.results[-1]["iteration"] == 12
    assert _close(_map(d), _map(ref)) < TOL


def test_a_lost_block_with_no_worker_left_stops_the_run(small_problem, tmp_path):
    par = _parfile(tmp_path, "RL", {"accel": True}, iterations=4)
    with _cluster(1) as cluster, Client(cluster, timeout=60) as client:
        d = prepared_deconvolution(small_problem, par)
        d.initialize(client=client, n_blocks=2)
        d._data.recovery_timeout_s = 2.0
        d.algorithm.iterate(1)
        cluster.scale(0)
        deadline = time.monotonic() + 30
        while client.scheduler_info()["workers"] and time.monotonic() < deadline:
            time.sleep(0.1)
        with pytest.raises(DistributedError, match=r"blocks toy\[0/2\] \(Phi 0:6\), "
                           r"toy\[1/2\] \(Phi 6:12\) lost with worker"):
            d.algorithm.iterate(1)


def test_dask_is_not_imported_without_a_client(tmp_path):
    code = (
        "import sys\n"
        "from comptonsky.cli import main\n"
        "from comptonsky.testing import toy_problem\n"
        "from comptonsky import DataIF_COSI_DC2, ImageDeconvolution\n"
        "p = toy_problem(nside=2, phi_bin_deg=30.0)\n"
        "ds = DataIF_COSI_DC2.load('t', p.event, {'albedo': p.background}, p.response)\n"
        "d = ImageDeconvolution(); d.set_dataset([ds])\n"
        f"d.read_parameterfile({str(write_parfile(tmp_path, nside=2, iterations=2))!r})\n"
        "d.run_deconvolution(progress=False)\n"
        "from comptonsky.cli import build_parser\n"
        "build_parser(['deconvolve', 'x'])\n"
        "bad = [m for m in sys.modules if m == 'dask' or m.startswith(('dask.', 'distributed'))]\n"
        "assert not bad, bad\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]


def test_cli_options():
    import argparse

    from comptonsky.cli import build_parser
    from comptonsky.cli._dask import client_from_args

    args = build_parser(["deconvolve"]).parse_args(
        ["deconvolve", "p.yml", "--event", "e", "--response", "r", "--output", "o",
         "--workers", "2", "--blocks", "4"])
    assert (args.workers, args.scheduler, args.blocks) == (2, None, 4)
    args = build_parser(["uncertainty"]).parse_args(
        ["uncertainty", "p.yml", "--event", "e", "--response", "r", "--output", "o",
         "--executor", "dask", "--scheduler", "tcp://127.0.0.1:1"])
    assert args.scheduler == "tcp://127.0.0.1:1"
    with client_from_args(argparse.Namespace(workers=None, scheduler=None)) as client:
        assert client is None
    with pytest.raises(InvalidParameterError, match="give one of them"):
        with client_from_args(argparse.Namespace(workers=2, scheduler="tcp://x:1")):
            pass


@pytest.mark.slow  # end-to-end: a local cluster of processes for one command
def test_deconvolve_command_with_workers(small_problem, tmp_path):
    import json

    from comptonsky.cli import main

    from .test_results_and_cli import _deconvolve_args

    args = _deconvolve_args(small_problem, tmp_path)
    assert main([*args, "--no-progress", "--no-plots", "--no-report", "--dtype", "float64"]) == 0
    one = json.loads((tmp_path / "out" / "summary.json").read_text())
    args[-1] = str(tmp_path / "out2")
    assert main([*args, "--no-progress", "--no-plots", "--no-report", "--dtype", "float64",
                 "--workers", "2", "--blocks", "3"]) == 0
    two = json.loads((tmp_path / "out2" / "summary.json").read_text())
    assert sum(two["log_likelihood"]) == pytest.approx(sum(one["log_likelihood"]), rel=1e-12)
    assert main([*args, "--workers", "1", "--scheduler", "tcp://127.0.0.1:1"]) == 1


@pytest.mark.slow  # starts a 2-process local cluster (~15 s)
def test_response_galactic_on_workers_writes_the_same_file(tmp_path):
    """`comptonsky response galactic --workers 2` computes the sky-pixel blocks on a local
    cluster; the file equals the one-process file exactly (same blocks, written in order)."""
    from histpy import Histogram

    from comptonsky.cli import main

    from .conftest import reference_file
    from .test_extended_response import ORI10, SPARSE

    drm, ori = reference_file(SPARSE), reference_file(ORI10)
    common = ["response", "galactic", "--drm", str(drm), "--ori", str(ori), "--nside", "2",
              "--dtype", "float64", "--block", "5", "--no-progress"]
    assert main([*common, "--output", str(tmp_path / "one.h5")]) == 0
    assert main([*common, "--workers", "2", "--output", str(tmp_path / "two.h5")]) == 0
    one, two = Histogram.open(tmp_path / "one.h5"), Histogram.open(tmp_path / "two.h5")
    assert one.axes == two.axes
    np.testing.assert_array_equal(one.contents.value, two.contents.value)
    assert one.contents.value.sum() > 0
