"""Real-format histpy files from ../shared/reference, histpy 1.x layout, atomic writes."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from histpy import HealpixAxis

from comptonsky.errors import FileFormatError
from comptonsky.io.atomic import atomic_path
from comptonsky.io.histogram import open_histogram, write_histogram

from .conftest import reference_file


@pytest.mark.parametrize("name, coordsys, total", [
    ("test_event_histogram_galacticCDS.hdf5", "galactic", None),
    ("test_event_histogram_localCDS.hdf5", "spacecraftframe", None),
    ("test_event_histogram_localCDS_scatt.h5", "spacecraftframe", None),
])
def test_reference_histograms_open(name, coordsys, total):
    path = reference_file(name)
    hist = open_histogram(path)
    labels = list(hist.axes.labels)
    assert labels[1:] == ["Em", "Phi", "PsiChi"]
    psichi = hist.axes["PsiChi"]
    assert isinstance(psichi, HealpixAxis) and psichi.nside == 1
    assert psichi.coordsys.name == coordsys
    with h5py.File(path) as f:  # the stored counts, read with plain h5py
        contents = f["hist/contents"]
        stored = contents["data"][()].sum() if isinstance(contents, h5py.Group) \
            else contents[()].sum()
    dense = hist.contents.todense() if hist.is_sparse else hist.contents
    assert float(np.sum(dense)) == pytest.approx(float(stored))
    assert hist.axes["Phi"].edges[-1].value == pytest.approx(180.0)


def test_histpy_1x_dense_layout_with_overflow_opens(tmp_path):
    """histpy 1.x stored dense contents with under/overflow bins (nbins + 2 per axis)."""
    path = tmp_path / "v1.h5"
    inner = np.arange(12.0).reshape(3, 4)
    padded = np.zeros((5, 6))
    padded[1:-1, 1:-1] = inner
    padded[0, 0] = 99.0  # underflow, must not leak into the contents
    with h5py.File(path, "w") as f:
        g = f.create_group("hist")
        g.attrs["format"] = "dense"
        g.create_dataset("contents", data=padded)
        axes = g.create_group("axes")
        a0 = axes.create_dataset("0", data=np.array([0.0, 1.0, 2.0, 3.0]))
        a0.attrs["__class__"] = ["histpy.axis", "Axis"]
        a0.attrs["label"] = "Em"
        a0.attrs["unit"] = "keV"
        a0.attrs["scale"] = "linear"
        a1 = axes.create_dataset("1", data=np.array([0.0, 45.0, 90.0, 135.0, 180.0]))
        a1.attrs["__class__"] = ["histpy.axis", "Axis"]
        a1.attrs["label"] = "Phi"
        a1.attrs["unit"] = "deg"
        a1.attrs["scale"] = "linear"
    hist = open_histogram(path)
    np.testing.assert_array_equal(np.asarray(hist.contents), inner)
    assert list(hist.axes.labels) == ["Em", "Phi"]


def test_write_round_trip_and_errors(small_problem, tmp_path):
    path = write_histogram(small_problem.event, tmp_path / "event.h5")
    again = open_histogram(path)
    np.testing.assert_array_equal(np.asarray(again.contents), small_problem.event.contents)
    with pytest.raises(FileFormatError, match="no such file"):
        open_histogram(tmp_path / "absent.h5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f.create_dataset("x", data=[1])
    with pytest.raises(FileFormatError, match="no histogram group 'hist'.*\\['x'\\]"):
        open_histogram(tmp_path / "other.h5")


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half-writ")
        raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]  # no temporary left behind
    with atomic_path(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new"
    with pytest.raises(FileExistsError), atomic_path(target, overwrite=False):
        pass
