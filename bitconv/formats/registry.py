"""The registry of GGUF layouts: each `--format` name but `hf` -> its Codec object
(formats/base.py), and the look-ups readers and writers make in it.

Several codecs may share a ggml type: a lossless variant with a companion scale tensor (tq2_0
and tq2_0-fp16), or the same bytes in another order marked by a metadata key (i2s and i2s-arm).
A reader picks the one whose companion parts and layout key are present (`codec_for`); the
first codec registered for a type sizes its tensors (`SIZES`: variants of a type never differ
in size).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from bitconv.errors import PackError
from bitconv.formats import (
    FORMAT_NAMES,
    i2s,
    i2s_arm,
    q1_0,
    q2_0,
    tl1,
    tl2,
    tq1_0,
    tq2_0,
)
from bitconv.formats.base import I8, U8, Codec, Shape
from bitconv.formats.tiling import Tiling

CODECS: dict[str, Codec] = {c.spec.name: c for c in (
    i2s.CODEC, tl1.CODEC, tl2.CODEC, tq1_0.CODEC, tq1_0.FP16, tq2_0.CODEC, tq2_0.FP16,
    i2s_arm.CODEC, q2_0.CODEC, q2_0.FP16, q1_0.CODEC, q1_0.FP16)}
SIZES: dict[int, Codec] = {}  # ggml type -> the codec whose nbytes() sizes its tensors
for _c in CODECS.values():
    SIZES.setdefault(_c.spec.ggml_type, _c)


def get_codec(name: str) -> Codec:
    """The codec registered as `name`; PackError listing every `--format` choice if there is
    none (`hf` is no codec: callers send it to stages/hf_export.py first)."""
    try:
        return CODECS[name]
    except KeyError:
        raise PackError(
            f"unknown format {name!r}; choose one of: {', '.join(sorted(FORMAT_NAMES))}"
        ) from None


def codec_for(ggml_type: int, name: str, shape: Shape,
              present: set[str], kvs: Mapping[str, Any] | None = None) -> Codec | None:
    """The codec that wrote weight `name` of this ggml type: among the codecs of that type, the
    one with the most parts whose companion tensors all exist in the file; None if no codec.
    A codec with a `layout` (same bytes per tensor, other order: i2s-arm) is chosen only when the
    file's `{arch}.tensor_data_layout` (in `kvs`) names it, and then no other codec is."""
    layout = file_layout(kvs or {})
    marked = layout in {c.layout for c in CODECS.values()}
    best: tuple[int, Codec] | None = None
    for codec in CODECS.values():
        if codec.spec.ggml_type != ggml_type or codec.layout != (layout if marked else None):
            continue
        parts = codec.parts(name, shape)
        if all(p.name in present for p in parts[1:]) and (best is None or len(parts) > best[0]):
            best = (len(parts), codec)
    return best[1] if best else None


def file_layout(kvs: Mapping[str, Any]) -> str | None:
    """The GGUF `{arch}.tensor_data_layout` value of a file (absent means "reference")."""
    return kvs.get(f"{kvs.get('general.architecture')}.tensor_data_layout")


def decode(codec: Codec, datas: Sequence[U8], shape: tuple[int, ...],
           tilings: Mapping[tuple[int, int], Tiling] | None = None) -> tuple[I8, np.float32]:
    """codec.decode with the file's tiling for `shape` from `tilings` (the reader's kernel
    configuration, bitconv/containers/kernel_config.py): a tiled codec refuses to decode
    without one, the others have none."""
    shape2 = (int(shape[0]), int(shape[1]))
    return codec.decode(datas, shape2, (tilings or {}).get(shape2))
