"""Compiled kernels without a writable package folder or home: comptonsky._numba."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numba
import numba.core.config
import numpy as np
import pytest

from comptonsky import _numba

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """_numba as before its first configuration, numba's cache settings restored afterwards,
    and the temporary directory in tmp_path."""
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    monkeypatch.setattr(numba.core.config, "CACHE_DIR", numba.core.config.CACHE_DIR)
    monkeypatch.setattr(_numba, "_configured", False)
    monkeypatch.setattr(_numba, "CACHE_ENABLED", True)
    monkeypatch.setattr(_numba.tempfile, "gettempdir", lambda: str(tmp_path))
    return _numba


def _nowhere(monkeypatch):
    """Neither the package folder nor the user cache folder is writable."""
    monkeypatch.setattr(_numba, "_writable_dir", lambda path: False)


def test_default_places_writable_changes_nothing(fresh):
    assert fresh.configure_cache() is True
    assert "NUMBA_CACHE_DIR" not in os.environ


def test_unwritable_defaults_use_a_private_temporary_folder(fresh, monkeypatch, tmp_path):
    _nowhere(monkeypatch)
    assert fresh.configure_cache() is True
    folder = tmp_path / f"comptonsky-numba-{os.getuid()}"
    assert os.environ["NUMBA_CACHE_DIR"] == str(folder)
    assert numba.core.config.CACHE_DIR == str(folder)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700


def test_shared_temporary_folder_is_not_used(fresh, monkeypatch, tmp_path):
    _nowhere(monkeypatch)
    folder = tmp_path / f"comptonsky-numba-{os.getuid()}"
    folder.mkdir()
    folder.chmod(0o777)  # anybody could plant cached code there
    assert fresh.configure_cache() is False
    assert "NUMBA_CACHE_DIR" not in os.environ


def test_without_any_cache_folder_kernels_compile_uncached(fresh, monkeypatch):
    _nowhere(monkeypatch)
    monkeypatch.setattr(_numba, "_private_temp_dir", lambda: None)

    def twice(x):
        return 2 * x

    kernel = fresh.njit(cache=True)(twice)
    assert fresh.CACHE_ENABLED is False
    assert kernel(np.float64(2.5)) == 5.0
    assert type(kernel._cache).__name__ == "NullCache"


def _can_unshare() -> bool:
    if shutil.which("unshare") is None or sys.platform != "linux":
        return False
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not _can_unshare(), reason="needs a private mount namespace (unshare -m)")
def test_read_only_package_and_home(tmp_path):
    """``comptonsky --help`` and ``comptonsky bin`` from a read-only installation with a
    read-only home folder (private read-only bind mounts)."""
    from comptonsky.io.events import write_events

    ro = tmp_path / "ro"
    shutil.copytree(REPO / "comptonsky", ro / "comptonsky",
                    ignore=shutil.ignore_patterns("__pycache__"))
    home, tmp, work = tmp_path / "home", tmp_path / "tmp", tmp_path / "work"
    for d in (home, tmp, work):
        d.mkdir()
    rng = np.random.default_rng(0)
    n = 50
    write_events(work / "ev.hdf5", {
        "TimeTags": rng.uniform(0, 10, n), "Energies": rng.uniform(100, 1000, n),
        "Phi": rng.uniform(0, 3, n), "Chi galactic": rng.uniform(0, 360, n),
        "Psi galactic": rng.uniform(-90, 90, n)})
    (work / "in.yaml").write_text("time_bins: 10\ntmin: 0\ntmax: 10\nenergy_bins: [100, 1000]\n"
                                  "phi_pix_size: 30\nnside: 1\n")
    py = sys.executable
    script = (f"mount --bind {ro} {ro} && mount -o remount,bind,ro {ro} && "
              f"mount --bind {home} {home} && mount -o remount,bind,ro {home} && "
              f"cd {work} && {py} -m comptonsky --help > help.txt && "
              f"{py} -m comptonsky bin in.yaml ev.hdf5 -o out.hdf5 --no-progress")
    env = {**os.environ, "HOME": str(home), "PYTHONPATH": str(ro), "TMPDIR": str(tmp)}
    env.pop("NUMBA_CACHE_DIR", None)
    env.pop("XDG_CACHE_HOME", None)
    done = subprocess.run(["unshare", "-m", "sh", "-c", script], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage: comptonsky" in (work / "help.txt").read_text()
    assert "out.hdf5: 50 counts" in done.stdout
    assert list((tmp / f"comptonsky-numba-{os.getuid()}").iterdir())  # the kernels' cache
