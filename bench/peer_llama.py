"""llama.cpp (llama-cpp-python) on one GGUF file: prefill or decode speed, as one JSON line.

Run by bench_runtime.py in a fresh process per measurement, as perf-anchors.md §3 drove it:
`Llama(model_path, n_threads=2, n_ctx=512, n_batch=512)`; pp = one `eval` of N tokens (logits
of the last position only, llama-cpp-python's default); tg = N single-token `eval`s from an
empty context. A one-token eval first pages the weights in and starts the thread pool.

    python bench/peer_llama.py MODEL.gguf pp|tg [--tokens N] [--reps 3]
"""
from __future__ import annotations

import argparse
import json
import time

import llama_cpp


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("kind", choices=["pp", "tg"])
    ap.add_argument("--tokens", type=int, default=None, help="default: 128 for pp, 32 for tg")
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    n = a.tokens or (128 if a.kind == "pp" else 32)
    llm = llama_cpp.Llama(model_path=a.model, n_threads=2, n_threads_batch=2, n_ctx=512,
                          n_batch=512, verbose=False)
    ids = [(i * 7919 + 13) % llm.n_vocab() for i in range(n)]  # verify's fixed_tokens
    llm.eval(ids[:1])
    seconds = []
    for _ in range(a.reps):
        llm.reset()
        t = time.perf_counter()
        if a.kind == "pp":
            llm.eval(ids)
        else:
            for tok in ids:
                llm.eval([tok])
        seconds.append(time.perf_counter() - t)
    llm.close()
    print(json.dumps({"kind": a.kind, "tokens": n, "seconds": seconds}))


if __name__ == "__main__":
    main()
