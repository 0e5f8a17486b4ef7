"""Runtime benchmark at full size: `verify` of the 2B4T I2_S file, prefill and decode speed.

Uses the full-size synthetic 2B4T checkpoint of bench_pack.py (generated once under
build/bench) and its I2_S file. Each job runs in a fresh process under /usr/bin/time -v, so the
peak RSS is the whole job's (mapped file pages included).

    python bench/bench_runtime.py [--tokens 32] [--prefill 128] [--decode 16]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_pack import ROOT, ensure, timed  # noqa: E402

SPEED = """
import json, sys, time
import numpy as np
from bitconv.runtime.model import Cache, Model
from bitconv.runtime.weights import load_gguf
path, n_prefill, n_decode, mode = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
t = time.perf_counter(); m = Model(load_gguf(path), mode)
m.forward(np.array([1]))  # decodes every tensor once and keeps the float32 codes (keep=True)
ids = (np.arange(n_prefill) * 7919 + 13) % m.spec.vocab
cache = Cache(); t1 = time.perf_counter(); logits = m.forward(ids, cache); t2 = time.perf_counter()
tok = int(np.argmax(logits[-1]))
for _ in range(n_decode):
    tok = int(np.argmax(m.forward(np.array([tok]), cache)[-1]))
t3 = time.perf_counter()
print(json.dumps({"load": t1 - t, "prefill": t2 - t1, "decode": t3 - t2}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=32, help="verify's logits check length")
    ap.add_argument("--prefill", type=int, default=128)
    ap.add_argument("--decode", type=int, default=16)
    ap.add_argument("--mode", default="exact")
    a = ap.parse_args()
    src = ensure("bitnet-b1.58-2B-4T")
    gguf = ROOT / "bitnet-b1.58-2B-4T-i2s.gguf"
    if not gguf.is_file():
        subprocess.run([sys.executable, "-m", "bitconv", "pack", str(src), "-o", str(gguf)],
                       check=True)
    v = timed([sys.executable, "-m", "bitconv", "verify", str(gguf), "--source", str(src),
               "--tokens", str(a.tokens), "--no-drift"])
    print(f"verify (full-size 2B4T I2_S, {a.tokens}-token logits): {v['wall']:.1f} s wall, "
          f"{v['cpu']:.1f} s CPU, peak RSS {v['rss_gb']:.2f} GB")
    code = [sys.executable, "-c", SPEED, str(gguf), str(a.prefill), str(a.decode), a.mode]
    p = subprocess.run(["/usr/bin/time", "-v", *code], capture_output=True, text=True, check=True)
    r = json.loads(p.stdout)
    rss = int(p.stderr.split("Maximum resident set size (kbytes): ")[1].split()[0]) / 1e6
    print(f"runtime ({a.mode} mode, keep=True): prefill {a.prefill} tokens {r['prefill']:.1f} s "
          f"({a.prefill / r['prefill']:.1f} tok/s), decode {a.decode / r['decode']:.2f} tok/s, "
          f"load (decode + float32 codes) {r['load']:.1f} s, peak RSS {rss:.1f} GB")


if __name__ == "__main__":
    main()
