"""Conversion benchmark: bitconv vs the hardware floor vs llama.cpp's converter, in one run.

Inputs are full-size synthetic checkpoints in the exact real layouts, their dimensions taken
from recipes/*.toml (2B4T packed and -bf16, 1bitLLM large, Llama3-8B-1.58 packed; generated
once, cached under build/bench). Every job runs in a fresh process under /usr/bin/time -v,
which reports wall time, CPU time and peak RSS (mapped input pages count, as they should).

For each job, in the same run:
- floor: max(read, write + fsync): the time to read the input bytes, and the time to write as
  many bytes as the output has (page-aligned buffers, fsync), measured one after the other; a
  converter that does no work and overlaps its reads with its writes takes the longer of the two.
  The overhead is wall / floor;
- stages: where bitconv's time went, from the library's own probe (BITCONV_TIMING,
  bitconv/containers/iostats.py): the conversion's wall time (the rest of the process' wall is
  start-up: imports, reading the checkpoint's index, checking scales), CPU user + system of all
  threads, disk bytes read (0 when warm), and the writing thread's seconds in write(), in waits
  for early-flushed ranges (write-behind) and in the final fsync;
- peer: llama.cpp's `convert_hf_to_gguf.py` from the llama-cpp-python sdist (the only peer
  converter installable from PyPI) on the jobs it supports; bitnet.cpp's converter is not
  installable here, so its figures are quoted from shared/reference/perf-anchors.md §2 and
  marked as such.
`--compare` runs only the jobs that have a peer and prints the issue's ratio table with its
goals; every run's rows also go to build/bench/results/pack-<UTC time>.json, with the load
average at the start of each job (the machine may be shared), so runs can be compared.
Warm jobs read the input first; cold jobs evict it from the page cache (POSIX_FADV_DONTNEED)
and are compared with the time to read the input cold, measured just before each cold run (this
virtual disk's cold reads vary 0.5-1.5 GB/s from run to run). Figures are medians of --reps. Every measurement
starts after a sync, so no earlier job's writeback competes with it.

    python bench/bench_pack.py [--only NAME ...] [--formats FMT ...] [--compare] [--no-cold] [--no-peer]
                               [--threads N] [--reps 3] [--write-behind MB]
"""
from __future__ import annotations

import argparse
import glob
import json
import mmap
import os
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from math import nan
from pathlib import Path

from bitconv.stages.recipes import load_recipe
from bitconv.synth.checkpoints import Shape, make_fixture

ROOT = Path("build/bench")
SDIST = "llama-cpp-python==0.3.36"  # its vendored llama.cpp tree holds convert_hf_to_gguf.py
# bitnet.cpp converter, perf-anchors.md §2 (wall s, peak RSS GB): not installable from PyPI.
QUOTED = {("2b4t", "i2s"): (58.0, 3.2), ("2b4t-bf16", "i2s"): (103.0, 7.4),
          ("1bitllm-large", "i2s"): (25.0, 6.8)}
INPUTS = {  # bench name -> synthetic fixture (bitconv.synth) = recipe with the real dimensions
    "2b4t": "bitnet-b1.58-2B-4T", "2b4t-bf16": "bitnet-b1.58-2B-4T-bf16",
    "1bitllm-large": "bitnet_b1_58-large", "llama3-8b": "Llama3-8B-1.58-100B-tokens",
}
JOBS = [  # (input, format, cold run too, llama.cpp --outtype or None)
    ("2b4t", "i2s", True, None), ("2b4t", "i2s-arm", False, None), ("2b4t", "tl1", False, None),
    ("2b4t", "tl2", False, None), ("2b4t", "tq1_0", False, None), ("2b4t", "tq2_0", False, None),
    ("2b4t", "q2_0", False, None), ("2b4t", "hf", False, None),
    ("2b4t-bf16", "i2s", True, None), ("2b4t-bf16", "tq2_0", False, None),
    ("1bitllm-large", "tq2_0", True, "tq2_0"), ("1bitllm-large", "tq1_0", False, "tq1_0"),
    ("1bitllm-large", "i2s", False, None),
    ("llama3-8b", "i2s", True, None),
]
# issue 15's goals per (input, format): peer speedup, or (2B4T packed, almost pure IO) the
# speedup or wall within 1.15x of the floor; every job: within 1.3x of its floor warm, 1.5x cold
GOALS = {("2b4t-bf16", "i2s"): (15.0, None), ("2b4t", "i2s"): (15.0, 1.15),
         ("1bitllm-large", "tq2_0"): (6.0, None)}
WARM_GOAL, COLD_GOAL, RSS_GOAL = 1.3, 1.5, 1.0


@dataclass(frozen=True)
class Run:
    wall: float
    cpu: float
    rss_gb: float


@dataclass(frozen=True)
class Row:
    job: str
    cache: str  # warm | cold
    in_gb: float
    out_gb: float
    ours: Run
    floor: float  # s: max(read, write + fsync) warm; the cold read of the input cold
    read: float  # s: reading the input (from the page cache warm, from the disk cold)
    write: float  # s: writing out_gb bytes with fsync
    stages: dict[str, float]  # the library's probe for the median run (containers/iostats.py)
    load: float  # 1-minute load average when the job started
    peer: str | None = None
    peer_run: Run | None = None


def ensure(fixture: str, dims: str | None = None, name: str | None = None) -> Path:
    """build/bench/<name or fixture>: the synthetic checkpoint `fixture` (its layout) at the full
    dimensions of recipes/<dims or fixture>.toml, generated once."""
    dst = ROOT / (name or fixture)
    if not (dst / "config.json").is_file():
        f = load_recipe(Path("recipes") / f"{dims or fixture}.toml").model
        assert f is not None
        shape = Shape(hidden=f.hidden, inter=f.intermediate, layers=f.layers, heads=f.heads,
                      kv_heads=f.kv_heads, vocab=f.vocab)
        t = time.time()
        print(f"generating {dst} {shape} (one-off) ...", file=sys.stderr, flush=True)
        make_fixture(fixture, dst, shape)
        print(f"  {time.time() - t:.0f} s", file=sys.stderr)
    return dst


def files(src: Path) -> list[Path]:
    return sorted(src.glob("*.safetensors"))


def size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() \
        else path.stat().st_size


def evict(paths: list[Path]) -> None:
    """Drop the files from the page cache (clean pages: no privileges needed)."""
    for p in paths:
        with open(p, "rb") as f:
            os.fsync(f.fileno())
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def read_all(paths: list[Path]) -> float:
    """Seconds to read the files into a page-aligned buffer (16-byte-aligned numpy buffers read
    5x slower on this machine: perf-anchors.md §4.6)."""
    buf = mmap.mmap(-1, 1 << 24)
    t = time.perf_counter()
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass
    return time.perf_counter() - t


def write_bytes(n: int) -> float:
    """Seconds to write n bytes to a new file next to the outputs, fsync included."""
    buf, tmp = mmap.mmap(-1, 1 << 24), ROOT / "floor.tmp"
    t = time.perf_counter()
    with open(tmp, "wb", buffering=0) as f:
        f.writelines(buf for _ in range(0, n, len(buf)))
        os.fsync(f.fileno())
    tmp.unlink()
    return time.perf_counter() - t


def probed(cmd: list[str]) -> tuple[Run, dict[str, float]]:
    """timed(cmd) and the probe line bitconv wrote (BITCONV_TIMING)."""
    with tempfile.NamedTemporaryFile("r", suffix=".jsonl") as probe:
        run = Run(**timed(cmd, env={"BITCONV_TIMING": probe.name}))
        lines = probe.read().splitlines()
    return run, {k: v for k, v in json.loads(lines[-1]).items()
                 if isinstance(v, (int, float))} if lines else {}


def timed(cmd: list[str], env: dict[str, str] | None = None) -> dict[str, float]:
    """Wall, CPU (user + system) and peak RSS of `cmd`, as /usr/bin/time -v reports them."""
    return timed_output(cmd, env)[0]


def timed_output(cmd: list[str], env: dict[str, str] | None = None
                 ) -> tuple[dict[str, float], str]:
    """timed() and the command's stdout; exits naming the command if it fails."""
    p = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True,
                       check=False, env={**os.environ, **(env or {})})
    if p.returncode:
        sys.exit(f"failed: {' '.join(cmd)}\n{p.stderr[-3000:]}")
    grab = lambda key: re.search(rf"{key}: (.*)", p.stderr).group(1)
    wall = grab(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\)").split(":")
    return {"wall": sum(float(x) * 60 ** i for i, x in enumerate(reversed(wall))),
            "cpu": float(grab(r"User time \(seconds\)")) + float(grab(r"System time \(seconds\)")),
            "rss_gb": int(grab(r"Maximum resident set size \(kbytes\)")) * 1024 / 1e9}, p.stdout


def remove(path: Path) -> None:
    """An earlier output: the file (and its sidecars, `<out>.*`) or the hf directory."""
    if path.is_dir():
        for p in path.iterdir():
            p.unlink()
        path.rmdir()
    for p in path.parent.glob(glob.escape(path.name) + "*"):
        p.unlink()


def llama_cpp_converter() -> Path | None:
    """convert_hf_to_gguf.py from the llama-cpp-python sdist (downloaded once from PyPI)."""
    tree = ROOT / "peers" / "llama.cpp"
    if not (tree / "convert_hf_to_gguf.py").is_file():
        dl = ROOT / "peers"
        dl.mkdir(parents=True, exist_ok=True)
        p = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                            "--no-binary", ":all:", SDIST, "-d", str(dl)], capture_output=True,
                           check=False)
        tars = sorted(dl.glob("llama_cpp_python-*.tar.gz"))
        if p.returncode or not tars:
            print(f"llama.cpp converter unavailable ({SDIST} not downloadable)", file=sys.stderr)
            return None
        with tarfile.open(tars[-1]) as tf:
            prefix = tf.getnames()[0].split("/")[0] + "/vendor/llama.cpp/"
            members = [m for m in tf.getmembers() if m.name.startswith(prefix) and
                       m.name[len(prefix):].split("/")[0] in
                       ("convert_hf_to_gguf.py", "conversion", "gguf-py")]
            for m in members:
                m.name = m.name[len(prefix):]
            tf.extractall(tree, members=members, filter="data")
    return tree


def run_job(name: str, fmt: str, cold: bool, peer: str | None, threads: int | None,
            converter: Path | None, reps: int = 1) -> list[Row]:
    src = ensure(INPUTS[name])
    ins = files(src)
    in_bytes = sum(p.stat().st_size for p in ins)
    out = ROOT / "out" / (f"{name}-{fmt}" + ("" if fmt == "hf" else ".gguf"))
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "bitconv", "pack", str(src), "--format", fmt, "-o", str(out),
           "-q"] + (["--threads", str(threads)] if threads else [])
    rows = []
    for cache in ("warm", "cold") if cold else ("warm",):
        load = os.getloadavg()[0]
        runs, reads, writes = [], [], []
        for _ in range(reps):
            remove(out)
            os.sync()  # no earlier job's writeback competes with this one
            if cache == "cold":
                evict(ins)
                reads.append(read_all(ins))
                evict(ins)
            else:
                read_all(ins)
            runs.append(probed(cmd))
            out_bytes = size(out)
            os.sync()
            if cache == "warm":
                reads.append(read_all(ins))
            writes.append(write_bytes(out_bytes))  # cold too: what writing alone costs
        ours, stages = sorted(runs, key=lambda r: r[0].wall)[len(runs) // 2]  # the median run
        read = statistics.median(reads)
        write = statistics.median(writes) if writes else float("nan")
        rows.append(Row(f"{name} -> {fmt}", cache, in_bytes / 1e9, out_bytes / 1e9, ours,
                        read if cache == "cold" else max(read, write), read, write, stages,
                        load))
    if peer and converter is not None:
        peer_out = ROOT / "out" / f"{name}-{fmt}-llama.cpp.gguf"
        remove(peer_out)
        os.sync()
        read_all(ins)
        pr = Run(**timed([sys.executable, str(converter / "convert_hf_to_gguf.py"), str(src),
                    "--outtype", peer, "--outfile", str(peer_out)],
                   env={"PYTHONPATH": str(converter / "gguf-py")}))
        rows[0] = replace(rows[0], peer="llama.cpp (same run)", peer_run=pr)
        remove(peer_out)
    elif (name, fmt) in QUOTED:
        wall, rss = QUOTED[(name, fmt)]
        rows[0] = replace(rows[0], peer="bitnet.cpp (quoted)",
                          peer_run=Run(wall, float("nan"), rss))
    return rows


def table(rows: list[Row]) -> str:
    head = (f"{'job':<24} {'cache':<5} {'in GB':>6} {'out GB':>6} {'wall s':>7} {'CPU s':>6} "
            f"{'RSS GB':>6} {'floor s':>7} {'x floor':>7} | {'peer':<21} {'wall s':>6} "
            f"{'RSS GB':>6} {'speedup':>7}")
    lines = [head, "-" * len(head)]
    for r in rows:
        o = r.ours
        line = (f"{r.job:<24} {r.cache:<5} {r.in_gb:>6.2f} {r.out_gb:>6.2f} {o.wall:>7.2f} "
                f"{o.cpu:>6.1f} {o.rss_gb:>6.2f} {r.floor:>7.2f} {o.wall / r.floor:>7.2f} |")
        if r.peer_run:
            p = r.peer_run
            line += f" {r.peer:<21} {p.wall:>6.1f} {p.rss_gb:>6.2f} {p.wall / o.wall:>6.1f}x"
        lines.append(line)
    return "\n".join(lines)


def stage_table(rows: list[Row]) -> str:
    """Where bitconv's time went (the probe of the median run), beside the floor's parts."""
    head = (f"{'job':<24} {'cache':<5} {'read s':>6} {'wr+fs s':>7} {'wall s':>6} "
            f"{'conv s':>6} {'user s':>6} {'sys s':>6} {'disk GB':>7} {'write s':>7} "
            f"{'wait s':>6} {'fsync s':>7} {'load':>5}")
    lines = [head, "-" * len(head)]
    for r in rows:
        g = r.stages.get
        lines.append(f"{r.job:<24} {r.cache:<5} {r.read:>6.2f} {r.write:>7.2f} "
                     f"{r.ours.wall:>6.2f} {g('wall', nan):>6.2f} {g('cpu_user', nan):>6.2f} "
                     f"{g('cpu_sys', nan):>6.2f} {g('read_bytes', nan) / 1e9:>7.2f} "
                     f"{g('write', nan):>7.2f} {g('wait', nan):>6.2f} {g('fsync', nan):>7.2f} "
                     f"{r.load:>5.2f}")
    return "\n".join(lines)


def goal_table(rows: list[Row]) -> str:
    """The issue's table: each goal job, bitconv and its peer in this run, ratio, goal, met?"""
    head = (f"{'job':<24} {'bitconv':>16} {'x floor':>7} | {'peer':<21} {'wall s':>6} "
            f"{'ratio':>6} | goal")
    lines = [head, "-" * len(head)]
    for r in rows:
        name, fmt = r.job.split(" -> ")
        if r.cache != "warm" or (name, fmt) not in GOALS or r.peer_run is None:
            continue
        speedup, within = GOALS[(name, fmt)]
        ratio, over = r.peer_run.wall / r.ours.wall, r.ours.wall / r.floor
        met = (ratio >= speedup or (within is not None and over <= within)) \
            and r.ours.rss_gb <= RSS_GOAL
        goal = f">= {speedup:g}x" + (f" or <= {within}x floor" if within else "")
        lines.append(f"{r.job:<24} {r.ours.wall:>6.2f} s {r.ours.rss_gb:>4.2f} GB {over:>7.2f} | "
                     f"{r.peer:<21} {r.peer_run.wall:>6.1f} {ratio:>5.1f}x | {goal}, RSS <= "
                     f"{RSS_GOAL:g} GB: {'met' if met else 'NOT met'}")
    for r in rows:
        limit = WARM_GOAL if r.cache == "warm" else COLD_GOAL
        over = r.ours.wall / r.floor
        if over > limit:
            # cold, the goal's floor is the cold read alone; writing the output (fsync'd) may
            # take longer than that by itself, which no converter can beat
            io = max(r.read, r.write)
            why = "" if r.cache == "warm" else (
                f"; writing the output alone takes {r.write:.2f} s, {r.write / r.read:.2f}x the "
                f"cold read: {r.ours.wall / io:.2f}x max(cold read, write + fsync)")
            lines.append(f"{r.job} ({r.cache}): {over:.2f}x its floor, goal <= {limit}x: "
                         f"NOT met{why}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", choices=sorted(INPUTS), help="inputs to run")
    ap.add_argument("--formats", nargs="*", help="only these output formats")
    ap.add_argument("--compare", action="store_true",
                    help="only the jobs with a peer; print the issue's ratio table")
    ap.add_argument("--no-cold", action="store_true", help="skip the cold-cache runs")
    ap.add_argument("--no-peer", action="store_true", help="skip llama.cpp's converter")
    ap.add_argument("--threads", type=int, default=None, help="bitconv pack --threads")
    ap.add_argument("--reps", type=int, default=3, help="warm runs per job (the median is shown)")
    ap.add_argument("--write-behind", type=float, default=None, metavar="MB",
                    help="bitconv's write-behind range (BITCONV_WRITE_BEHIND; 0 = off)")
    a = ap.parse_args()
    if a.write_behind is not None:
        os.environ["BITCONV_WRITE_BEHIND"] = f"{a.write_behind:g}"
    started = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    ROOT.mkdir(parents=True, exist_ok=True)
    converter = None if a.no_peer else llama_cpp_converter()
    rows: list[Row] = []
    for name, fmt, cold, peer in JOBS:
        if (a.only and name not in a.only) or (a.formats and fmt not in a.formats) or \
                (a.compare and not (peer or (name, fmt) in QUOTED)):
            continue
        rows += run_job(name, fmt, cold and not a.no_cold, peer, a.threads, converter, a.reps)
        print(table(rows[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
    print(f"machine: {os.cpu_count()} cores, "
          f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB; "
          f"threads: {a.threads or 'default'}")
    print(table(rows))
    print()
    print(stage_table(rows))
    print()
    print(goal_table(rows))
    out = ROOT / "results" / f"pack-{started}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"started": started, "args": vars(a), "cores": os.cpu_count(),
                               "write_behind": os.environ.get("BITCONV_WRITE_BEHIND"),
                               "rows": [asdict(r) for r in rows]}, indent=1) + "\n")
    print(f"results: {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
