"""Hostile inputs: every reader and ``comptonsky bin`` either give a correct result or raise a
one-line ComptonskyError naming the file, and say so when they leave events out.

The first part reproduces reported cases one by one; the second feeds mutated parameter files,
histograms, DC2 event files and .tra files (property-based, with hypothesis) and checks those
rules on whatever comes out.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import tempfile
from pathlib import Path

import h5py
import healpy as hp
import numpy as np
import pytest
import yaml
from astropy import units as u
from histpy import Axis, HealpixAxis, Histogram
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from comptonsky.binning import BinnedData, CDSBinning, bin_events, read_binning_parameters
from comptonsky.cli import main as cli_main
from comptonsky.errors import (
    ComptonskyError,
    FileFormatError,
    InvalidDataError,
    InvalidParameterError,
    OutputError,
)
from comptonsky.io import hdf5 as hdf5_mod
from comptonsky.io.events import (
    DC2_COLUMNS,
    iter_event_chunks,
    read_events,
    read_tra,
    write_events,
)
from comptonsky.io.histogram import open_histogram, write_histogram
from comptonsky.plotting import plot_image

HYPOTHESIS = settings(max_examples=50, deadline=None, derandomize=True, database=None,
                      suppress_health_check=[HealthCheck.too_slow,
                                             HealthCheck.function_scoped_fixture])

T0 = 1835478000.0

YAML_TEXT = f"""\
unbinned_output: 'hdf5'
time_bins: 10
tmin: {T0}
tmax: {T0 + 10.0}
energy_bins: [100., 300., 520., 5000.]
phi_pix_size: 30
nside: 2
scheme: 'ring'
"""


def _one_line_naming(exc: BaseException, path: str | os.PathLike) -> None:
    """The rules for an error: a ComptonskyError, one line, naming the file."""
    assert isinstance(exc, ComptonskyError), f"{type(exc).__name__}: {exc}"
    text = str(exc)
    assert "\n" not in text, text
    assert Path(path).name in text, text


def _compton_block(i: int, t: float, eg: float = 300.0, ee: float = 211.0,
                   cd: str = "0 0 1   0 0 0   0 0 0   0 0 0", gx: str = "0 0",
                   gz: str = "0 90") -> str:
    return (f"SE\nET CO\nID {i}\nTI {t!r}\nGX {gx}\nGZ {gz}\nCE {eg!r} 1 {ee!r} 1\n"
            f"CD {cd}   0 0 0   0 0 0\n")


def _tra_text(n: int, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    blocks = ["Type TRA\nVersion 1\n\n"]
    for i in range(n):
        z1, z2 = rng.uniform(0, 10, 2)
        x1, y1, x2, y2 = rng.uniform(-10, 10, 4)
        blocks.append(_compton_block(
            i, T0 + 9.0 * i / max(n, 1), eg=float(rng.uniform(50, 2000)),
            ee=float(rng.uniform(1, 1000)),
            cd=f"{x1:.3f} {y1:.3f} {z1:.3f}   0 0 0   {x2:.3f} {y2:.3f} {z2:.3f}",
            gx=f"{rng.uniform(0, 360):.3f} 0", gz=f"{rng.uniform(0, 360):.3f} 90"))
    blocks.append("SE\nET PH\nID 999\nTI 1\nPE 511 1\nEN\n")
    return "".join(blocks)


def _events(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "Energies": rng.uniform(100, 3000, n), "TimeTags": rng.uniform(T0, T0 + 10, n),
        "Xpointings": np.stack([rng.uniform(-np.pi, np.pi, n), rng.uniform(-1, 1, n)], 1),
        "Ypointings": np.stack([rng.uniform(-np.pi, np.pi, n), rng.uniform(-1, 1, n)], 1),
        "Zpointings": np.stack([rng.uniform(-np.pi, np.pi, n), rng.uniform(-1, 1, n)], 1),
        "Phi": rng.uniform(0, np.pi, n), "Chi local": rng.uniform(0, 2 * np.pi, n),
        "Psi local": rng.uniform(0, np.pi, n), "Distance": rng.uniform(0.1, 5, n),
        "Chi galactic": rng.uniform(0, 360, n), "Psi galactic": rng.uniform(-90, 90, n),
    }


def _reference_counts(ev: dict[str, np.ndarray], b: CDSBinning) -> np.ndarray:
    """numpy.histogramdd + healpy of in-memory columns (what binning must give)."""
    t, e, ph = ev["TimeTags"], ev["Energies"], np.rad2deg(ev["Phi"])
    lon, lat = ev["Chi galactic"], ev["Psi galactic"]
    with np.errstate(invalid="ignore"):
        keep = (np.isfinite(t) & np.isfinite(e) & np.isfinite(ph) & (t < b.time_edges[-1])
                & (e < b.energy_edges[-1]) & (ph < b.phi_edges[-1]) & (lat >= -90)
                & (lat <= 90) & np.isfinite(lon))
    pix = hp.ang2pix(b.nside, lon[keep], lat[keep], lonlat=True)
    counts, _ = np.histogramdd(np.column_stack([t[keep], e[keep], ph[keep], pix]),
                               bins=[b.time_edges, b.energy_edges, b.phi_edges,
                                     np.arange(b.npix + 1)])
    return counts


@pytest.fixture
def yaml_file(tmp_path) -> Path:
    p = tmp_path / "inputs.yaml"
    p.write_text(YAML_TEXT)
    return p


def _cli(capsys, *args) -> tuple[int, str, str]:
    rc = cli_main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


# =========================================================================== reported cases


def test_tra_events_without_cd_line_are_counted(tmp_path, caplog):
    text = _tra_text(30)
    blocks = text.split("SE\n")
    for i in range(1, 31, 3):  # drop the CD line of every third Compton event
        blocks[i] = re.sub(r"^CD .*\n", "", blocks[i], flags=re.M)
    path = tmp_path / "nocd.tra"
    path.write_text("SE\n".join(blocks))
    with caplog.at_level(logging.WARNING):
        ev = read_tra(path)
    assert ev["Energies"].size == 20
    assert "nocd.tra: 20 of 30 Compton events read; 10 dropped: no CD line (10)" in caplog.text


@pytest.mark.parametrize("line, reason", [
    ("CE nan 1 211 1", "non-finite CE"), ("CE 300 1 inf 1", "non-finite CE"),
    ("CE -5 1 211 1", "CE energy <= 0"), ("TI nan", "non-finite TI"),
    ("CD nan 0 1   0 0 0   0 0 0   0 0 0", "non-finite CD position"),
])
def test_tra_impossible_values_are_dropped_and_counted(tmp_path, caplog, line, reason):
    key = line[:2]
    text = _tra_text(5)
    text = re.sub(rf"^{key} .*$", line, text, count=1, flags=re.M)
    path = tmp_path / "bad.tra"
    path.write_text(text)
    with caplog.at_level(logging.WARNING):
        ev = read_tra(path)
    assert ev["Energies"].size == 4
    assert f"bad.tra: 4 of 5 Compton events read; 1 dropped: {reason} (1)" in caplog.text


def test_tra_all_energies_nan_bins_nothing_and_says_so(tmp_path, yaml_file, caplog, capsys):
    path = tmp_path / "cenan.tra"
    path.write_text(re.sub(r"^CE .*$", "CE nan 0 nan 0", _tra_text(8), flags=re.M))
    with caplog.at_level(logging.WARNING):
        rc, out, _ = _cli(capsys, "bin", yaml_file, path, "-o", tmp_path / "o.hdf5",
                          "--no-progress")
    assert rc == 0 and "0 counts" in out
    assert "0 of 8 Compton events read; 8 dropped: non-finite CE (8)" in caplog.text
    assert "cenan.tra: no events read" in caplog.text


def test_tra_without_any_event_is_not_a_tra_file(tmp_path):
    path = tmp_path / "x.tra"
    path.write_bytes(b"SIMPLE  =                    T\nsome other file\n")
    with pytest.raises(FileFormatError, match=r"x.tra: no event \(SE line\)") as info:
        read_tra(path)
    _one_line_naming(info.value, path)


def test_unbinned_events_counted_by_reason(tmp_path, yaml_file, caplog):
    ev = _events(200)
    ev["Energies"][:5] = np.nan
    ev["Energies"][5:8] = -3.0
    ev["Phi"][8:10] = np.nan
    ev["Phi"][10:12] = 4.0
    ev["Energies"][12:20] = 50.0  # below the first edge: a selection, not invalid
    path = write_events(tmp_path / "ev.hdf5", ev)
    with caplog.at_level(logging.WARNING):
        (h,) = bin_events(path, BinnedData(input_yaml=yaml_file).binning(), progress=False)
    assert h.contents.sum() == 200 - 20
    text = caplog.text
    assert "ev.hdf5: 180 of 200 events binned into galactic PsiChi" in text
    for part in ("5 with non-finite Energies", "3 with negative Energies",
                 "8 outside the Em range [100.0, 5000.0) keV",
                 "2 with non-finite Phi", "2 with Phi outside [0, 180] deg"):
        assert part in text


@pytest.mark.parametrize("rng", [(100, 10), (5, 5), (-1, 10)])
def test_empty_or_inverted_event_range_is_an_error(tmp_path, yaml_file, capsys, rng):
    path = write_events(tmp_path / "ev.fits", _events(50))
    with pytest.raises(InvalidParameterError, match="event_range"):
        bin_events(path, BinnedData(input_yaml=yaml_file).binning(), event_range=rng,
                   progress=False)
    with pytest.raises(InvalidParameterError, match="event_range"):
        next(iter_event_chunks(path, event_range=rng))
    rc, _, err = _cli(capsys, "bin", yaml_file, path, "-o", tmp_path / "o.hdf5",
                      "--event-range", *rng, "--no-progress")
    assert rc == 1 and err.startswith("comptonsky bin: error: --event-range")
    assert not (tmp_path / "o.hdf5").exists()


@pytest.mark.parametrize("edit, message", [
    ({"nside": 5}, "nside must be a power of 2, got 5"),
    ({"nside": 2**33}, "nside must be at most 2\\*\\*29"),
    ({"energy_bins": "abc"}, "energy_bins must be a list of bin edges in keV, found 'abc'"),
    ({"energy_bins": [1, "x"]}, "energy_bins must be a list of bin edges"),
    ({"energy_bins": [-5, 10]}, "energy edges must be >= 0 keV"),
    ({"tmin": "yesterday"}, "tmin must be a finite number of s"),
    ({"tmax": float("inf")}, "tmax must be a finite number of s"),
    ({"time_bins": 1e-9}, "at most 100000000 allowed"),
    ({"phi_pix_size": True}, "phi_pix_size must be a number of degrees"),
    ({"data_file": 5}, "data_file must be a file name"),
])
def test_bad_binning_values_are_one_line_errors(tmp_path, capsys, edit, message):
    pars = yaml.safe_load(YAML_TEXT)
    pars.update(edit)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(pars))
    events = write_events(tmp_path / "ev.fits", _events(10))
    rc, _, err = _cli(capsys, "bin", path, events, "-o", tmp_path / "o.hdf5", "--no-progress")
    assert rc == 1
    assert re.fullmatch(rf"comptonsky bin: error: {re.escape(str(path))}: .*{message}.*\n", err)


@pytest.mark.parametrize("content, message", [
    (bytes(range(256)) * 4, "not a text file"),
    (b"nside: [1, 2\n", "not valid YAML"),
    (b"- 1\n- 2\n", "expected a mapping"),
    (b"\x00\x01\x02", "not valid YAML"),
    (b"[" * 5000, "nested too deeply|not valid YAML"),
])
def test_binary_or_malformed_yaml(tmp_path, content, message):
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    with pytest.raises(FileFormatError, match=message) as info:
        read_binning_parameters(path)
    _one_line_naming(info.value, path)
    with pytest.raises(FileFormatError, match="is a folder|cannot be read"):
        read_binning_parameters(tmp_path)


@pytest.mark.parametrize("output", [".", "..", "/", "sub/", "existing_dir", "ev.fits/x.hdf5",
                                    "ev.fits"])
def test_bin_output_that_cannot_be_a_file(tmp_path, yaml_file, capsys, monkeypatch, output):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "existing_dir").mkdir()
    write_events(tmp_path / "ev.fits", _events(10))
    before = sorted(p.name for p in tmp_path.iterdir())
    rc, _, err = _cli(capsys, "bin", yaml_file, "ev.fits", "-o", output, "--overwrite",
                      "--no-progress")
    if output == "ev.fits":  # becomes ev.fits.hdf5: fine
        assert rc == 0
        return
    assert rc == 1 and err.startswith("comptonsky bin: error: ") and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_bin_output_that_is_an_input_or_exists(tmp_path, yaml_file, capsys):
    ev = write_events(tmp_path / "ev.hdf5", _events(10))
    rc, _, err = _cli(capsys, "bin", yaml_file, ev, "-o", ev, "--overwrite", "--no-progress")
    assert rc == 1 and "is also an input" in err
    assert read_events(ev)["Energies"].size == 10  # the input is intact
    (tmp_path / "o.hdf5").write_text("old")
    rc, _, err = _cli(capsys, "bin", yaml_file, ev, "-o", tmp_path / "o.hdf5", "--no-progress")
    assert rc == 1 and "exists; pass --overwrite" in err
    assert (tmp_path / "o.hdf5").read_text() == "old"


def _hist_file(path: Path) -> Path:
    h = Histogram([Axis(np.arange(4.0), label="Em", unit="keV"),
                   Axis([0.0, 90.0, 180.0], label="Phi", unit="deg")],
                  contents=np.arange(6.0).reshape(3, 2))
    return write_histogram(h, path)


def test_histogram_group_without_axes_or_with_wrong_shape(tmp_path):
    path = _hist_file(tmp_path / "h.h5")
    with h5py.File(path, "r+") as f:
        del f["hist/axes"]
    with pytest.raises(FileFormatError, match=r"h.h5, group 'hist': no 'axes'") as info:
        open_histogram(path)
    _one_line_naming(info.value, path)
    path = _hist_file(tmp_path / "s.h5")
    with h5py.File(path, "r+") as f:
        del f["hist/contents"]
        f["hist"].create_dataset("contents", data=np.zeros((7, 3)))
    with pytest.raises(FileFormatError, match=r"s.h5, group 'hist': not a readable histpy "
                                              r"histogram \(.*size 7.*3") as info:
        open_histogram(path)
    _one_line_naming(info.value, path)


def _map_file(path: Path, values: np.ndarray) -> Path:
    h = Histogram([HealpixAxis(nside=1, coordsys="galactic", label="lb"),
                   Axis([500.0, 520.0] * u.keV, label="Ei")], contents=values.reshape(12, 1))
    return write_histogram(h, path)


@pytest.mark.parametrize("values, args, message", [
    (np.zeros(12), ["--scale", "log"], "zero.h5: energy band .*no positive pixel"),
    (np.full(12, np.nan), ["--scale", "log"], "zero.h5: energy band .*no finite pixel"),
    (np.arange(12.0), ["--scale", "log", "--vmin", "0"],
     "--vmin must be > 0 with a log colour scale, found 0.0"),
    (np.arange(12.0), ["--vmin", "5", "--vmax", "1"],
     "--vmin \\(5.0\\) must be smaller than --vmax \\(1.0\\)"),
    (np.arange(12.0), ["--output", "map.xyz"], "unknown image format 'xyz'"),
    (np.arange(12.0), ["--output", "."], "names a folder"),
])
def test_plot_refusals(tmp_path, capsys, monkeypatch, values, args, message):
    monkeypatch.chdir(tmp_path)
    _map_file(tmp_path / "zero.h5", values)
    rc, _, err = _cli(capsys, "plot", "zero.h5", *args)
    assert rc == 1 and err.count("\n") == 1
    assert re.match(rf"comptonsky plot: error: .*{message}", err), err
    assert not [p for p in tmp_path.iterdir() if p.suffix in (".png", ".xyz")]


def test_plot_with_some_nan_pixels_warns(tmp_path, caplog):
    values = np.arange(12.0)
    values[3] = np.nan
    h = open_histogram(_map_file(tmp_path / "m.h5", values))
    with caplog.at_level(logging.WARNING):
        plot_image(h, scale="log", output=tmp_path / "m.png")
    assert "1 of 12 pixels are NaN or infinite" in caplog.text
    assert (tmp_path / "m.png").stat().st_size > 1000


class _FullDisk:
    """A file whose writes fail with ENOSPC after ``room`` bytes."""

    def __init__(self, room: int):
        self.room = room

    def open(self, path, mode="r", *args, **kwargs):
        fh = open(path, mode, *args, **kwargs)
        if "r" in mode and "+" not in mode:
            return fh
        room = self

        class Full:
            def __getattr__(self, name):
                return getattr(fh, name)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                fh.close()

            def write(self, data):
                if len(data) > room.room:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                room.room -= len(data)
                return fh.write(data)

        return Full()


def test_full_disk_while_writing_a_histogram(tmp_path, yaml_file, capsys, monkeypatch):
    events = write_events(tmp_path / "ev.fits", _events(100))
    monkeypatch.setattr(hdf5_mod, "open", _FullDisk(2000).open, raising=False)
    target = tmp_path / "new" / "deeper" / "o.hdf5"
    rc, _, err = _cli(capsys, "bin", yaml_file, events, "-o", target, "--no-progress")
    assert rc == 1
    assert err == (f"comptonsky bin: error: {target}: cannot be written (No space left on "
                   "device); nothing was written\n")
    assert not (tmp_path / "new").exists()  # neither the file nor the folders made for it


@pytest.mark.parametrize("name", ["ev.fits.gz", "ev.fits", "ev.hdf5"])
def test_full_disk_while_writing_events(tmp_path, monkeypatch, name):
    from comptonsky.io.events import compression

    full = _FullDisk(5000)
    monkeypatch.setattr(hdf5_mod, "open", full.open, raising=False)
    monkeypatch.setattr(compression, "open", full.open, raising=False)
    with pytest.raises(OutputError, match=rf"{name}: cannot be written \(No space left") as info:
        write_events(tmp_path / "out" / name, _events(2000))
    _one_line_naming(info.value, name)
    assert not (tmp_path / "out").exists()


def test_full_disk_while_saving_a_plot(tmp_path, monkeypatch):
    import matplotlib.figure

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    h = open_histogram(_map_file(tmp_path / "m.h5", np.arange(12.0)))
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", full)
    with pytest.raises(OutputError, match=r"m.png: cannot be written \(No space left"):
        plot_image(h, output=tmp_path / "m.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.h5"]


# =========================================================================== mutated inputs

_junk = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
    st.lists(st.one_of(st.floats(allow_nan=True), st.integers(-5, 10**6), st.text(max_size=3)),
             max_size=6),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


def _check_binning(b: CDSBinning) -> None:
    for edges in (b.time_edges, b.energy_edges, b.phi_edges):
        assert edges.ndim == 1 and edges.size >= 2
        assert np.all(np.isfinite(edges)) and np.all(np.diff(edges) > 0)
    assert b.nside >= 1 and b.nside & (b.nside - 1) == 0
    assert b.energy_edges[0] >= 0 and b.phi_edges[0] >= 0 and b.phi_edges[-1] <= 180


@HYPOTHESIS
@given(edits=st.dictionaries(st.sampled_from(["time_bins", "tmin", "tmax", "energy_bins",
                                              "phi_pix_size", "nside", "scheme", "data_file",
                                              "unbinned_output", "energy_bin"]),
                             _junk, max_size=3),
       drop=st.sets(st.sampled_from(["time_bins", "tmin", "energy_bins", "nside"]), max_size=2))
def test_mutated_binning_parameters(edits, drop):
    pars = yaml.safe_load(YAML_TEXT)
    pars.update(edits)
    for key in drop:
        pars.pop(key, None)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "mutated.yaml"
        path.write_text(yaml.safe_dump(pars))
        try:
            b = BinnedData(input_yaml=path).binning("local")
        except Exception as exc:  # noqa: BLE001 - the rules are checked on it
            _one_line_naming(exc, path)
        else:
            _check_binning(b)


@HYPOTHESIS
@given(data=st.data())
def test_mutated_binning_file_bytes(data):
    raw = bytearray(YAML_TEXT.encode())
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(raw) - 1))
        op = data.draw(st.sampled_from(["replace", "insert", "delete", "truncate"]))
        byte = data.draw(st.integers(0, 255))
        if op == "replace":
            raw[pos] = byte
        elif op == "insert":
            raw.insert(pos, byte)
        elif op == "delete":
            del raw[pos]
        else:
            del raw[pos:]
        if not raw:
            break
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bytes.yaml"
        path.write_bytes(bytes(raw))
        try:
            b = BinnedData(input_yaml=path).binning("galactic")
        except Exception as exc:  # noqa: BLE001
            _one_line_naming(exc, path)
        else:
            _check_binning(b)


_HIST_MUTATIONS = ["del axes", "del contents", "del axis 0", "contents shape", "contents type",
                   "format", "unit", "axis edges", "axis class", "truncate", "group is dataset",
                   "coo coords"]


@HYPOTHESIS
@given(mutation=st.sampled_from(_HIST_MUTATIONS), sparse=st.booleans(), seed=st.integers(0, 99))
def test_mutated_histogram_files(mutation, sparse, seed):
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "mutated.h5"
        h = Histogram([Axis(np.arange(5.0), label="Em", unit="keV"),
                       Axis([0.0, 90.0, 180.0], label="Phi", unit="deg")],
                      contents=rng.poisson(2.0, (4, 2)).astype(float))
        write_histogram(h.to_sparse() if sparse else h, path)
        if mutation == "truncate":
            raw = path.read_bytes()
            path.write_bytes(raw[: int(rng.integers(0, len(raw)))])
        else:
            with h5py.File(path, "r+") as f:
                g = f["hist"]
                if mutation == "del axes":
                    del g["axes"]
                elif mutation == "del contents":
                    del g["contents"]
                elif mutation == "del axis 0":
                    del g["axes/0"]
                elif mutation in ("contents shape", "contents type"):
                    del g["contents"]
                    g.attrs["format"] = "dense"
                    shape = tuple(int(n) for n in rng.integers(0, 7, int(rng.integers(0, 4))))
                    data = (np.zeros(shape) if mutation == "contents shape"
                            else np.array(["x"] * 8, dtype="S1"))
                    g.create_dataset("contents", data=data)
                elif mutation == "format":
                    g.attrs["format"] = ["coo", "dense", "bogus"][seed % 3]
                elif mutation == "unit":
                    g.attrs["unit"] = ["kilo-parsecs", "", "1/0", "m**m"][seed % 4]
                elif mutation == "axis edges":
                    ax = g["axes/1"]
                    attrs = dict(ax.attrs)
                    del g["axes/1"]
                    new = g["axes"].create_dataset("1", data=[
                        np.array([5.0, 1.0, 3.0]), np.array([np.nan, 1.0]), np.array([])][seed % 3])
                    new.attrs.update(attrs)
                elif mutation == "axis class":
                    g["axes/0"].attrs["__class__"] = ["nowhere", "Nothing"]
                elif mutation == "group is dataset":
                    del f["hist"]
                    f.create_dataset("hist", data=[1, 2, 3])
                elif mutation == "coo coords":
                    if isinstance(g["contents"], h5py.Group):
                        c = g["contents/coords"][()]
                        del g["contents/coords"]
                        g["contents"].create_dataset("coords", data=c + 100)
        try:
            got = open_histogram(path)
        except Exception as exc:  # noqa: BLE001
            _one_line_naming(exc, path)
        else:
            contents = got.contents.todense() if got.is_sparse else np.asarray(got.contents)
            assert contents.shape == tuple(got.axes.nbins)


def _mutate_fits_header(raw: bytes, key: str, value: str) -> bytes:
    """Replace the value of a header card of HDU 1 (kept 80 characters, FITS-padded)."""
    i = raw.find(key.ljust(8).encode() + b"=", 2880)
    if i < 0:
        return raw
    card = f"{key.ljust(8)}= {value:>20}".ljust(80)[:80].encode()
    return raw[:i] + card + raw[i + 80:]


@HYPOTHESIS
@given(data=st.data(), n=st.integers(0, 40), gz=st.booleans())
def test_mutated_fits_event_files(data, n, gz):
    ev = _events(n, seed=n)
    with tempfile.TemporaryDirectory() as tmp:
        plain = write_events(Path(tmp) / "plain.fits", ev)
        raw = plain.read_bytes()
        kind = data.draw(st.sampled_from(["card", "truncate", "flip", "none"]))
        if kind == "card":
            key = data.draw(st.sampled_from(["TFIELDS", "NAXIS1", "NAXIS2", "TFORM1", "TFORM3",
                                             "TTYPE2", "TUNIT1", "TUNIT3", "TDIM3", "XTENSION"]))
            value = data.draw(st.sampled_from(["-1", "0", "99999", "'abc'", "'2K'", "'rad'",
                                               "'keV'", "'(3)'", "T", "1E400", "'BINTABLE'"]))
            raw = _mutate_fits_header(raw, key, value)
        elif kind == "truncate":
            raw = raw[: data.draw(st.integers(0, len(raw)))]
        elif kind == "flip":
            pos = data.draw(st.integers(0, len(raw) - 1))
            raw = raw[:pos] + bytes([raw[pos] ^ 0xFF]) + raw[pos + 1:]
        path = Path(tmp) / ("mutated.fits.gz" if gz else "mutated.fits")
        if gz:
            import gzip

            raw = gzip.compress(raw, mtime=0)
            if kind == "flip":  # damage the compressed stream too
                raw = raw[: len(raw) // 2] + b"\x00" * 16 + raw[len(raw) // 2 + 16:]
        path.write_bytes(raw)
        _read_and_bin(path)


_H5_MUTATIONS = ["drop column", "string column", "scalar column", "2d column", "short column",
                 "unit junk", "nan values", "nested group", "compound", "truncate", "none"]


@HYPOTHESIS
@given(mutation=st.sampled_from(_H5_MUTATIONS), column=st.sampled_from(sorted(DC2_COLUMNS)),
       n=st.integers(0, 40))
def test_mutated_hdf5_event_files(mutation, column, n):
    ev = _events(n, seed=n + 1)
    with tempfile.TemporaryDirectory() as tmp:
        path = write_events(Path(tmp) / "mutated.hdf5", ev)
        if mutation == "truncate":
            raw = path.read_bytes()
            path.write_bytes(raw[: len(raw) * 2 // 3])
        elif mutation != "none":
            with h5py.File(path, "r+") as f:
                if mutation != "nested group":
                    del f[column]
                if mutation == "string column":
                    f.create_dataset(column, data=np.array([b"x"] * n, dtype="S1"))
                elif mutation == "scalar column":
                    f.create_dataset(column, data=1.0)
                elif mutation == "2d column":
                    f.create_dataset(column, data=np.zeros((n, 3)))
                elif mutation == "short column":
                    f.create_dataset(column, data=ev[column][: n // 2])
                elif mutation == "unit junk":
                    d = f.create_dataset(column, data=ev[column])
                    d.attrs["unit"] = "furlong/fortnight"
                elif mutation == "nan values":
                    v = ev[column].copy()
                    v[::3] = np.nan
                    f.create_dataset(column, data=v)
                elif mutation == "compound":
                    f.create_dataset(column, data=np.zeros(n, dtype=[("a", "f8"), ("b", "i4")]))
                elif mutation == "nested group":
                    g = f.create_group("inner")
                    g.create_dataset("x", data=[1.0])
        _read_and_bin(path)


@HYPOTHESIS
@given(data=st.data(), n=st.integers(0, 12))
def test_mutated_tra_files(data, n):
    lines = _tra_text(n, seed=n).splitlines()
    for _ in range(data.draw(st.integers(0, 4))):
        if not lines:
            break
        i = data.draw(st.integers(0, len(lines) - 1))
        op = data.draw(st.sampled_from(["delete", "duplicate", "junk number", "garbage",
                                        "truncate"]))
        if op == "delete":
            del lines[i]
        elif op == "duplicate":
            lines.insert(i, lines[i])
        elif op == "junk number":
            parts = lines[i].split()
            if len(parts) > 1:
                j = data.draw(st.integers(1, len(parts) - 1))
                parts[j] = data.draw(st.sampled_from(["nan", "inf", "-inf", "-1", "0", "1e400",
                                                      "abc", ""]))
                lines[i] = " ".join(parts)
        elif op == "garbage":
            lines[i] = data.draw(st.binary(max_size=12)).decode("latin-1")
        else:
            lines = lines[:i]
    text = "\n".join(lines) + "\n"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "mutated.tra"
        path.write_bytes(text.encode("latin-1"))
        n_compton = text.count("ET CO")
        with _Warnings() as warned:
            result = _read_and_bin(path)
        if result is not None and result < n_compton:
            assert "dropped" in warned.text or "no event" in warned.text, warned.text


class _Warnings(logging.Handler):
    """Collect comptonsky warnings (hypothesis examples cannot use caplog)."""

    def __enter__(self):
        self.records: list[str] = []
        self.setLevel(logging.WARNING)
        logging.getLogger("comptonsky").addHandler(self)
        return self

    def __exit__(self, *exc):
        logging.getLogger("comptonsky").removeHandler(self)

    def emit(self, record):
        self.records.append(record.getMessage())

    @property
    def text(self) -> str:
        return "\n".join(self.records)


_BINNING = CDSBinning(time_edges=np.array([T0, T0 + 10.0]),
                      energy_edges=np.array([100.0, 520.0, 5000.0]),
                      phi_edges=np.arange(0.0, 181.0, 30.0), nside=2, where="test binning")


_NEEDED = ["TimeTags", "Energies", "Phi", "Chi galactic", "Psi galactic"]


def _read(path: Path, columns=None) -> dict[str, np.ndarray] | None:
    """The columns read, checked for consistent shapes; None (after checking the error) if
    the file was refused."""
    try:
        ev = read_events(path, columns)
    except Exception as exc:  # noqa: BLE001
        _one_line_naming(exc, path)
        return None
    n = len(next(iter(ev.values()))) if ev else 0
    for name, values in ev.items():
        assert values.shape[0] == n
        if name in DC2_COLUMNS:
            assert values.dtype == np.float64
            assert values.shape[1:] == DC2_COLUMNS[name].shape
    return ev


def _read_and_bin(path: Path) -> int | None:
    """Read ``path`` whole and bin it; check the rules (binning gives what numpy gives on the
    columns read). Returns the number of events read, or None if the file was refused."""
    ev = _read(path)
    needed = _read(path, _NEEDED)
    try:
        (h,) = bin_events(path, _BINNING, progress=False)
    except Exception as exc:  # noqa: BLE001
        _one_line_naming(exc, path)
        if needed is not None:
            assert isinstance(exc, InvalidDataError), exc
            assert "time range" in str(exc) or "TimeTags" in str(exc)
    else:
        assert needed is not None, "binning accepted a file that reading refused"
        np.testing.assert_array_equal(h.contents.todense(), _reference_counts(needed, _BINNING))
    return None if ev is None else len(ev.get("Energies", ()))


def test_cli_bin_on_mutated_inputs_never_raises(tmp_path, yaml_file, capsys):
    """The command line turns every refusal into one error line and a non-zero status."""
    good = write_events(tmp_path / "good.fits", _events(20))
    bad_fits = tmp_path / "bad.fits"
    bad_fits.write_bytes(_mutate_fits_header(good.read_bytes(), "TFIELDS", "'x'"))
    bad_tra = tmp_path / "bad.tra"
    bad_tra.write_text(_tra_text(3).replace("TI ", "TI x", 1))
    bad_h5 = tmp_path / "bad.hdf5"
    bad_h5.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(100))
    for bad in (bad_fits, bad_tra, bad_h5):
        rc, _, err = _cli(capsys, "bin", yaml_file, good, bad, "-o", tmp_path / "o.hdf5",
                          "--no-progress")
        assert rc == 1 and err.startswith(f"comptonsky bin: error: {bad}") \
            and err.count("\n") == 1, err
        assert not (tmp_path / "o.hdf5").exists()


@pytest.mark.parametrize("name", ["d.fits", "d.fits.gz", "d.hdf5", "d.tra"])
def test_folder_given_as_event_file(tmp_path, yaml_file, capsys, name):
    (tmp_path / name).mkdir()
    rc, _, err = _cli(capsys, "bin", yaml_file, tmp_path / name, "-o", tmp_path / "o.hdf5",
                      "--no-progress")
    assert rc == 1 and err == (f"comptonsky bin: error: {tmp_path / name}: is a folder or "
                               "special file, expected an event file\n")


def test_colour_limit_messages_name_the_option_or_the_argument():
    from comptonsky.plotting import colour_limits
    with pytest.raises(InvalidParameterError, match=r"^plot_image: vmin must be > 0 with a log"):
        colour_limits(0.0, None, "log")
    with pytest.raises(InvalidParameterError, match=r"^--vmax must be a finite number"):
        colour_limits(None, float("nan"), "linear", names=("--vmin", "--vmax"), where="")
    assert colour_limits(1, 2.0, "log") == (1.0, 2.0)
