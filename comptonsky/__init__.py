"""comptonsky: fast Compton-telescope imaging with the COSI tutorial's API.

The tutorial's names are importable from the top level::

    from comptonsky import BinnedData, DataIF_COSI_DC2, ImageDeconvolution, AllSkyImageModel

They are imported lazily so that ``import comptonsky`` stays cheap (the command line's help
needs no more); each of them registers the ``spacecraftframe`` coordinate frame with astropy
(:mod:`comptonsky.frames`), which histpy needs to open detector-frame files.
"""

from __future__ import annotations

import importlib

from . import _numba  # noqa: F401  (a writable numba cache folder, before any kernel compiles)

__version__ = "0.1.0"

_LAZY = {
    "BinnedData": "comptonsky.binning",
    "UnBinnedData": "comptonsky.binning",
    "SpacecraftFrame": "comptonsky.frames",
    "DataIF_COSI_DC2": "comptonsky.deconvolution.dataset",
    "ImageDeconvolution": "comptonsky.deconvolution.driver",
    "AllSkyImageModel": "comptonsky.deconvolution.model",
    "FullDetectorResponse": "comptonsky.response.extended",  # adds get_extended_source_response
    "SpacecraftFile": "comptonsky.io.spacecraft",
    "SpacecraftAttitudeExposureTable": "comptonsky.attitude.exposure_table",
    "TimeBinnedExposureTable": "comptonsky.attitude.exposure_table",
    "CoordsysConversionMatrix": "comptonsky.attitude.conversion_matrix",
    "fetch_file": "comptonsky.io.fetch",
    "fetch_wasabi_file": "comptonsky.io.fetch",
    "plot_image": "comptonsky.plotting",
    "plot_convergence": "comptonsky.plotting",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        importlib.import_module("comptonsky.frames")
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'comptonsky' has no attribute {name!r}")
