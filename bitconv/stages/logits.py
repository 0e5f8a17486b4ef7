"""Stage `logits`: a model (GGUF file or checkpoint directory) + token ids -> float32 .npy.

Lets anyone compare bitconv with another engine on the same ids, in any BitLinear mode.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt

from bitconv.containers.atomic import atomic_output, check_writable
from bitconv.errors import InputError
from bitconv.runtime.memory import choose
from bitconv.runtime.model import Model
from bitconv.runtime.research import parse
from bitconv.runtime.text import load_text_codec
from bitconv.runtime.weights import load_any


def save_logits(model: str | Path, out: str | Path, *, ids: npt.NDArray[np.integer] | None = None,
                prompt: str | None = None, mode: str = "exact", force: bool = False,
                kernel_config: str | Path | None = None, research: str | None = None,
                memory: int | None = None) -> Path:
    """Write the logits of every position, shape (len(ids), vocab), to the .npy file `out`;
    the ids are given, or `prompt` tokenized by the model's tokenizer (with its BOS).
    `kernel_config`: a TL file's kernel_config.ini (bitconv/containers/kernel_config.py); `research`: a
    runtime/research.py spec, on top of exact mode. One forward pass decodes each tensor once,
    so nothing is kept: MemoryLimitError before loading if even that does not fit in `memory`
    bytes (default: what is available, runtime/memory.py)."""
    out = Path(out)
    if out.suffix != ".npy":
        raise InputError(f"{out}: the output must be a .npy file")
    check_writable(out, force)  # before loading the model, not after
    weights = load_any(model, kernel_config)
    if ids is None:
        ids = np.array(load_text_codec(model, weights.kvs).encode(prompt or ""), dtype=np.int64)
    if not len(ids):
        raise InputError("no tokens to run")
    choose(weights, len(ids), memory, representations=("stream",), name=str(model))
    result = Model(weights, mode, "stream",
                   research=parse(research) if research else None).forward(ids)
    with atomic_output(out, force) as f:
        np.save(f, result.astype(np.float32))
    return out
