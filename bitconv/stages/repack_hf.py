"""repack's GGUF -> `hf` writer: the transformers checkpoint directory that `pack --format hf`
would write, rebuilt from a packed GGUF alone (formats/hf.md §5, formats/README.md §Repack).

- config.json: the arch's transformers class, its family's `hf_class` (`bitnet` ->
  BitNetForCausalLM with SiLU, `bitnet-b1.58` -> with ReLU², `llama` -> LlamaForCausalLM) and the
  `{arch}.*` hyperparameters read back (the inverse of families/base.py `hparam_kvs`), through
  hf_export's `export_config`; multipliers as float32 autobitlinear weight_scales (always exact);
- tokenizer files from the `tokenizer.*` keys (model/tokenizer/to_files.py);
- model.safetensors: every tensor under its HF name, sorted; ternary weights decoded by the
  file's codec and HF-packed (q/k rows of arch `llama` put back in rotate_half order); dense
  tensors as F32 (F16/BF16 widened exactly: transformers then runs the whole model in float32,
  as the GGUF runtimes compute, and `pack` rounds them back to the same F16 bits).

`pack` of the directory gives the GGUF back, with general.name taken from the directory's name.
Before the directory is renamed into place, its metadata is computed as `pack` would and compared
with the file's: the keys it would not give back are returned (`RepackResult.changed`).
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from bitconv.containers.atomic import atomic_dir, check_dir_writable
from bitconv.containers.gguf_reader import GGUFTensor, kv_records, tensor_bytes
from bitconv.containers.gguf_writer import BF16, F16, F32
from bitconv.containers.packed_gguf import PackedGGUF
from bitconv.containers.safetensors import to_float32, write_safetensors
from bitconv.errors import InputError, PackError
from bitconv.formats import hf
from bitconv.formats.registry import get_codec
from bitconv.model.checkpoint import load_checkpoint
from bitconv.model.families import FAMILIES, detect, of_arch
from bitconv.model.families.base import hf_name
from bitconv.model.metadata import metadata
from bitconv.model.tensors import CHUNK_ELEMS as ROW_ELEMS
from bitconv.model.tokenizer.to_files import tokenizer_files
from bitconv.stages.hf_export import (
    WEIGHTS,
    export_config,
    write_json,
)
from bitconv.stages.progress import byte_bar
from bitconv.types import KV, RepackResult

# ggml type -> safetensors dtype name, numpy storage
DTYPES: dict[int, tuple[str, str]] = {F32: ("F32", "<f4"), F16: ("F16", "<f2"),
                                      BF16: ("BF16", "<u2")}


@dataclass(frozen=True)
class _Entry:
    name: str  # HF name
    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    src: GGUFTensor
    scale: bool = False  # the weight_scale of a packed weight (which comes right before it)


def hf_config(kvs: Mapping[str, Any], lm_head: bool) -> dict[str, Any]:
    """config.json for a GGUF of arch `bitnet`, `bitnet-b1.58` or `llama` (without token ids)."""
    arch = str(kvs["general.architecture"])
    fam = of_arch(arch)
    if fam is None:
        archs = dict.fromkeys(f.arch for f in FAMILIES.values())
        raise InputError(f"general.architecture {arch!r} has no transformers class bitconv "
                         f"writes ({', '.join(archs)})")
    try:
        def g(key: str) -> Any:
            return kvs[f"{arch}.{key}"]
        heads = int(g("attention.head_count"))
        cls, model_type, act = fam.hf_class
        c = {"architectures": [cls], "model_type": model_type, "hidden_act": act,
             "hidden_size": int(g("embedding_length")),
             "intermediate_size": int(g("feed_forward_length")),
             "num_hidden_layers": int(g("block_count")), "num_attention_heads": heads,
             "num_key_value_heads": int(kvs.get(f"{arch}.attention.head_count_kv", heads)),
             "vocab_size": int(kvs.get(f"{arch}.vocab_size",
                                       len(kvs.get("tokenizer.ggml.tokens", [])))),
             "max_position_embeddings": int(g("context_length")),
             "rms_norm_eps": _f32(g("attention.layer_norm_rms_epsilon")),
             "rope_theta": _f32(kvs.get(f"{arch}.rope.freq_base", 10000.0)),
             "attention_bias": False, "torch_dtype": "float32"}
    except KeyError as e:
        raise InputError(f"metadata lacks {e.args[0]!r}") from None
    if f"{arch}.attention.key_length" in kvs:
        c["head_dim"] = int(kvs[f"{arch}.attention.key_length"])
    return export_config(c, fam, "multiply", lm_head)


def _f32(v: float) -> float:
    """The shortest decimal that is the same float32 (GGUF floats are float32): 1e-05."""
    return float(str(np.float32(v)))


def export_hf(source: PackedGGUF, out: Path, *, force: bool = False,
              progress: bool = False) -> RepackResult:
    """Write packed GGUF `source` as an `hf` checkpoint directory `out` (see the module doc)."""
    check_dir_writable(out, force)
    kvs = source.gf.kvs
    names = {t.name for t in source.tensors}
    config = hf_config(kvs, "output.weight" in names)
    tok = tokenizer_files(kvs, config["max_position_embeddings"])
    config.update(tok.config)
    entries = _entries(source)
    heads = _permuted_heads(kvs)
    total = sum(e.nbytes for e in entries)
    with atomic_dir(out, force) as tmp, \
            byte_bar(total, "repack hf", progress) as bar:
        write_json(tmp / "config.json", config)
        for fname, data in tok.files.items():
            (tmp / fname).write_bytes(data)
        scales: dict[str, npt.NDArray[np.float32]] = {}

        def chunks(e: _Entry) -> Iterator[npt.NDArray[Any]]:
            bar.set_postfix_str(e.name, refresh=False)
            if e.scale:
                yield scales.pop(e.src.name)
            elif e.src.name in source.codecs:
                codes, m = source.decode(e.src)
                n = heads.get(e.src.name.split(".")[-2], 0)
                scales[e.src.name] = np.array([hf.weight_scale(m, "multiply")], "<f4")
                yield hf.pack(_unpermute(codes, n) if n else codes)
            else:
                yield from _widened(source, e.src)
            bar.update(e.nbytes)

        write_safetensors(tmp / WEIGHTS, entries, chunks)
        changed = _changed(tmp, source)
    return RepackResult(out, source.format, "hf", len(entries), total, changed=changed)


def _entries(source: PackedGGUF) -> list[_Entry]:
    """Every tensor of model.safetensors, sorted by name (a weight right before its scale);
    PackError for a weight hf cannot hold, InputError for a dense type it should not."""
    out = []
    for t in source.tensors:
        name = hf_name(t.name)
        if t.name in source.codecs:
            try:
                hf.check_shape(t.shape)
            except PackError as e:
                raise PackError(f"{t.name}: {e}") from None
            rows, cols = hf.packed_shape((t.shape[0], t.shape[1]))
            out += [_Entry(name, "U8", (rows, cols), rows * cols, t),
                    _Entry(hf.scale_name(name), "F32", (1,), 4, t, scale=True)]
        elif t.ggml_type in DTYPES:
            out.append(_Entry(name, "F32", t.shape, 4 * int(np.prod(t.shape)), t))
        else:
            raise InputError(f"{source.gf.path}: tensor {t.name!r} is not F32, F16 or BF16; "
                             "an hf checkpoint cannot hold it")
    return sorted(out, key=lambda e: e.name)


def _widened(source: PackedGGUF, t: GGUFTensor) -> Iterator[npt.NDArray[np.float32]]:
    dtype, storage = DTYPES[t.ggml_type]
    data = tensor_bytes(source.gf, t).view(storage)
    for a in range(0, data.size, ROW_ELEMS):
        yield to_float32(data[a:a + ROW_ELEMS], dtype)


def _permuted_heads(kvs: Mapping[str, Any]) -> dict[str, int]:
    """GGUF `llama` stores q/k rows permuted for its interleaved RoPE (tensors.permute_heads)."""
    arch = kvs["general.architecture"]
    fam = of_arch(arch)
    if fam is None or not fam.permute_qk:
        return {}
    heads = int(kvs[f"{arch}.attention.head_count"])
    return {"attn_q": heads, "attn_k": int(kvs.get(f"{arch}.attention.head_count_kv", heads))}


def _unpermute(rows: npt.NDArray[np.int8], heads: int) -> npt.NDArray[np.int8]:
    """The inverse of pack.permute_heads: rows (h, d/2, 2) of each head become (h, 2, d/2)."""
    d = rows.shape[0] // heads
    return rows.reshape(heads, d // 2, 2, -1).swapaxes(1, 2).reshape(rows.shape)


def _changed(tmp: Path, source: PackedGGUF) -> tuple[str, ...]:
    """The source's metadata keys that packing `tmp` would not give back as they are (and keys
    it would add); general.name is the directory's, so it is left out."""
    ck = load_checkpoint(tmp)
    try:
        got = {kv.key: kv for kv in metadata(ck, detect(ck.config),
                                                 get_codec(source.format or "i2s"))}
    except InputError as e:
        raise InputError(f"the rebuilt checkpoint cannot be packed again: {e}") from None
    want = {kv.key: kv for kv in kv_records(source.gf)}
    keys = [k for k in want if k not in got or not _same(got[k], want[k])]
    keys += [k for k in got if k not in want]
    return tuple(k for k in keys if k != "general.name")


def _same(a: KV, b: KV) -> bool:
    if (a.vtype, a.subtype) != (b.vtype, b.subtype):
        return False
    if isinstance(a.value, (list, np.ndarray)) or isinstance(b.value, (list, np.ndarray)):
        x, y = np.asarray(a.value), np.asarray(b.value)
        return x.shape == y.shape and bool(np.all(x == y))
    if isinstance(a.value, float) or isinstance(b.value, float):
        return bool(np.float32(a.value) == np.float32(b.value))
    return bool(a.value == b.value)
