"""Stage `eval`: a model's perplexity on a text, computed as llama.cpp's perplexity tool does.

llama.cpp tools/perplexity/perplexity.cpp, `perplexity()` (the default path, --ppl-stride 0), as
vendored in the llama-cpp-python 0.3.36 sdist:
- the whole text is tokenized once, with BOS in front when the vocab adds one
  (`common_tokenize(ctx, text, true)`); it needs at least 2·ctx tokens;
- n_chunk = n_tokens // ctx chunks of ctx consecutive tokens (the tail is dropped), each run from
  an empty KV cache at positions 0..ctx-1; with add_bos the first token of every chunk is replaced
  by BOS for the run (it is never a target);
- only the second half of a chunk is scored: first = ctx // 2; the logits at positions
  first..ctx-2 predict tokens first+1..ctx-1, i.e. ctx - first - 1 targets per chunk (the
  first half gives every scored token at least ctx/2 tokens of context);
- one target's negative log-likelihood: max + log(Σ expf(l - max)) - l[tok], max in float32,
  the float32 exponentials summed in double;
- PPL = exp(Σ nll / count). After chunk k the tool prints this over chunks 1..k (`[k]ppl,`),
  and at the end `Final estimate: PPL = p +/- p·sqrt((mean(nll²) - mean(nll)²) / (count - 1))`.
The logits come from bitconv's runtime in the chosen BitLinear mode (runtime/bitlinear.py), so
`--mode llama.cpp` on a TQ2_0 file reproduces llama.cpp's figure (tests/test_eval.py).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from bitconv.errors import InputError
from bitconv.runtime.memory import choose
from bitconv.runtime.model import Model, preferred
from bitconv.runtime.research import parse
from bitconv.runtime.text import load_text_codec
from bitconv.runtime.weights import load_any


@dataclass(frozen=True)
class Chunk:
    index: int        # 1-based, as llama.cpp prints it
    nll: float        # mean negative log-likelihood of this chunk's scored tokens
    ppl: float        # exp(nll) of this chunk alone
    ppl_running: float  # over chunks 1..index: the value llama.cpp prints after this chunk


@dataclass(frozen=True)
class EvalResult:
    model: str
    text: str
    mode: str
    ctx: int
    tokens: int       # the text's tokens, BOS included
    scored: int       # targets scored: chunks · (ctx - ctx//2 - 1)
    nll: float        # mean over every scored target
    ppl: float
    ppl_error: float  # llama.cpp's "+/-": ppl · standard error of the mean nll
    chunks: list[Chunk] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def token_nll(logits: npt.NDArray[np.float32], targets: npt.NDArray[np.integer]) -> npt.NDArray[np.float64]:
    """-log softmax(logits)[target] per row, in llama.cpp's arithmetic (see the module doc)."""
    logits = np.asarray(logits, np.float32)
    top = logits.max(-1, keepdims=True)
    sum_exp = np.exp(logits - top).astype(np.float64).sum(-1)
    picked = np.take_along_axis(logits, np.asarray(targets)[:, None], -1)[:, 0]
    nll: npt.NDArray[np.float64] = (top[:, 0].astype(np.float64) + np.log(sum_exp)
                                    - picked.astype(np.float64))
    return nll


def chunk_positions(n_tokens: int, ctx: int) -> tuple[int, int]:
    """(number of chunks, first scored logit position) for a text of n_tokens; refuses a text
    shorter than 2·ctx tokens, as llama.cpp does."""
    if ctx < 4:
        raise InputError(f"--ctx must be at least 4, got {ctx}")
    if n_tokens < 2 * ctx:
        raise InputError(f"the text tokenizes to {n_tokens} tokens; perplexity with a context "
                         f"of {ctx} needs at least {2 * ctx} (llama.cpp's rule): give a longer "
                         "text or a smaller --ctx")
    return n_tokens // ctx, ctx // 2


def perplexity(model: Model, ids: Sequence[int], ctx: int, bos: int | None,
               progress: bool = False, chunks: int | None = None,
               ) -> tuple[list[float], list[int], npt.NDArray[np.float64]]:
    """Per-chunk (sum of nll, count) and every scored nll, for `ids` (BOS already in front if the
    model adds one); `bos` replaces each chunk's first token when not None. `chunks`: at most
    that many (llama.cpp's --chunks)."""
    ids_arr = np.asarray(ids, dtype=np.int64)
    n_chunk, first = chunk_positions(len(ids_arr), ctx)
    n_chunk = n_chunk if chunks is None else min(n_chunk, chunks)
    sums, counts, every = [], [], []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n_chunk, unit="chunk", desc="perplexity", leave=False)
    try:
        for i in range(n_chunk):
            chunk = ids_arr[i * ctx:(i + 1) * ctx].copy()
            if bos is not None:
                chunk[0] = bos
            logits = model.forward(chunk)
            nll = token_nll(logits[first:ctx - 1], chunk[first + 1:])
            sums.append(float(nll.sum()))
            counts.append(len(nll))
            every.append(nll)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(ppl=f"{math.exp(sum(sums) / sum(counts)):.4f}")
    finally:
        if bar is not None:
            bar.close()
    return sums, counts, np.concatenate(every)


def evaluate(model_path: str | Path, text_path: str | Path, *, ctx: int = 512,
             mode: str = "exact", progress: bool = False, chunks: int | None = None,
             kernel_config: str | Path | None = None, research: str | None = None,
             memory: int | None = None) -> EvalResult:
    """Perplexity of the model at `model_path` (GGUF file or checkpoint directory) on the UTF-8
    text file `text_path`, chunked and scored as llama.cpp's perplexity tool does. `research`:
    a runtime/research.py spec (preset or options), on top of exact mode. The weights are held
    as the memory available (measured, or `memory` bytes) allows (runtime/memory.py)."""
    try:
        text = Path(text_path).read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{text_path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    weights = load_any(model_path, kernel_config)
    codec = load_text_codec(model_path, weights.kvs)
    ids = codec.encode(text)
    chunk_positions(len(ids), ctx)  # refuse a short text before decoding the weights
    options = parse(research) if research else None
    held = choose(weights, ctx, memory, name=str(model_path),
                  representations=preferred(mode, options))
    model = Model(weights, mode, held.representation, research=options).load()
    bos = codec.bos_id if codec.add_bos else None
    sums, counts, every = perplexity(model, ids, ctx, bos, progress, chunks)
    rows, total, count = [], 0.0, 0
    for k, (s, c) in enumerate(zip(sums, counts), 1):
        total, count = total + s, count + c
        rows.append(Chunk(k, s / c, math.exp(s / c), math.exp(total / count)))
    mean = total / count
    var = float(np.mean(every ** 2)) - mean * mean
    err = math.sqrt(var / (count - 1)) if var > 0 and count > 1 else 0.0
    label = f"{mode}+{research}" if research else mode
    return EvalResult(str(model_path), str(text_path), label, ctx, len(ids), count, mean,
                      math.exp(mean), math.exp(mean) * err, rows)
