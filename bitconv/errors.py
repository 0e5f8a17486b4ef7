"""Typed errors: each is shown to the user as one line, and carries its exit status.

Exit 1 = a known bitconv error (bad input, unpackable shape, refused overwrite);
exit 2 = usage error (click's own); exit 3 = verification found a mismatch.
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
