"""Atomic outputs, the only place that writes one: `<out>.incomplete` first, then a rename, so a
reader (or a killed run) never sees a partial file or directory under the final name.

- `atomic_output`: a packed file (GGUF, sidecar, logits, MANIFEST.json, a locked recipe). The
  temporary is created with O_EXCL, fsynced, renamed; an existing `out` only with `force`.
- `atomic_dir`: a checkpoint directory (`--format hf`, `repack` to hf). `<out>.incomplete/` is
  made with mkdir (exclusive too), every file in it and the directory fsynced, an existing `out`
  (with `force`) moved aside to `<out>.old.incomplete` and removed after the rename.
- `publish`: a finished output built elsewhere (release's staging directory) moved under its
  final name, an existing one (file or directory) replaced the way `atomic_dir` replaces it.
- `WriteBehind` (`atomic_output(..., write_behind=True)`, the big GGUF outputs): completed ranges
  of the file are handed to the disk while later tensors are still being computed, so the final
  fsync has little left and a conversion costs max(CPU, writeback) instead of their sum.
- `replace_text`: a small state file rewritten in place (the pull manifest, a cache ref), always
  replaced, with a per-process temporary (two pulls may write it at once); no fsync, as such a
  file is rebuilt by the next pull if a crash loses it.
"""
from __future__ import annotations

import ctypes
import os
import shutil
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

from bitconv.errors import InputError, OutputError
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


# Write-behind (Linux): every WRITE_BEHIND bytes written, start the writeback of that range
# (sync_file_range WRITE: queues the dirty pages, returns without waiting), and once IN_FLIGHT
# ranges are queued, wait for the oldest and drop it from the page cache (its pages are clean by
# then: POSIX_FADV_DONTNEED frees them), so the writer never runs more than IN_FLIGHT ranges
# ahead of the disk and the dirty data left for the final fsync is at most that much. The
# environment variable BITCONV_WRITE_BEHIND (MB; 0 = off) overrides the range size, for
# measurements; off, or where sync_file_range does not exist, the file is written as before and
# the final fsync flushes everything. Bytes written are the same either way.
WRITE_BEHIND = 128 << 20
IN_FLIGHT = 2
_KICK, _WAIT = 2, 1 | 2 | 4  # SYNC_FILE_RANGE_WRITE; WAIT_BEFORE | WRITE | WAIT_AFTER (fcntl.h)


def _libc_sync_range() -> Callable[[int, int, int, int], None] | None:
    """glibc's sync_file_range (Python's os module does not wrap it); None off Linux/glibc.
    ctypes releases the GIL around the call, so workers keep computing while it blocks."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]

    def sync_range(fd: int, off: int, n: int, flags: int) -> None:
        if fn(fd, off, n, flags) != 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))
    return sync_range


_sync_range = _libc_sync_range()


@dataclass
class WriteStats:
    """Seconds the writing thread spent in each part of the output's IO (the bench reads them)."""

    write: float = 0.0  # write() into the page cache, including the kicks
    wait: float = 0.0  # waiting for older ranges to reach the disk
    fsync: float = 0.0  # the final fsync
    ranges: int = 0  # ranges handed to the disk early


class WriteBehind:
    """A write-only file whose completed ranges go to the disk while the caller computes the
    next ones (see WRITE_BEHIND above); `f` is the buffered file it writes through. interval 0:
    write-behind off, the stats still kept."""

    def __init__(self, f: BinaryIO, interval: int) -> None:
        self._f, self._fd, self._interval = f, f.fileno(), interval
        self._pos = self._kicked = 0
        self._queued: deque[tuple[int, int]] = deque()
        self.stats = WriteStats()

    def write(self, data: bytes | memoryview) -> int:
        t = time.perf_counter()
        n = self._f.write(data)
        self._pos += n
        if self._interval and self._pos - self._kicked >= self._interval:
            self._kick()
        self.stats.write += time.perf_counter() - t
        return n

    def flush(self) -> None:
        self._f.flush()

    def fileno(self) -> int:
        return self._fd

    def _kick(self) -> None:
        assert _sync_range is not None
        self._f.flush()
        start, n = self._kicked, self._pos - self._kicked
        _sync_range(self._fd, start, n, _KICK)
        self._queued.append((start, n))
        self._kicked = self._pos
        self.stats.ranges += 1
        while len(self._queued) > IN_FLIGHT:
            t = time.perf_counter()
            off, m = self._queued.popleft()
            _sync_range(self._fd, off, m, _WAIT)
            os.posix_fadvise(self._fd, off, m, os.POSIX_FADV_DONTNEED)
            self.stats.wait += time.perf_counter() - t


def write_behind_interval() -> int:
    """Bytes per early-flushed range; 0 when write-behind is off or unavailable."""
    if _sync_range is None:
        return 0
    env = os.environ.get("BITCONV_WRITE_BEHIND")
    if env is None:
        return WRITE_BEHIND
    try:
        mb = float(env)
    except ValueError:
        mb = -1.0
    if not 0 <= mb < 1 << 30:  # NaN fails too
        raise InputError(f"BITCONV_WRITE_BEHIND={env!r}: expected megabytes per flushed range, "
                         "a number >= 0 (0 turns write-behind off)")
    return int(mb * (1 << 20))


@contextmanager
def atomic_output(out: Path, force: bool = False,
                  write_behind: bool = False) -> Iterator[BinaryIO]:
    """Yield a file that appears as `out` only if the block completes without an exception;
    `write_behind`: a WriteBehind over it (for the big outputs), whose stats include the fsync."""
    check_writable(out, force)
    tmp = out.with_name(out.name + ".incomplete")
    # A stale one (a killed run) goes first; "x" (O_EXCL) then never writes through a symlink
    # someone left under that name, which "wb" would follow and truncate its target.
    tmp.unlink(missing_ok=True)
    try:
        with open(tmp, "xb") as f:
            wb = WriteBehind(f, write_behind_interval()) if write_behind else None
            yield f if wb is None else cast(BinaryIO, wb)
            f.flush()
            t = time.perf_counter()
            os.fsync(f.fileno())
            if wb is not None:
                wb.stats.fsync = time.perf_counter() - t
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
