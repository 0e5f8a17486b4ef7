"""Token generation with the KV cache, and incremental detokenization for streaming."""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from bitconv.runtime.memory import choose
from bitconv.runtime.model import Cache, Model, preferred
from bitconv.runtime.research import parse
from bitconv.runtime.text import TextCodec, load_text_codec
from bitconv.runtime.weights import load_any


def generate(model: Model, prompt: Sequence[int], n: int, temperature: float = 0.0,
             seed: int = 0, stop: frozenset[int] = frozenset()) -> Iterator[int]:
    """Up to `n` new token ids after `prompt`: greedy at temperature 0, else sampled from
    softmax(logits / temperature) with a seeded generator (same seed, same tokens). Stops after
    yielding a token in `stop`."""
    if not len(prompt):
        raise ValueError("the prompt has no tokens")
    rng = np.random.default_rng(seed)
    cache = Cache()
    logits = model.forward(np.asarray(prompt), cache)[-1]
    for _ in range(n):
        if temperature <= 0:
            tok = int(np.argmax(logits))
        else:
            z = logits.astype(np.float64) / temperature
            p = np.exp(z - z.max())
            tok = int(rng.choice(p.size, p=p / p.sum()))
        yield tok
        if tok in stop:
            return
        logits = model.forward(np.array([tok]), cache)[-1]


class TextStream:
    """Turns a growing list of ids into text pieces; a piece that ends inside a multi-byte
    character (decoded as U+FFFD) is held back until the character is complete."""

    def __init__(self, codec: TextCodec) -> None:
        self.codec, self.ids, self.shown = codec, list[int](), 0

    def push(self, tok: int) -> str:
        self.ids.append(tok)
        text = self.codec.decode(self.ids)
        if text.endswith("\ufffd"):
            return ""
        piece, self.shown = text[self.shown:], len(text)
        return piece


def stream_text(path: str | Path, prompt: str, n: int, *, temperature: float = 0.0,
                seed: int = 0, chat: bool = False, mode: str = "exact",
                kernel_config: str | Path | None = None,
                research: str | None = None, memory: int | None = None) -> Iterator[str]:
    """Load the model at `path` (GGUF file or checkpoint directory; a TL file's tiling from
    `kernel_config` or as load_gguf finds it), tokenize `prompt` (through the chat template
    with `chat`) and yield the generated text piece by piece. `research`: a
    runtime/research.py spec, on top of exact mode. The weights are held as the memory
    available (measured, or `memory` bytes) allows: MemoryLimitError before loading when even
    the smallest way does not fit (runtime/memory.py)."""
    weights = load_any(path, kernel_config)
    codec = load_text_codec(path, weights.kvs)
    ids = codec.chat(prompt) if chat else codec.encode(prompt)
    options = parse(research) if research else None
    held = choose(weights, len(ids) + n, memory, batch=len(ids), name=str(path),
                  representations=preferred(mode, options))
    # every weight the representation keeps decoded up front, on two threads
    model = Model(weights, mode, held.representation, research=options).load()
    stream = TextStream(codec)
    for tok in generate(model, ids, n, temperature, seed, codec.eog_ids):
        if tok in codec.eog_ids:
            return
        piece = stream.push(tok)
        if piece:
            yield piece
