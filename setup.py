"""Build of the compiled part of comptonsky: the sparse response's product kernels (C).

Everything else is declared in pyproject.toml.
"""

import sys

from setuptools import Extension, setup

# -fopenmp-simd: honour the kernels' `omp simd` reductions (vectorised sums) without OpenMP's
# runtime; GCC and Clang know it, MSVC does not. -pthread: the kernels' worker threads.
POSIX = sys.platform != "win32"
COMPILE = ["-O3", "-fopenmp-simd", "-pthread"] if POSIX else []
LINK = ["-pthread"] if POSIX else []

setup(ext_modules=[Extension("comptonsky.response._sparse_kernels",
                             ["comptonsky/response/_sparse_kernels.c"],
                             extra_compile_args=COMPILE, extra_link_args=LINK)])
