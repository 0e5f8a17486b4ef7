"""Ordered parallel map for the conversion stages: both cores busy, output order fixed.

numpy releases the GIL inside ufuncs, `take` and copies, so plain threads run the per-chunk
work (widen, ternarize, unpack, permute) of consecutive row chunks side by side while the
calling thread encodes and writes the results in their original order. Every task is a pure
function of its chunk, so the bytes written never depend on the thread count; look-ahead is
bounded, so memory stays a few chunks whatever the model size.
"""
from __future__ import annotations

import ctypes
import os
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Self, TypeVar

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -2, -3, -8  # glibc malloc.h
A = TypeVar("A")
R = TypeVar("R")


def keep_freed_memory() -> None:
    """Make glibc reuse freed chunk buffers instead of returning them to the kernel and faulting
    fresh pages in for the next chunk: one arena for all threads (per-thread arenas mmap and
    unmap their big blocks, and each unmap in a threaded process costs a cross-core TLB flush),
    and large top/trim margins. First touch runs at 0.4-1.5 GB/s on the machines we measured
    (perf-anchors.md §0); this more than halves `pack`'s system time on two threads.
    Process-wide, so only the CLI calls it; a no-op off glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.mallopt(M_ARENA_MAX, 1)
    libc.mallopt(M_MMAP_THRESHOLD, 32 << 20)  # glibc's ceiling for it on 64-bit
    libc.mallopt(M_TOP_PAD, 64 << 20)
    libc.mallopt(M_TRIM_THRESHOLD, 1 << 30)


def default_threads() -> int:
    """One worker per core this process may use."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
               else os.cpu_count() or 1)


class Workers:
    """A thread pool whose `map` yields results in input order with at most `ahead` pending.

    threads=1 runs every task in the calling thread (no pool): the reference behaviour.
    """

    def __init__(self, threads: int | None = None, ahead: int | None = None) -> None:
        self.threads = max(1, threads or default_threads())
        self.ahead = ahead or 2 * self.threads
        self._pool = ThreadPoolExecutor(self.threads) if self.threads > 1 else None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def map(self, fn: Callable[[A], R], items: Iterable[A],
            done: Callable[[A], None] | None = None) -> Iterator[R]:
        """fn(item) for each item, in order. `done(item)` runs in the calling thread once the
        item's result is ready (e.g. to release the item's mapped pages)."""
        if self._pool is None:
            for item in items:
                yield fn(item)
                if done:
                    done(item)
            return
        pending: deque[tuple[A, Future[R]]] = deque()
        try:
            for item in items:
                pending.append((item, self._pool.submit(fn, item)))
                if len(pending) >= self.ahead:
                    yield self._next(pending, done)
            while pending:
                yield self._next(pending, done)
        finally:  # a failed or abandoned map leaves no task running behind the caller
            for _, fut in pending:
                fut.cancel()
            for _, fut in pending:
                if not fut.cancelled():
                    fut.exception()

    def background(self, items: Iterator[R]) -> Iterator[R]:
        """Run a sequential stage (a codec's encode) in its own thread, a few items ahead of the
        caller (which writes them), so encoding overlaps writing. Serial when threads=1."""
        if self._pool is None:
            yield from items
            return
        q: queue.Queue[tuple[bool, Any]] = queue.Queue(self.ahead)
        stop = threading.Event()

        def put(entry: tuple[bool, Any]) -> None:
            while not stop.is_set():
                try:
                    return q.put(entry, timeout=0.05)
                except queue.Full:
                    pass

        def run() -> None:
            try:
                for item in items:
                    if stop.is_set():
                        break
                    put((True, item))
                put((False, None))
            except BaseException as e:  # noqa: BLE001 - any failure is handed to the caller, raised there
                put((False, e))
            finally:
                getattr(items, "close", lambda: None)()

        thread = threading.Thread(target=run, name="bitconv-stage", daemon=True)
        thread.start()
        try:
            while True:
                more, item = q.get()
                if not more:
                    if item is not None:
                        raise item
                    return
                yield item
        finally:
            stop.set()
            thread.join()

    @staticmethod
    def _next(pending: deque[tuple[A, Future[R]]], done: Callable[[A], None] | None) -> R:
        item, fut = pending.popleft()
        result = fut.result()
        if done:
            done(item)
        return result
