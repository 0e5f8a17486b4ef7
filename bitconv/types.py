"""Frozen records passed between stages."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from bitconv.gguf_values import GGUFValueType


@dataclass(frozen=True)
class KV:
    """One GGUF metadata entry. `subtype` is the element type when `vtype` is ARRAY."""

    key: str
    vtype: GGUFValueType
    value: Any
    subtype: GGUFValueType | None = None


@dataclass(frozen=True)
class TernaryTensor:
    """Ternary weights in memory: w = multiplier * codes, always a multiplier.

    Loaders normalise the HF conventions (inverse `weight_scale` for `bitlinear`).
    """

    name: str
    codes: npt.NDArray[np.int8]  # values in {-1, 0, +1}, shape (out_features, in_features)
    multiplier: np.float32


@dataclass(frozen=True)
class PackResult:
    """What `pack` wrote (a GGUF file, or an `hf` checkpoint directory)."""

    path: Path
    format: str
    family: str
    tensors: int
    nbytes: int
    sidecar: Path | None = None  # the format's extra file (TL kernel configuration)


@dataclass(frozen=True)
class RepackResult:
    """What `repack` wrote."""

    path: Path
    source_format: str  # the codec of the input's ternary weights, or "checkpoint"
    format: str
    tensors: int  # tensors written
    nbytes: int  # tensor bytes written
    max_error: float = 0.0  # largest relative change of a multiplier (lossy targets only)
    worst: str | None = None  # the tensor with that change
    sidecar: Path | None = None  # the format's extra file (TL kernel configuration)
    changed: tuple[str, ...] = ()  # GGUF keys that packing an `hf` output would not give back
