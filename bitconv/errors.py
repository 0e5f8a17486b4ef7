"""Typed errors: each is shown to the user as one line, and carries its exit status.

Exit 1 = a known bitconv error (bad input, unpackable shape, refused overwrite);
exit 2 = usage error (click's own); exit 3 = verification found a mismatch;
exit 4 = `pull` met a network or hub failure (NetworkError: trying again may work).
"""
from __future__ import annotations

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


class PullError(BitconvError, OSError):
    """`pull` cannot provide the repo: unknown repo or revision, gated, unsafe listing, offline."""


class NetworkError(PullError, ConnectionError):
    """The hub or the network failed (unreachable, timeout, HTTP 5xx, dropped or corrupt bytes):
    trying again later may work. Exit 4, so scripts can tell it from a bad request."""

    exit_code: ClassVar[int] = 4
