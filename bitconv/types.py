"""Frozen records passed between stages."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from gguf import GGUFValueType


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
