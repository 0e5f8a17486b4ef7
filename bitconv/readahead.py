"""Read the input ahead of the conversion, so a cold checkpoint costs little more than its read.

A thread walks the tensors in the order `pack` converts them and asks the kernel for their
pages (posix_fadvise WILLNEED, PIECE bytes at a time), staying at most `window` bytes ahead of
the tensor being converted. The disk works while the cores compute; the page cache holds a
bounded window; our resident set does not grow (nothing is mapped or copied here). On a warm
input every request is a no-op.
"""
from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from itertools import accumulate
from pathlib import Path

from bitconv.safetensors_io import TensorRef

PIECE = 16 << 20
WINDOW = 512 << 20


class Readahead:
    """`with Readahead(refs) as ra:` then `ra.reached(k)` when tensor k's conversion starts."""

    def __init__(self, refs: Sequence[TensorRef], window: int = WINDOW) -> None:
        self._refs = list(refs)
        self._before = [0, *accumulate(r.nbytes for r in self._refs)]  # bytes ahead of tensor k
        self._window = window
        self._consumer = 0
        self._stop = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="bitconv-readahead", daemon=True)

    def __enter__(self) -> Readahead:
        if hasattr(os, "posix_fadvise"):
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join()

    def reached(self, k: int) -> None:
        with self._cond:
            self._consumer = k
            self._cond.notify_all()

    def _run(self) -> None:
        fds: dict[Path, int] = {}
        try:
            for k, ref in enumerate(self._refs):
                fd = fds.get(ref.path)
                if fd is None:
                    fd = fds[ref.path] = os.open(ref.path, os.O_RDONLY)
                for off in range(ref.start, ref.end, PIECE):
                    ahead = self._before[k] + off - ref.start
                    with self._cond:
                        self._cond.wait_for(lambda: self._stop or ahead - self._before[
                            self._consumer] < self._window)
                        if self._stop:
                            return
                    os.posix_fadvise(fd, off, min(PIECE, ref.end - off), os.POSIX_FADV_WILLNEED)
        except OSError:  # a hint only: the conversion reads (and reports) for itself
            pass
        finally:
            for fd in fds.values():
                os.close(fd)
