"""The streamed ``.ori`` reader: rows, errors, ``EN`` and time checks across piece boundaries.

Every file here is read in pieces of a few bytes to a few kilobytes (``ori_text._PIECE_BYTES``),
so rows, bad rows and the ``EN`` line fall on, just before and just after piece boundaries. The
results are compared with an obvious line-by-line reading and with the same file read in one piece.
"""

from __future__ import annotations

import itertools
import math
import re
import threading
from pathlib import Path

import numba
import numpy as np
import pytest

from comptonsky.errors import FileFormatError
from comptonsky.io import ori_text
from comptonsky.io.ori_text import read_ori_arrays, read_ori_table

from .conftest import ori_reference_rows

HEADER = "Type OrientationsGalactic"


def random_rows(rng, n: int) -> np.ndarray:
    t = 1.8e9 + np.cumsum(rng.uniform(0.01, 3.0, n))
    xb, zb, eb = (rng.uniform(-89.0, 89.0, n) for _ in range(3))
    xl = rng.uniform(0.0, 360.0, n)
    zl = (xl + rng.uniform(20.0, 340.0, n)) % 360.0  # never along x
    el = rng.uniform(0.0, 360.0, n)
    alt = rng.uniform(500.0, 600.0, n)
    live = rng.uniform(0.0, 1.0, n)
    live[rng.random(n) < 0.1] = 0.0
    r = np.column_stack([t, xb, xl, zb, zl, alt, eb, el, live])
    r[rng.random(n) < 0.05, 5:8] = 0.0  # Earth position unknown
    return r


def random_file(path: Path, rng, n: int, fmt: str = "%.8f", newline: str = "\n",
                trailing_newline: bool = True, after_en: str | None = None) -> Path:
    """A valid file with blank, comment and other-keyword lines between the rows."""
    rows = random_rows(rng, n)
    lines = [HEADER, "", "CM a comment"]
    for r in rows.tolist():
        u = rng.random()
        if u < 0.05:
            lines.append("")
        elif u < 0.1:
            lines.append("# " + "x" * int(rng.integers(0, 300)))
        elif u < 0.12:
            lines.append("XX 1 2 3")
        sep = " " if rng.random() < 0.8 else " \t "
        lines.append(("  " if rng.random() < 0.1 else "") + "OG " + sep.join(fmt % v for v in r)
                     + ("  extra 1" if rng.random() < 0.05 else ""))
    if after_en is not None:
        lines += ["EN", after_en]
    text = newline.join(lines) + (newline if trailing_newline else "")
    path.write_bytes(text.encode("latin-1"))
    return path


@pytest.fixture
def piece(monkeypatch):
    """Set the piece size of the reader."""
    def set_piece(n: int) -> None:
        monkeypatch.setattr(ori_text, "_PIECE_BYTES", n)
    return set_piece


def reader_threads() -> int:
    return sum(t.name == "ori-reader" for t in threading.enumerate())


@pytest.mark.parametrize("seed", range(4))
def test_random_files_any_piece_size(tmp_path, piece, seed, monkeypatch):
    rng = np.random.default_rng(seed)
    opts = [dict(), dict(newline="\r\n"), dict(trailing_newline=False),
            dict(after_en="OG broken row after the end 1.2.3")][seed]
    p = random_file(tmp_path / "r.ori", rng, int(rng.integers(300, 700)), **opts)
    pool = numba.get_num_threads()
    want = ori_reference_rows(p)
    piece(1 << 24)
    whole = read_ori_table(p)
    whole_arrays = read_ori_arrays(p)
    np.testing.assert_allclose(whole, want, rtol=4.5e-16, atol=0)
    for size in (3, 7, 61, 333, 4096, 5000):
        piece(size)
        # pieces this small are parsed on one thread; from 61 bytes on, also in 3 * 4 blocks
        # on the kernel threads, so rows fall on block boundaries too
        for threads in (1, 3) if size > 7 else (1,):
            monkeypatch.setattr(ori_text, "_SERIAL_BYTES", 1 << 20 if threads == 1 else 0)
            got = read_ori_table(p, threads=threads)
            assert got.shape == want.shape and got.flags.c_contiguous
            np.testing.assert_array_equal(got, whole)
        arrays = read_ori_arrays(p, threads=2)
        for k, v in whole_arrays.items():
            assert v.shape[0] == len(want)
            np.testing.assert_array_equal(arrays[k], v, err_msg=f"{k}, piece {size}")
    assert reader_threads() == 0
    assert numba.get_num_threads() == pool  # the caller's kernel threads are put back


def test_arrays_are_unit_vectors_of_the_table(tmp_path, piece):
    p = random_file(tmp_path / "u.ori", np.random.default_rng(9), 400, fmt="%.17g")
    piece(4096)
    t = ori_reference_rows(p)
    a = read_ori_arrays(p)
    for k, c in (("time", 0), ("altitude", 5), ("livetime", 8)):
        np.testing.assert_allclose(a[k], t[:, c], rtol=4.5e-16, atol=0)

    def unit(b, lon):
        b, lon = np.radians(b), np.radians(lon)
        return np.column_stack([np.cos(b) * np.cos(lon), np.cos(b) * np.sin(lon), np.sin(b)])

    np.testing.assert_allclose(a["x_axis"], unit(t[:, 1], t[:, 2]), rtol=0, atol=1e-14)
    np.testing.assert_allclose(a["z_axis"], unit(t[:, 3], t[:, 4]), rtol=0, atol=1e-14)
    ez = unit(t[:, 6], t[:, 7])
    unknown = (t[:, 5] == 0) & (t[:, 6] == 0) & (t[:, 7] == 0)
    assert unknown.any()
    ez[unknown] = 0.0
    np.testing.assert_allclose(a["earth_zenith"], ez, rtol=0, atol=1e-14)


def test_long_lines_and_sparse_rows(tmp_path, piece):
    """Lines far longer than a piece (and its headroom), and pieces without any row."""
    rng = np.random.default_rng(5)
    rows = random_rows(rng, 30)
    lines = [HEADER, "# " + "y" * 200_000]
    for k, r in enumerate(rows.tolist()):
        lines.append("OG " + " ".join(f"{v:.9f}" for v in r) + (" z" * 50_000 if k == 3 else ""))
        lines += ["#"] * int(rng.integers(0, 200))
    p = tmp_path / "long.ori"
    p.write_text("\n".join(lines) + "\nEN\n")
    for size in (5, 4096, 100_000):
        piece(size)
        np.testing.assert_allclose(read_ori_table(p), ori_reference_rows(p), rtol=4.5e-16, atol=0)


def plant(tmp_path: Path, rows: np.ndarray, k: int, line: str | None = None):
    """File of ``rows`` with row k replaced by ``line``; its 1-based line number and offset."""
    text = [HEADER, "# comment"] + ["OG " + " ".join(f"{v:.8f}" for v in r) for r in rows.tolist()]
    if line is not None:
        text[2 + k] = line
    text.append("EN")
    p = tmp_path / "bad.ori"
    p.write_text("\n".join(text) + "\n")
    offset = sum(len(s) + 1 for s in text[: 2 + k])
    return p, 3 + k, offset, len(text[2 + k]) + 1


def boundary_sizes(offset: int, length: int) -> list[int]:
    """Piece sizes that put a boundary just before, at, inside and at the end of a line."""
    cuts = {offset - 1, offset, offset + 1, offset + length // 2, offset + length - 1,
            offset + length, offset + length + 1}
    return sorted(c for c in cuts if c > 0) + [3, 4096]


def fmt_row(r) -> str:
    return "OG " + " ".join(f"{v:.8f}" for v in r)


def bad_row_cases(rows: np.ndarray, k: int) -> list[tuple[str, str]]:
    r = rows[k].copy()
    out = []
    out.append((fmt_row(r)[: fmt_row(r).rfind(" ")], r"an OG row needs 9 numbers .* found 8"))
    s = fmt_row(r).split(" ")
    s[3] = "12.5.3"
    out.append((" ".join(s), r"cannot read number 3 \(x_lon\)"))
    for col, value, match in ((4, np.nan, "non-finite"), (2, np.inf, "non-finite"),
                              (7, 90.5, "latitude beyond"), (9, -0.5, "negative live time")):
        q = r.copy()
        q[col - 1] = value
        out.append((fmt_row(q), match))
    q = r.copy()
    q[3], q[4] = -q[1], (q[2] + 180.0) % 360.0  # z antiparallel to x
    out.append((fmt_row(q), "same direction"))
    q = r.copy()
    q[0] = rows[k - 1, 0]
    out.append((fmt_row(q), "time stamps must increase"))
    return out


@pytest.mark.parametrize("case", range(8))
def test_bad_row_line_numbers_at_piece_boundaries(tmp_path, piece, case, monkeypatch):
    rows = random_rows(np.random.default_rng(2), 40)
    k = 17
    line, match = bad_row_cases(rows, k)[case]
    p, lineno, offset, length = plant(tmp_path, rows, k, line)
    messages = set()
    for size in boundary_sizes(offset, length) + [1 << 20]:
        piece(size)
        for read, serial in itertools.product((read_ori_table, read_ori_arrays), (1 << 20, 0)):
            monkeypatch.setattr(ori_text, "_SERIAL_BYTES", serial)  # one block, or 2 * 4
            with pytest.raises(FileFormatError, match=match) as err:
                read(p, threads=2)
            msg = str(err.value)
            assert msg.startswith(f"{p}:{lineno}: "), (size, serial, msg)
            messages.add(msg)
    assert len(messages) == 1  # the same message whatever the pieces
    msg = messages.pop()
    if case != 7:
        assert repr(line.strip()) in msg  # the offending text
    assert reader_threads() == 0


def test_decreasing_time_as_first_row_of_a_piece(tmp_path, piece):
    rows = random_rows(np.random.default_rng(3), 30)
    rows[12, 0] = rows[11, 0] - 0.25
    p, lineno, offset, length = plant(tmp_path, rows, 12)
    messages = set()
    # the only row of its piece, the first of a piece, the last of a piece
    for size in (offset, offset - 1, offset + length - 2, 3, 4096):
        piece(size)
        with pytest.raises(FileFormatError) as err:
            read_ori_table(p)
        messages.add(str(err.value))
    assert len(messages) == 1
    m = re.fullmatch(rf"{re.escape(str(p))}:{lineno}: time stamps must increase; (\S+) follows (\S+)",
                     messages.pop())
    assert m is not None
    np.testing.assert_allclose([float(m[1]), float(m[2])], rows[[12, 11], 0], rtol=1e-15)
    rows[12, 0] = rows[11, 0]  # equal is not increasing either
    p, *_ = plant(tmp_path, rows, 12)
    piece(offset)
    with pytest.raises(FileFormatError, match="must increase"):
        read_ori_table(p)


def test_malformed_row_is_reported_before_an_earlier_rule_break(tmp_path, piece):
    rows = random_rows(np.random.default_rng(4), 60)
    rows[5, 8] = -1.0  # a rule break early in the file
    lines = [HEADER] + [fmt_row(r) for r in rows.tolist()]
    lines[50] = "OG 1 2 3"  # a malformed row much later, after many pieces
    p = tmp_path / "two.ori"
    p.write_text("\n".join(lines) + "\nEN\n")
    for size in (100, 4096, 1 << 20):
        piece(size)
        with pytest.raises(FileFormatError, match=r"two.ori:51: an OG row needs 9 numbers"):
            read_ori_table(p)
    lines[50] = fmt_row(rows[49])  # well formed again: the rule break is reported
    p.write_text("\n".join(lines) + "\nEN\n")
    for size in (100, 1 << 20):
        piece(size)
        with pytest.raises(FileFormatError, match=r"two.ori:7: a negative live time"):
            read_ori_table(p)


def test_en_line_at_piece_boundaries(tmp_path, piece):
    rows = random_rows(np.random.default_rng(6), 25)
    text = [HEADER] + [fmt_row(r) for r in rows.tolist()]
    offset = sum(len(s) + 1 for s in text)
    # after EN: a malformed row, a decreasing time, a bad latitude, then more text
    text += ["EN", "OG 1 2", fmt_row(np.r_[0.0, rows[0, 1:]]), "OG " + "9 " * 9, "junk"]
    p = tmp_path / "en.ori"
    p.write_text("\n".join(text))
    want = ori_reference_rows(p)
    assert len(want) == 25
    for size in (offset - 1, offset, offset + 1, offset + 2, offset + 3, 2, 4096):
        piece(size)
        np.testing.assert_allclose(read_ori_table(p), want, rtol=4.5e-16, atol=0)
        assert len(read_ori_arrays(p)["time"]) == 25
    assert reader_threads() == 0


def test_no_rows_type_line_and_empty_files(tmp_path, piece):
    piece(64)
    p = tmp_path / "x.ori"
    p.write_text(HEADER + "\n" + "# nothing here\n" * 500 + "EN\nOG 1 2 3 4 5 6 7 8 9\n")
    with pytest.raises(FileFormatError, match=r"x.ori: no 'OG' rows found"):
        read_ori_table(p)
    p.write_text("#\n" * 3000 + "Type OrientationsLocal\nOG 1 2 3 4 5 6 7 8 9\n")
    with pytest.raises(FileFormatError, match=r"x.ori:3001: orientation type 'OrientationsLocal'"):
        read_ori_arrays(p)
    p.write_text("")
    with pytest.raises(FileFormatError, match="empty file"):
        read_ori_table(p)
    with pytest.raises(FileFormatError, match="no such file"):
        read_ori_table(tmp_path / "missing.ori")
    p.write_text("OG 1 2 3 4 5 6 7 8 9")  # one row, no newline, no header
    np.testing.assert_array_equal(read_ori_table(p), [[1, 2, 3, 4, 5, 6, 7, 8, 9]])
    assert reader_threads() == 0


def test_rows_beyond_the_first_estimate(tmp_path, piece):
    """A sparse start (few rows per byte) then dense rows: the output arrays grow."""
    rng = np.random.default_rng(8)
    rows = random_rows(rng, 2000)
    lines = [HEADER] + ["# " + "c" * 400] * 20 + [fmt_row(r) for r in rows[:3].tolist()]
    lines += ["OG " + " ".join(repr(float(v)) if i == 0 else f"{v:.1f}" for i, v in enumerate(r))
              for r in rows[3:].tolist()]
    p = tmp_path / "grow.ori"
    p.write_text("\n".join(lines) + "\n")
    piece(9000)
    got = read_ori_table(p)
    np.testing.assert_allclose(got, ori_reference_rows(p), rtol=4.5e-16, atol=0)
    assert got.shape == (2000, 9)
    assert math.isclose(got[-1, 0], rows[-1, 0])
    a = read_ori_arrays(p)
    assert {v.shape[0] for v in a.values()} == {2000}


def test_read_error_is_raised_in_the_caller(tmp_path, piece, monkeypatch):
    p = random_file(tmp_path / "e.ori", np.random.default_rng(1), 200)
    piece(500)
    calls = []

    class Failing(ori_text._PieceReader):
        def _run(self):
            real = self._file

            class F:
                def readinto(self, b):
                    calls.append(1)
                    if len(calls) > 3:
                        raise OSError("disk went away")
                    return real.readinto(b)
            self._file = F()
            try:
                super()._run()
            finally:
                self._file = real

    monkeypatch.setattr(ori_text, "_PieceReader", Failing)
    with pytest.raises(OSError, match="disk went away"):
        read_ori_table(p)
    assert reader_threads() == 0
