"""Exception classes of comptonsky.

Every error raised on bad user input derives from :class:`ComptonskyError` and carries a message
that names the file, key or axis involved, what was expected and what was found.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = [
    "ComptonskyError",
    "InvalidParameterError",
    "UnknownChoiceError",
    "AxisMismatchError",
    "InvalidDataError",
    "FileFormatError",
    "InvalidCacheError",
    "OutputError",
    "OutputExistsError",
    "CheckpointError",
    "MapsNotKeptError",
    "RunInterrupted",
    "DistributedError",
]


class ComptonskyError(Exception):
    """Base class of all errors raised by comptonsky on bad input."""


class InvalidParameterError(ComptonskyError, ValueError):
    """A parameter has the wrong type, unit or value."""


class UnknownChoiceError(InvalidParameterError, KeyError):
    """A name (parameter key, algorithm, model class...) is not among the valid choices.

    Parameters
    ----------
    what : str
        What kind of name this is, e.g. ``"parameter key"`` or ``"algorithm"``.
    name : str
        The name that was given.
    choices : iterable of str
        The valid names; the message lists them and suggests the nearest one.
    where : str, optional
        Where the name was found (file, section), for the message.
    """

    def __init__(self, what: str, name: str, choices: Iterable[str], where: str | None = None):
        self.what = what
        self.name = name
        self.choices = sorted(set(choices))
        near = difflib.get_close_matches(str(name), self.choices, n=1, cutoff=0.5)
        msg = f"unknown {what} {name!r}"
        if where:
            msg += f" in {where}"
        if near:
            msg += f"; did you mean {near[0]!r}?"
        msg += f" Valid choices: {', '.join(repr(c) for c in self.choices)}"
        super().__init__(msg)

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return self.args[0]


class AxisMismatchError(ComptonskyError, ValueError):
    """Two histograms that must share an axis do not."""


class InvalidDataError(ComptonskyError, ValueError):
    """Data contents are invalid (negative or NaN counts, zero exposure, ...)."""


class FileFormatError(ComptonskyError, ValueError):
    """A file is missing, unreadable, or not in the expected format.

    Not an :class:`OSError`: an ``except OSError`` around file access catches real I/O failures
    (a full disk, a lost mount) and not a file whose contents are wrong.
    """


class InvalidCacheError(FileFormatError):
    """A converted-response cache failed a check (checksum, sizes, index ranges, contents against
    its response file): it is discarded and the response converted again."""


class OutputError(ComptonskyError, OSError):
    """An output file cannot be written: a directory in the way, a full disk, a read-only file
    system... Also an :class:`OSError`, so ``except OSError`` still catches it; nothing is left
    under the output name."""


class OutputExistsError(OutputError, FileExistsError):
    """An output file exists and overwriting was not asked for."""


class CheckpointError(ComptonskyError, ValueError):
    """A checkpoint is missing, unreadable, or was written for other parameters or data."""


class MapsNotKeptError(ComptonskyError, KeyError):
    """A per-iteration map was asked for that the fit did not keep (only the last iteration's
    maps are held unless all of them are to be saved)."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return self.args[0]


class RunInterrupted(KeyboardInterrupt):
    """A fit was stopped by SIGINT (Ctrl-C) or SIGTERM.

    Still a :class:`KeyboardInterrupt`, so ``except KeyboardInterrupt`` catches it.

    Parameters
    ----------
    signum : int
        The signal (``signal.SIGINT`` or ``signal.SIGTERM``).
    iteration : int, optional
        The last iteration completed.
    checkpoint : path-like, optional
        Where the checkpoint of that iteration was written (None: none was written).
    """

    def __init__(self, signum: int, iteration: int | None = None, checkpoint=None):
        super().__init__(signum, iteration, checkpoint)
        self.signum = int(signum)
        self.iteration = iteration
        self.checkpoint = checkpoint

    @property
    def exit_status(self) -> int:
        """The shell's status for a process ended by this signal: 128 + signal number."""
        return 128 + self.signum

    def __str__(self) -> str:
        text = f"interrupted at iteration {self.iteration}" if self.iteration is not None \
            else "interrupted"
        if self.checkpoint is not None:
            text += f"; checkpoint written to {self.checkpoint}"
        return text


class DistributedError(ComptonskyError, RuntimeError):
    """Work on a Dask cluster failed beyond recovery (a block lost with no worker left to
    re-create it, a task that raised); the message names the block or task."""
