"""FullDetectorResponse: the COSI team's DRM files (sparse and dense), writer, hostile files."""

from __future__ import annotations

import shutil
from pathlib import Path

import astropy.units as u
import h5py
import numpy as np
import pytest
from histpy import Axes, Axis, HealpixAxis, Histogram

from comptonsky import FullDetectorResponse
from comptonsky.errors import FileFormatError, InvalidParameterError
from comptonsky.io.drm import write_full_detector_response

from .conftest import reference_file

REF = Path(__file__).parent / "data" / "cosipy_detector_reference.npz"
SPARSE = "cosipy-test-data/test_full_detector_response.h5"
DENSE = "cosipy-test-data/test_full_detector_response_dense.h5"


def small_axes(pol=False, extra=False, nside=1):
    axes = [HealpixAxis(nside=nside, coordsys="spacecraftframe", label="NuLambda"),
            Axis([100.0, 300.0, 900.0] * u.keV, scale="log", label="Ei")]
    if pol:
        axes.append(Axis(np.linspace(0, 180, 4) * u.deg, label="Pol"))
    axes += [Axis([100.0, 300.0, 900.0] * u.keV, scale="log", label="Em"),
             Axis(np.linspace(0, 180, 5) * u.deg, label="Phi"),
             HealpixAxis(nside=1, coordsys="spacecraftframe", label="PsiChi")]
    if extra:
        axes += [HealpixAxis(nside=1, coordsys="spacecraftframe", label="SigmaTau"),
                 Axis([0.0, 1.0, 1000.0] * u.cm, label="Dist")]
    return Axes(axes)


def random_contents(axes, seed=0, density=0.1):
    rng = np.random.default_rng(seed)
    c = rng.uniform(0, 10, size=tuple(axes.nbins))
    c[rng.uniform(size=c.shape) > density] = 0.0
    return c


def test_team_files_sparse_equals_dense():
    with FullDetectorResponse.open(reference_file(SPARSE)) as s, \
            FullDetectorResponse.open(reference_file(DENSE)) as d:
        assert s.is_sparse and not d.is_sparse
        assert list(s.axes.labels) == ["NuLambda", "Ei", "Em", "Phi", "PsiChi"] == list(
            d.axes.labels)
        assert list(s.file_axes.labels)[-2:] == ["SigmaTau", "Dist"]
        assert s.nside == 1 and s.npix == 12 and s.unit == u.cm ** 2
        assert s.shape == d.shape == (12, 10, 10, 30, 12) and s.ndim == 5
        assert s.axes == d.axes
        assert s.axes["PsiChi"].coordsys.name == "spacecraftframe"
        np.testing.assert_allclose(s.read_rows(), d.read_rows(), rtol=1e-12, atol=0)


def test_pixels_match_cosipy():
    ref = np.load(REF)
    with FullDetectorResponse.open(reference_file(SPARSE)) as fdr:
        h = fdr[3]
        assert isinstance(h, Histogram)
        assert list(h.axes.labels) == ["Ei", "Em", "Phi", "PsiChi"] and h.unit == u.cm ** 2
        np.testing.assert_allclose(h.contents.value, ref["drm/pixel3"], rtol=1e-12, atol=0)
        rows = fdr.read_rows()
        np.testing.assert_allclose(rows.sum(axis=(1, 2, 3, 4)), ref["drm/total"], rtol=1e-12)
        for k, lab in enumerate(["Ei", "Em", "Phi", "PsiChi"]):
            other = tuple(i + 1 for i in range(4) if i != k)
            np.testing.assert_allclose(rows.sum(axis=other), ref[f"drm/proj_{lab}"], rtol=1e-12,
                                       atol=1e-300)


def test_read_rows_order_repeats_dtype():
    with FullDetectorResponse.open(reference_file(DENSE)) as fdr:
        pix = [7, 2, 7, 11, 0]
        got = fdr.read_rows(pix, dtype=np.float32)
        assert got.dtype == np.float32 and got.shape == (5, 10, 10, 30, 12)
        for k, p in enumerate(pix):
            np.testing.assert_allclose(got[k], fdr[p].contents.value, rtol=1e-6)
        with pytest.raises(IndexError, match="out of range"):
            fdr[12]
        with pytest.raises(InvalidParameterError, match="integer"):
            fdr[1.5]


@pytest.mark.parametrize("sparse", [False, True])
def test_write_round_trip(tmp_path, sparse):
    axes = small_axes(extra=sparse)
    c = random_contents(axes)
    path = write_full_detector_response(tmp_path / "r.h5", axes, c, unit="cm2", sparse=sparse)
    with FullDetectorResponse.open(path) as fdr:
        assert fdr.is_sparse == sparse
        want = c.sum(axis=(5, 6)) if sparse else c
        np.testing.assert_allclose(fdr.read_rows(), want, rtol=1e-12, atol=0)
        assert fdr.axes == Axes([a for a in axes if a.label not in ("SigmaTau", "Dist")])
    with h5py.File(path) as f:  # the groups and attributes cosipy's reader uses
        drm = f["DRM"]
        assert drm.attrs["UNIT"] == "cm2" and bool(drm.attrs["SPARSE"]) == sparse
        for lab in ("NuLambda", "PsiChi"):
            a = drm["AXES"][lab].attrs
            assert a["TYPE"] == "healpix" and a["NSIDE"] == 1 and a["SCHEME"] == "ring"
        assert drm["AXES"]["Ei"].attrs["UNIT"] == "keV" and drm["AXES"]["Ei"].attrs["TYPE"] == "log"
        assert list(drm["AXES"].keys())[0] == "NuLambda"


def test_polarization_axis_is_kept(tmp_path):
    axes = small_axes(pol=True)
    c = random_contents(axes, seed=2)
    path = write_full_detector_response(tmp_path / "pol.h5", axes, c)
    with FullDetectorResponse.open(path, pa_convention="RelativeX") as fdr:
        assert fdr.has_polarization and fdr.pa_convention == "RelativeX"
        assert list(fdr[0].axes.labels) == ["Ei", "Pol", "Em", "Phi", "PsiChi"]
        np.testing.assert_allclose(fdr.read_rows(), c)


def test_writer_rejects_bad_input(tmp_path):
    axes = small_axes()
    with pytest.raises(InvalidParameterError, match="shape"):
        write_full_detector_response(tmp_path / "x.h5", axes, np.zeros((2, 2)))
    with pytest.raises(FileExistsError):
        p = write_full_detector_response(tmp_path / "y.h5", axes, random_contents(axes))
        write_full_detector_response(p, axes, random_contents(axes), overwrite=False)


def _copy(tmp_path, name=DENSE):
    dst = tmp_path / "copy.h5"
    shutil.copy(reference_file(name), dst)
    dst.chmod(0o644)
    return dst


@pytest.mark.parametrize("edit, match", [
    (lambda f: f.move("DRM", "XDRM"), "no 'DRM' group"),
    (lambda f: f["DRM"].attrs.__delitem__("UNIT"), "no attribute 'UNIT'"),
    (lambda f: f["DRM/AXES/Ei"].attrs.__delitem__("UNIT"), "'Ei' has no attribute 'UNIT'"),
    (lambda f: f["DRM/AXES/PsiChi"].attrs.__delitem__("TYPE"), "'PsiChi' has no attribute 'TYPE'"),
    (lambda f: f["DRM/AXES/NuLambda"].attrs.__setitem__("NSIDE", 2), "NSIDE 2 must hold"),
    (lambda f: f["DRM/AXES/NuLambda"].attrs.__setitem__("NSIDE", 3), "power of 2"),
    (lambda f: f["DRM/AXES"].__delitem__("Phi"), "lacks axis 'Phi'"),
    (lambda f: f["DRM"].__delitem__("CONTENTS"), "no dataset 'CONTENTS'"),
])
def test_hostile_dense_files(tmp_path, edit, match):
    path = _copy(tmp_path)
    with h5py.File(path, "a") as f:
        edit(f)
    with pytest.raises(FileFormatError, match=match) as err:
        FullDetectorResponse.open(path)
    assert str(path) in str(err.value)


def test_hostile_sparse_pixel(tmp_path):
    path = _copy(tmp_path, SPARSE)
    with h5py.File(path, "a") as f:
        f["DRM/BIN_NUMBERS"][4] = np.array([0, 1, 2], dtype=np.int64)
    with FullDetectorResponse.open(path) as fdr:
        fdr[3]
        with pytest.raises(FileFormatError, match="pixel 4 has 3 bin numbers"):
            fdr[4]


def test_not_hdf5_truncated_missing(tmp_path):
    text = tmp_path / "a.h5"
    text.write_text("not a response")
    with pytest.raises(FileFormatError, match="cannot be read as HDF5"):
        FullDetectorResponse.open(text)
    src = reference_file(SPARSE)
    cut = tmp_path / "cut.h5"
    cut.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    with pytest.raises(FileFormatError, match=str(cut)):
        fdr = FullDetectorResponse.open(cut)
        fdr.read_rows()
    with pytest.raises(FileFormatError, match="no such file"):
        FullDetectorResponse.open(tmp_path / "none.h5")


def test_lazy_pixel_reads(tmp_path):
    axes = small_axes(nside=4)
    c = random_contents(axes, seed=4, density=0.5)
    path = write_full_detector_response(tmp_path / "big.h5", axes, c)
    with FullDetectorResponse.open(path) as fdr:
        reads = []
        ds = fdr._values
        orig = type(ds).__getitem__

        class Spy(type(ds)):
            def __getitem__(self, key):
                reads.append(key)
                return orig(self, key)

        fdr._values = Spy(ds.id)
        chunked, fdr._chunked = fdr._chunked, None  # through libhdf5: one slab read
        np.testing.assert_allclose(fdr[100].contents.value, c[100])
        assert len(reads) == 1 and np.size(orig(ds, reads[0])) == c[100].size
        # through the chunk reader: only the chunks holding pixel 100 are inflated
        fdr._chunked = chunked
        keys = []
        fill = chunked._fill_one
        chunked._fill_one = lambda key, *a: (keys.append(key), fill(key, *a))
        np.testing.assert_allclose(fdr[101].contents.value, c[101])
        assert keys and {k[0] for k in keys} == {101 // chunked.chunks[0]} and len(reads) == 1


def _plain_h5py_rows(fdr, pixels):
    """The rows as libhdf5 reads them, the chunk reader switched off."""
    chunked, fdr._chunked = fdr._chunked, None
    try:
        return fdr.read_rows(pixels)
    finally:
        fdr._chunked = chunked


def test_team_dense_file_is_inflated_on_threads_to_the_same_numbers():
    with FullDetectorResponse.open(reference_file(DENSE)) as d:
        assert d._chunked is not None  # gzip chunks of (3, 3, 5, 15, 6): read in parallel
        for pixels in (None, [5], [11, 0, 3, 3], np.arange(2, 9)):
            np.testing.assert_array_equal(d.read_rows(pixels), _plain_h5py_rows(d, pixels))


@pytest.mark.parametrize("extra", [False, True])
def test_written_dense_file_read_on_threads_equals_h5py(tmp_path, extra):
    axes = small_axes(pol=True, extra=extra, nside=2)
    contents = random_contents(axes, density=0.6)
    with FullDetectorResponse.open(write_full_detector_response(tmp_path / "d.h5", axes,
                                                                contents)) as fdr:
        assert fdr._chunked is not None and fdr.row_chunk == 1
        for pixels in (None, [47, 1], np.arange(10, 30)):
            got = fdr.read_rows(pixels)
            np.testing.assert_array_equal(got, _plain_h5py_rows(fdr, pixels))
        want = contents.sum(axis=(-2, -1)) if extra else contents
        np.testing.assert_allclose(fdr.read_rows(), want, rtol=1e-12)
