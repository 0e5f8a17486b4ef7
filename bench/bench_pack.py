"""Conversion benchmark on full-size synthetic checkpoints in the real layouts.

Generates (once, cached under build/bench) 2B4T-shaped checkpoints, packed and -bf16, runs
`bitconv pack --format i2s` on each in a fresh process under /usr/bin/time -v, and prints wall
time, CPU time, peak RSS and output size, next to this machine's floor (reading the input from
the page cache and writing the output bytes) and the peers' figures measured on a machine like
ours (shared/reference/perf-anchors.md §2; quoted, not re-run here).

    python bench/bench_pack.py [--only 2b4t|2b4t-bf16] [--cold]
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from bitconv.synth.checkpoints import Shape, make_fixture

ROOT = Path("build/bench")
FULL_2B4T = Shape(hidden=2560, inter=6912, layers=30, heads=20, kv_heads=5, vocab=128256)
# perf-anchors.md §2: bitnet.cpp converter, direct --outtype i2_s (wall s, peak RSS GB).
PEER = {"2b4t": (58.0, 3.2), "2b4t-bf16": (103.0, 7.4)}
JOBS = {"2b4t": "bitnet-b1.58-2B-4T", "2b4t-bf16": "bitnet-b1.58-2B-4T-bf16"}


def ensure(name: str) -> Path:
    dst = ROOT / name
    if not (dst / "model.safetensors").is_file():
        t = time.time()
        print(f"generating {dst} (one-off) ...", file=sys.stderr)
        make_fixture(name, dst, FULL_2B4T)
        print(f"  {time.time() - t:.0f} s", file=sys.stderr)
    return dst


def drop_cache(path: Path) -> None:
    """Evict a file from the page cache (POSIX_FADV_DONTNEED) for a cold run."""
    with open(path, "rb") as f:
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def timed(cmd: list[str]) -> dict[str, float]:
    p = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True)
    if p.returncode:
        sys.exit(f"failed: {' '.join(cmd)}\n{p.stderr}")
    grab = lambda key: re.search(rf"{key}: (.*)", p.stderr).group(1)  # noqa: E731
    wall = grab(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\)").split(":")
    return {"wall": sum(float(x) * 60 ** i for i, x in enumerate(reversed(wall))),
            "cpu": float(grab("User time \\(seconds\\)")) + float(grab("System time \\(seconds\\)")),
            "rss_gb": int(grab(r"Maximum resident set size \(kbytes\)")) / 1e6}


def floor(src: Path, out: Path) -> float:
    """Seconds to read the input (page cache) and write as many bytes as the output has."""
    t = time.perf_counter()
    with open(src, "rb", buffering=0) as f:
        buf = bytearray(1 << 24)
        while f.readinto(buf):
            pass
    size = out.stat().st_size
    tmp = ROOT / "floor.tmp"
    with open(tmp, "wb", buffering=0) as f:
        block = bytes(1 << 24)
        for _ in range(size // len(block) + 1):
            f.write(block)
        os.fsync(f.fileno())
    tmp.unlink()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", choices=sorted(JOBS))
    ap.add_argument("--cold", action="store_true", help="evict the input from the page cache first")
    args = ap.parse_args()
    ROOT.mkdir(parents=True, exist_ok=True)
    rows = []
    for job, name in JOBS.items():
        if args.only and job != args.only:
            continue
        src = ensure(name)
        out = ROOT / f"{name}-i2s.gguf"
        st = src / "model.safetensors"
        if args.cold:
            drop_cache(st)
        else:
            st.read_bytes() if st.stat().st_size < 8e9 else None  # warm the page cache
        r = timed([sys.executable, "-m", "bitconv", "pack", str(src), "-o", str(out), "--force", "-q"])
        fl = floor(st, out)
        peer_wall, peer_rss = PEER[job]
        rows.append((f"{job} -> i2s", st.stat().st_size / 1e9, r["wall"], r["cpu"], r["rss_gb"],
                     out.stat().st_size / 1e9, fl, peer_wall / r["wall"], peer_rss))
    print(f"{'job':<16} {'in GB':>6} {'wall s':>7} {'cpu s':>6} {'RSS GB':>7} {'out GB':>7} "
          f"{'floor s':>8} {'x floor':>8} {'x faster than peer':>19} {'peer RSS GB':>12}")
    for job, gin, wall, cpu, rss, gout, fl, speedup, prss in rows:
        print(f"{job:<16} {gin:>6.2f} {wall:>7.1f} {cpu:>6.1f} {rss:>7.2f} {gout:>7.2f} "
              f"{fl:>8.1f} {wall / fl:>8.1f} {speedup:>19.1f} {prss:>12.1f}")


if __name__ == "__main__":
    main()
