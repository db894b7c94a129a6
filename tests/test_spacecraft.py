"""SpacecraftFile and the fast .ori parser: cosipy's numbers, slow reference parser, bad rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from astropy.time import Time

from comptonsky import SpacecraftFile
from comptonsky.errors import FileFormatError, InvalidParameterError
from comptonsky.io.ori_text import read_ori_table
from comptonsky.io.orientation import read_ori
from comptonsky.io.spacecraft import interval

from .conftest import ori_reference_rows, reference_file

REF = Path(__file__).parent / "data" / "cosipy_detector_reference.npz"


def write_rows(path: Path, rows, header="Type OrientationsGalactic", footer="EN", fmt="%r"):
    lines = [header] if header else []
    for r in np.asarray(rows).tolist():
        lines.append("OG " + " ".join(fmt % v for v in r))
    if footer:
        lines.append(footer)
    path.write_text("\n".join(lines) + "\n")
    return path


def orbit_rows(n=200, seed=0, t0=1835487300.0):
    rng = np.random.default_rng(seed)
    t = t0 + np.arange(n, dtype=float)
    zl = (40.0 + 0.06 * np.arange(n)) % 360
    zb = 10.0 + 0.01 * np.arange(n)
    xl = (zl + 180.0) % 360
    xb = 90.0 - zb
    live = np.ones(n)
    live[-1] = 0.0
    alt = 550.0 + rng.normal(0, 1, n)
    return np.column_stack([t, xb, xl, zb, zl, alt, zb, zl, live])


def test_parse_matches_cosipy():
    path = reference_file("cosipy-test-data/20280301_first_10sec.ori")
    ref = np.load(REF)
    ori = SpacecraftFile.parse_from_file(path)
    t = ori.get_time()
    assert isinstance(t, Time) and t.format == "unix"
    np.testing.assert_allclose(t.unix, ref["ori10/time"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(ori.livetime, ref["ori10/livetime"])  # N - 1 values, as cosipy
    np.testing.assert_allclose(ori.get_altitude(), ref["ori10/altitude"])
    for name, key in (("x_pointings", "ori10/x_lb"), ("z_pointings", "ori10/z_lb")):
        c = getattr(ori, name)
        np.testing.assert_allclose(np.column_stack([c.l.deg, c.b.deg]), ref[key], atol=1e-9)
    assert len(ori) == 11
    np.testing.assert_allclose(ori.get_time_delta().sec, 1.0, atol=1e-6)
    m = ori.get_attitude()
    assert m.shape == (11, 3, 3)
    np.testing.assert_allclose(np.einsum("nji,njk->nik", m, m), np.broadcast_to(np.eye(3), m.shape),
                               atol=1e-12)


def test_fast_parser_equals_line_by_line(tmp_path):
    rows = orbit_rows(500, seed=3)
    p = tmp_path / "a.ori"
    lines = ["Type OrientationsGalactic", "", "# a comment line", "CM extra keyword"]
    for k, r in enumerate(rows.tolist()):
        fmt = ["%r", "%.6e", "%.17g", "%+.10f"][k % 4]
        lines.append("  OG\t" + repr(r[0]) + " " + " ".join(fmt % v for v in r[1:]) + ("  extra" if k % 7 == 0 else "")
                     + ("   " if k % 5 == 0 else ""))
    lines += ["EN", "OG not a row after EN"]
    p.write_text("\r\n".join(lines) + "\r\n")
    want = ori_reference_rows(p)
    for threads in (1, 3, 7):  # block boundaries fall at different lines
        got = read_ori_table(p, threads=threads)
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=4.5e-16, atol=0)
    o = read_ori(p)
    assert len(o) == len(rows)


def test_fast_parser_values_exact_for_short_mantissas(tmp_path):
    rows = orbit_rows(300, seed=1)
    p = write_rows(tmp_path / "b.ori", rows, fmt="%.12f")
    np.testing.assert_array_equal(read_ori_table(p), ori_reference_rows(p))


@pytest.mark.parametrize("mutate, match", [
    (lambda r: r.__setitem__((5, 2), np.nan), "non-finite"),
    (lambda r: r.__setitem__((6, 1), 95.0), "latitude"),
    (lambda r: (r.__setitem__((7, 1), r[7, 3]), r.__setitem__((7, 2), r[7, 4])), "same direction"),
    (lambda r: r.__setitem__((8, 8), -1.0), "negative live time"),
    (lambda r: r.__setitem__((9, 0), r[8, 0]), "must increase"),
    (lambda r: r.__setitem__((9, 0), r[8, 0] - 5), "must increase"),
])
def test_bad_rows_name_file_and_line(tmp_path, mutate, match):
    rows = orbit_rows(20)
    mutate(rows)
    p = write_rows(tmp_path / "bad.ori", rows)
    with pytest.raises(FileFormatError, match=match) as err:
        read_ori(p)
    msg = str(err.value)
    assert str(p) in msg
    line = int(msg.split(f"{p}:")[1].split(":")[0])
    assert 6 <= line <= 11  # the mutated row (header is line 1)


def test_malformed_files(tmp_path):
    p = tmp_path / "x.ori"
    p.write_text("")
    with pytest.raises(FileFormatError, match="empty"):
        read_ori(p)
    p.write_text("Type OrientationsGalactic\nEN\n")
    with pytest.raises(FileFormatError, match="no 'OG' rows"):
        read_ori(p)
    p.write_text("Type OrientationsGalactic\nOG 1 2 3 4 5 6 7 8 1.2.3\nEN\n")
    with pytest.raises(FileFormatError, match=r"x.ori:2: cannot read number 9"):
        read_ori(p)
    p.write_text("Type OrientationsGalactic\nOG 1 2 3 4 5 6 7 8 9\nOG 2 2 3 4\nEN\n")
    with pytest.raises(FileFormatError, match=r"x.ori:3: an OG row needs 9 numbers"):
        read_ori(p)
    with pytest.raises(FileFormatError, match="no such file"):
        SpacecraftFile.parse_from_file(tmp_path / "missing.ori")


def test_source_interval_on_and_between_time_stamps(tmp_path):
    rows = orbit_rows(50)
    rows[20:25, 8] = 0.0  # an SAA passage
    ori = SpacecraftFile.parse_from_file(write_rows(tmp_path / "c.ori", rows))
    t = ori.orientation.time
    sub = ori.source_interval(Time(t[5], format="unix"), Time(t[30], format="unix"))
    np.testing.assert_array_equal(sub.orientation.time, t[5:31])
    np.testing.assert_array_equal(sub.livetime, ori.orientation.livetime[5:30])
    assert sub.orientation.livetime[-1] == 0.0
    half = ori.select_interval(t[5] + 0.25, t[30] + 0.5)
    o = half.orientation
    np.testing.assert_allclose(o.time[[0, -1]], [t[5] + 0.25, t[30] + 0.5])
    np.testing.assert_allclose(o.livetime[0], 0.75)
    np.testing.assert_allclose(o.livetime[-2], 0.5)
    np.testing.assert_allclose(o.total_livetime, 0.75 + 24.0 - 5.0 + 0.5)
    np.testing.assert_allclose(np.linalg.norm(o.z_axis, axis=1), 1.0)
    inside = interval(ori.orientation, t[3] + 0.2, t[3] + 0.7)  # both ends in one interval
    np.testing.assert_allclose(inside.livetime, [0.5, 0.0])
    with pytest.raises(InvalidParameterError, match="before stop"):
        ori.source_interval(t[10], t[5])
