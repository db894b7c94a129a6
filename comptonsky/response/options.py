"""How a response is held: one typed, validated set of options.

Keyword arguments (:func:`~.load.load_response`, ``DataIF_COSI_DC2.load``), the command line and
a parameter file's ``response:`` section are all checked by :meth:`ResponseOptions.from_mapping`.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InvalidParameterError, UnknownChoiceError

__all__ = ["ResponseOptions", "parse_memory", "STORAGES", "DTYPES", "DEVICES", "VERIFY_CACHE",
           "MAP_FILES",
           "DEFAULT_SPARSE_THRESHOLD"]

STORAGES = ("dense", "sparse", "out-of-core", "auto")
_STORAGE_ALIASES = {"outofcore": "out-of-core", "out_of_core": "out-of-core",
                    "ooc": "out-of-core"}
DTYPES = ("float64", "float32")
DEVICES = ("cpu", "gpu", "auto")
VERIFY_CACHE = ("full", "quick")
MAP_FILES = ("read-only", "always", "never")
#: Default relative threshold of the sparse storage.
DEFAULT_SPARSE_THRESHOLD = 1e-4

#: Kind of each option (the names the parameter-file schema uses) and its choices.
_KINDS: dict[str, tuple[str, tuple[str, ...] | None]] = {
    "dtype": ("choice", DTYPES), "storage": ("choice", STORAGES),
    "sparse_threshold": ("float", None), "memory_budget": ("size", None),
    "cache": ("bool", None), "cache_dir": ("str_or_none", None), "populate": ("bool", None),
    "progress": ("bool", None), "device": ("choice", DEVICES), "reuse_products": ("bool", None),
    "verify_cache": ("choice", VERIFY_CACHE), "map_files": ("choice", MAP_FILES),
}


@dataclass(frozen=True)
class ResponseOptions:
    """Options of loading and holding a response (what each does: docs/performance.md).

    Attributes
    ----------
    dtype : {'float64', 'float32'} or None
        Precision of the held matrix; None keeps the file's.
    storage : {'dense', 'sparse', 'out-of-core', 'auto'}
        How the matrix is held (:mod:`.dense`, :mod:`.sparse`, :mod:`.outofcore`; ``auto``: the
        fastest that fits within ``memory_budget``, default 70 % of the available memory).
    sparse_threshold : float
        In [0, 1): sparse storage drops R_ij ≤ threshold · max_i R_ij.
    memory_budget : int or None
        Bytes (a number or text such as ``"1 GiB"``) of the out-of-core buffers, and the limit
        ``auto`` fits within.
    cache, cache_dir : bool, str or None
        Keep and reuse a converted cache of a response file, and where (:mod:`.cache`).
    populate : bool
        Pre-fault a memory-mapped matrix at load, so the first iteration is as fast as the others.
    progress : bool or None
        Progress bar while reading (None: only for files over 256 MiB on a terminal).
    device : {'cpu', 'gpu', 'auto'}
        'gpu' holds a dense response in GPU memory (:mod:`.gpu`); 'auto' does when one is usable.
    reuse_products : bool
        A dataset rebuilds forward products from earlier ones (:mod:`.reuse`).
    verify_cache : {'full', 'quick'}
        'full': every array of a converted cache is checked against its CRC-32 when opened;
        'quick': only the sizes, the index ranges and sampled rows against the response file.
    map_files : {'read-only', 'always', 'never'}
        When a file (a converted cache, or a response file already in the requested dtype) is
        memory-mapped instead of read into memory: 'read-only' only when no process without
        root rights can change it in place (no write permission bits, and this process cannot
        write it), so that truncating or overwriting it cannot kill a running job; 'always'
        maps it anyway (a job then dies with SIGBUS if the file is truncated under it).
    """

    dtype: str | None = None
    storage: str = "dense"
    sparse_threshold: float = DEFAULT_SPARSE_THRESHOLD
    memory_budget: int | None = None
    cache: bool = True
    cache_dir: str | None = None
    populate: bool = True
    progress: bool | None = None
    device: str = "cpu"
    reuse_products: bool = True
    verify_cache: str = "full"
    map_files: str = "read-only"

    @classmethod
    def fields(cls) -> dict[str, dict[str, Any]]:
        """Each option's ``kind`` ('choice', 'float', 'size', 'bool', 'str_or_none'),
        ``choices`` (or None) and ``default``."""
        return {f.name: {"kind": _KINDS[f.name][0], "choices": _KINDS[f.name][1],
                         "default": f.default} for f in dataclasses.fields(cls)}

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any] | None, where: str = "response options",
                     base: ResponseOptions | None = None) -> ResponseOptions:
        """Validated options from ``mapping`` (None values mean "not given") changing ``base``
        (default: the defaults); ``where`` (a function, a file's section, a command-line option)
        is named in error messages.

        Raises
        ------
        UnknownChoiceError
            For an unknown option name, storage, dtype or device.
        InvalidParameterError
            For a value of the wrong type or out of range.
        """
        given = {str(k): v for k, v in dict(mapping or {}).items() if v is not None}
        for key in given:
            if key not in _KINDS:
                raise UnknownChoiceError("response option", key, _KINDS, where)
        values = {k: _check(k, v, where) for k, v in given.items()}
        return dataclasses.replace(base or cls(), **values)

    def to_dict(self) -> dict[str, Any]:
        """The options as a plain dict."""
        return dataclasses.asdict(self)


_UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "m": 1e6, "mb": 1e6, "g": 1e9, "gb": 1e9,
          "t": 1e12, "tb": 1e12, "kib": 2 ** 10, "mib": 2 ** 20, "gib": 2 ** 30, "tib": 2 ** 40}


def parse_memory(value: str | int | float | None, what: str = "memory_budget") -> int | None:
    """Bytes from ``1073741824``, ``"1 GiB"``, ``"512MB"``, ``"2.5G"`` (None passes through).

    Raises
    ------
    InvalidParameterError
        Naming ``what``, the value found and the accepted forms.
    """
    if value is None:
        return None
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        if value <= 0:
            raise InvalidParameterError(f"{what}: expected a positive size, found {value!r}")
        return int(value)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*", str(value))
    if not m or m.group(2).lower() not in _UNITS or float(m.group(1)) <= 0:
        raise InvalidParameterError(
            f"{what}: expected a positive size such as 1073741824, '1 GiB', '512 MB' or '2G', "
            f"found {value!r}")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def _check(key: str, value: Any, where: str) -> Any:
    kind, choices = _KINDS[key]
    if key == "dtype":
        value = np.dtype(value).name if isinstance(value, (type, np.dtype)) else str(value)
    elif key == "storage":
        value = _STORAGE_ALIASES.get(str(value), str(value))
    if kind == "choice":
        if value not in choices:
            raise UnknownChoiceError(f"response {key}", str(value), choices, where)
        return value
    if kind == "float":
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = -1.0
        if isinstance(value, bool) or not 0.0 <= number < 1.0:
            raise InvalidParameterError(f"{key}: expected a number in [0, 1), found {value!r} "
                                        f"({where})")
        return number
    if kind == "size":
        return parse_memory(value, key)
    if kind == "bool":
        if not isinstance(value, (bool, np.bool_)):
            raise InvalidParameterError(f"{key}: expected true or false, found {value!r} "
                                        f"({where})")
        return bool(value)
    if not isinstance(value, (str, os.PathLike)):
        raise InvalidParameterError(f"{key}: expected a directory path, found {value!r} "
                                    f"({where})")
    return os.fspath(value)
