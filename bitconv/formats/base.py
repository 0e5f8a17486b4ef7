"""What every packed layout declares about itself: ids and block geometry, in one place."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FormatSpec:
    """Identity and geometry of one packed layout.

    name:        the `--format` value, the codec module's name, the spec's stem (formats/<name>.md).
    ggml_type:   the ggml tensor type id written in GGUF tensor infos.
    file_type:   the `general.file_type` (llama ftype) a model packed in this layout carries.
    block_elems: ternary elements per block; in_features must be a multiple of it.
    block_bytes: packed bytes per block.
    tail_bytes:  bytes appended once per tensor after the blocks (e.g. a scale), 0 if none.
    """

    name: str
    ggml_type: int
    file_type: int
    block_elems: int
    block_bytes: int
    tail_bytes: int
