"""Counting events that a reader or the binner leaves out, by reason, and saying so once."""

from __future__ import annotations

import logging
from collections import Counter

__all__ = ["DropCounter", "format_reasons"]


def format_reasons(counts: Counter | dict[str, int]) -> str:
    """``"no CD line (207), non-finite CE (3)"``: reasons by decreasing count, zeros left out."""
    items = sorted(((r, n) for r, n in counts.items() if n), key=lambda rn: -rn[1])
    return ", ".join(f"{reason} ({n})" for reason, n in items)


class DropCounter(Counter):
    """Events left out of one input, by reason (``counter["no CD line"] += 1``)."""

    def report(self, logger: logging.Logger, where: str, n_kept: int, what: str = "events",
               scope: str = "") -> None:
        """Log ``"<where>: 412 of 619 events read; 207 dropped: no CD line (207)"`` as a warning
        when something was dropped (at debug level otherwise). ``scope`` is appended to the
        first part (for example ``" in event range [0, 100)"``)."""
        dropped = sum(self.values())
        if not dropped:
            logger.debug("%s: %d %s read%s", where, n_kept, what, scope)
            return
        logger.warning("%s: %d of %d %s read%s; %d dropped: %s", where, n_kept, n_kept + dropped,
                       what, scope, dropped, format_reasons(self))
