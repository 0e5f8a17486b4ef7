"""Atomic outputs: write `<out>.incomplete`, fsync, then rename; never a partial file under `out`."""
from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from bitconv.errors import OutputError
from bitconv.formats import get_format


def default_output(stem: str, fmt: str) -> Path:
    """The one rule that names an output: `<stem>-<format>.gguf` for a GGUF, `<stem>-<format>`
    for a directory (the `hf` checkpoint), in the current directory. pack, repack and release
    all name their outputs here."""
    if get_format(fmt).SPEC.container == "gguf":
        return Path(f"{stem}-{fmt}.gguf")
    return Path(f"{stem}-{fmt}")


def check_writable(out: Path, force: bool) -> None:
    """Refuse early (before any work) when `out` exists and --force was not given."""
    if out.is_dir():
        raise OutputError(f"{out}: is a directory")
    if out.exists() or out.is_symlink():
        if not force:
            raise OutputError(f"{out}: already exists; pass --force to overwrite")
        if out.is_symlink() or not out.is_file():
            raise OutputError(f"{out}: not a regular file; refusing to replace it")
    if not out.parent.is_dir():
        raise OutputError(f"{out.parent}: no such directory")


@contextmanager
def atomic_output(out: Path, force: bool = False) -> Iterator[BinaryIO]:
    """Yield a file that appears as `out` only if the block completes without an exception."""
    check_writable(out, force)
    tmp = out.with_name(out.name + ".incomplete")
    # A stale one (a killed run) goes first; "x" (O_EXCL) then never writes through a symlink
    # someone left under that name, which "wb" would follow and truncate its target.
    tmp.unlink(missing_ok=True)
    try:
        with open(tmp, "xb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except OSError as e:  # disk full, file too large, permission denied, ...
        tmp.unlink(missing_ok=True)
        raise OutputError(f"{out}: cannot write ({e.strerror or e})") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
