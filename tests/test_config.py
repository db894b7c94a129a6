"""Parameter files: the tutorial's layout, aliases, overrides and errors."""

from __future__ import annotations

import pytest
from astropy import units as u

from comptonsky.config import Parameters, load_yaml, parse_override
from comptonsky.errors import FileFormatError, InvalidParameterError, UnknownChoiceError

from .conftest import reference_file


def test_reference_parameter_files_read():
    for name in ("imagedeconvolution_parfile_gal_511keV.yml",
                 "imagedeconvolution_parfile_scatt_511keV.yml"):
        p = Parameters.from_file(reference_file(name))
        assert p["model_definition:property:nside"] == 16
        assert p["model_definition:initialization:parameter:value"] == [1e-4]
        assert isinstance(p["model_definition:initialization:parameter:value"][0], float)
        assert p["deconvolution:parameter:acceleration:alpha_max"] == 10.0
        assert p["deconvolution:parameter:background_normalization_optimization:range"] == {
            "albedo": [0.01, 10.0]}
        assert p.quantity("deconvolution:parameter:smoothing:FWHM") == 2.0 * u.deg


@pytest.mark.parametrize("text", ["1e-4", "1.e+6", "-2E3", ".inf", "1.0", "3.5e-12"])
def test_numbers_in_exponent_notation_are_floats(text):
    assert isinstance(load_yaml(text), float)


def test_both_spellings_reach_the_same_parameter():
    p = Parameters({"deconvolution": {"parameter": {"acceleration": {"accel_factor_max": 3}}}})
    assert p["deconvolution:parameter:acceleration:alpha_max"] == 3.0
    assert p["deconvolution:parameter:acceleration:accel_factor_max"] == 3.0
    p.override("deconvolution:parameter:background_normalization:activate = True")
    assert p["deconvolution:parameter:background_normalization_optimization:activate"] is True
    p.override("deconvolution:parameter_RL:iteration_max = 50")
    assert p["deconvolution:parameter:iteration_max"] == 50
    p.override("model_definition:initialization:parameter_flat:value = [2e-4]")
    assert p["model_definition:initialization:parameter:value"] == [2e-4]


def test_the_same_key_under_both_spellings_is_an_error():
    with pytest.raises(InvalidParameterError, match="given twice"):
        Parameters({"deconvolution": {"parameter": {
            "acceleration": {"alpha_max": 2.0, "accel_factor_max": 3.0}}}})


def test_tutorial_overrides():
    p = Parameters.from_file(reference_file("imagedeconvolution_parfile_gal_511keV.yml"))
    p.override("deconvolution:parameter:iteration_max = 50")
    p.override("deconvolution:parameter:smoothing:activate = False")
    assert p["deconvolution:parameter:iteration_max"] == 50
    assert p["deconvolution:parameter:smoothing:activate"] is False


def test_misspelt_key_names_key_and_nearest():
    p = Parameters()
    with pytest.raises(UnknownChoiceError) as err:
        p.override("deconvolution:parameter:acceleraton:activate = True")
    msg = str(err.value)
    assert "acceleraton" in msg and "did you mean 'deconvolution:parameter:acceleration'" in msg


def test_misspelt_key_in_file_names_file(tmp_path):
    path = tmp_path / "p.yml"
    path.write_text("deconvolution:\n  algorithm: RL\n  parameter:\n    iteration_mx: 3\n")
    with pytest.raises(UnknownChoiceError, match=r"p\.yml.*|iteration_max") as err:
        Parameters.from_file(path)
    assert "iteration_max" in str(err.value) and str(path) in str(err.value)


@pytest.mark.parametrize("override, fragment", [
    ("deconvolution:parameter:iteration_max = 2.5", "expected an integer, found 2.5"),
    ("deconvolution:parameter:iteration_max = ten", "expected an integer, found 'ten'"),
    ("deconvolution:parameter:acceleration:activate = 3", "expected true or false"),
    ("deconvolution:parameter:smoothing:FWHM:unit = degg", "did you mean 'deg'"),
    ("deconvolution:parameter:smoothing:FWHM:unit = keV", "not convertible to deg"),
    ("deconvolution:algorithm = RLL", "did you mean 'RL'"),
    ("deconvolution:parameter:acceleration:alpha_max = 0.5", "must be ≥ 1.0"),
])
def test_bad_values_are_named(override, fragment):
    p = Parameters()
    with pytest.raises(InvalidParameterError) as err:
        p.override(override)
    assert fragment in str(err.value)
    assert override.split("=")[0].strip().split(":")[-1] in str(err.value)


def test_override_syntax_error():
    with pytest.raises(InvalidParameterError, match="section:key = value"):
        parse_override("deconvolution:parameter:iteration_max 50")


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(FileFormatError, match="cannot read"):
        Parameters.from_file(tmp_path / "absent.yml")
    bad = tmp_path / "bad.yml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(FileFormatError, match="not valid YAML"):
        Parameters.from_file(bad)


def test_get_default_and_dump_round_trip():
    p = Parameters({"deconvolution": {"algorithm": "RL"}})
    assert p.get("deconvolution:parameter:iteration_max", 7) == 7
    again = Parameters(load_yaml(p.dump()))
    assert again.to_dict() == p.to_dict()


def _tree(algorithm, **parameter):
    return {"deconvolution": {"algorithm": algorithm, "parameter": parameter}}


@pytest.mark.parametrize("algorithm, key, value", [
    ("RL", "n_subsets", 4),
    ("RL", "prior", {"TSV": {"coefficient": 1.0}}),
    ("RLadvanced", "subset_axis", "Phi"),
    ("RLsimple", "acceleration", {"activate": True}),
    ("RLsimple", "background_normalization_optimization", {"activate": True}),
    ("MAP_RL", "smoothing", {"activate": True, "FWHM": {"value": 2.0, "unit": "deg"}}),
    ("OSEM", "prior", {"TSV": {"coefficient": 1.0}}),
])
def test_key_an_algorithm_does_not_use_is_an_error(algorithm, key, value):
    with pytest.raises(InvalidParameterError) as err:
        Parameters(_tree(algorithm, **{key: value}), source="p.yml")
    msg = str(err.value)
    assert algorithm in msg and key in msg and "iteration_max" in msg and "p.yml" in msg


def test_switched_off_features_and_own_keys_are_accepted():
    off = {"activate": False}
    Parameters(_tree("RLsimple", acceleration=off, smoothing=off, response_weighting=off,
                     background_normalization_optimization=off, iteration_max=3))
    Parameters(_tree("MAP_RL", smoothing={"activate": False, "FWHM": {"value": 2.0,
                                                                      "unit": "deg"}},
                     prior={"TSV": {"coefficient": 1.0}}))
    Parameters(_tree("OSEM", n_subsets=4, subset_axis="Phi", subset_schedule="constant"))


@pytest.mark.parametrize("algorithm, method", [("MAP_RL", "max_step"), ("OSEM", "MaxStep"),
                                               ("MAP_RL", None)])
def test_acceleration_method_an_algorithm_cannot_apply(algorithm, method):
    acceleration = {"activate": True} | ({"method": method} if method else {})
    with pytest.raises(InvalidParameterError, match=f"{algorithm}.*SQUAREM"):
        Parameters(_tree(algorithm, acceleration=acceleration))
    acceleration["activate"] = False  # off: the method does not matter
    Parameters(_tree(algorithm, acceleration=acceleration))


def test_stopping_statistic_per_algorithm():
    Parameters(_tree("MAP_RL", stopping_criteria={"statistics": "log-posterior"}))
    with pytest.raises(UnknownChoiceError, match="stopping statistic for RL"):
        Parameters(_tree("RL", stopping_criteria={"statistics": "log-posterior"}))


def test_overrides_are_checked_against_the_algorithm_when_it_is_built():
    p = Parameters(_tree("RL", acceleration={"activate": True, "method": "max_step"}))
    p.override("deconvolution:algorithm = OSEM")  # an edit sequence may pass invalid states
    with pytest.raises(InvalidParameterError, match="OSEM"):
        p.check_algorithm()
    p.override("deconvolution:parameter:acceleration:method = line_search")
    p.override("deconvolution:parameter:n_subsets = 8")
    p.check_algorithm()
    with pytest.raises(InvalidParameterError, match="n_subsets.*'RL'"):
        p.check_algorithm("RL")


def test_choice_lists_come_from_the_registry():
    from comptonsky.deconvolution import registry
    from comptonsky.deconvolution.algorithms import ALGORITHMS
    from comptonsky.deconvolution.algorithms.acceleration import ACCELERATORS
    from comptonsky.deconvolution.model import MODEL_CLASSES
    from comptonsky.deconvolution.smoothing import SMOOTHING_METHODS

    assert set(ALGORITHMS) == set(registry.ALGORITHM_NAMES)
    assert {cls.name for cls in ALGORITHMS.values()} == set(registry.ALGORITHM_SPECS)
    assert set(ACCELERATORS) == set(registry.SAFE_ACCELERATIONS)
    assert set(SMOOTHING_METHODS) == set(registry.SMOOTHING_METHODS)
    assert set(MODEL_CLASSES) == set(registry.MODEL_CLASSES)
    for spec in registry.ALGORITHM_SPECS.values():
        assert set(spec.accelerations) <= set(registry.ACCELERATION_METHODS.values())
        assert set(spec.statistics) <= set(registry.STOPPING_STATISTICS)
    with pytest.raises(UnknownChoiceError, match="line_search"):
        Parameters(_tree("RL", acceleration={"method": "linesearch"}))


@pytest.mark.parametrize("nside", [0, 3, 5, 12, -4])
def test_nside_must_be_a_power_of_two(tmp_path, nside):
    path = tmp_path / "p.yml"
    path.write_text(f"model_definition:\n  property:\n    nside: {nside}\n")
    with pytest.raises(InvalidParameterError,
                       match=rf"p\.yml: model_definition:property:nside: expected a HEALPix "
                             rf"NSIDE .*found {nside}") as info:
        Parameters.from_file(path)
    assert "\n" not in str(info.value)
    with pytest.raises(InvalidParameterError, match="power of 2"):
        Parameters({}).override(f"model_definition:property:nside = {nside}")
    for good in (1, 2, 8, 1024):
        assert Parameters({"model_definition": {"property": {"nside": good}}}).get(
            "model_definition:property:nside") == good


def test_binary_parameter_file_is_a_one_line_error(tmp_path):
    path = tmp_path / "p.yml"
    path.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(FileFormatError, match=r"p\.yml: not a text \(UTF-8\) parameter file "
                                              r"\(byte 128 is 0x80\)") as info:
        Parameters.from_file(path)
    assert "\n" not in str(info.value)
