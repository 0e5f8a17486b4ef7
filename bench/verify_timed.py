"""`bitconv verify` as the CLI runs it, with its logits pass timed on its own, as one JSON line.

Run by bench_runtime.py in a fresh process under /usr/bin/time -v. The logits pass (both
models' forward over the fixed tokens, decoding the weights layer by layer) is what issue 8
excludes from verify's "2x the pack time" budget, so it is timed around verify's own check.

    python bench/verify_timed.py MODEL.gguf SOURCE_DIR [--tokens 32]
"""
from __future__ import annotations

import argparse
import json
import time
from typing import Any

from bitconv.stages import verify as verify_mod


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("packed")
    ap.add_argument("source")
    ap.add_argument("--tokens", type=int, default=32)
    a = ap.parse_args()
    spent: dict[str, float] = {}
    inner = verify_mod._logits

    def logits(*args: Any) -> verify_mod.Finding:
        t = time.perf_counter()
        try:
            return inner(*args)
        finally:
            spent["logits_s"] = time.perf_counter() - t

    verify_mod._logits = logits
    t = time.perf_counter()
    report = verify_mod.verify(a.packed, source=a.source, tokens=a.tokens, drift=False)
    total = time.perf_counter() - t
    print(json.dumps({"ok": report.ok, "total_s": total, **spent,
                      "checks": [f.check for f in report.findings if f.cls == "ok"]}))


if __name__ == "__main__":
    main()
