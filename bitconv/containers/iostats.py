"""Where a conversion's time goes, for the bench: with BITCONV_TIMING=<file> set, `pack` to a
GGUF appends one JSON line to that file when it finishes; unset (the default), nothing is read
or written here and the only cost is WriteStats' clock reads around each write.

The line holds the process' deltas over the conversion (from the output's creation to its
rename): wall seconds; CPU seconds, user and system, of all threads (`compute` is mostly this:
widen, ternarize, encode; the page-cache copies are system time); the writing thread's own CPU;
disk bytes read and major page faults (mmap reads that went to the disk: 0 when the input is
warm) from /proc/self/io and getrusage; and the writing thread's seconds in write() (page-cache
copies), in waits for early-flushed ranges, and in the final fsync (containers/atomic.py
WriteStats). Whatever remains of the wall time, the writing thread spent waiting for workers.
"""
from __future__ import annotations

import json
import os
import resource
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bitconv.containers.atomic import WriteStats

ENV = "BITCONV_TIMING"


def _proc_io() -> dict[str, int]:
    try:
        lines = Path("/proc/self/io").read_text().splitlines()
    except OSError:
        return {}
    return {k: int(v) for k, v in (ln.split(": ") for ln in lines)}


class Probe:
    """Counters at the start of a conversion; `report` writes the deltas (when asked to)."""

    def __init__(self) -> None:
        self.path = os.environ.get(ENV)
        if self.path:
            self._t, self._thread = time.perf_counter(), time.thread_time()
            self._ru, self._io = resource.getrusage(resource.RUSAGE_SELF), _proc_io()

    def report(self, stats: WriteStats | None, **fields: Any) -> None:
        if not self.path:
            return
        ru, io = resource.getrusage(resource.RUSAGE_SELF), _proc_io()
        line = {**fields, "wall": time.perf_counter() - self._t,
                "cpu_user": ru.ru_utime - self._ru.ru_utime,
                "cpu_sys": ru.ru_stime - self._ru.ru_stime,
                "writer_cpu": time.thread_time() - self._thread,
                "majflt": ru.ru_majflt - self._ru.ru_majflt,
                "read_bytes": io.get("read_bytes", 0) - self._io.get("read_bytes", 0),
                **(asdict(stats) if stats is not None else {})}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")
