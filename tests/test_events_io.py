"""DC2 event lists: writing, streaming reads, stored units, selection, and bad files."""

from __future__ import annotations

import gzip
import tracemalloc

import astropy.units as u
import h5py
import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from comptonsky.errors import FileFormatError, InvalidParameterError
from comptonsky.io.events import (
    DC2_COLUMNS,
    EventWriter,
    count_events,
    event_file_columns,
    iter_event_chunks,
    read_events,
    select_events,
    write_events,
)

from .conftest import reference_file as reference


def make_events(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ev = {name: rng.normal(size=(n,) + spec.shape) for name, spec in DC2_COLUMNS.items()}
    ev["TimeTags"] = np.sort(rng.uniform(1e9, 1e9 + 100, n))
    ev["Energies"] = rng.uniform(100, 2000, n)
    return ev


def assert_same(a, b, rtol=0.0):
    assert set(a) == set(b)
    for k in a:
        assert a[k].shape == b[k].shape, k
        if rtol:
            np.testing.assert_allclose(a[k], b[k], rtol=rtol, err_msg=k)
        else:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.mark.parametrize("name", ["ev.fits", "ev.fits.gz", "ev.hdf5"])
def test_roundtrip_all_columns(tmp_path, name):
    ev = make_events(1001)
    path = write_events(tmp_path / name, ev)
    assert path == tmp_path / name
    assert count_events(path) == 1001
    assert event_file_columns(path) == list(DC2_COLUMNS)
    assert_same(read_events(path), ev)
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no temporary left behind


def test_fits_layout_is_readable_by_astropy(tmp_path):
    ev = make_events(50)
    path = write_events(tmp_path / "ev.fits.gz", ev)
    with gzip.open(path) as fh:
        assert fh.read(6) == b"SIMPLE"
    with fits.open(path) as hdul:
        assert len(hdul) == 2 and hdul[0].data is None
        table = hdul[1]
        assert table.header["XTENSION"] == "BINTABLE"
        units = {table.header[f"TTYPE{i}"]: table.header.get(f"TUNIT{i}")
                 for i in range(1, table.header["TFIELDS"] + 1)}
        assert units == {n: s.unit for n, s in DC2_COLUMNS.items()}
        np.testing.assert_array_equal(table.data["Xpointings"], ev["Xpointings"])
        np.testing.assert_array_equal(table.data["Psi galactic"], ev["Psi galactic"])


def test_hdf5_layout_matches_reference_with_units(tmp_path):
    path = write_events(tmp_path / "ev.h5", make_events(10))
    ref = reference("unbinned_data_MEGAlib_calc.hdf5")
    with h5py.File(path) as f, h5py.File(ref) as r:
        assert sorted(f) == sorted(r)
        for k in f:
            assert f[k].shape[1:] == r[k].shape[1:]
            assert f[k].attrs["unit"] == DC2_COLUMNS[k].unit


def test_reference_hdf5_reads_in_chunks():
    path = reference("unbinned_data_MEGAlib_calc.hdf5")
    whole = read_events(path)
    assert len(whole["Energies"]) == 4677 and whole["Xpointings"].shape == (4677, 2)
    chunks = list(iter_event_chunks(path, ["Energies", "Xpointings"], chunk_size=1000))
    assert [len(c["Energies"]) for c in chunks] == [1000] * 4 + [677]
    np.testing.assert_array_equal(np.concatenate([c["Xpointings"] for c in chunks]),
                                  whole["Xpointings"])
    part = read_events(path, ["TimeTags"], event_range=(100, 110))
    np.testing.assert_array_equal(part["TimeTags"], whole["TimeTags"][100:110])


@pytest.mark.parametrize("name", ["ev.fits.gz", "ev.hdf5"])
def test_chunks_and_event_range(tmp_path, name):
    ev = make_events(2500)
    path = write_events(tmp_path / name, ev)
    seen = []
    chunks = list(iter_event_chunks(path, ["Phi", "Zpointings"], chunk_size=999,
                                    event_range=(10, 2010), callback=seen.append))
    assert seen == [999, 999, 2]
    assert set(chunks[0]) == {"Phi", "Zpointings"}
    np.testing.assert_array_equal(np.concatenate([c["Zpointings"] for c in chunks]),
                                  ev["Zpointings"][10:2010])
    for c in chunks:
        assert c["Phi"].dtype == np.float64 and c["Phi"].dtype.isnative


def test_stored_units_are_converted(tmp_path):
    """A FITS file written by astropy in other units (and DC2's 'rad:[glon,glat]' pointing
    unit) is read back in the canonical units."""
    ev = make_events(200)
    t = Table()
    t["Energies"] = (ev["Energies"] / 1000.0) * u.MeV
    t["TimeTags"] = ev["TimeTags"] * u.s
    t["Phi"] = np.degrees(ev["Phi"]) * u.deg
    t["Chi galactic"] = np.radians(ev["Chi galactic"]) * u.rad
    t["Psi galactic"] = ev["Psi galactic"] * u.deg
    t["Xpointings"] = ev["Xpointings"]
    t["Distance"] = ev["Distance"] * 10.0 * u.mm
    path = tmp_path / "astropy.fits.gz"
    t.write(path)
    # astropy cannot store the DC2 pointing unit string; set it in the header directly
    with fits.open(path) as hdul:
        hdul[1].header[f"TUNIT{t.colnames.index('Xpointings') + 1}"] = "rad:[glon,glat]"
        hdul.writeto(tmp_path / "dc2units.fits", overwrite=True)
    for p in (path, tmp_path / "dc2units.fits"):
        got = read_events(p)
        np.testing.assert_allclose(got["Energies"], ev["Energies"], rtol=1e-14)
        np.testing.assert_allclose(got["Phi"], ev["Phi"], rtol=1e-14)
        np.testing.assert_allclose(got["Chi galactic"], ev["Chi galactic"], rtol=1e-14)
        np.testing.assert_allclose(got["Distance"], ev["Distance"], rtol=1e-14)
        np.testing.assert_array_equal(got["Xpointings"], ev["Xpointings"])


def test_hdf5_unit_attribute_honoured(tmp_path):
    path = tmp_path / "ev.hdf5"
    with h5py.File(path, "w") as f:
        f["Energies"] = np.array([0.511, 1.0])
        f["Energies"].attrs["unit"] = "MeV"
        f["Chi galactic"] = np.array([np.pi, 0.0])
        f["Chi galactic"].attrs["unit"] = "rad"
    got = read_events(path)
    np.testing.assert_allclose(got["Energies"], [511.0, 1000.0])
    np.testing.assert_allclose(got["Chi galactic"], [180.0, 0.0])


def test_writer_units_and_quantities(tmp_path):
    ev = make_events(30)
    ev_q = dict(ev, Energies=ev["Energies"] * u.keV.to(u.MeV) * u.MeV)
    path = write_events(tmp_path / "ev.fits", ev_q, units={"Chi galactic": "rad"})
    with fits.open(path) as hdul:
        h = hdul[1].header
        idx = [h[f"TTYPE{i}"] for i in range(1, h["TFIELDS"] + 1)].index("Chi galactic") + 1
        assert h[f"TUNIT{idx}"] == "rad"
        np.testing.assert_allclose(hdul[1].data["Chi galactic"], np.radians(ev["Chi galactic"]))
    assert_same(read_events(path), ev, rtol=1e-13)


def test_missing_column_names_file_and_column(tmp_path):
    ev = make_events(5)
    del ev["Phi"]
    for name in ("a.fits.gz", "a.hdf5"):
        path = write_events(tmp_path / name, ev)
        with pytest.raises(FileFormatError, match=rf"{name}: missing column\(s\) \['Phi'\]"):
            read_events(path, ["TimeTags", "Phi"])


@pytest.mark.parametrize("unit, message", [("m", "cannot be converted to 'keV'"),
                                           ("furlongs", "which is not a unit")])
def test_wrong_unit_is_an_error(tmp_path, unit, message):
    path = tmp_path / "ev.hdf5"
    with h5py.File(path, "w") as f:
        f["Energies"] = np.ones(3)
        f["Energies"].attrs["unit"] = unit
    with pytest.raises(FileFormatError, match=rf"ev.hdf5: column 'Energies'.*{message}"):
        read_events(path)


def test_corrupt_gzip(tmp_path):
    path = write_events(tmp_path / "ev.fits.gz", make_events(20000))
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2: len(raw) // 2 + 64] = bytes(64)
    bad = tmp_path / "corrupt.fits.gz"
    bad.write_bytes(bytes(raw))
    with pytest.raises(FileFormatError, match=r"corrupt.fits.gz: cannot decompress"):
        for _ in iter_event_chunks(bad, chunk_size=1000):
            pass


def test_truncated_files(tmp_path):
    path = write_events(tmp_path / "ev.fits.gz", make_events(20000))
    cut = tmp_path / "cut.fits.gz"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(FileFormatError, match=r"cut.fits.gz: .*(truncated|decompress)"):
        read_events(cut)
    plain = write_events(tmp_path / "ev.fits", make_events(100))
    short = tmp_path / "short.fits"
    short.write_bytes(plain.read_bytes()[:-8000])  # 100 rows of 112 bytes, padded to 11520
    with pytest.raises(FileFormatError, match=r"short.fits: file ends after 31 of 100 events"):
        read_events(short)


def test_not_an_event_file(tmp_path):
    notgz = tmp_path / "plain.fits.gz"
    notgz.write_bytes(b"hello world" * 100)
    with pytest.raises(FileFormatError, match="plain.fits.gz"):
        read_events(notgz)
    notfits = tmp_path / "x.fits"
    notfits.write_bytes(b"x" * 3000)
    with pytest.raises(FileFormatError, match="x.fits: not a FITS file"):
        read_events(notfits)
    with pytest.raises(FileFormatError, match="nothere.hdf5: no such file"):
        read_events(tmp_path / "nothere.hdf5")
    with pytest.raises(InvalidParameterError, match="cannot tell the event file format"):
        read_events(tmp_path / "events.txt")


def test_write_is_atomic_and_validates(tmp_path):
    out = tmp_path / "ev.fits.gz"
    ev = make_events(10)
    ev["Phi"] = ev["Phi"][:5]
    with pytest.raises(InvalidParameterError, match="column 'Phi' has 5 events"):
        write_events(out, ev)
    ev = make_events(10)
    ev["Xpointings"] = ev["Xpointings"][:, 0]
    with pytest.raises(InvalidParameterError, match=r"'Xpointings' has per-event shape \(\)"):
        write_events(out, ev)
    assert list(tmp_path.iterdir()) == []
    write_events(out, make_events(3))
    with pytest.raises(FileExistsError):
        write_events(out, make_events(4), overwrite=False)
    assert count_events(out) == 3


@pytest.mark.parametrize("name", ["s.fits.gz", "s.hdf5"])
def test_event_writer_streams_and_matches(tmp_path, name):
    ev = make_events(3000)
    with EventWriter(tmp_path / name) as w:
        for a in range(0, 3000, 700):
            w.write({k: v[a:a + 700] for k, v in ev.items()})
    assert_same(read_events(tmp_path / name), ev)
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_event_writer_abort_leaves_nothing(tmp_path):
    ev = make_events(100)
    with pytest.raises(RuntimeError, match="boom"), EventWriter(tmp_path / "s.fits.gz") as w:
        w.write(ev)
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_select_and_combine(tmp_path):
    a, b = make_events(1000, seed=1), make_events(800, seed=2)
    pa = write_events(tmp_path / "a.fits.gz", a)
    pb = write_events(tmp_path / "b.hdf5", b)
    sel = select_events([pa, pb], tmin=1e9 + 20, tmax=1e9 + 60, emin=500, emax=1500)
    both = {k: np.concatenate([a[k], b[k]]) for k in a}
    keep = ((both["TimeTags"] >= 1e9 + 20) & (both["TimeTags"] < 1e9 + 60)
            & (both["Energies"] >= 500) & (both["Energies"] < 1500))
    assert_same(sel, {k: v[keep] for k, v in both.items()})
    out = select_events([pa, pb], tmp_path / "combined.hdf5", emin=500)
    got = read_events(out)
    np.testing.assert_array_equal(got["Energies"], both["Energies"][both["Energies"] >= 500])


def test_streaming_memory_is_bounded(tmp_path):
    """Peak traced allocations while streaming a gzipped file do not grow with its size and stay
    far below its inflated size: only a few chunks are alive at a time."""
    peaks = {}
    for n in (50_000, 200_000):
        path = write_events(tmp_path / f"big{n}.fits.gz", make_events(n, seed=n))
        tracemalloc.start()
        try:
            total = 0
            for chunk in iter_event_chunks(path, chunk_size=2048):
                total += len(chunk["Energies"])
            _, peaks[n] = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert total == n
    inflated = 200_000 * sum(8 * int(np.prod(s.shape, dtype=int)) for s in DC2_COLUMNS.values())
    assert peaks[200_000] < 1.25 * peaks[50_000] + 5e5, peaks
    assert peaks[200_000] < inflated / 5, (peaks, inflated)


def test_float32_and_integer_columns_are_widened(tmp_path):
    t = Table()
    t["Energies"] = np.array([511.5, 100.25], dtype=np.float32) * u.keV
    t["TimeTags"] = np.array([10, 20], dtype=np.int64) * u.s
    t["extra"] = np.array([1, 2], dtype=np.int16)
    path = tmp_path / "narrow.fits"
    t.write(path)
    got = read_events(path)
    assert got["Energies"].dtype == np.float64 and got["TimeTags"].dtype == np.float64
    np.testing.assert_array_equal(got["Energies"], [511.5, 100.25])
    np.testing.assert_array_equal(got["TimeTags"], [10.0, 20.0])
    assert got["extra"].dtype == np.int16 and got["extra"].dtype.isnative


def test_gzip_output_is_reproducible_and_names_no_temporary(tmp_path):
    ev = make_events(500)
    a = write_events(tmp_path / "a.fits.gz", ev).read_bytes()
    b = write_events(tmp_path / "b.fits.gz", ev).read_bytes()
    assert a == b  # no file name or time stamp in the gzip header
    assert a[3] & 0x08 == 0 and a[4:8] == bytes(4)
    with EventWriter(tmp_path / "c.fits.gz") as w:
        w.write(ev)
    assert (tmp_path / "c.fits.gz").read_bytes() == a


@pytest.mark.parametrize("name", ["ev.fits.gz", "ev.hdf5"])
def test_abandoned_iteration_stops_the_reader_thread(tmp_path, name):
    import gc
    import threading
    import time

    path = write_events(tmp_path / name, make_events(50_000))
    before = {t.ident for t in threading.enumerate()}
    chunks = iter_event_chunks(path, chunk_size=1000)
    first = next(chunks)
    assert len(first["Energies"]) == 1000
    del chunks
    gc.collect()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        extra = [t for t in threading.enumerate()
                 if t.ident not in before and t.name == "comptonsky-event-reader"]
        if not extra:
            break
        time.sleep(0.01)
    assert not extra
