"""bitconv's numpy runtime on one model file: load, prefill and decode speed, as one JSON line.

Run by bench_runtime.py in a fresh process (under /usr/bin/time -v for the peak RSS), measured
the way peer_llama.py measures llama.cpp: prefill = one forward over N tokens (logits of the
last position only, as llama.cpp computes them); decode = N single-token forwards from an empty
KV cache. Every weight is decoded to float32 first (`Model.load`, timed as "load").

    python bench/speed_bitconv.py MODEL.gguf --mode exact [--prefill 128] [--decode 32] [--reps 3]
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from bitconv.runtime.model import Cache, Model
from bitconv.runtime.weights import load_gguf


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--mode", default="exact")
    ap.add_argument("--prefill", type=int, default=128)
    ap.add_argument("--decode", type=int, default=32)
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    t = time.perf_counter()
    model = Model(load_gguf(a.model), a.mode).load()
    load = time.perf_counter() - t
    ids = (np.arange(max(a.prefill, a.decode)) * 7919 + 13) % model.spec.vocab
    model.forward(ids[:1])  # warm-up: BLAS threads, first allocations
    prefill, decode = [], []
    for _ in range(a.reps):
        t = time.perf_counter()
        model.forward(ids[:a.prefill], Cache(), last=True)
        prefill.append(time.perf_counter() - t)
    for _ in range(a.reps):
        cache = Cache()
        t = time.perf_counter()
        for tok in ids[:a.decode]:
            model.forward(np.array([tok]), cache)
        decode.append(time.perf_counter() - t)
    print(json.dumps({"load_s": load, "prefill_s": prefill, "decode_s": decode,
                      "prefill_tokens": a.prefill, "decode_tokens": a.decode}))


if __name__ == "__main__":
    main()
