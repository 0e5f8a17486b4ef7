"""Runtime benchmark at full size: bitconv's numpy runtime vs llama.cpp, and `verify`, in one run.

Speed (issue 8 part 3): llama.cpp (llama-cpp-python) and bitconv's runtime on THE SAME file. The
2B4T family's arch `bitnet-b1.58` does not run in llama.cpp, so "the same shape" is a synthetic
checkpoint in the 1bitLLM layout (arch `bitnet`: SiLU + sub-norms) at 2B4T's dimensions from
recipes/bitnet-b1.58-2B-4T.toml (hidden 2560, intermediate 6912, 30 layers, 20 heads, 5 KV
heads, vocab 128256; 2.41 B parameters), packed to lossless TQ2_0. pp = one prefill of 128 tokens
(logits of the last position only, as llama-cpp-python's `eval`); tg = 32 single-token decodes
from an empty context. llama.cpp runs each in a fresh process (peer_llama.py); bitconv runs one
fresh process per mode (speed_bitconv.py) whose load, every weight decoded to float32 and kept
(9.6 GB), is timed apart. bitconv's exact mode also runs on the real-arch 2B4T I2_S file.

Verify: `bitconv verify` of the full-size 2B4T I2_S file against its source, with a 32-token
logits check (verify_timed.py times that pass apart), next to `bitconv pack` of the same file,
measured in the same run: the goal is verify <= 2 x pack + the logits pass.

Every figure is the median of --reps runs; every process runs under /usr/bin/time -v (peak RSS
includes mapped file pages). Results: a table on stdout and build/bench/runtime.json.

    python bench/bench_runtime.py [--reps 3] [--modes exact llama.cpp] [--no-i2s] [--no-verify]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from bench_pack import ROOT, ensure, timed_output

HERE = Path(__file__).parent
SAME_SHAPE = "bitnet-2b4t-shape"  # 1bitLLM layout at 2B4T dimensions (perf-anchors.md §0)
GOALS = {"pp": 0.5, "tg": 0.2, "verify_x_pack": 2.0}


def run(cmd: list[str]) -> dict[str, Any]:
    """Run a helper under /usr/bin/time -v: its JSON line plus wall, CPU and peak RSS."""
    figures, stdout = timed_output(cmd)
    lines = stdout.strip().splitlines()
    return {**(json.loads(lines[-1]) if lines and lines[-1].startswith("{") else {}), **figures}


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
            "pp_s": pp["seconds"], "tg_s": tg["seconds"], "rss_gb": max(pp["rss_gb"], tg["rss_gb"])}


def bitconv(model: Path, mode: str, reps: int) -> dict[str, Any]:
    r = run([sys.executable, str(HERE / "speed_bitconv.py"), str(model), "--mode", mode,
             "--reps", str(reps)])
    return {"pp_tok_s": r["prefill_tokens"] / statistics.median(r["prefill_s"]),
            "tg_tok_s": r["decode_tokens"] / statistics.median(r["decode_s"]),
            "load_s": r["load_s"], "pp_s": r["prefill_s"], "tg_s": r["decode_s"],
            "rss_gb": r["rss_gb"]}


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
    return {"file": str(gguf), "pack_wall_s": pack, "wall_s": med("wall"), "cpu_s": med("cpu"),
            "rss_gb": max(r["rss_gb"] for r in runs), "logits_pass_s": logits,
            "weights_part_s": med("wall") - logits,
            "budget_s": GOALS["verify_x_pack"] * pack + logits,
            "walls": [r["wall"] for r in runs], "pack_walls": [p["wall"] for p in packs]}


def report(res: dict[str, Any]) -> str:
    peer = res["llama.cpp"]
    row = "{:<28} {:>7} {:>12} {:>9} {:>7} {:>14} {:>14}".format
    lines = [(f"speed on {res['same_shape_file']} (2B4T dims, 1bitLLM arch, TQ2_0), "
              f"2 threads, median of {res['reps']}"),
             row("engine", "load s", "pp128 tok/s", "tg tok/s", "RSS GB", "pp ours/llama",
                 "tg ours/llama"),
             row("llama.cpp (llama-cpp-python)", "-", f"{peer['pp_tok_s']:.1f}",
                 f"{peer['tg_tok_s']:.2f}", f"{peer['rss_gb']:.2f}", "", "")]
    for name, r in res["bitconv"].items():
        lines.append(row(f"bitconv {name}", f"{r['load_s']:.1f}", f"{r['pp_tok_s']:.1f}",
                         f"{r['tg_tok_s']:.2f}", f"{r['rss_gb']:.2f}", f"{r['pp_ratio']:.2f}x",
                         f"{r['tg_ratio']:.2f}x"))
    lines.append(row("goal", "", "", "", "", f">= {GOALS['pp']:.2f}x", f">= {GOALS['tg']:.2f}x"))
    v = res.get("verify")
    if v:
        lines += ["", f"verify of {v['file']} (full-size 2B4T I2_S, 32-token logits check)",
                  (f"pack {v['pack_wall_s']:.1f} s; verify {v['wall_s']:.1f} s wall, "
                   f"{v['cpu_s']:.1f} s CPU, peak RSS {v['rss_gb']:.2f} GB: logits pass "
                   f"{v['logits_pass_s']:.1f} s + the rest {v['weights_part_s']:.1f} s "
                   f"({v['weights_part_s'] / v['pack_wall_s']:.1f}x pack); goal "
                   f"<= {GOALS['verify_x_pack']:.0f}x pack + logits pass = {v['budget_s']:.1f} s")]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--modes", nargs="+", default=["exact", "llama.cpp"],
                    help="bitconv modes on the TQ2_0 file")
    ap.add_argument("--no-i2s", action="store_true", help="skip exact mode on the 2B4T I2_S file")
    ap.add_argument("--no-verify", action="store_true")
    a = ap.parse_args()
    ROOT.mkdir(parents=True, exist_ok=True)
    tq = same_shape_tq2_0()
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    res: dict[str, Any] = {"machine": f"{os.cpu_count()} vCPUs, {ram:.0f} GiB", "reps": a.reps,
                           "same_shape_file": str(tq)}
    res["llama.cpp"] = llama_cpp(tq, a.reps)
    models = {f"{m} (TQ2_0)": (tq, m) for m in a.modes}
    if not a.no_i2s:
        i2s = ROOT / "bitnet-b1.58-2B-4T-i2s.gguf"
        if not i2s.is_file():
            src = ensure("bitnet-b1.58-2B-4T")
            subprocess.run([sys.executable, "-m", "bitconv", "pack", str(src), "-o", str(i2s),
                            "-q"], check=True, stdout=subprocess.DEVNULL)
        models["exact (2B4T I2_S)"] = (i2s, "exact")
    res["bitconv"] = {}
    for name, (model, mode) in models.items():
        r = bitconv(model, mode, a.reps)
        r["pp_ratio"] = r["pp_tok_s"] / res["llama.cpp"]["pp_tok_s"]
        r["tg_ratio"] = r["tg_tok_s"] / res["llama.cpp"]["tg_tok_s"]
        res["bitconv"][name] = r
        print(f"  {name}: pp {r['pp_tok_s']:.1f} tok/s, tg {r['tg_tok_s']:.2f} tok/s",
              file=sys.stderr, flush=True)
    if not a.no_verify:
        res["verify"] = verify(a.reps)
    print(report(res))
    (ROOT / "runtime.json").write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
