"""Response values and units checked as the response is read: NaN, infinite and negative
elements named by their axis indices; the unit converted to cm² s or refused."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from astropy import units as u
from histpy import Histogram

from comptonsky.errors import ComptonskyError, FileFormatError, InvalidDataError
from comptonsky.response.load import LazyResponse, load_response
from comptonsky.response.options import ResponseOptions
from comptonsky.response.source import probe_response
from comptonsky.response.synthetic import cone_response
from comptonsky.response.validate import ValueCheck, unit_factor

LOADS = [dict(storage="dense"), dict(storage="dense", dtype="float32"),
         dict(storage="sparse", dtype="float32"), dict(storage="out-of-core"),
         dict(storage="out-of-core", dtype="float32"), dict(storage="dense", map_files="always")]


@pytest.fixture(scope="module")
def cone():
    return cone_response(nside=2, n_phi=6, ring_width_deg=20.0)


def _planted(cone, tmp_path, index, value, name="bad.h5", **write_kw):
    contents = np.array(cone.contents.value)
    contents[index] = value
    path = tmp_path / name
    Histogram(cone.axes, contents=contents, unit=cone.unit).write(path, **write_kw)
    return path


@pytest.mark.parametrize("value,word", [(np.nan, "NaN"), (np.inf, "infinite"),
                                        (-1e-3, "negative")])
@pytest.mark.parametrize("kw", LOADS, ids=lambda k: "-".join(map(str, k.values())))
def test_bad_element_is_named(cone, tmp_path, value, word, kw):
    path = _planted(cone, tmp_path, (7, 0, 0, 4, 33), value)
    with pytest.raises(InvalidDataError) as info:
        load_response(path, cache_dir=tmp_path / "c", **kw)
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg and word in msg
    assert "[NuLambda=7, Ei=0, Em=0, Phi=4, PsiChi=33]" in msg
    assert not list((tmp_path / "c").glob("*")) if (tmp_path / "c").exists() else True


def test_first_bad_element_is_named_and_counted(cone, tmp_path):
    contents = np.array(cone.contents.value)
    contents[30, 0, 0, 2, 5] = -2.0
    contents[9, 0, 0, 5, 40] = np.nan          # earlier in C order
    path = tmp_path / "two.h5"
    Histogram(cone.axes, contents=contents, unit=cone.unit).write(path)
    with pytest.raises(InvalidDataError, match=r"\[NuLambda=9, Ei=0, Em=0, Phi=5, "
                                               r"PsiChi=40\] is NaN.*2 bad element"):
        load_response(path, cache=False)


def test_in_memory_and_chunked_responses_are_checked(cone, tmp_path):
    contents = np.array(cone.contents.value)
    contents[3, 0, 0, 1, 2] = -5.0
    bad = Histogram(cone.axes, contents=contents, unit=cone.unit)
    with pytest.raises(InvalidDataError, match="NuLambda=3, Ei=0, Em=0, Phi=1, PsiChi=2"):
        load_response(bad)
    with pytest.raises(InvalidDataError, match="negative"):
        load_response(Histogram(cone.axes, contents=contents, unit=cone.unit, sparse=True),
                      storage="sparse")
    path = _planted(cone, tmp_path, (40, 0, 0, 0, 1), np.nan, "chunked.h5",
                    h5_dataset_kw={"chunks": (5, 1, 1, 6, 48), "compression": "gzip"})
    with pytest.raises(InvalidDataError, match="chunked.h5.*NuLambda=40, Ei=0, Em=0, Phi=0, "
                                               "PsiChi=1"):
        load_response(path, storage="sparse", cache=False)


def test_overflow_bins_are_not_part_of_the_response(cone, tmp_path):
    padded = Histogram(cone.axes, contents=cone.contents, track_overflow=True)
    path = tmp_path / "padded.h5"
    padded.write(path)
    with h5py.File(path, "r+") as f:                  # a NaN in an overflow bin: ignored
        f["hist/contents"][0, 1, 1, 1, 1] = np.nan
        f["hist/contents"][8, 1, 1, 3, 11] = -1.0     # bin (7, 0, 0, 2, 10)
    with pytest.raises(InvalidDataError, match=r"\[NuLambda=7, Ei=0, Em=0, Phi=2, "
                                               r"PsiChi=10\] is negative"):
        load_response(path, cache=False)


def _with_unit(cone, tmp_path, unit, scale=1.0):
    path = tmp_path / f"unit-{abs(hash(unit))}.h5"
    Histogram(cone.axes, contents=cone.contents.value * scale, unit="cm2 s").write(path)
    with h5py.File(path, "r+") as f:
        f["hist"].attrs["unit"] = unit
    return path


@pytest.mark.parametrize("kw", LOADS[:5], ids=lambda k: "-".join(map(str, k.values())))
def test_m2_s_is_converted_to_cm2_s(cone, tmp_path, kw):
    ref = load_response(cone)
    path = _with_unit(cone, tmp_path, "m2 s", scale=1e-4)
    op = load_response(path, cache_dir=tmp_path / "c", sparse_threshold=0.0, **kw)
    assert op.unit == u.cm ** 2 * u.s
    tol = 1e-12 if kw.get("dtype") is None else 1e-6
    assert np.abs(op.exposure - ref.exposure).max() <= tol * ref.exposure.max()
    x = np.random.default_rng(0).random(op.n_model)
    assert np.abs(op.forward(x) - ref.forward(x)).max() <= tol * ref.forward(x).max()
    assert probe_response(path)[2] == u.cm ** 2 * u.s


def test_unit_cache_key_follows_the_unit(cone, tmp_path):
    path = _with_unit(cone, tmp_path, "cm2 s")
    cdir = tmp_path / "c"
    first = load_response(path, dtype="float32", cache_dir=cdir)
    first.load_info["cache_pending"].result()
    with h5py.File(path, "r+") as f:
        f["hist"].attrs["unit"] = "m2 s"
    op = load_response(path, dtype="float32", cache_dir=cdir)
    assert op.load_info["cached"] is False
    assert op.exposure.sum() == pytest.approx(1e4 * first.exposure.sum(), rel=1e-6)


@pytest.mark.parametrize("unit,words", [("cm2", "not an area × time"),
                                        ("s", "not an area × time"),
                                        ("count", "not an area × time"),
                                        ("furlong fortnight ???", "cannot be parsed"),
                                        ("cm^^2 s", "cannot be parsed")])
def test_bad_units_are_refused(cone, tmp_path, unit, words):
    path = _with_unit(cone, tmp_path, unit)
    for call in (lambda: load_response(path, cache=False), lambda: probe_response(path),
                 lambda: LazyResponse(path, ResponseOptions())):
        with pytest.raises(FileFormatError) as info:
            call()
        msg = str(info.value)
        assert words in msg and str(path) in msg and "\n" not in msg


def test_bad_unit_of_a_sparse_file_is_refused(cone, tmp_path):
    path = tmp_path / "coo.h5"
    Histogram(cone.axes, contents=cone.contents, sparse=True).write(path)
    with h5py.File(path, "r+") as f:
        f["hist"].attrs["unit"] = "furlong"
    with pytest.raises(FileFormatError, match="response unit 'furlong' cannot be parsed"):
        load_response(path, storage="sparse")


def test_cli_reports_a_bad_unit_in_one_line(cone, tmp_path, capsys):
    from comptonsky.cli import main as cli_main
    from tests.conftest import write_parfile
    path = _with_unit(cone, tmp_path, "furlong")
    parfile = write_parfile(tmp_path, nside=2, bkg=False)
    axes = [cone.axes[label] for label in ("Em", "Phi", "PsiChi")]
    event = Histogram(axes, contents=np.ones([a.nbins for a in axes]))
    event.write(tmp_path / "event.h5")
    rc = cli_main(["deconvolve", str(parfile), "--event", str(tmp_path / "event.h5"),
                   "--response", str(path), "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc != 0 and "furlong" in err and "Traceback" not in err


def test_unit_factor():
    assert unit_factor("m2 s", "f") == pytest.approx(1e4)
    assert unit_factor(u.cm ** 2 * u.s, "f") == 1.0
    assert unit_factor(None, "f") == 1.0
    assert unit_factor("m2 h", "f") == pytest.approx(3.6e7)
    with pytest.raises(ComptonskyError):
        unit_factor("kg", "f")


def test_value_check_passes_good_blocks_and_names_axes():
    check = ValueCheck("r.h5", ["a", "b", "c"], (2, 3, 4))
    check.block(0, np.zeros((2, 12)))
    block = np.ones((1, 12))
    block[0, 7] = -np.inf
    with pytest.raises(InvalidDataError, match=r"r.h5: response element \[a=1, b=1, c=3\] is "
                                               "infinite"):
        check.block(1, block)
