"""Read-ahead: run a chunk iterator in a background thread."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

__all__ = ["PREFETCH_DEPTH", "read_ahead"]

#: Chunks the reader thread may prepare ahead of the consumer.
PREFETCH_DEPTH = 4


def read_ahead(iterator: Iterator, depth: int = PREFETCH_DEPTH) -> Iterator:
    """Run ``iterator`` in a background thread, keeping up to ``depth`` items ready.

    Decompression (ISA-L, zlib, HDF5 filters) and numpy conversions release the GIL, so reading
    the next chunk overlaps with the consumer's work on the current one. An exception in the
    thread is raised in the consumer; a consumer that stops early (or is garbage-collected)
    stops the thread and closes ``iterator``.
    """
    q: queue.Queue = queue.Queue(maxsize=max(1, depth))
    done = object()
    stop = threading.Event()

    def work():
        try:
            for item in iterator:
                while not stop.is_set():
                    try:
                        q.put(("item", item), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    break
        except BaseException as exc:  # forwarded to the consumer
            q.put(("error", exc))
            return
        finally:
            close = getattr(iterator, "close", None)
            if close is not None and stop.is_set():
                close()
        q.put(("done", done))

    thread = threading.Thread(target=work, name="comptonsky-event-reader", daemon=True)
    thread.start()
    try:
        while True:
            kind, item = q.get()
            if kind == "item":
                yield item
            elif kind == "error":
                raise item
            else:
                return
    finally:
        stop.set()
        while thread.is_alive():
            try:
                q.get(timeout=0.05)
            except queue.Empty:
                pass
        thread.join()
