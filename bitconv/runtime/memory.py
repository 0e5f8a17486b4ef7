"""How the runtime holds a model's ternary weights, chosen by the memory there is (issue 15 §2).

The choice is made from the tensor shapes alone (Weights.layout: the GGUF header, or the
checkpoint's plan), before any tensor is decoded, so that a model that cannot fit is refused
with one line instead of dying mid-load. Representations of the ternary codes, largest first:

  f32     codes kept as float32, (in, out) contiguous: 4 bytes a weight, each matmul one BLAS
          call straight on them (llama.cpp mode and Hadamard research sites need them).
  f64x3   three rows of codes in one float64 (runtime/packed3.py): 8/3 bytes a weight, each
          matmul one float64 BLAS call and an exact decode of its sums; exact and bitnet.cpp
          modes and research options without Hadamard sites, where it is the fastest of all
          (measured below).
  i8      codes kept as int8, widened to float32 per matmul into one reusable buffer: 1 byte a
          weight.
  stream  nothing kept: each matmul decodes its tensor from the file (a memory map) and widens
          it into the buffer. The smallest; every forward pass pays the decode.

Which wins when (a synthetic Llama, hidden 1024, inter 2816, 4 layers, vocab 32000: 45 M ternary
weights; I2_S, exact mode, 64-token prefill then 32 decoded tokens, best of 3 on a shared 2-vCPU
machine, so the ratios matter more than the figures):
          load    prefill    decode      peak RSS
  f32     0.73 s  248 tok/s  17.6 tok/s  406 MiB
  i8      0.25 s  272 tok/s  11.5 tok/s  282 MiB
  stream  0.14 s  112 tok/s   3.6 tok/s  228 MiB
f32 decodes about 1.5 times as fast as i8 (whose widening pass costs as much as a matrix-vector
product), so it is chosen whenever it fits; i8 prefills as fast, loads three times faster and
keeps a quarter of the codes' memory; stream (which decodes every tensor per forward pass) only
when nothing else fits, and for one-pass commands (logits, verify), where keeping gains nothing.
At full size (bench/bench_runtime.py, 2026-12-03, a quiet 2-vCPU 24 GB machine; the
2B4T-shaped TQ2_0 file, exact mode, medians of 3): f64x3 prefills 57.0 tok/s and decodes 3.69
tok/s with 8.1 GB peak RSS, f32 39.3 / 2.81 tok/s with 10.8 GB (1.45x and 1.31x: f64x3 does
three weights' multiply-adds with each float64 one and reads 8/3 bytes a weight, not 4). Decode
is memory-bound in both: the FFN matmuls take 58-62% of a token, the attention ones 22%, the LM
head (float32, 1.3 GB) 12-16%. f64x3 is chosen first wherever it applies (`preferred`: exact
and bitnet.cpp modes, research options without a Hadamard site); f32 stays for llama.cpp mode
(Q8_K/Q8_0 blocks: one product per block) and Hadamard sites (a product of float values).
llama.cpp mode's Q8_K block products were tried on f64x3 (a K slice of the packed rows per
block) and measured on the same file: prefill 23.5 tok/s against f32's 29.8, decode 2.38
against 2.42 (decoding the sums of ten to twenty-seven 256-column products per matmul costs
what the smaller reads save), so not kept.

Widening int8 codes a few hundred KB at a time into a buffer that stays in cache, one BLAS
call per block (exact: the sums are integers), decoded at 0.68 tok/s: every small BLAS call woke OpenBLAS's second thread;
with OPENBLAS_NUM_THREADS=1 the same code's FFN matmuls took 295 ms a token against f32's 203 ms
on two threads, so int8 blocks split over two threads that each keep BLAS to one could beat f32,
which numpy alone cannot arrange (no per-call BLAS thread count). The Llama3-8B-1.58 I2_S file
(8.0 B parameters) runs as i8 in 24 GB: `run` peaks at 10.1 GB resident (10.2 GB under a 20 GB
RLIMIT_AS), `logits` (stream) at 3.4 GB.
float16 codes (2 bytes a weight) were measured and dropped: numpy widens float16 to float32
about 25 times slower than int8 (25 ms against 1 ms for a 1024 x 2816 tensor, numpy 2.4), so
they are both larger and slower than int8 codes.

Every representation computes the same float32 numbers: the widened buffer holds exactly the
values the f32 representation keeps (-1, 0, 1 are exact in int8 and float32), in the
same (in, out) layout, so each mode's matmuls are the same BLAS calls on equal operands
(runtime/bitlinear.py), and everything after them is elementwise; f64x3's integer sums are
exact, so equal to float32's (runtime/packed3.py). Dense tensors are the same in
all three: norms and the LM head as float32 (the head's matmul is not integer-exact, so it is
never split or widened differently), the input embedding of an untied model in the dtype its
file stores (one row is widened per token: exact).

What each needs, in bytes (`estimate`): the kept codes; the dense tensors as held; the widen
buffer (the largest ternary tensor as float32; not for f32); the decode of one tensor while it
is converted (Weights.transient bytes a weight, two at once while `Model.load` runs on two threads); and
the activations of `positions` tokens (logits, the FFN, attention scores, the KV cache). Memory
mapped file pages are not counted: they are page cache, given back under pressure.

Available memory (`available`): the smallest of MemAvailable (/proc/meminfo), the soft
RLIMIT_AS minus the address space in use, and every enclosing cgroup v2's memory.max minus its
memory.current; or what `--memory` says, which overrides them (to allow more or less). Of a
measured figure `choose` plans with USE (85%) only: it is a moment's reading, other processes
grow, and the page cache must still hold the mapped file while it is decoded. So the 8B I2_S
file (f64x3 21.0 GiB, i8 10.3 GiB) runs as i8 on a 24 GB machine (MemAvailable ~22.7 GiB), and
as f64x3 with `--memory 22G` (at 2B4T size f64x3 decodes about ten times as fast as i8).
"""
from __future__ import annotations

import math
import os
import re
import resource
from dataclasses import dataclass
from pathlib import Path

from bitconv.errors import InputError, MemoryLimitError
from bitconv.runtime.model import REPRESENTATIONS, Spec
from bitconv.runtime.packed3 import BYTES_PER_ROW, TEMP_BYTES_PER_ROW, packed_rows
from bitconv.runtime.weights import Weights

BYTES = {"f32": 4, "i8": 1, "stream": 0}  # bytes a ternary weight, kept (f64x3: kept_bytes)
WHAT = {"f32": "float32 codes", "f64x3": "codes packed three to a float64",
        "i8": "int8 codes widened per matmul", "stream": "codes decoded from the file per matmul"}
# Weights.transient, the peak bytes a weight of one tensor while it is decoded beyond what is
# kept and the buffer, was measured with tracemalloc on the largest tensor of a hidden=512
# fixture, every format: 1.0 (I2_S, TQ2_0, Q2_0, Q1_0), 1.13 (TQ1_0), 2.5 (TL1), 4.3 (TL2); a
# checkpoint through model/reference.py: 9 (the whole tensor widened, |W|, the quotient).
HEADROOM = 64 << 20  # allocator slack, BLAS work buffers, the tokenizer: not estimated one by one
USE = 0.85  # of a measured budget, planned with (module doc); --memory is taken as given
UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


@dataclass(frozen=True)
class Need:
    """Bytes one representation needs, by part."""

    representation: str
    kept: int  # ternary codes as kept
    dense: int  # norms, LM head (float32), untied input embedding (as stored)
    buffer: int  # the float32 widen buffer
    transient: int  # tensors being decoded (two while loading on two threads)
    activations: int

    @property
    def total(self) -> int:
        return (self.kept + self.dense + self.buffer + self.transient + self.activations
                + HEADROOM)


@dataclass(frozen=True)
class Budget:
    """Bytes available and where the figure comes from."""

    bytes: int
    source: str  # "--memory", "MemAvailable", "RLIMIT_AS", "cgroup memory.max"


@dataclass(frozen=True)
class Choice:
    need: Need
    budget: Budget

    @property
    def representation(self) -> str:
        return self.need.representation


def parse_size(text: str) -> int:
    """'14G', '512M', '1.5g', '64KiB', '1000' (bytes) -> bytes; binary units (K = 1024)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]?)(?:i?b)?\s*", text, re.IGNORECASE)
    if m is None:
        raise InputError(f"memory size {text!r}: expected a number with an optional unit K, M, "
                         "G or T (e.g. 14G, 512M)")
    size = int(float(m.group(1)) * UNITS[m.group(2).lower()])
    if size <= 0:
        raise InputError(f"memory size {text!r}: must be more than 0 bytes")
    return size


def format_size(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.1f} {unit}"
    return f"{n} B"


def estimate(weights: Weights, representation: str, positions: int, batch: int | None = None,
             threads: int = 2) -> Need:
    """What holding `weights` in `representation` and running up to `positions` tokens, `batch`
    (default: all) in one forward pass, needs."""
    if representation not in REPRESENTATIONS:
        raise InputError(f"unknown weight representation {representation!r}; choose one of: "
                         f"{', '.join(REPRESENTATIONS)}")
    layout = weights.layout
    if set(layout) != set(weights.order):
        raise InputError("the weights do not say their tensor shapes: cannot plan memory")
    ternary = [s.size for s in layout.values() if s.ternary]
    largest = max(ternary, default=0)
    widest = max((s.shape[0] for s in layout.values() if s.ternary), default=0)
    deepest = max((s.shape[-1] for s in layout.values() if s.ternary), default=0)
    rows = positions if batch is None else min(batch, positions)
    tied = "output.weight" not in layout
    dense = 0
    for name, s in layout.items():
        if s.ternary:
            continue
        # an untied input embedding stays as stored (rows widened per token); all else float32
        dense += s.size * (s.itemsize if name == "token_embd.weight" and not tied else 4)
    keeps, packs = representation != "stream", representation == "f64x3"
    return Need(representation,
                kept=sum(kept_bytes(s.shape, representation) for s in layout.values()
                         if s.ternary),
                dense=dense,
                buffer=0 if representation in ("f32", "f64x3") else 4 * largest,
                transient=(weights.transient * largest
                           + packs * TEMP_BYTES_PER_ROW * widest) * (threads if keeps else 1),
                activations=activations(weights, positions, rows)
                # f64x3's products: the float64 activations, sums and their decoded parts
                + packs * 3 * BYTES_PER_ROW * rows * max(widest, deepest))


def kept_bytes(shape: tuple[int, ...], representation: str) -> int:
    """Bytes one ternary tensor of `shape` (out, in) takes as `representation` keeps it."""
    if representation == "f64x3":
        return packed_rows(shape[0]) * math.prod(shape[1:]) * BYTES_PER_ROW
    return math.prod(shape) * BYTES[representation]


def activations(weights: Weights, positions: int, batch: int) -> int:
    """An upper bound of the float32 arrays one forward pass of `batch` tokens, reaching
    `positions` in all, holds at once: per token of the batch the logits (twice), the FFN's
    gate, up and activation and a dozen hidden-size temporaries; per position the KV cache of
    every layer and one layer's keys and values repeated for grouped queries; the attention
    scores with their exponentials and mask."""
    s = Spec.of(dict(weights.kvs))
    inter = max((t.shape[0] for name, t in weights.layout.items()
                 if name.endswith("ffn_up.weight")), default=0)
    per_batch = 2 * s.vocab + 4 * inter + 12 * s.hidden
    per_position = 2 * s.layers * s.kv_heads * s.head_dim + 2 * s.heads * s.head_dim
    return 4 * (batch * per_batch + positions * per_position + 3 * s.heads * batch * positions)


def available() -> Budget:
    """The memory this process may still use, measured (module doc)."""
    found = [Budget(_meminfo("MemAvailable"), "MemAvailable")]
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        found.append(Budget(max(0, soft - _status("VmSize")), "RLIMIT_AS"))
    for left in _cgroup_left():
        found.append(Budget(left, "cgroup memory.max"))
    return min(found, key=lambda b: b.bytes)


def choose(weights: Weights, positions: int, memory: int | None = None, *,
           batch: int | None = None, representations: tuple[str, ...] = REPRESENTATIONS,
           name: str = "the model", threads: int = 2) -> Choice:
    """The first of `representations` (largest first) whose need fits the budget: `memory`
    bytes if given, else what `available()` measures. MemoryLimitError (one line: what the
    smallest needs, what there is) when none fits. Reads shapes only: nothing is allocated."""
    if memory is not None:
        budget = Budget(memory, "--memory")
    else:
        got = available()
        budget = Budget(int(got.bytes * USE), f"{USE:.0%} of {got.source}")
    needs = [estimate(weights, r, positions, batch, threads) for r in representations]
    for need in needs:
        if need.total <= budget.bytes:
            return Choice(need, budget)
    least = needs[-1]
    raise MemoryLimitError(f"{name}: running it needs {format_size(least.total)} of memory "
                           f"({WHAT[least.representation]}, the least bitconv can hold it in); "
                           f"{format_size(budget.bytes)} available ({budget.source})")


def _meminfo(key: str) -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return _physical()


def _physical() -> int:
    """Without /proc/meminfo (not Linux): the machine's memory, as sysconf tells it."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 62


def _status(key: str) -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _cgroup_left() -> list[int]:
    """memory.max - memory.current of this process's cgroup v2 and each enclosing one that sets
    a limit (the hierarchy's root has none)."""
    try:
        line = next(x for x in Path("/proc/self/cgroup").read_text().splitlines()
                    if x.startswith("0::"))
    except (OSError, StopIteration):
        return []
    root = Path("/sys/fs/cgroup")
    where, left = root / line[3:].strip().lstrip("/"), []
    while True:
        try:
            limit = (where / "memory.max").read_text().strip()
            if limit != "max":
                used = int((where / "memory.current").read_text())
                left.append(max(0, int(limit) - used))
        except (OSError, ValueError):
            pass
        if where == root or root not in where.parents:
            return left
        where = where.parent
