"""Getting a Dask client: a local cluster of N processes, or a running scheduler.

Both bind to loopback or the given address only; a local cluster has no dashboard.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from ..errors import InvalidParameterError

__all__ = ["open_client", "client_context"]

logger = logging.getLogger(__name__)


def open_client(workers: int | None = None, scheduler: str | None = None,
                threads_per_worker: int = 1, processes: bool = True,
                timeout_s: float = 60.0) -> tuple[Any, Any]:
    """A ``dask.distributed.Client`` and the cluster it owns (None when connecting).

    Parameters
    ----------
    workers : int, optional
        Start a ``LocalCluster`` of this many worker processes on 127.0.0.1.
    scheduler : str, optional
        Address of a running scheduler (``tcp://host:8786``) instead.
    threads_per_worker : int
        Threads of each local worker.
    processes : bool
        Local workers as processes (default) or threads of this process.
    timeout_s : float
        How long to wait for the scheduler or the workers.

    Raises
    ------
    InvalidParameterError
        For both or neither of ``workers`` and ``scheduler``, or workers < 1.
    """
    if (workers is None) == (scheduler is None):
        raise InvalidParameterError("give exactly one of workers=N (a local cluster) and "
                                    "scheduler=ADDRESS (a running one)")
    from dask.distributed import Client, LocalCluster

    if not logging.getLogger("comptonsky").isEnabledFor(logging.DEBUG):
        logging.getLogger("distributed").setLevel(logging.WARNING)   # Dask's own chatter
    if scheduler is not None:
        logger.info("connecting to the Dask scheduler at %s", scheduler)
        return Client(scheduler, timeout=timeout_s), None
    if int(workers) < 1:
        raise InvalidParameterError(f"--workers: expected at least 1 worker, found {workers}")
    cluster = LocalCluster(n_workers=int(workers), threads_per_worker=int(threads_per_worker),
                           processes=processes, host="127.0.0.1", dashboard_address=None,
                           silence_logs=logging.WARNING)
    client = Client(cluster, timeout=timeout_s)
    logger.info("local Dask cluster: %d worker(s) on 127.0.0.1 (%s)", workers,
                cluster.scheduler_address)
    return client, cluster


@contextlib.contextmanager
def client_context(workers: int | None = None, scheduler: str | None = None,
                   **kwargs: Any) -> Iterator[Any]:
    """:func:`open_client` as a context manager: the client is closed, and a local cluster
    stopped, on exit."""
    client, cluster = open_client(workers, scheduler, **kwargs)
    try:
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
