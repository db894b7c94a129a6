"""MEGAlib .tra reader: compared with MEGAlib's own calculation of the same events."""

from __future__ import annotations

import gzip

import h5py
import numpy as np
import pytest

from comptonsky.binning import BinnedData
from comptonsky.errors import FileFormatError
from comptonsky.io.events import (
    DC2_COLUMNS,
    iter_event_chunks,
    iter_tra_chunks,
    read_events,
    read_tra,
)

from .conftest import reference_file as reference

TRA = "GalacticScan.inc1.id1.crab10sec.extracted.testsample.tra.gz"




@pytest.fixture(scope="module")
def tra_events():
    return read_tra(reference(TRA))


@pytest.fixture(scope="module")
def megalib():
    """MEGAlib's calculation of the full run; the .tra sample holds its first 621 events."""
    with h5py.File(reference("unbinned_data_MEGAlib_calc.hdf5")) as f:
        return {k: f[k][:621] for k in f}


def test_columns_and_count(tra_events):
    assert list(tra_events) == list(DC2_COLUMNS)
    assert len(tra_events["Energies"]) == 621
    for name, spec in DC2_COLUMNS.items():
        assert tra_events[name].shape == (621,) + spec.shape


@pytest.mark.parametrize("column", ["Energies", "TimeTags", "Distance", "Phi", "Psi local",
                                    "Chi local", "Xpointings", "Ypointings", "Zpointings"])
def test_matches_megalib_calculation(tra_events, megalib, column):
    np.testing.assert_allclose(tra_events[column], megalib[column], rtol=0, atol=1e-12)


def test_galactic_direction_relation_to_megalib(tra_events, megalib):
    """MEGAlib's calc file stores the Galactic direction as (l of the photon's travel direction,
    π/2 + b of it) in rad; ours is (l, b) in deg of the reversed (Compton-data-space) direction,
    consistent with Psi/Chi local."""
    l_ours = np.radians(tra_events["Chi galactic"])
    b_ours = np.radians(tra_events["Psi galactic"])
    dl = np.angle(np.exp(1j * (l_ours - (megalib["Chi galactic"] - np.pi))))
    np.testing.assert_allclose(dl, 0, atol=1e-12)
    np.testing.assert_allclose(b_ours, np.pi / 2 - megalib["Psi galactic"], atol=1e-12)


def _unit(lon, lat):
    return np.stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)], -1)


def test_galactic_and_local_directions_agree(tra_events):
    """The angle between the Galactic direction and the spacecraft z axis is Psi local, and its
    projections on x and y give Chi local."""
    g = _unit(np.radians(tra_events["Chi galactic"]), np.radians(tra_events["Psi galactic"]))
    x = _unit(*tra_events["Xpointings"].T)
    y = _unit(*tra_events["Ypointings"].T)
    z = _unit(*tra_events["Zpointings"].T)
    np.testing.assert_allclose(np.arccos(np.clip((g * z).sum(-1), -1, 1)),
                               tra_events["Psi local"], atol=1e-7)
    chi = np.mod(np.arctan2((g * y).sum(-1), (g * x).sum(-1)), 2 * np.pi)
    dchi = np.angle(np.exp(1j * (chi - tra_events["Chi local"])))
    defined = np.sin(tra_events["Psi local"]) > 1e-6  # azimuth is undefined along +-z
    assert defined.sum() > 600
    assert np.abs(dchi[defined]).max() < 1e-9
    assert tra_events["Chi galactic"].min() >= 0 and tra_events["Chi galactic"].max() < 360


def test_chunks_range_and_dispatch(tra_events):
    path = reference(TRA)
    seen = []
    chunks = list(iter_tra_chunks(path, ["Energies", "Phi"], chunk_size=200,
                                  event_range=(21, 521), callback=seen.append))
    assert seen == [200, 200, 100]
    np.testing.assert_array_equal(np.concatenate([c["Phi"] for c in chunks]),
                                  tra_events["Phi"][21:521])
    via_events = read_events(path, ["TimeTags"])
    np.testing.assert_array_equal(via_events["TimeTags"], tra_events["TimeTags"])
    with pytest.raises(FileFormatError, match="missing column"):
        next(iter_event_chunks(path, ["Energies", "Nope"], prefetch=False))


TRA_TEXT = """\
Type TRA
Version 1

SE
ET PH
ID 1
TI 10.5
PE 511.0 1.0
PP 1 2 3
SE
ET CO
ID 2
TI 11.25
GX 0 0
GZ 0 90
CE 300 1   211 1
CD 0 0 1   0 0 0   0 0 0   0 0 0   0 0 0   0 0 0
SE
ET CO
ID 3
TI 12
GX 90 0
GZ 0 0
CE 100 1 50 1
CD 1 0 0   0 0 0   0 0 0   0 0 0   0 0 0   0 0 0
EN
"""


def test_small_hand_made_file(tmp_path):
    path = tmp_path / "hand.tra"
    path.write_text(TRA_TEXT)
    ev = read_tra(path)
    np.testing.assert_array_equal(ev["TimeTags"], [11.25, 12.0])  # the PH event is skipped
    np.testing.assert_array_equal(ev["Energies"], [511.0, 150.0])
    cos_phi = 1 - 510.999 * (1 / 300 - 1 / 511)
    np.testing.assert_allclose(ev["Phi"][0], np.arccos(cos_phi))
    # event 2: direction +z of the spacecraft (first interaction above the second)
    np.testing.assert_allclose(ev["Psi local"][0], 0.0, atol=1e-12)
    # z axis towards the north Galactic pole: direction b = +90 deg
    np.testing.assert_allclose(ev["Psi galactic"][0], 90.0)
    # event 3: direction +x of the spacecraft, which points to l = 90, b = 0
    np.testing.assert_allclose(ev["Psi local"][1], np.pi / 2)
    np.testing.assert_allclose(ev["Chi local"][1], 0.0, atol=1e-12)
    np.testing.assert_allclose([ev["Chi galactic"][1], ev["Psi galactic"][1]], [90.0, 0.0],
                               atol=1e-9)
    np.testing.assert_allclose(ev["Distance"], [1.0, 1.0])
    # y = z × x: for event 3 (x to l=90, z to l=0) y points to the north pole
    np.testing.assert_allclose(ev["Ypointings"][1, 1], np.pi / 2)


def test_malformed_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.tra"
    path.write_text(TRA_TEXT.replace("TI 12\n", "TI twelve\n"))
    with pytest.raises(FileFormatError, match=r"bad.tra, line 21: cannot parse 'TI twelve'"):
        read_tra(path)


def test_corrupt_gzip_tra(tmp_path):
    raw = reference(TRA).read_bytes()
    cut = tmp_path / "cut.tra.gz"
    cut.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(FileFormatError, match=r"cut.tra.gz: cannot decompress near line \d+"):
        read_tra(cut)
    damaged = bytearray(raw)
    damaged[len(raw) // 2: len(raw) // 2 + 200] = bytes(200)
    bad = tmp_path / "bad.tra.gz"
    bad.write_bytes(bytes(damaged))
    # garbage inflates to unparsable text or fails the gzip CRC: either way the file is named
    with pytest.raises(FileFormatError, match=r"bad.tra.gz(, line \d+: cannot parse|: cannot "
                                              r"decompress).*corrupt"):
        read_tra(bad)


@pytest.mark.parametrize("fmt, suffix", [("fits", ".fits.gz"), ("hdf5", ".hdf5")])
def test_binned_data_read_tra_writes_unbinned_output(tmp_path, fmt, suffix):
    path = tmp_path / "hand.tra.gz"
    with gzip.open(path, "wt") as fh:
        fh.write(TRA_TEXT)
    bd = BinnedData(data_file=str(path), unbinned_output=fmt)
    ev = bd.read_tra(output_name=tmp_path / "unbinned")
    assert bd.cosi_dataset is ev
    written = read_events(tmp_path / f"unbinned{suffix}")
    for k in ev:
        np.testing.assert_array_equal(written[k], ev[k])
