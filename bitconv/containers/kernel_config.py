"""Where a TL1/TL2 file's tiling comes from, for every reader (runtime, repack, inspect, verify).

bitnet.cpp compiles its TL kernels for one (BM, BK, bm) per weight shape and writes the numbers
to include/kernel_config.ini, never into the GGUF; the same tensor bytes decode to other weights
under another tiling, without any error. So a reader takes the tiling, in this order, from

  1. `--kernel-config PATH` (kernel_config=PATH): codegen's ini, e.g. bitnet.cpp's
     include/kernel_config.ini;
  2. `<file>.kernel_config.ini` beside the file (what `bitconv pack` writes);
  3. the file's `bitconv.tl.kernel_config` metadata key (bitconv's own TL files carry it);

the first of these that exists is used for every shape, and a shape it lacks is refused. A TL
file with none of them is refused with one line that says how to give one: never guessed.
formats/tl1.md §3 and formats/tl2.md §3 state the rule.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bitconv.errors import InputError
from bitconv.formats import tiling
from bitconv.formats.tiling import Fmt, Tiling
from bitconv.formats.tl_common import KV_KEY, SIDECAR_SUFFIX


class KernelConfigError(InputError):
    """A TL file's tiling is missing, or its kernel config cannot be this file's. Exit 1 for
    every command, verify included: nothing can be judged without it (not a mismatch, exit 3)."""


@dataclass(frozen=True)
class FileTilings:
    """The tiling of every TL weight shape of one file, and where it was found."""

    source: str  # "--kernel-config <path>", "<path> (beside the file)", "metadata key ..." or ""
    by_shape: Mapping[tuple[int, int], Tiling] = field(default_factory=dict)

    def describe(self) -> str:
        """e.g. "(256, 256): BM 128, BK 192, bm 32; (128, 256): ..." for `inspect`."""
        return "; ".join(f"({m}, {k}): BM {t.BM}, BK {t.BK}, bm {t.bm}"
                         for (m, k), t in self.by_shape.items())


NONE = FileTilings("")


def sidecar_path(path: Path) -> Path:
    return path.with_name(path.name + SIDECAR_SUFFIX)


def file_tilings(path: str | Path, kvs: Mapping[str, Any], fmt: str,
                 weights: Sequence[tuple[str, tuple[int, int]]],
                 kernel_config: str | Path | None = None) -> FileTilings:
    """The tilings of `weights` [(tensor name, (out_features, in_features))] of the GGUF at
    `path` (metadata `kvs`), whose ternary format is `fmt`; NONE unless `fmt` is tl1/tl2.
    KernelConfigError (one line, naming the file, the source and the tensor) when no source
    exists, the source is not a kernel config, lacks a shape, or gives a tiling that cannot be.
    OSErrors reading a kernel config rise as they are (the CLI names the path)."""
    if fmt not in ("tl1", "tl2") or not weights:
        return NONE
    tl: Fmt = "tl1" if fmt == "tl1" else "tl2"
    path = Path(path)
    found = _source(path, kvs, kernel_config)
    if found is None:
        raise KernelConfigError(
            f"{path}: {fmt.upper()} tensors are laid out by a kernel configuration that the GGUF "
            f"does not hold (bitnet.cpp keeps it in include/kernel_config.ini): pass "
            f"--kernel-config PATH, or put it beside the file as {sidecar_path(path).name}")
    where, text = found
    try:
        given = tiling.parse(text, where)
    except InputError as e:
        raise KernelConfigError(str(e)) from None
    out: dict[tuple[int, int], Tiling] = {}
    for name, shape in weights:
        m, k = int(shape[0]), int(shape[1])
        if (m, k) in out:
            continue
        if (m, k) not in given:
            raise KernelConfigError(f"{path}: {where} has no section with m = {m}, k = {k}, "
                                    f"the shape of {name}")
        t = Tiling(tl, m, k, *given[(m, k)])
        if (why := tiling.problem(t)) is not None:
            raise KernelConfigError(f"{path}: {where} gives {name} ({m}, {k}) BM = {t.BM}, "
                                    f"BK = {t.BK}, bm = {t.bm}, which {fmt} cannot use: {why}")
        out[(m, k)] = t
    return FileTilings(where, out)


def _source(path: Path, kvs: Mapping[str, Any],
            kernel_config: str | Path | None) -> tuple[str, str] | None:
    """(where, ini text) of the first source that exists; OSErrors rise (the CLI names them)."""
    if kernel_config is not None:
        return f"--kernel-config {kernel_config}", _read(Path(kernel_config))
    side = sidecar_path(path)
    if side.is_file():
        return str(side), _read(side)
    value = kvs.get(KV_KEY)
    if value is None:
        return None
    if not isinstance(value, str):
        raise KernelConfigError(f"{path}: metadata key {KV_KEY} must be a string, got "
                                f"{type(value).__name__}")
    return f"metadata key {KV_KEY}", value


def _read(p: Path) -> str:
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise KernelConfigError(f"{p}: not a kernel_config.ini (not UTF-8 text)") from None

