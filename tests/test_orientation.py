"""Orientation (.ori) files and attitude matrices."""

from __future__ import annotations

import numpy as np
import pytest

from comptonsky.errors import FileFormatError
from comptonsky.io.orientation import (
    Orientation,
    attitude_matrices,
    lonlat_to_vec,
    read_ori,
    vec_to_lonlat,
    write_ori,
)

from .conftest import reference_file


def test_read_reference_ori():
    o = read_ori(reference_file("20280301_first_10sec.ori"))
    assert len(o) == 11
    assert o.time[0] == 1835478000.0 and o.time[-1] == 1835478010.0
    np.testing.assert_allclose(o.livetime[:-1], 1.0)
    assert o.livetime[-1] == 0.0
    # x and z axes of a real file are orthogonal unit vectors
    np.testing.assert_allclose(np.sum(o.x_axis * o.z_axis, axis=1), 0.0, atol=1e-9)
    lon, lat = vec_to_lonlat(o.x_axis[:1])
    np.testing.assert_allclose([lon[0], lat[0]], [41.85821768724895, 73.14907746670937])
    # unknown altitude/zenith (zeros in the file): the z axis stands in for the zenith
    np.testing.assert_allclose(o.zenith, o.z_axis)


def test_attitude_matrices_are_rotations():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(50, 3))
    x = rng.normal(size=(50, 3))
    m = attitude_matrices(x, z)
    eye = np.einsum("nji,njk->nik", m, m)
    np.testing.assert_allclose(eye, np.broadcast_to(np.eye(3), eye.shape), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(m), 1.0)
    np.testing.assert_allclose(m[:, :, 2], z / np.linalg.norm(z, axis=1, keepdims=True))
    # a detector-frame +z vector maps to the z axis
    np.testing.assert_allclose(m @ np.array([0.0, 0.0, 1.0]), m[:, :, 2])


def test_write_read_roundtrip(tmp_path):
    rng = np.random.default_rng(1)
    n = 20
    z = rng.normal(size=(n, 3))
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    m = attitude_matrices(rng.normal(size=(n, 3)), z)
    t = 1835487300.0 + 20.0 * np.arange(n)
    live = np.append(np.full(n - 1, 20.0), 0.0)
    zen = lonlat_to_vec(rng.uniform(0, 360, n), rng.uniform(-90, 90, n))
    o = Orientation(t, m[:, :, 0], m[:, :, 2], np.full(n, 550.0), zen, live)
    path = write_ori(tmp_path / "a.ori", o)
    text = path.read_text().splitlines()
    assert text[0] == "Type OrientationsGalactic"
    assert text[-1] == "EN"
    assert text[1].startswith("OG ") and len(text[1].split()) == 10
    back = read_ori(path)
    np.testing.assert_allclose(back.time, t)
    np.testing.assert_allclose(back.x_axis, o.x_axis, atol=1e-7)
    np.testing.assert_allclose(back.z_axis, o.z_axis, atol=1e-7)
    np.testing.assert_allclose(back.zenith, zen, atol=1e-7)
    np.testing.assert_allclose(back.altitude, 550.0)
    np.testing.assert_allclose(back.livetime, live)
    assert back.total_livetime == pytest.approx(20.0 * (n - 1))


def test_select_clips_livetime():
    n = 5
    t = np.arange(n) * 10.0
    z = np.tile([0.0, 0.0, 1.0], (n, 1))
    x = np.tile([1.0, 0.0, 0.0], (n, 1))
    o = Orientation(t, x, z, np.zeros(n), np.zeros((n, 3)), np.append(np.full(n - 1, 10.0), 0))
    s = o.select(10.0, 25.0)
    np.testing.assert_allclose(s.time, [10.0, 20.0])
    np.testing.assert_allclose(s.livetime, [10.0, 5.0])


def test_bad_files(tmp_path):
    with pytest.raises(FileFormatError, match="no such file"):
        read_ori(tmp_path / "missing.ori")
    p = tmp_path / "local.ori"
    p.write_text("Type OrientationsLocal\nOG 1 2 3\nEN\n")
    with pytest.raises(FileFormatError, match="OrientationsGalactic"):
        read_ori(p)
    p.write_text("Type OrientationsGalactic\nOG 1 2 3\nEN\n")
    with pytest.raises(FileFormatError, match="needs 9 numbers"):
        read_ori(p)
