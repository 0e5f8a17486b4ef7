"""Typed errors: each is shown to the user as one line, and carries its exit status.

Exit 1 = a known bitconv error (bad input, unpackable shape, refused overwrite, too little memory);
exit 2 = usage error (click's own); exit 3 = verification found a mismatch;
exit 4 = `pull` met a network or hub failure (NetworkError: trying again may work).
"""
from __future__ import annotations

import errno
from typing import ClassVar


class BitconvError(Exception):
    """Base for errors shown to the user as one line, without a traceback."""

    exit_code: ClassVar[int] = 1


class InputError(BitconvError, ValueError):
    """The source checkpoint or file is missing, malformed or inconsistent."""


class PackError(BitconvError, ValueError):
    """A tensor cannot be written in the requested format."""


class OutputError(BitconvError, FileExistsError):
    """The output cannot be written (exists without --force, unwritable)."""


class VerifyError(BitconvError):
    """A packed file disagrees with its source."""

    exit_code: ClassVar[int] = 3


class MemoryLimitError(BitconvError):
    """The runtime cannot hold the model in the memory available (measured, or `--memory`):
    refused before anything is loaded. Not an InputError: the file is fine, the machine is not
    big enough (and `verify` must not report it as a finding about the file)."""


class PullError(BitconvError, OSError):
    """`pull` cannot provide the repo: unknown repo or revision, gated, unsafe listing, offline."""


class NetworkError(PullError, ConnectionError):
    """The hub or the network failed (unreachable, timeout, HTTP 5xx, dropped or corrupt bytes):
    trying again later may work. Exit 4, so scripts can tell it from a bad request."""

    exit_code: ClassVar[int] = 4


def os_error_line(e: OSError) -> str:
    """The one line an OSError from the file system is shown as: `<path>: <reason>`, e.g.
    "m.gguf: permission denied", "out/: is a directory", "loop: too many levels of symbolic
    links", "o.gguf: file too large" (RLIMIT_FSIZE). The CLI maps every OSError that reaches it
    through here (exit 1: bad input or refused output), so readers and writers let them rise
    instead of wrapping each call."""
    reason = e.strerror or (errno.errorcode.get(e.errno, "") if e.errno else "") or str(e)
    reason = reason[:1].lower() + reason[1:]
    if e.filename is None:
        return reason
    where = str(e.filename) if e.filename2 is None else f"{e.filename} -> {e.filename2}"
    return f"{where}: {reason}"
