"""bitconv: convert, pack and verify 1.58-bit (BitNet b1.58) language models.

Library first; `bitconv.cli` is a thin layer over these functions.
"""
from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
