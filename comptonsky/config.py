"""Parameter files: YAML in the tutorial's layout, aliases, overrides and validation.

The layout is that of the COSI tutorials' ``imagedeconvolution_parfile_*.yml``::

    model_definition:
      class: "AllSkyImage"
      property: {coordinate, nside, scheme, energy_edges: {value, unit}, unit}
      initialization: {algorithm: "flat", parameter: {value, unit}}
    deconvolution:
      algorithm: "RL"
      parameter: {iteration_max, acceleration: {...}, ...}
    response: {dtype, storage, ...}          # comptonsky extension

Each algorithm takes its own part of ``deconvolution:parameter`` (see
:meth:`Parameters.check_algorithm`). Keys are addressed with colon paths,
``"deconvolution:parameter:iteration_max"``. Where the tutorial's text and its file disagree,
both names are accepted and mapped to one canonical name (see :data:`ALIASES`). Unknown keys,
wrong types and unknown units raise errors that name the key, the value and the nearest valid
choice; nothing is silently ignored.
"""

from __future__ import annotations

import copy
import difflib
import logging
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from astropy import units as u

from .deconvolution.registry import (
    ACCELERATION_METHODS,
    ALGORITHM_NAMES,
    ALGORITHM_SPECS,
    INITIALIZATIONS,
    MODEL_CLASSES,
    PRIORS,
    SMOOTHING_METHODS,
    STOPPING_STATISTICS,
    SUBSET_AXES,
    SUBSET_SCHEDULES,
)
from .errors import FileFormatError, InvalidParameterError, UnknownChoiceError
from .io.yamlfile import UniqueKeyLoader, yaml_problem
from .response.options import ResponseOptions

__all__ = ["Parameters", "load_yaml", "parse_override", "SCHEMA"]

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# YAML with numbers that look like numbers (PyYAML's YAML 1.1 reads "1e-4" as a string)
# and no key given twice
# --------------------------------------------------------------------------------------------
class _NumberLoader(UniqueKeyLoader):
    """SafeLoader that reads ``1e-4``, ``1.e+6`` and ``.inf`` as floats and refuses a key given
    twice in one mapping (:class:`~comptonsky.io.yamlfile.DuplicateKeyError`)."""


_FLOAT_RE = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)
_NumberLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_RE,
                                    list("-+0123456789."))


def load_yaml(text_or_stream) -> Any:
    """Parse YAML text with :class:`_NumberLoader` (numbers such as ``1e-4`` are floats)."""
    return yaml.load(text_or_stream, Loader=_NumberLoader)  # noqa: S506 (safe loader subclass)


# --------------------------------------------------------------------------------------------
# Schema
# --------------------------------------------------------------------------------------------
INTENSITY = u.Unit("cm-2 s-1 sr-1")


@dataclass
class Leaf:
    """A leaf parameter: its type and constraints."""

    kind: str  # "int", "nside" (a power of 2), "float", "bool", "str", "choice", "float_list", "unit", "any",
    #            "response" (checked by ResponseOptions, the value kept as written)
    choices: tuple[str, ...] = ()
    physical_type: u.UnitBase | None = None  # for "unit": must be convertible to this
    minimum: float | None = None


@dataclass
class Section:
    """A mapping of named entries; ``free`` sections accept any key with ``free`` leaf values."""

    fields: dict[str, Any] = field(default_factory=dict)
    free: Any = None


def _quantity(physical: u.UnitBase, list_value: bool = False, minimum: float | None = None):
    return Section({"value": Leaf("float_list" if list_value else "float", minimum=minimum),
                    "unit": Leaf("unit", physical_type=physical)})


def _activate(**fields) -> Section:
    return Section({"activate": Leaf("bool"), **fields})


_PRIOR_SECTIONS = {
    "TSV": Section({"coefficient": Leaf("float", minimum=0.0)}),
    "entropy": Section({"coefficient": Leaf("float", minimum=0.0),
                        "reference_map": Section({
                            "value": Leaf("float", minimum=0.0),
                            "unit": Leaf("unit", physical_type=INTENSITY),
                            "file": Leaf("str")})}),
    "energy_TSV": Section({"coefficient": Leaf("float", minimum=0.0)}),
    "gamma": Section({
        "model": Section({"theta": _quantity(INTENSITY), "k": Section({"value": Leaf("float")})}),
        "background": Section({"theta": Section({"value": Leaf("float")}),
                               "k": Section({"value": Leaf("float")})}),
    }),
}

#: Every key of ``deconvolution:parameter``; each algorithm takes the part named in its
#: :data:`~comptonsky.deconvolution.registry.ALGORITHM_SPECS` entry (see
#: :meth:`Parameters.check_algorithm`).
ALGORITHM_PARAMETERS = Section({
    "iteration_max": Leaf("int", minimum=1),
    "minimum_flux": _quantity(INTENSITY),
    "acceleration": _activate(alpha_max=Leaf("float", minimum=1.0),
                              method=Leaf("choice", choices=tuple(ACCELERATION_METHODS))),
    "response_weighting": _activate(index=Leaf("float")),
    "smoothing": _activate(FWHM=_quantity(u.deg, minimum=0.0),
                           method=Leaf("choice", choices=SMOOTHING_METHODS)),
    "stopping_criteria": Section({
        "statistics": Leaf("choice", choices=STOPPING_STATISTICS),
        "threshold": Leaf("float"),
        # cross-validation (binomial thinning of the counts)
        "validation_fraction": Leaf("float", minimum=0.0),
        "patience": Leaf("int", minimum=1),
        "seed": Leaf("int", minimum=0),
    }),
    # OSEM: ordered subsets of the data space
    "n_subsets": Leaf("int", minimum=1),
    "subset_axis": Leaf("choice", choices=SUBSET_AXES),
    "subset_schedule": Leaf("choice", choices=SUBSET_SCHEDULES),
    "background_normalization_optimization": _activate(
        range=Section(free=Leaf("float_list"))),
    "save_results": _activate(directory=Leaf("str"), only_final_result=Leaf("bool")),
    "prior": Section({name: _PRIOR_SECTIONS[name] for name in PRIORS}),
})

#: The ``response:`` section: the options of :class:`~comptonsky.response.options.ResponseOptions`.
RESPONSE_SECTION = Section({name: Leaf("response") for name in ResponseOptions.fields()})

SCHEMA = Section({
    "author": Leaf("any"),
    "date": Leaf("any"),
    "model_definition": Section({
        "class": Leaf("choice", choices=MODEL_CLASSES),
        "property": Section({
            "coordinate": Leaf("choice", choices=("galactic",)),
            "nside": Leaf("nside", minimum=1),
            "scheme": Leaf("choice", choices=("ring", "nested")),
            "energy_edges": _quantity(u.keV, list_value=True),
            "unit": Leaf("unit", physical_type=INTENSITY),
        }),
        "initialization": Section({
            "algorithm": Leaf("choice", choices=INITIALIZATIONS),
            "parameter": Section({"value": Leaf("float_list"),
                                  "unit": Leaf("unit", physical_type=INTENSITY)}),
            "file": Leaf("str"),
        }),
    }),
    "deconvolution": Section({
        "algorithm": Leaf("choice", choices=tuple(ALGORITHM_NAMES)),
        "parameter": ALGORITHM_PARAMETERS,
    }),
    "response": RESPONSE_SECTION,
})

#: Alternative spellings (tutorial text vs file), mapped to the canonical (file) name, per parent.
ALIASES: dict[str, str] = {
    "accel_factor_max": "alpha_max",
    "background_normalization": "background_normalization_optimization",
    **{f"parameter_{name}": "parameter" for name in ALGORITHM_NAMES},
    "parameter_flat": "parameter",
    "algorithm": "method",  # acceleration:algorithm (cosipy 0.4) ≡ acceleration:method
}

#: Physical units commonly meant, offered as suggestions when a unit string does not parse.
_UNIT_SUGGESTIONS = ("deg", "rad", "arcmin", "arcsec", "keV", "MeV", "eV", "cm-2 s-1 sr-1",
                     "m-2 s-1 sr-1")


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------
#: cosipy 0.3.x's flat RL layout: a switch ``name: True`` and its settings ``name_setting: v``,
#: mapped to ``name: {activate: True, setting: v}``.
FLAT_SETTINGS: dict[str, tuple[str, str]] = {
    "alpha_max": ("acceleration", "alpha_max"),
    "response_weighting_index": ("response_weighting", "index"),
    "smoothing_FWHM": ("smoothing", "FWHM"),
    "background_normalization_range": ("background_normalization_optimization", "range"),
    "save_results_directory": ("save_results", "directory"),
    "save_results_only_final_result": ("save_results", "only_final_result"),
}
_FLAT_SWITCHES = ("acceleration", "response_weighting", "smoothing",
                  "background_normalization_optimization", "save_results")


def _nest_flat_parameters(data: dict, source: str) -> None:
    """Rewrite cosipy 0.3.x's flat ``deconvolution:parameter`` keys into the nested layout, in
    place, with an INFO line (a key given both ways is an error)."""
    section = (data.get("deconvolution") or {}).get("parameter")
    if not isinstance(section, dict):
        return
    moved = []
    for switch in _FLAT_SWITCHES:
        if isinstance(section.get(switch), bool):
            section[switch] = {"activate": section[switch]}
            moved.append(switch)
    for flat, (parent, key) in FLAT_SETTINGS.items():
        if flat not in section:
            continue
        target = section.setdefault(parent, {})
        if not isinstance(target, dict) or key in target:
            raise InvalidParameterError(f"{source}: deconvolution:parameter:{flat}: given "
                                        f"together with {parent}:{key}")
        target[key] = section.pop(flat)
        moved.append(flat)
    if moved:
        logger.info("%s: cosipy 0.3 flat parameters %s read as the nested layout (%s)", source,
                    ", ".join(moved), ", ".join(f"{k} → {':'.join(FLAT_SETTINGS[k])}"
                                                for k in moved if k in FLAT_SETTINGS))


def _child(node: Section, key: str, prefix: str, source: str | None = None) -> tuple[str, Any]:
    """The canonical name of ``key`` (an alias is mapped) in ``node`` and its schema node."""
    if node.free is not None:
        return key, node.free
    canon = key if key in node.fields or ALIASES.get(key) not in node.fields else ALIASES[key]
    if canon not in node.fields:
        raise UnknownChoiceError("parameter key", f"{prefix}:{key}" if prefix else key,
                                 _child_paths(node, prefix), source)
    return canon, node.fields[canon]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_leaf(leaf: Leaf, value: Any, path: str, source: str) -> Any:
    where = f"{source}: {path}"

    def bad(expected: str) -> InvalidParameterError:
        return InvalidParameterError(f"{where}: expected {expected}, found {value!r} "
                                     f"({type(value).__name__})")

    kind = leaf.kind
    if kind == "any":
        return value
    if kind == "response":
        ResponseOptions.from_mapping({path.rsplit(":", 1)[-1]: value}, where)
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if kind in ("int", "nside"):
        if not _is_number(value) or (isinstance(value, float) and not value.is_integer()):
            raise bad("an integer")
        value = int(value)
        if kind == "nside" and (value < 1 or value & (value - 1)):
            raise bad("a HEALPix NSIDE (a power of 2: 1, 2, 4, 8, ...)")
    elif kind == "float":
        if not _is_number(value):
            raise bad("a number")
        value = float(value)
    elif kind == "float_list":
        values = [value] if _is_number(value) else value
        if not isinstance(values, (list, tuple)) or not all(_is_number(v) for v in values):
            raise bad("a list of numbers")
        return [float(v) for v in values]
    elif kind == "str":
        if not isinstance(value, str):
            raise bad("a string")
        return value
    elif kind == "choice":
        if not isinstance(value, str):
            raise bad(f"one of {', '.join(repr(c) for c in leaf.choices)}")
        if value not in leaf.choices:
            raise UnknownChoiceError("value", value, leaf.choices, where)
        return value
    elif kind == "unit":
        try:
            unit = u.Unit(value)
        except (ValueError, TypeError):
            near = difflib.get_close_matches(str(value), _UNIT_SUGGESTIONS, n=1, cutoff=0.3)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            raise InvalidParameterError(
                f"{where}: unknown unit {value!r}{hint} (expected a unit convertible to "
                f"{leaf.physical_type})") from None
        if leaf.physical_type is not None and not unit.is_equivalent(leaf.physical_type):
            raise InvalidParameterError(
                f"{where}: unit {value!r} is not convertible to {leaf.physical_type}")
        return value
    if leaf.minimum is not None and not (value >= leaf.minimum or math.isnan(value)):
        raise InvalidParameterError(f"{where}: must be ≥ {leaf.minimum}, found {value!r}")
    return value


def _validate(node: Any, value: Any, path: str, source: str) -> Any:
    """Return a validated, canonicalised copy of ``value`` against schema ``node``."""
    if isinstance(node, Leaf):
        return _check_leaf(node, value, path, source)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidParameterError(f"{source}: {path or 'top level'}: expected a mapping of "
                                    f"keys, found {value!r}")
    out: dict[str, Any] = {}
    for key, item in value.items():
        canon, child = _child(node, str(key), path, source)
        if canon in out:
            raise InvalidParameterError(f"{source}: {path + ':' if path else ''}{key}: given "
                                        f"twice (as {canon!r} and an alias of it)")
        out[canon] = _validate(child, item, f"{path}:{canon}" if path else canon, source)
    return out


def _child_paths(node: Section, path: str) -> list[str]:
    names = list(node.fields) + [a for a, c in ALIASES.items() if c in node.fields]
    return [f"{path}:{n}" if path else n for n in names]


def _resolve_path(path: str) -> tuple[list[str], Any]:
    """Canonicalise a colon path against the schema; returns (keys, schema node)."""
    keys = [k.strip() for k in path.split(":") if k.strip()]
    if not keys:
        raise InvalidParameterError(f"empty parameter path {path!r}")
    node: Any = SCHEMA
    out: list[str] = []
    for key in keys:
        prefix = ":".join(out)
        if isinstance(node, Leaf):
            raise InvalidParameterError(f"{path}: {prefix} is a value, not a section")
        canon, node = _child(node, key, prefix)
        out.append(canon)
    return out, node


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``"a:b:c = value"`` into the path and the YAML-parsed value."""
    if "=" not in text:
        raise InvalidParameterError(
            f"override {text!r}: expected the form 'section:key = value'")
    path, _, raw = text.partition("=")
    return path.strip(), load_yaml(raw.strip())


# --------------------------------------------------------------------------------------------
# Parameters object
# --------------------------------------------------------------------------------------------
class Parameters:
    """Validated parameter tree with colon-path access.

    Parameters
    ----------
    data : mapping, optional
        The parameter tree (as read from YAML).
    source : str
        Where it came from, for error messages (a file name).

    Examples
    --------
    >>> p = Parameters({"deconvolution": {"algorithm": "RL"}})
    >>> p["deconvolution:algorithm"]
    'RL'
    >>> p.override("deconvolution:parameter:acceleration:accel_factor_max = 2.0")
    >>> p["deconvolution:parameter:acceleration:alpha_max"]
    2.0
    """

    def __init__(self, data: Mapping | None = None, source: str = "<parameters>"):
        self.source = source
        data = copy.deepcopy(dict(data or {}))
        _nest_flat_parameters(data, source)
        self._data: dict[str, Any] = _validate(SCHEMA, data, "", source)
        self.check_algorithm()

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> Parameters:
        """Read and validate a YAML parameter file."""
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as exc:
            raise FileFormatError(f"{path}: cannot read parameter file ({exc.strerror})") from exc
        except UnicodeDecodeError as exc:
            raise FileFormatError(f"{path}: not a text (UTF-8) parameter file (byte "
                                  f"{exc.start} is 0x{exc.object[exc.start]:02x})") from exc
        try:
            data = load_yaml(text)
        except yaml.YAMLError as exc:
            raise FileFormatError(f"{path}: not valid YAML ({yaml_problem(exc)})") from exc
        if data is not None and not isinstance(data, Mapping):
            raise FileFormatError(f"{path}: expected a YAML mapping at the top level")
        parameters = cls(data, source=str(path))
        parameters.directory = path.resolve().parent
        return parameters

    #: Folder of the parameter file (relative paths in it are read from there); None when the
    #: parameters were not read from a file.
    directory: Path | None = None

    def require_section(self, name: str) -> None:
        """Raise :class:`InvalidParameterError` naming the file unless section ``name`` is set
        (a parameter file without ``deconvolution:`` would run a default fit)."""
        if not self.get(name):
            raise InvalidParameterError(f"{self.source}: no {name}: section; expected the "
                                        f"tutorial's layout with a {name}: section")

    def resolve_path(self, value: str | os.PathLike, key: str) -> Path:
        """A path given in the parameters: relative paths are taken from the parameter file's
        folder (the working directory for parameters not read from a file).

        Raises
        ------
        InvalidParameterError
            If ``value`` is empty.
        """
        text = os.fspath(value)
        if not text.strip():
            raise InvalidParameterError(f"{self.source}: {key}: expected a folder, found an "
                                        "empty string")
        path = Path(text).expanduser()
        base = self.directory
        if base is None and Path(self.source).is_file():
            base = Path(self.source).resolve().parent
        if path.is_absolute() or base is None:
            return path
        resolved = base / path
        if resolved.resolve() != path.resolve():
            logger.warning("%s: %s %r is read from the parameter file's folder: %s (not the "
                           "working directory)", self.source, key, text, resolved)
        return resolved

    def __getitem__(self, path: str) -> Any:
        keys, _ = _resolve_path(path)
        node: Any = self._data
        for key in keys:
            if not isinstance(node, Mapping) or key not in node:
                raise KeyError(f"parameter {':'.join(keys)!r} is not set in {self.source}")
            node = node[key]
        return node

    def get(self, path: str, default: Any = None) -> Any:
        """Value at ``path``, or ``default`` when it is not set (the path must be valid)."""
        try:
            return self[path]
        except KeyError as exc:
            if isinstance(exc, UnknownChoiceError):
                raise
            return default

    def __setitem__(self, path: str, value: Any) -> None:
        keys, node = _resolve_path(path)
        value = _validate(node, value, ":".join(keys), self.source)
        target = self._data
        for key in keys[:-1]:
            target = target.setdefault(key, {})
        target[keys[-1]] = value

    def override(self, text: str) -> None:
        """Apply ``"a:b:c = value"`` (the value is read as YAML: numbers, booleans, lists)."""
        path, value = parse_override(text)
        self[path] = value
        logger.info("parameter %s = %r", path, value)

    def quantity(self, path: str, default: u.Quantity | None = None) -> u.Quantity | None:
        """The ``{value, unit}`` section at ``path`` as an astropy Quantity."""
        section = self.get(path)
        if section is None:
            return default
        if "value" not in section:
            raise InvalidParameterError(f"{self.source}: {path}:value is missing")
        return u.Quantity(section["value"], section.get("unit", ""))

    def check_algorithm(self, name: str | None = None) -> None:
        """Check ``deconvolution:parameter`` against what algorithm ``name`` takes.

        ``name`` defaults to ``deconvolution:algorithm`` (``RL``). Run on every complete tree and
        by the algorithm when it is built (overrides may change the algorithm and its keys in any
        order). A section of a feature the algorithm lacks is accepted only with
        ``activate: false``. Raises :class:`InvalidParameterError` naming the algorithm, the key
        and the valid keys or values, for an unused key, an activated acceleration method it
        cannot apply or a stopping statistic it does not offer.
        """
        name = name or self.get("deconvolution:algorithm", "RL")
        spec = ALGORITHM_SPECS[ALGORITHM_NAMES[name]]
        section = self.get("deconvolution:parameter") or {}
        where = f"{self.source}: deconvolution:parameter"
        for key, value in section.items():
            off = isinstance(value, Mapping) and value.get("activate") is False
            if key not in spec.parameters and not off:
                raise InvalidParameterError(
                    f"{where}:{key} is not a parameter of algorithm {name!r}; it takes "
                    f"{', '.join(spec.parameters)}")
        acceleration = section.get("acceleration") or {}
        method = ACCELERATION_METHODS[acceleration.get("method", "max_step")]
        if acceleration.get("activate") and method not in spec.accelerations:
            raise InvalidParameterError(
                f"{where}:acceleration:method {method!r} (the default is 'max_step') is not "
                f"available in algorithm {name!r}; it takes {', '.join(spec.accelerations)}")
        statistic = (section.get("stopping_criteria") or {}).get("statistics")
        if statistic is not None and statistic not in spec.statistics:
            raise UnknownChoiceError(f"stopping statistic for {name}", statistic,
                                     spec.statistics, f"{where}:stopping_criteria:statistics")

    def to_dict(self) -> dict[str, Any]:
        """A deep copy of the validated tree (canonical key names)."""
        return copy.deepcopy(self._data)

    def dump(self) -> str:
        """The tree as YAML text."""
        return yaml.safe_dump(self._data, sort_keys=False)

    def __repr__(self) -> str:
        return f"Parameters(source={self.source!r})\n{self.dump()}"
