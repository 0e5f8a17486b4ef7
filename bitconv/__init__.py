"""bitconv: convert, pack and verify 1- and 1.58-bit (BitNet) language models.

Library first; `bitconv.cli` is a thin layer over these functions:

    from bitconv import pull, pack, repack, verify, release
    snap = pull("microsoft/bitnet-b1.58-2B-4T")          # a verified local snapshot
    res = pack(snap.path, format="i2s")                   # -> PackResult (path, sizes)
    report = verify(res.path, source=snap.path)           # every finding, classed

The package is layered (tests/test_layers.py enforces it): cli -> stages -> runtime -> model ->
containers -> formats -> errors/types/workers. The five names above are the stages' entry
points, imported on first use (PEP 562) so that `import bitconv.errors` or the CLI's `--help`
do not load numpy and every stage.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_STAGES = {"pull": "bitconv.stages.pull", "pack": "bitconv.stages.pack",
           "repack": "bitconv.stages.repack", "verify": "bitconv.stages.verify",
           "release": "bitconv.stages.release"}
__all__ = ["__version__", "pack", "pull", "release", "repack", "verify"]


def __getattr__(name: str) -> Any:
    if name in _STAGES:
        return getattr(importlib.import_module(_STAGES[name]), name)
    raise AttributeError(f"module 'bitconv' has no attribute {name!r}")
