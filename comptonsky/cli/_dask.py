"""Shared command-line options of the heavy commands: run on a Dask cluster.

``--workers N`` starts a local cluster of N worker processes on 127.0.0.1 for the command and
stops it after; ``--scheduler ADDRESS`` uses a running cluster. Without either the command runs
in this process and Dask is not imported.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from typing import Any

from ..errors import InvalidParameterError

__all__ = ["add_dask_options", "client_from_args", "uses_dask"]


def add_dask_options(parser: argparse.ArgumentParser, workers: bool = True,
                     blocks: bool = False) -> None:
    """Add ``--workers N`` (unless the command has its own), ``--scheduler ADDRESS`` and, for a
    fit, ``--blocks K`` to ``parser``."""
    group = parser.add_argument_group("Dask cluster (docs/scaling.md)")
    if workers:
        group.add_argument("--workers", type=int, default=None, metavar="N",
                           help="run on a local Dask cluster of N worker processes "
                           "(127.0.0.1 only)")
    group.add_argument("--scheduler", default=None, metavar="ADDRESS",
                       help="run on the Dask cluster whose scheduler is at ADDRESS, e.g. "
                       "tcp://10.0.0.5:8786")
    if blocks:
        group.add_argument("--blocks", type=int, default=None, metavar="K",
                           help="data blocks per dataset on the cluster (default: about "
                           "256 MiB of response each); the maps do not depend on the number "
                           "of workers")


def uses_dask(args: argparse.Namespace) -> bool:
    """Whether the options ask for a Dask cluster."""
    return getattr(args, "workers", None) is not None or getattr(args, "scheduler", None) \
        is not None


@contextlib.contextmanager
def client_from_args(args: argparse.Namespace) -> Iterator[Any]:
    """A ``dask.distributed.Client`` for ``--workers``/``--scheduler`` (closed, and a local
    cluster stopped, on exit), or None without them (Dask is then not imported).

    Raises
    ------
    InvalidParameterError
        For both options at once, or fewer than 1 worker.
    """
    workers = getattr(args, "workers", None)
    scheduler = getattr(args, "scheduler", None)
    if workers is None and scheduler is None:
        yield None
        return
    if workers is not None and scheduler is not None:
        raise InvalidParameterError("--workers and --scheduler: give one of them (a local "
                                    "cluster, or a running one)")
    if workers is not None and workers < 1:
        raise InvalidParameterError(f"--workers: expected at least 1, found {workers}")
    from ..distributed.cluster import client_context

    with client_context(workers=workers, scheduler=scheduler) as client:
        yield client
