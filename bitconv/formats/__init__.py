"""Registry of packed layouts: one codec module per format, looked up by its `--format` name.

Every codec module exposes the same surface; `pack`, the readers, `inspect` and `verify` use
nothing else, so a new format needs no code outside its module and this registry:

    SPEC                                    FormatSpec: name, ggml/file type ids, block geometry
    check_shape(shape) -> None              PackError if (out_features, in_features) cannot be packed
    parts(name, shape) -> tuple[Part, ...]  the stored tensors one weight becomes, weight first
    encode(multiplier, chunks) -> Iterator[uint8 array]
                                            row chunks of int8 codes (row counts a multiple of
                                            SPEC.row_multiple) -> the bytes of every part in
                                            order; no yielded array straddles two parts
    decode(datas, shape) -> (codes, multiplier)
                                            the inverse, given each part's bytes in parts() order;
                                            InputError on malformed data. A TILED codec (TL1/TL2)
                                            also takes the file's tiling and refuses to decode
                                            without it: call it through `decode` below
    sidecar(weights) -> (suffix, bytes) | None
                                            an extra file written next to the output (a kernel
                                            configuration), from [(name, shape)] of every weight

plus the format's own helpers (i2s: nbytes, pack, unpack, ...). Several codecs may share a
ggml type (a lossless variant with a companion scale tensor): a reader picks the one whose
companion parts are present (`codec_for`).

Each format has a normative spec at formats/<name>.md and tests at tests/test_<name>.py.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt
from gguf import GGUFValueType

from bitconv.errors import PackError
from bitconv.formats import hf, i2s, i2s_arm, q1_0, q2_0, tl1, tl2, tq1_0, tq2_0
from bitconv.formats.tiling import Tiling
from bitconv.types import KV

FORMATS: dict[str, ModuleType] = {"i2s": i2s, "tl1": tl1, "tl2": tl2, "tq1_0": tq1_0,
                                "tq1_0-fp16": tq1_0.fp16, "tq2_0": tq2_0, "tq2_0-fp16": tq2_0.fp16,
                                "hf": hf, "i2s-arm": i2s_arm, "q2_0": q2_0, "q2_0-fp16": q2_0.fp16,
                                "q1_0": q1_0, "q1_0-fp16": q1_0.fp16}


def get_format(name: str) -> ModuleType:
    """Return the codec module registered as `name`, or raise PackError listing the choices."""
    try:
        return FORMATS[name]
    except KeyError:
        raise PackError(
            f"unknown format {name!r}; choose one of: {', '.join(sorted(FORMATS))}"
        ) from None


def codec_for(ggml_type: int, name: str, shape: tuple[int, int],
              present: set[str], kvs: Mapping[str, Any] | None = None) -> ModuleType | None:
    """The codec that wrote weight `name` of this ggml type: among the codecs of that type, the
    one with the most parts whose companion tensors all exist in the file; None if no codec.
    A codec with a LAYOUT (same bytes per tensor, other order: i2s-arm) is chosen only when the
    file's `{arch}.tensor_data_layout` (in `kvs`) names it, and then no other codec is."""
    layout = file_layout(kvs or {})
    marked = layout in {getattr(c, "LAYOUT", None) for c in FORMATS.values()}
    best: tuple[int, ModuleType] | None = None
    for codec in FORMATS.values():
        if codec.SPEC.ggml_type != ggml_type or codec.SPEC.container != "gguf":
            continue
        if getattr(codec, "LAYOUT", None) != (layout if marked else None):
            continue
        parts = codec.parts(name, shape)
        if all(p.name in present for p in parts[1:]) and (best is None or len(parts) > best[0]):
            best = (len(parts), codec)
    return best[1] if best else None


def file_layout(kvs: Mapping[str, Any]) -> str | None:
    """The GGUF `{arch}.tensor_data_layout` value of a file (absent means "reference")."""
    return kvs.get(f"{kvs.get('general.architecture')}.tensor_data_layout")


def layout_kvs(codec: ModuleType, arch: str,
               weights: Sequence[tuple[str, tuple[int, int]]] = ()) -> list[KV]:
    """What a file written by `codec` must carry to be read back by it: the layout key of a
    codec with a LAYOUT (formats/i2s-arm.md §1); for a TILED codec, the tiling of its ternary
    `weights` [(name, shape)] (the `bitconv.tl.kernel_config` key, formats/tl1.md §3)."""
    layout = getattr(codec, "LAYOUT", None)
    out = [KV(f"{arch}.tensor_data_layout", GGUFValueType.STRING, layout)] if layout else []
    return out + (codec.kvs(weights) if getattr(codec, "TILED", False) else [])


def decode(codec: ModuleType, datas: Sequence[npt.NDArray[np.uint8]], shape: tuple[int, ...],
           tilings: Mapping[tuple[int, int], Tiling] | None = None
           ) -> tuple[npt.NDArray[np.int8], np.float32]:
    """codec.decode; a TILED codec gets the file's tiling for `shape` from `tilings` (the reader's
    kernel configuration, bitconv/containers/kernel_config.py) and refuses to decode without one."""
    if getattr(codec, "TILED", False):
        t = (tilings or {}).get((int(shape[0]), int(shape[1])))
        return codec.decode(datas, shape, t)  # type: ignore[no-any-return]
    return codec.decode(datas, shape)  # type: ignore[no-any-return]
