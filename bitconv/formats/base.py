"""What every packed layout declares about itself (ids, block geometry) and the GGUF tensors one
ternary weight becomes."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FormatSpec:
    """Identity and geometry of one packed layout.

    name:         the `--format` value, the codec module's name, the spec's stem (formats/<name>.md).
    ggml_type:    the ggml tensor type id written in GGUF tensor infos.
    file_type:    the `general.file_type` (llama ftype) a model packed in this layout carries.
    block_elems:  ternary elements per block; in_features must be a multiple of it.
    block_bytes:  packed bytes per block.
    tail_bytes:   bytes appended once per tensor after the blocks (e.g. a scale), 0 if none.
    row_multiple: rows per streamed chunk must be a multiple of this (row tiles), 1 if free.
    lossless:     every float32 multiplier survives exactly (False: e.g. an fp16 block scale).
    row_local:    encode(m, chunks) yields each chunk's blocks as it consumes it, depending on
                  that chunk alone, and then exactly what encode(m, []) yields (tail,
                  companions); `pack` then encodes chunks in parallel. False: TL tiles.
    container:    "gguf", or "safetensors" for the transformers export.
    codes:        the weight codes the layout holds: ternary, or (-1, 1) for binary (Q1_0).
    d_first:      an fp16-d block format (tq_common) stores d before the codes (Q2_0, Q1_0:
                  `{ ggml_half d; uint8_t qs[]; }`) rather than after them (TQ1_0, TQ2_0).
    """

    name: str
    ggml_type: int
    file_type: int
    block_elems: int
    block_bytes: int
    tail_bytes: int
    row_multiple: int = 1
    lossless: bool = True
    row_local: bool = True
    container: str = "gguf"
    codes: tuple[int, ...] = (-1, 0, 1)
    d_first: bool = False


@dataclass(frozen=True)
class Part:
    """One stored tensor that a packed ternary weight becomes: the weight itself (always first,
    under the weight's own name) and any companions, such as a separate F32 scale tensor."""

    name: str
    ggml_type: int
    shape: tuple[int, ...]  # numpy order
    nbytes: int
