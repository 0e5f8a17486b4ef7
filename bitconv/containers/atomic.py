"""Atomic outputs, the only place that writes one: `<out>.incomplete` first, then a rename, so a
reader (or a killed run) never sees a partial file or directory under the final name.

- `atomic_output`: a packed file (GGUF, sidecar, logits, MANIFEST.json, a locked recipe). The
  temporary is created with O_EXCL, fsynced, renamed; an existing `out` only with `force`.
- `atomic_dir`: a checkpoint directory (`--format hf`, `repack` to hf). `<out>.incomplete/` is
  made with mkdir (exclusive too), every file in it and the directory fsynced, an existing `out`
  (with `force`) moved aside to `<out>.old.incomplete` and removed after the rename.
- `publish`: a finished output built elsewhere (release's staging directory) moved under its
  final name, an existing one (file or directory) replaced the way `atomic_dir` replaces it.
- `replace_text`: a small state file rewritten in place (the pull manifest, a cache ref), always
  replaced, with a per-process temporary (two pulls may write it at once); no fsync, as such a
  file is rebuilt by the next pull if a crash loses it.
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from bitconv.errors import OutputError
from bitconv.formats import HF


def default_output(stem: str, fmt: str) -> Path:
    """The one rule that names an output: `<stem>-<format>.gguf` for a GGUF, `<stem>-<format>`
    for a directory (the `hf` checkpoint), in the current directory. pack, repack and release
    all name their outputs here."""
    if fmt == HF:
        return Path(f"{stem}-{fmt}")
    return Path(f"{stem}-{fmt}.gguf")


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


def replace_text(path: Path, text: str) -> None:
    """Write `path` so that a reader sees the old text or the new one (see the module doc)."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.incomplete")
    tmp.unlink(missing_ok=True)  # a stale one of a dead process with our pid; then O_EXCL
    try:
        with open(tmp, "x", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def check_dir_writable(out: Path, force: bool, src: Path | None = None) -> None:
    """Refuse early: an existing output without `force`, or anything but a checkpoint
    directory (config.json, no subdirectories) as the thing `force` would replace."""
    if src is not None and os.path.realpath(out) == os.path.realpath(src):  # no loop error
        raise OutputError(f"{out}: is the source checkpoint; choose another output directory")
    if out.exists() or out.is_symlink():
        if not force:
            raise OutputError(f"{out}: already exists; pass --force to overwrite")
        if out.is_symlink() or not out.is_dir():
            raise OutputError(f"{out}: not a directory; refusing to replace it")
        if not (out / "config.json").is_file() or any(p.is_dir() for p in out.iterdir()):
            raise OutputError(f"{out}: not a checkpoint directory; refusing to replace it")
    if not out.parent.is_dir():
        raise OutputError(f"{out.parent}: no such directory")


@contextmanager
def atomic_dir(out: Path, force: bool = False) -> Iterator[Path]:
    """Yield `<out>.incomplete/`; it becomes `out` only if the block completes. An existing
    `out` (with force) is moved aside to `<out>.old.incomplete` first and removed after the rename."""
    check_dir_writable(out, force)
    tmp = out.with_name(out.name + ".incomplete")
    _remove(tmp)
    try:
        tmp.mkdir()
        yield tmp
        for f in sorted(tmp.iterdir()):
            _fsync(f)
        _fsync(tmp)
        publish(tmp, out, sync=True)
    except OSError as e:  # disk full, permission denied, ...
        _remove(tmp)
        raise OutputError(f"{out}: cannot write ({e.strerror or e})") from None
    except BaseException:
        _remove(tmp)
        raise


def publish(src: Path, dst: Path, sync: bool = False) -> None:
    """Rename the finished `src` to `dst` (same filesystem). An existing `dst` directory, which
    cannot be renamed over, is moved aside to `<dst>.old.incomplete` first and removed after;
    `sync`: fsync the parent directory before that removal (atomic_dir does, release does not)."""
    old = dst.with_name(dst.name + ".old.incomplete")
    _remove(old)  # a stale one (a killed run)
    if dst.is_dir() and not dst.is_symlink():
        os.replace(dst, old)
    os.replace(src, dst)
    if sync:
        _fsync(dst.parent)
    _remove(old)


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    elif p.exists() or p.is_symlink():
        p.unlink()


def _fsync(p: Path) -> None:
    fd = os.open(p, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
