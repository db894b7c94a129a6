"""Memory sizes: parsing ``"1 GiB"``, the memory available, handing freed heap back."""

from __future__ import annotations

import re

import numpy as np

from ..errors import InvalidParameterError

__all__ = ["parse_memory", "available_memory", "release_free_memory"]

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


def available_memory() -> int:
    """Bytes of memory available to a new allocation."""
    import psutil
    return int(psutil.virtual_memory().available)


def release_free_memory() -> None:
    """Return freed heap memory to the operating system where the C library allows it.

    Building a large sparse response in blocks leaves hundreds of MB of freed blocks in the
    C heap (glibc keeps allocations below its mmap threshold); ``malloc_trim`` hands them back.
    A no-op on other platforms.
    """
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # pragma: no cover - not glibc
        pass
