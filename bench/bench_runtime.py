"""Runtime benchmark at full size: bitconv's numpy runtime vs llama.cpp, and `verify`, in one run.

Speed (issue 8 part 3): llama.cpp (llama-cpp-python) and bitconv's runtime on THE SAME file. The
2B4T family's arch `bitnet-b1.58` does not run in llama.cpp, so "the same shape" is a synthetic
checkpoint in the 1bitLLM layout (arch `bitnet`: SiLU + sub-norms) at 2B4T's dimensions from
recipes/bitnet-b1.58-2B-4T.toml (hidden 2560, intermediate 6912, 30 layers, 20 heads, 5 KV
heads, vocab 128256; 2.41 B parameters), packed to lossless TQ2_0. pp = one prefill of 128 tokens
(logits of the last position only, as llama-cpp-python's `eval`); tg = 32 single-token decodes
from an empty context. llama.cpp runs each in a fresh process (peer_llama.py); bitconv runs one
fresh process per mode and weight representation (speed_bitconv.py --codes: f32 keeps every
weight as float32, 9.6 GB; i8 as int8) whose load is timed apart. bitconv's exact mode also runs on the real-arch 2B4T I2_S file.

Verify: `bitconv verify` of the full-size 2B4T I2_S file against its source, with a 32-token
logits check (verify_timed.py times that pass apart), next to `bitconv pack` of the same file,
measured in the same run: the goal is verify <= 2 x pack + the logits pass.

Memory (issue 15 §2): `bitconv run` and `bitconv logits` on the full-size synthetic
Llama3-8B-1.58 I2_S file (3.85 GB; the runtime picks its representation by the memory there
is, runtime/memory.py), peak RSS against the 14 GB goal, and `run` again under a 20 GB
RLIMIT_AS (`ulimit -v 20000000`). `verify` of that file against its source, per parameter,
against verify of the 2B4T file (goal: within 3x).

Where the time goes (issue 15 §3): speed_bitconv.py --profile times every layer kind (attention
and FFN matmuls, LM head, norms, RoPE, the rest) in one extra prefill and decode pass.

Every figure is the median of --reps runs; every process runs under /usr/bin/time -v (peak RSS
includes mapped file pages); each measurement records the load average (`uptime`) when it
started: the machine is shared. Run the whole bench under `flock /tmp/bench.lock` so no other
timed job overlaps. Results: a table on stdout and build/bench/runtime-<UTC time>.json.

    python bench/bench_runtime.py [--reps 3] [--modes exact llama.cpp] [--codes f32 i8]
        [--no-i2s] [--no-verify] [--no-big]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from bench_pack import ROOT, ensure, timed_output

from bitconv.containers.gguf_reader import read_gguf
from bitconv.runtime.bitlinear import INTEGER_MODES

HERE = Path(__file__).parent
SAME_SHAPE = "bitnet-2b4t-shape"  # 1bitLLM layout at 2B4T dimensions (perf-anchors.md §0)
BIG = "Llama3-8B-1.58-100B-tokens"  # the largest recipe model (bench_pack.INPUTS "llama3-8b")
GOALS = {"pp": 0.8, "tg": 0.25, "verify_x_pack": 2.0, "big_rss_gb": 14.0,
         "verify_per_param_x": 3.0}
PROMPT = "The capital of France is"


def load() -> float:
    """The 1-minute load average, as `uptime` shows it."""
    return os.getloadavg()[0]


def run(cmd: list[str]) -> dict[str, Any]:
    """Run a helper under /usr/bin/time -v: its JSON line plus wall, CPU, peak RSS and the load
    average when it started."""
    before = load()
    figures, stdout = timed_output(cmd)
    lines = stdout.strip().splitlines()
    return {**(json.loads(lines[-1]) if lines and lines[-1].startswith("{") else {}), **figures,
            "load": before}


def limited(cmd: list[str], limit_kb: int) -> dict[str, Any]:
    """`cmd` under `ulimit -v limit_kb` and /usr/bin/time -v: exit code, wall, peak RSS and its
    last stderr line (a refusal or a traceback's) instead of exiting on failure."""
    before = load()
    p = subprocess.run(["bash", "-c", f'ulimit -v {limit_kb}; exec /usr/bin/time -v "$@"', "-",
                        *cmd], capture_output=True, text=True, check=False)
    info = {k.strip(): v.strip() for k, v in (ln.split(": ", 1) for ln in p.stderr.splitlines()
                                      if ln.startswith("\t") and ": " in ln)}
    wall = info.get("Elapsed (wall clock) time (h:mm:ss or m:ss)", "0").split(":")
    said = [ln for ln in p.stderr.splitlines() if ln and not ln.startswith(("\t", "Command "))]
    return {"rc": p.returncode, "load": before,
            "wall": sum(float(x) * 60 ** i for i, x in enumerate(reversed(wall))),
            "rss_gb": int(info.get("Maximum resident set size (kbytes)", 0)) * 1024 / 1e9,
            "said": said[-1] if said else ""}


def same_shape_tq2_0() -> Path:
    """build/bench/bitnet-2b4t-shape-tq2_0.gguf, generated and packed once (the F32 source is
    9.6 GB and stays cached next to it)."""
    out = ROOT / f"{SAME_SHAPE}-tq2_0.gguf"
    if out.is_file():
        return out
    src = ensure("bitnet_b1_58-large", dims="bitnet-b1.58-2B-4T", name=SAME_SHAPE)
    subprocess.run([sys.executable, "-m", "bitconv", "pack", str(src), "--format", "tq2_0",
                    "-o", str(out), "-q"], check=True, stdout=subprocess.DEVNULL)
    return out


def llama_cpp(model: Path, reps: int) -> dict[str, Any]:
    pp = run([sys.executable, str(HERE / "peer_llama.py"), str(model), "pp", "--reps", str(reps)])
    tg = run([sys.executable, str(HERE / "peer_llama.py"), str(model), "tg", "--reps", str(reps)])
    return {"pp_tok_s": pp["tokens"] / statistics.median(pp["seconds"]),
            "tg_tok_s": tg["tokens"] / statistics.median(tg["seconds"]),
            "pp_s": pp["seconds"], "tg_s": tg["seconds"], "rss_gb": max(pp["rss_gb"], tg["rss_gb"]),
            "load": pp["load"]}


def bitconv(model: Path, mode: str, codes: str, reps: int) -> dict[str, Any]:
    r = run([sys.executable, str(HERE / "speed_bitconv.py"), str(model), "--mode", mode,
             "--codes", codes, "--reps", str(reps), "--profile"])
    return {"pp_tok_s": r["prefill_tokens"] / statistics.median(r["prefill_s"]),
            "tg_tok_s": r["decode_tokens"] / statistics.median(r["decode_s"]),
            "load_s": r["load_s"], "pp_s": r["prefill_s"], "tg_s": r["decode_s"],
            "rss_gb": r["rss_gb"], "load": r["load"], "codes": codes,
            "pp_parts": r["prefill_parts"], "tg_parts": r["decode_parts"],
            "tg_tokens": r["decode_tokens"], "decode_gb": r["decode_bytes"] / 1e9,
            "bandwidth_gb_s": r["bandwidth"] / 1e9,
            "tg_floor_tok_s": r["bandwidth"] / r["decode_bytes"]}


def big(reps: int) -> dict[str, Any]:
    """run and logits on the 8B I2_S file (packed once), then run under a 20 GB RLIMIT_AS."""
    src = ensure(BIG)
    gguf = ROOT / f"{BIG}-i2s.gguf"
    if not gguf.is_file():
        subprocess.run([sys.executable, "-m", "bitconv", "pack", str(src), "-o", str(gguf), "-q"],
                       check=True, stdout=subprocess.DEVNULL)
    cli = [sys.executable, "-m", "bitconv"]
    res: dict[str, Any] = {"file": str(gguf), "bytes": gguf.stat().st_size}
    res["run"] = run([*cli, "run", str(gguf), "-p", PROMPT, "-n", "8"])
    res["logits"] = run([*cli, "logits", str(gguf), "-p", PROMPT, "-o",
                         str(ROOT / "logits-8b.npy"), "--force"])
    res["run_rlimit_20gb"] = limited([*cli, "run", str(gguf), "-p", PROMPT, "-n", "8"],
                                     20_000_000)
    res["verify"] = verify_one(src, gguf, reps)
    return res


def parameters(gguf: Path) -> int:
    return sum(math.prod(t.shape) for t in read_gguf(gguf).tensors)


def verify_one(src: Path, gguf: Path, reps: int) -> dict[str, Any]:
    """verify of `gguf` against `src` (the verify_timed.py pass), median of reps, with the
    parameter count from its header."""
    params = parameters(gguf)
    runs = [run([sys.executable, str(HERE / "verify_timed.py"), str(gguf), str(src)])
            for _ in range(reps)]
    wall = statistics.median(r["wall"] for r in runs)
    return {"params": params, "wall_s": wall, "ns_per_param": wall / params * 1e9,
            "rss_gb": max(r["rss_gb"] for r in runs), "ok": all(r["ok"] for r in runs),
            "load": runs[0]["load"], "walls": [r["wall"] for r in runs]}


def verify(reps: int) -> dict[str, Any]:
    src = ensure("bitnet-b1.58-2B-4T")
    gguf = ROOT / "bitnet-b1.58-2B-4T-i2s.gguf"
    packs = [run([sys.executable, "-m", "bitconv", "pack", str(src), "-o", str(gguf), "--force",
                  "-q"]) for _ in range(reps)]
    runs = [run([sys.executable, str(HERE / "verify_timed.py"), str(gguf), str(src)])
            for _ in range(reps)]
    if not all(r["ok"] for r in runs):
        sys.exit(f"verify failed: {runs}")
    med = lambda key, rs=runs: statistics.median(r[key] for r in rs)
    pack, logits = med("wall", packs), med("logits_s")
    params = parameters(gguf)
    return {"file": str(gguf), "pack_wall_s": pack, "params": params, "load": runs[0]["load"],
            "ns_per_param": med("wall") / params * 1e9, "wall_s": med("wall"), "cpu_s": med("cpu"),
            "rss_gb": max(r["rss_gb"] for r in runs), "logits_pass_s": logits,
            "weights_part_s": med("wall") - logits,
            "budget_s": GOALS["verify_x_pack"] * pack + logits,
            "walls": [r["wall"] for r in runs], "pack_walls": [p["wall"] for p in packs]}


KINDS = ("attn_matmul", "ffn_matmul", "lm_head", "norms", "rope", "other")


def report(res: dict[str, Any]) -> str:
    return "\n".join([*speed_report(res), *memory_report(res)])


def speed_report(res: dict[str, Any]) -> list[str]:
    if "llama.cpp" not in res:
        return []
    peer = res["llama.cpp"]
    row = "{:<30} {:>7} {:>12} {:>9} {:>7} {:>9} {:>9} {:>6} {:>22}".format
    lines = [(f"speed on {res['same_shape_file']} (2B4T dims, 1bitLLM arch, TQ2_0), "
              f"2 threads, median of {res['reps']}"),
             row("engine", "load s", "pp128 tok/s", "tg tok/s", "RSS GB", "pp ratio",
                 "tg ratio", "load", "tg floor¹ (tg/floor)"),
             row("llama.cpp (llama-cpp-python)", "-", f"{peer['pp_tok_s']:.1f}",
                 f"{peer['tg_tok_s']:.2f}", f"{peer['rss_gb']:.2f}", "", "",
                 f"{peer['load']:.1f}", "")]
    for name, r in res["bitconv"].items():
        lines.append(row(f"bitconv {name}", f"{r['load_s']:.1f}", f"{r['pp_tok_s']:.1f}",
                         f"{r['tg_tok_s']:.2f}", f"{r['rss_gb']:.2f}", f"{r['pp_ratio']:.2f}x",
                         f"{r['tg_ratio']:.2f}x", f"{r['load']:.1f}",
                         f"{r['tg_floor_tok_s']:.2f} ({r['tg_tok_s'] / r['tg_floor_tok_s']:.2f}x)"))
    lines.append(row("goal", "", "", "", "", f">= {GOALS['pp']:.2f}x", f">= {GOALS['tg']:.2f}x",
                     "", ""))
    lines.append("¹ the weight bytes a decoded token reads as held / this machine's memory "
                 "bandwidth (a float64 matrix-vector product over 1 GiB): " + ", ".join(
                     f"{name.split(' (')[0]} {r['decode_gb']:.2f} GB / {r['bandwidth_gb_s']:.1f} "
                     "GB/s" for name, r in res["bitconv"].items()))
    lines += ["", "where the time goes (one profiled pass; ms per token; share of the pass)",
              "{:<30} {}".format("engine / pass", " ".join(f"{k:>16}" for k in KINDS))]
    for name, r in res["bitconv"].items():
        for pas, tokens in (("pp", 128), ("tg", r["tg_tokens"])):
            parts = r[f"{pas}_parts"]
            lines.append("{:<30} {}".format(f"{name} {pas}", " ".join(
                f"{parts[k] / tokens * 1e3:9.2f} {parts[k] / parts['total']:5.0%}"
                for k in KINDS)))
    return lines


def memory_report(res: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    b = res.get("big")
    if b:
        lines += ["", (f"{b['file']} ({b['bytes'] / 1e9:.2f} GB): goal peak RSS <= "
                       f"{GOALS['big_rss_gb']:.0f} GB")]
        for key in ("run", "logits", "run_rlimit_20gb"):
            r = b[key]
            state = "ok" if r.get("rc", 0) == 0 else f"exit {r['rc']}: {r['said']}"
            lines.append(f"  {key:<16} {r['wall']:7.1f} s  peak RSS {r['rss_gb']:5.2f} GB  "
                         f"load {r['load']:.1f}  {state}")
    v = res.get("verify")
    if v:
        lines += ["", f"verify of {v['file']} (full-size 2B4T I2_S, 32-token logits check)",
                  (f"pack {v['pack_wall_s']:.1f} s; verify {v['wall_s']:.1f} s wall, "
                   f"{v['cpu_s']:.1f} s CPU, peak RSS {v['rss_gb']:.2f} GB: logits pass "
                   f"{v['logits_pass_s']:.1f} s + the rest {v['weights_part_s']:.1f} s "
                   f"({v['weights_part_s'] / v['pack_wall_s']:.1f}x pack); goal "
                   f"<= {GOALS['verify_x_pack']:.0f}x pack + logits pass = {v['budget_s']:.1f} s"),
                  f"  {v['ns_per_param']:.1f} ns per parameter ({v['params'] / 1e9:.2f} B)"]
    if b and v:
        bv = b["verify"]
        lines.append(f"verify of the 8B file: {bv['wall_s']:.1f} s, {bv['ns_per_param']:.1f} ns "
                     f"per parameter ({bv['params'] / 1e9:.2f} B), "
                     f"{bv['ns_per_param'] / v['ns_per_param']:.2f}x 2B4T's; goal <= "
                     f"{GOALS['verify_per_param_x']:.0f}x")
    return lines


def speed(res: dict[str, Any], tq: Path, a: argparse.Namespace) -> None:
    """llama.cpp and bitconv's rows on the same TQ2_0 file (and the 2B4T I2_S file), into res."""
    res["llama.cpp"] = llama_cpp(tq, a.reps)
    models = {f"{m} {c} (TQ2_0)": (tq, m, c) for m in a.modes for c in a.codes
              if c != "f64x3" or m in INTEGER_MODES}
    if not a.no_i2s:
        i2s = ROOT / "bitnet-b1.58-2B-4T-i2s.gguf"
        if not i2s.is_file():
            src = ensure("bitnet-b1.58-2B-4T")
            subprocess.run([sys.executable, "-m", "bitconv", "pack", str(src), "-o", str(i2s),
                            "-q"], check=True, stdout=subprocess.DEVNULL)
        models[f"exact {a.codes[0]} (2B4T I2_S)"] = (i2s, "exact", a.codes[0])
    res["bitconv"] = {}
    for name, (model, mode, codes) in models.items():
        r = bitconv(model, mode, codes, a.reps)
        r["pp_ratio"] = r["pp_tok_s"] / res["llama.cpp"]["pp_tok_s"]
        r["tg_ratio"] = r["tg_tok_s"] / res["llama.cpp"]["tg_tok_s"]
        res["bitconv"][name] = r
        print(f"  {name}: pp {r['pp_tok_s']:.1f} tok/s, tg {r['tg_tok_s']:.2f} tok/s",
              file=sys.stderr, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--modes", nargs="+", default=["exact", "llama.cpp"],
                    help="bitconv modes on the TQ2_0 file")
    ap.add_argument("--codes", nargs="+", default=["f64x3", "f32", "i8"],
                    help="weight representations (runtime/memory.py) for each mode that runs "
                         "on them (f64x3: exact and bitnet.cpp)")
    ap.add_argument("--no-i2s", action="store_true", help="skip exact mode on the 2B4T I2_S file")
    ap.add_argument("--no-verify", action="store_true")
    ap.add_argument("--no-big", action="store_true", help="skip the 8B run/logits/verify")
    ap.add_argument("--no-speed", action="store_true", help="skip the speed table")
    a = ap.parse_args()
    ROOT.mkdir(parents=True, exist_ok=True)
    tq = same_shape_tq2_0()
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    res: dict[str, Any] = {"machine": f"{os.cpu_count()} vCPUs, {ram:.0f} GiB", "reps": a.reps,
                           "same_shape_file": str(tq), "started": stamp}
    if not a.no_speed:
        speed(res, tq, a)
    if not a.no_big:
        res["big"] = big(a.reps)
    if not a.no_verify:
        res["verify"] = verify(a.reps)
    print(report(res))
    (ROOT / f"runtime-{stamp}.json").write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
