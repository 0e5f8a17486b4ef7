"""bitconv's numpy runtime on one model file: load, prefill and decode speed, as one JSON line.

Run by bench_runtime.py in a fresh process (under /usr/bin/time -v for the peak RSS), measured
the way peer_llama.py measures llama.cpp: prefill = one forward over N tokens (logits of the
last position only, as llama.cpp computes them); decode = N single-token forwards from an empty
KV cache. The weights are held as --codes says (runtime/memory.py: f32, f64x3, i8 or stream;
by default the fastest for the mode, as `run` prefers it), kept ones decoded first
(`Model.load`, timed as "load").

The decode floor: the bytes one decoded token must read (every kept weight once: the codes as
held, the LM head, the norms; an untied input embedding only by the row) over the memory
bandwidth measured here as a float64 matrix-vector product over 1 GiB, best of 3. A decode can
go no faster than that while it reads the weights as held.

--profile adds one more prefill and one more decode pass with the model's parts timed (issue 15
§3): where the time goes, per layer kind, in seconds per pass. The timers wrap Model's methods,
so those passes are a little slower than the timed ones; their parts are reported, not their sum:
  attn_matmul  the q, k, v and output BitLinears (activation quantization included)
  ffn_matmul   gate, up and down BitLinears
  lm_head      the output projection
  norms        every RMSNorm (layer, sub- and output norms)
  rope         the rotary embedding
  other        the rest: attention scores, softmax and KV cache, activations, residuals

    python bench/speed_bitconv.py MODEL.gguf --mode exact [--codes f64x3] [--prefill 128]
        [--decode 32] [--reps 3] [--profile]
"""
from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import numpy as np

from bitconv.runtime.model import REPRESENTATIONS, Cache, Model, preferred
from bitconv.runtime.packed3 import Packed3
from bitconv.runtime.weights import load_gguf


def profiled(model: Model) -> dict[str, float]:
    """Wrap the model's parts with timers; returns the dict they add their seconds to."""
    spent: dict[str, float] = defaultdict(float)

    def wrap(method: str, kind: Callable[[tuple[Any, ...]], str]) -> None:
        inner = getattr(model, method)

        def timed(*args: Any) -> Any:
            t = time.perf_counter()
            try:
                return inner(*args)
            finally:
                spent[kind(args)] += time.perf_counter() - t
        setattr(model, method, timed)

    wrap("_linear", lambda a: "attn_matmul" if ".attn_" in a[0] else "ffn_matmul")
    wrap("_head", lambda a: "lm_head")
    wrap("_norm", lambda a: "norms")
    wrap("_apply_rope", lambda a: "rope")
    wrap("_rope", lambda a: "rope")
    return spent


def parts(model: Model, run: Callable[[], None]) -> dict[str, float]:
    spent = profiled(model)
    t = time.perf_counter()
    run()
    total = time.perf_counter() - t
    out = dict(spent)
    out["other"] = total - sum(spent.values())
    out["total"] = total
    for name in ("_linear", "_head", "_norm", "_apply_rope", "_rope"):
        delattr(model, name)  # back to the class's methods
    return out


def decode_bytes(model: Model) -> int:
    """Bytes of weights one decoded token reads, as the model holds them (module doc)."""
    total = 0
    for name, held in model._cache.items():
        if name == "token_embd.weight" and model._untied:
            continue  # one row per token
        arr = held[0] if isinstance(held, tuple) else held
        total += arr.nbytes if isinstance(arr, (np.ndarray, Packed3)) else 0
    return total


def bandwidth() -> float:
    """Bytes a second a float64 matrix-vector product reads from memory (1 GiB, best of 3)."""
    a = np.ones((8192, 16384))
    v = np.ones(8192)
    best = min(timed(lambda: v @ a) for _ in range(3))
    return a.nbytes / best


def timed(fn: Callable[[], Any]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--mode", default="exact")
    ap.add_argument("--codes", choices=REPRESENTATIONS)
    ap.add_argument("--prefill", type=int, default=128)
    ap.add_argument("--decode", type=int, default=32)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--profile", action="store_true")
    a = ap.parse_args()
    a.codes = a.codes or preferred(a.mode)[0]
    t = time.perf_counter()
    model = Model(load_gguf(a.model), a.mode, a.codes).load()
    load = time.perf_counter() - t
    ids = (np.arange(max(a.prefill, a.decode)) * 7919 + 13) % model.spec.vocab

    def prefill_pass() -> None:
        model.forward(ids[:a.prefill], Cache(), last=True)

    def decode_pass() -> None:
        cache = Cache()
        for tok in ids[:a.decode]:
            model.forward(np.array([tok]), cache)

    model.forward(ids[:1])  # warm-up: BLAS threads, first allocations
    prefill = [timed(prefill_pass) for _ in range(a.reps)]
    decode = [timed(decode_pass) for _ in range(a.reps)]
    out: dict[str, Any] = {"codes": a.codes, "load_s": load, "prefill_s": prefill,
                           "decode_s": decode, "prefill_tokens": a.prefill,
                           "decode_tokens": a.decode, "decode_bytes": decode_bytes(model),
                           "bandwidth": bandwidth()}
    if a.profile:
        out["prefill_parts"] = parts(model, prefill_pass)
        out["decode_parts"] = parts(model, decode_pass)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
