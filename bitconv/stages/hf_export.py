"""`--format hf`: a checkpoint directory that transformers loads (`from_pretrained(dir)`), with
HF-packed uint8 linears + `weight_scale` and a `quantization_config` that says how to read them.

Layout of the output directory (spec: formats/hf.md §5):
    config.json         the source's, with quantization_config {quant_method: bitnet, linear_class,
                        quantization_mode: offline} matching the weight_scale convention written;
                        1bitLLM becomes transformers' own BitNetForCausalLM with hidden_act silu
    model.safetensors   HF tensor names (no q/k permutation: that is GGUF-only); linears packed by
                        formats/hf.py; embeddings and norms copied byte for byte from the source
    tokenizer files, generation_config.json and licence files, copied

Streamed tensor by tensor: a packed weight is assembled in memory (out*in/4 bytes), dense
tensors are copied in row chunks through the source mmap. The directory is written as
`<out>.incomplete/`, fsynced and renamed; an existing output is only replaced with `force`.
"""
from __future__ import annotations

import json
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from bitconv.containers.atomic import atomic_dir, check_dir_writable, default_output
from bitconv.containers.safetensors import MappedFiles, nbytes, write_safetensors
from bitconv.errors import PackError
from bitconv.formats import hf
from bitconv.formats.hf import ScaleRule
from bitconv.model import ternary
from bitconv.model.checkpoint import Checkpoint, checkpoint_name, load_checkpoint
from bitconv.model.families import detect
from bitconv.model.families.base import (
    HF_SUB_NORMS,
    REMOTE_CODE_KEYS,
    Family,
    PlannedTensor,
    plan,
)
from bitconv.model.tensors import check_scales, check_shapes, row_chunks, ternary_codes
from bitconv.stages.progress import byte_bar
from bitconv.types import PackResult

COPIED = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
          "added_tokens.json", "vocab.json", "merges.txt", "generation_config.json",
          "chat_template.jinja", "chat_template.json", "LICENSE", "LICENSE.txt", "NOTICE")
WEIGHTS = "model.safetensors"


@dataclass(frozen=True)
class _Entry:
    """One tensor of model.safetensors and where its bytes come from."""

    name: str  # HF name in the export
    dtype: str  # safetensors dtype
    shape: tuple[int, ...]
    kind: str  # "dense" (copied) | "packed" | "scale" (computed) | "scale-copy"
    src: PlannedTensor

    @property
    def nbytes(self) -> int:
        return nbytes(self.dtype, self.shape)


def export(src: str | Path, *, out: str | Path | None = None, force: bool = False,
           scale_rule: ScaleRule | None = None, target_rule: ScaleRule | None = None,
           progress: bool = False) -> PackResult:
    """Write checkpoint `src` as a transformers-loadable HF-packed checkpoint directory.

    Args:
        src: checkpoint directory of any family bitconv knows.
        out: output directory; default `<dir name>-hf` in the current directory.
        force: replace an existing output directory (one holding a config.json).
        scale_rule: how the source's weight_scale is read (default: its linear_class).
        target_rule: convention to write (its linear_class in config.json); default the
            source's own for HF-packed sources (the one `scale_rule` reads by; weight_scale then
            copied byte for byte), "multiply" (autobitlinear, the float32 multiplier) for latent
            ones. "divide" (bitlinear) needs each multiplier to have an exact float32 inverse.
    Example:
        >>> export("tests/data/Llama3-8B-1.58-100B-tokens").path
        PosixPath('Llama3-8B-1.58-100B-tokens-hf')
    """
    src = Path(src)
    out = Path(out) if out is not None else default_output(checkpoint_name(src), "hf")
    check_dir_writable(out, force, src)
    ck = load_checkpoint(src)
    fam = detect(ck.config)
    items = plan(ck, fam)
    check_shapes(hf.check_shape, items)
    rule = scale_rule or ternary.scale_rule(dict(ck.config))
    check_scales(ck, items, rule, scale_rule is None)
    # default: the convention the source's weight_scale is read by, so it is copied as it is
    packed_src = any(t.scale_source for t in items)
    target = target_rule or ("divide" if packed_src and rule == "divide" else "multiply")
    entries = _entries(ck, fam, items, rule, target)
    config = export_config(ck.config, fam, target, "lm_head.weight" in ck.tensors)
    total = sum(e.nbytes for e in entries)
    with atomic_dir(out, force) as tmp, MappedFiles() as mf, \
            byte_bar(total, "export hf", progress) as bar:
        write_json(tmp / "config.json", config)
        for name in COPIED:
            if (src / name).is_file():
                _copy_aux(src / name, tmp / name)
        multipliers: dict[str, np.float32] = {}

        def chunks(e: _Entry) -> Iterator[npt.NDArray[Any]]:
            bar.set_postfix_str(e.name, refresh=False)
            yield from _tensor_chunks(ck, mf, e, rule, scale_rule is None, target, multipliers)
            bar.update(e.nbytes)

        write_safetensors(tmp / WEIGHTS, entries, chunks)
    return PackResult(out, "hf", fam.name, len(entries), total)


def _export_name(source: str, fam: Family) -> str:
    """HF name in the export: 1bitLLM's sub-norms take transformers' BitNet names."""
    for theirs, ours in zip(fam.sub_norms or (), HF_SUB_NORMS):
        source = source.replace(f".{theirs}.", f".{ours}.")
    return source


def _entries(ck: Checkpoint, fam: Family, items: list[PlannedTensor], rule: ScaleRule,
             target: ScaleRule) -> list[_Entry]:
    """Every exported tensor, sorted by name (a weight comes right before its weight_scale)."""
    out = []
    for t in items:
        name = _export_name(t.source, fam)
        if t.kind != "ternary":
            ref = ck.ref(t.source)
            out.append(_Entry(name, ref.dtype, ref.shape, "dense", t))
            continue
        t = replace(t, heads=0)  # HF rows stay in rotate_half order
        out.append(_Entry(name, "U8", hf.packed_shape((t.shape[0], t.shape[1])), "packed", t))
        scale = hf.scale_name(name)
        # the stored weight_scale already means what the target convention says: keep its bytes
        if t.scale_source and target == rule:
            ref = ck.ref(t.scale_source)
            out.append(_Entry(scale, ref.dtype, ref.shape, "scale-copy", t))
        else:
            out.append(_Entry(scale, "F32", (1,), "scale", t))
    return sorted(out, key=lambda e: e.name)


def _tensor_chunks(ck: Checkpoint, mf: MappedFiles, e: _Entry, rule: ScaleRule,
                   checked: bool, target: ScaleRule,
                   multipliers: dict[str, np.float32]) -> Iterator[npt.NDArray[Any]]:
    t = e.src
    if e.kind == "packed":
        m, codes = ternary_codes(ck, mf, t, rule, checked)
        packed = np.zeros(e.shape, dtype=np.uint8)
        row = 0
        for c in codes:
            hf.pack_chunk_into(packed, row, c)
            row += c.shape[0]
        mf.release(ck.ref(t.source))
        multipliers[e.name] = m
        yield packed
    elif e.kind == "scale":
        m = multipliers[e.name[: -len("_scale")]]
        try:
            yield np.array([hf.weight_scale(m, target)], dtype="<f4")
        except PackError as err:
            raise PackError(f"{t.source}: {err}") from None
    else:  # dense or scale-copy: the source's bytes as they are
        ref = ck.ref(t.scale_source if e.kind == "scale-copy" and t.scale_source else t.source)
        if len(ref.shape) < 2:
            yield mf.view(ref)
            return
        for rs in row_chunks(ref.shape[0], int(np.prod(ref.shape[1:]))):
            yield mf.view(ref, rs)
            mf.release(ref, rs)


def export_config(config: Mapping[str, Any], fam: Family, rule: ScaleRule,
                  lm_head: bool) -> dict[str, Any]:
    """config.json of the export: the source's, made explicit where transformers' defaults
    differ from what bitconv computes, with a quantization_config whose linear_class says
    `rule`."""
    c = dict(config)
    if fam.sub_norms:  # a BitNet graph: transformers' BitNetForCausalLM, ReLU² or SiLU
        for k in REMOTE_CODE_KEYS:
            c.pop(k, None)
        cls, model_type, act = fam.hf_class
        c.update(architectures=[cls], model_type=model_type, hidden_act=act)
    heads = c["num_attention_heads"]
    # BitNetConfig defaults kv heads to 5 and untied embeddings: say what the weights mean
    c.update(num_key_value_heads=c.get("num_key_value_heads") or heads, tie_word_embeddings=not lm_head)
    qc = dict(config.get("quantization_config") or {})
    qc.update(quant_method="bitnet", linear_class=hf.LINEAR_CLASS[rule],
              quantization_mode="offline")
    c["quantization_config"] = qc
    return c


def write_json(path: Path, obj: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _copy_aux(src: Path, dst: Path) -> None:
    """Copy a tokenizer/licence file; 1bitLLM's remote BitnetTokenizer (a LlamaTokenizer copy)
    is named as the built-in class so loading needs no remote code."""
    if src.name == "tokenizer_config.json":
        tc = json.loads(src.read_text(encoding="utf-8"))
        if tc.get("tokenizer_class") == "BitnetTokenizer":
            tc.pop("auto_map", None)
            tc["tokenizer_class"] = "LlamaTokenizer"
            write_json(dst, tc)
            return
    shutil.copyfile(src, dst)
