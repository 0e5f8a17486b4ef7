"""Tile parameters (BM, BK, bm) of bitnet.cpp's TL1/TL2 lookup-table kernels, for any weight shape,
and the kernel_config.ini that records them.

bitnet.cpp compiles one kernel per weight shape (M, K) = (out_features, in_features):
utils/codegen_tl{1,2}.py take BM/BK/bm lists on the command line, write the kernels to
include/bitnet-lut-kernels.h and the same numbers to include/kernel_config.ini, which the converter
then reads to lay out each tensor (raising NotImplementedError for a shape it does not list).
setup_env.py ships numbers for three models only. bitconv uses those numbers for those shapes and
computes valid ones for any other shape; formats/tl1.md §3 and formats/tl2.md §3 state the rule.

References (microsoft/BitNet@16da220, reference/bitnet-cpp.md §2): codegen_tl1.py and codegen_tl2.py
(`__main__` asserts, `gen_tbl_impl` loops, ConfigParser output), setup_env.py `gen_code` (presets),
utils/convert-hf-to-gguf-bitnet.py `preprocess_weights_tl1/tl2` (ini keys m, k, bm, bk, bmm).
"""
from __future__ import annotations

import configparser
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from bitconv.errors import InputError, PackError

Fmt = Literal["tl1", "tl2"]
BM_CAP = 256  # largest BM the rule picks: the commonest preset BM (presets go up to 320)
TL1_BK_CAP = 128  # largest preset TL1 BK
TL2_BK_TARGET = 96  # the BK of 9 of bitnet.cpp's 10 TL2 presets
TL2_MAX_TWO_K = 256  # ggml_nbytes' TL2 formula only has room for K % BK <= 256 pair-coded columns


@dataclass(frozen=True)
class Tiling:
    """One kernel's tile sizes, with bitnet.cpp's names: BM rows per tile, BK columns per K-slab,
    bm rows per SIMD block (the ini's `bmm`); by = 256 // bm (TL1) or 192 // bm (TL2) columns per
    block step. TL2 splits K into three_k = K // BK * BK triple-coded columns and two_k pair-coded
    ones; TL1 has two_k = 0."""

    fmt: Fmt
    M: int
    K: int
    BM: int
    BK: int
    bm: int

    @property
    def by(self) -> int:
        return (256 if self.fmt == "tl1" else 192) // self.bm

    @property
    def three_k(self) -> int:
        return self.K // self.BK * self.BK

    @property
    def two_k(self) -> int:
        return self.K - self.three_k


# setup_env.py gen_code: (M, K) -> (BM, BK, bm), per model in codegen's ModelShapeDict order. These
# are what bitnet.cpp's own setup builds (preset_kernels/*/kernel_config_tl*.ini differ in places,
# but codegen overwrites them: reference/bitnet-cpp.md §2.5).
PRESET_MODELS: dict[Fmt, dict[str, tuple[tuple[tuple[int, int], tuple[int, int, int]], ...]]] = {
    "tl1": {
        "bitnet_b1_58-large": (((1536, 4096), (256, 128, 32)), ((1536, 1536), (128, 64, 64)),
                               ((4096, 1536), (256, 128, 32))),
        "bitnet_b1_58-3B": (((3200, 8640), (160, 64, 32)), ((3200, 3200), (320, 128, 64)),
                            ((8640, 3200), (320, 64, 32))),
        "Llama3-8B-1.58-100B-tokens": (((14336, 4096), (256, 128, 32)),
                                       ((4096, 14336), (128, 64, 64)),
                                       ((1024, 4096), (256, 128, 32)),
                                       ((4096, 4096), (128, 64, 64))),
    },
    "tl2": {
        "bitnet_b1_58-large": (((1536, 4096), (256, 96, 32)), ((1536, 1536), (128, 192, 32)),
                               ((4096, 1536), (256, 96, 32))),
        "bitnet_b1_58-3B": (((3200, 8640), (160, 96, 32)), ((3200, 3200), (320, 96, 32)),
                            ((8640, 3200), (320, 96, 32))),
        "Llama3-8B-1.58-100B-tokens": (((14336, 4096), (256, 96, 32)),
                                       ((4096, 14336), (128, 96, 32)),
                                       ((1024, 4096), (256, 96, 32)),
                                       ((4096, 4096), (128, 96, 32))),
    },
}
PRESETS: dict[Fmt, dict[tuple[int, int], tuple[int, int, int]]] = {
    fmt: {shape: params for model in models.values() for shape, params in model}
    for fmt, models in PRESET_MODELS.items()
}


def problem(t: Tiling) -> str | None:
    """The first constraint `t` breaks, as text, or None if bitnet.cpp can build and run it.

    TL1: codegen_tl1 asserts M % BM == 0, K % BK == 0, bm in {32, 64}; its kernel walks BM in
    steps of bm and each BK slab in steps of by; lut_ctor builds the activation table 16 columns
    at a time. TL2: codegen_tl2 asserts M % BM == 0, (K % BK) % 32 == 0, bm == 32; its kernel
    walks BM in steps of 32 and BK in chunks of 24 (8 triples share one 32-byte sign vector).
    """
    M, K, BM, BK, bm = t.M, t.K, t.BM, t.BK, t.bm
    if t.fmt == "tl1":
        checks = [(bm in (32, 64), f"bm must be 32 or 64, got {bm}"),
                  (BM > 0 and BM % bm == 0, f"BM must be a multiple of bm = {bm}, got {BM}"),
                  (M % BM == 0, f"out_features must be a multiple of BM = {BM}, got {M}"),
                  (BK > 0 and BK % t.by == 0, f"BK must be a multiple of by = {t.by}, got {BK}"),
                  (K % BK == 0, f"in_features must be a multiple of BK = {BK}, got {K}"),
                  (K % 16 == 0, f"in_features must be a multiple of 16, got {K}")]
    else:
        checks = [(bm == 32, f"bm must be 32, got {bm}"),
                  (BM > 0 and BM % 32 == 0, f"BM must be a multiple of 32, got {BM}"),
                  (M % BM == 0, f"out_features must be a multiple of BM = {BM}, got {M}"),
                  (BK > 0 and BK % 24 == 0, f"BK must be a multiple of 24, got {BK}"),
                  (BK <= K, f"BK = {BK} exceeds in_features = {K}"),
                  (t.two_k % 32 == 0, f"in_features % BK must be a multiple of 32, got {t.two_k}"),
                  (t.two_k <= TL2_MAX_TWO_K, f"in_features % BK must be at most 256, got {t.two_k}")]
    return next((msg for ok, msg in checks if not ok), None)


def choose(fmt: Fmt, shape: tuple[int, int]) -> Tiling:
    """The tiling bitconv uses for a weight of `shape` (out_features, in_features).

    bitnet.cpp's own numbers for the shapes it ships (PRESETS); otherwise bm = 32, BM = the
    largest multiple of 32 dividing M and at most 256, and BK = (TL1) the largest power of two
    dividing K, at most 128, or (TL2) the valid multiple of 24 nearest to 96 (the larger on a tie).
    Raises PackError naming the shape when none exists.

    Example:
        >>> choose("tl2", (2560, 6912))
        Tiling(fmt='tl2', M=2560, K=6912, BM=256, BK=96, bm=32)
    """
    M, K = int(shape[0]), int(shape[1])
    if (M, K) in PRESETS[fmt]:
        return Tiling(fmt, M, K, *PRESETS[fmt][(M, K)])
    where = f"{fmt} cannot tile shape ({M}, {K}): "
    BM = max((b for b in range(32, min(M, BM_CAP) + 1, 32) if M % b == 0), default=0)
    if not BM:
        raise PackError(where + f"out_features must be a multiple of 32, got {M}")
    if fmt == "tl1":
        if K <= 0 or K % 16:
            raise PackError(where + f"in_features must be a multiple of 16, got {K}")
        return Tiling(fmt, M, K, BM, math.gcd(K, TL1_BK_CAP), 32)
    valid = [bk for bk in range(24, K + 1, 24)
             if problem(Tiling(fmt, M, K, BM, bk, 32)) is None]
    if not valid:
        raise PackError(where + "in_features must be a multiple of BK (a multiple of 24) plus "
                                "a remainder that is a multiple of 32 and at most 256")
    return Tiling(fmt, M, K, BM, min(valid, key=lambda bk: (abs(bk - TL2_BK_TARGET), -bk)), 32)


def model_shapes(shapes: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Distinct shapes in first-seen order, or a preset model's order when the set is exactly
    that model's (so the ini equals the one bitnet.cpp's setup writes for it)."""
    seen = list(dict.fromkeys((int(m), int(k)) for m, k in shapes))
    for models in PRESET_MODELS.values():
        for model in models.values():
            order = [s for s, _ in model]
            if set(order) == set(seen):
                return order
    return seen


def kernel_config(fmt: Fmt, shapes: Sequence[tuple[int, int]],
                  given: Mapping[tuple[int, int], Tiling] | None = None) -> bytes:
    """include/kernel_config.ini for these shapes, in ConfigParser.write's format as codegen writes
    it (lower-case keys, `key = value`, a blank line after each section), after a `;` comment that
    says how to build bitnet.cpp with the same numbers. Each shape's tiling is `given`'s, else
    tiling.choose's. Raises PackError for an untileable shape.
    """
    tiles = [(given or {}).get(s) or choose(fmt, s) for s in model_shapes(shapes)]
    lists = {key: ",".join(str(getattr(t, attr)) for t in tiles)
             for key, attr in (("BM", "BM"), ("BK", "BK"), ("bm", "bm"))}
    dict_entry = ", ".join(f"[{t.M}, {t.K}]" for t in tiles)
    head = (f"; bitnet.cpp {fmt.upper()} kernel configuration for the ternary weight shapes of one "
            f"model (m = out_features, k = in_features),\n"
            f"; written by bitconv; the converter reads it as include/kernel_config.ini. Build the "
            f"matching kernels with\n"
            f";   ModelShapeDict[\"<model>\"] = [{dict_entry}]   (in utils/codegen_{fmt}.py)\n"
            f";   python utils/codegen_{fmt}.py --model <model> --BM {lists['BM']} "
            f"--BK {lists['BK']} --bm {lists['bm']}\n")
    return (head + body(tiles)).encode("ascii")


def body(tiles: Sequence[Tiling]) -> str:
    """The sections exactly as codegen's ConfigParser writes them."""
    return "".join(f"[Kernels_{i}]\nm = {t.M}\nk = {t.K}\nbm = {t.BM}\nbk = {t.BK}\nbmm = {t.bm}\n\n"
                   for i, t in enumerate(tiles))


def parse(text: str, where: str) -> dict[tuple[int, int], tuple[int, int, int]]:
    """(m, k) -> (BM, BK, bm) of every section of a kernel_config.ini, read as bitnet.cpp's
    converter reads it (`preprocess_weights_tl1/tl2`: ConfigParser, keys m, k, bm, bk, bmm, the
    first section matching a shape wins; section names and `;` comments do not matter).
    InputError naming `where` for text that is not one."""
    config = configparser.ConfigParser()
    try:
        config.read_string(text)
    except configparser.Error as e:
        raise InputError(f"{where}: not a kernel_config.ini ({str(e).splitlines()[0]})") from None
    out: dict[tuple[int, int], tuple[int, int, int]] = {}
    for sec in config.sections():
        try:
            m, k, bm, bk, bmm = (int(config.get(sec, key)) for key in ("m", "k", "bm", "bk", "bmm"))
        except (configparser.Error, ValueError) as e:
            raise InputError(f"{where}: section [{sec}] needs integer keys m, k, bm, bk, bmm "
                             f"({str(e).splitlines()[0]})") from None
        if min(m, k, bm, bk, bmm) <= 0:
            raise InputError(f"{where}: section [{sec}] has m = {m}, k = {k}, bm = {bm}, "
                             f"bk = {bk}, bmm = {bmm}; each must be a positive integer")
        out.setdefault((m, k), (bm, bk, bmm))
    return out
