"""The parallel chunk reader against h5py's own reads, on every layout it accepts."""

from __future__ import annotations

import zlib

import h5py
import numpy as np
import pytest

from comptonsky.errors import FileFormatError
from comptonsky.io.hdf5_chunks import ChunkedDatasetReader

LAYOUTS = [  # shape, chunks
    ((10, 3, 7), (1, 3, 7)),     # one row per chunk (the response writer's layout)
    ((10, 3, 7), (4, 2, 3)),     # partial chunks at every edge
    ((37,), (8,)),
    ((5, 40), (5, 40)),          # a single chunk
]


def write(path, shape, chunks, dtype=np.float32, shuffle=False, seed=0, **kw):
    rng = np.random.default_rng(seed)
    data = (rng.random(shape) * 1000).astype(dtype)
    data[..., ::3] = 0  # compressible in parts, like a response
    with h5py.File(path, "w") as f:
        f.create_dataset("x", data=data, chunks=chunks, compression="gzip", shuffle=shuffle, **kw)
    return data


@pytest.mark.parametrize("shape,chunks", LAYOUTS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64, ">f8", np.int32])
@pytest.mark.parametrize("shuffle", [False, True])
def test_every_slab_equals_h5py(tmp_path, shape, chunks, dtype, shuffle):
    path = tmp_path / "d.h5"
    data = write(path, shape, chunks, dtype, shuffle)
    with h5py.File(path, "r") as f:
        ds = f["x"]
        assert ChunkedDatasetReader.supports(ds)
        for threads in (1, 3):
            r = ChunkedDatasetReader(path, ds, threads=threads)
            for lo, hi in [(0, shape[0]), (1, 2), (3, shape[0] - 1), (2, 2)]:
                got = r.read(lo, hi)
                np.testing.assert_array_equal(got, ds[lo:hi])
                np.testing.assert_array_equal(got, data[lo:hi])
                assert got.dtype.isnative
            r.close()


def test_out_array_is_filled_with_a_cast(tmp_path):
    path = tmp_path / "d.h5"
    data = write(path, (6, 5), (2, 5), np.float64)
    with h5py.File(path, "r") as f:
        out = np.full((4, 5), -1.0, dtype=np.float32)
        r = ChunkedDatasetReader(path, f["x"], threads=2)
        assert r.read(1, 5, out=out) is out
    np.testing.assert_array_equal(out, data[1:5].astype(np.float32))


def test_unwritten_chunks_read_as_the_fill_value(tmp_path):
    path = tmp_path / "d.h5"
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("x", shape=(8, 4), chunks=(2, 4), dtype="f4", compression="gzip",
                              fillvalue=7.5)
        ds[2:4] = 1.0  # one chunk written, three never allocated
    with h5py.File(path, "r") as f:
        got = ChunkedDatasetReader(path, f["x"], threads=2).read(0, 8)
        np.testing.assert_array_equal(got, f["x"][...])
    assert (got[:2] == 7.5).all() and (got[2:4] == 1.0).all()


def test_a_chunk_stored_with_deflate_skipped(tmp_path):
    """A chunk whose filter mask says deflate was not applied is taken as stored."""
    path = tmp_path / "d.h5"
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("x", shape=(4, 3), chunks=(2, 3), dtype="<f8", compression="gzip")
        ds[0:2] = 1.0
        raw = np.arange(6, dtype="<f8").tobytes()
        ds.id.write_direct_chunk((2, 0), raw, filter_mask=1)
    with h5py.File(path, "r") as f:
        got = ChunkedDatasetReader(path, f["x"]).read(0, 4)
        np.testing.assert_array_equal(got, f["x"][...])
    np.testing.assert_array_equal(got[2:], np.arange(6.0).reshape(2, 3))


@pytest.mark.parametrize("kw", [dict(compression="lzf"), dict(compression="gzip", fletcher32=True),
                                dict(compression=None), dict(chunks=None, compression=None)])
def test_other_layouts_are_not_claimed(tmp_path, kw):
    path = tmp_path / "d.h5"
    with h5py.File(path, "w") as f:
        opts = {"chunks": (2, 3), **kw}
        f.create_dataset("x", data=np.ones((4, 3)), **opts)
    with h5py.File(path, "r") as f:
        assert not ChunkedDatasetReader.supports(f["x"])
        with pytest.raises(FileFormatError, match="not a deflate-chunked"):
            ChunkedDatasetReader(path, f["x"])


def test_a_file_with_a_user_block_is_left_to_h5py(tmp_path):
    path = tmp_path / "d.h5"
    with h5py.File(path, "w", userblock_size=512) as f:
        f.create_dataset("x", data=np.ones((4, 3)), chunks=(2, 3), compression="gzip")
    with h5py.File(path, "r") as f:
        assert not ChunkedDatasetReader.supports(f["x"])


def chunk_location(path):
    with h5py.File(path, "r") as f:
        info = f["x"].id.get_chunk_info(1)
        return int(info.byte_offset), int(info.size)


def test_a_damaged_chunk_is_an_error_naming_file_and_chunk(tmp_path):
    path = tmp_path / "d.h5"
    write(path, (6, 50), (2, 50), np.float64)
    offset, size = chunk_location(path)
    with open(path, "r+b") as fh:  # flip bytes inside the second chunk's deflate stream
        fh.seek(offset + size // 2)
        b = bytearray(fh.read(8))
        fh.seek(offset + size // 2)
        fh.write(bytes(x ^ 0xFF for x in b))
    with h5py.File(path, "r") as f:
        r = ChunkedDatasetReader(path, f["x"], threads=2)
        with pytest.raises(FileFormatError, match=r"d\.h5: /x chunk at \(2, 0\) is damaged"):
            r.read(0, 6)
        np.testing.assert_array_equal(r.read(0, 2), f["x"][0:2])  # the others still read


def test_a_chunk_inflating_to_the_wrong_size_is_an_error(tmp_path):
    path = tmp_path / "d.h5"
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("x", shape=(4, 3), chunks=(2, 3), dtype="<f8", compression="gzip")
        ds.id.write_direct_chunk((0, 0), zlib.compress(b"\0" * 40))  # 40 bytes, expected 48
    with h5py.File(path, "r") as f:
        with pytest.raises(FileFormatError, match="holds 40 bytes, expected 48"):
            ChunkedDatasetReader(path, f["x"]).read(0, 2)


def test_a_truncated_file_is_an_error(tmp_path):
    path = tmp_path / "d.h5"
    write(path, (6, 50), (2, 50), np.float64)
    with h5py.File(path, "r") as f:
        r = ChunkedDatasetReader(path, f["x"], threads=1)
        offset, size = chunk_location(path)
        with open(path, "r+b") as fh:
            fh.truncate(offset + size // 2)
        with pytest.raises(FileFormatError, match="cut short"):
            r.read(2, 4)


def test_rows_out_of_range(tmp_path):
    path = tmp_path / "d.h5"
    write(path, (6, 5), (2, 5))
    with h5py.File(path, "r") as f:
        r = ChunkedDatasetReader(path, f["x"])
        with pytest.raises(IndexError, match="rows 4:7 outside 0:6"):
            r.read(4, 7)
