"""GGUF metadata of a checkpoint: general.*, then {arch}.* hyperparameters, then tokenizer.*."""
from __future__ import annotations

from bitconv.formats.base import Codec
from bitconv.gguf_values import GGUFValueType as T
from bitconv.model.checkpoint import Checkpoint, checkpoint_name
from bitconv.model.families.base import Family, hparam_kvs, plan
from bitconv.model.tokenizer.from_files import pre_tokenizer, tokenizer_kvs
from bitconv.types import KV


def metadata(ck: Checkpoint, fam: Family, codec: Codec) -> list[KV]:
    """general.*, then {arch}.* hyperparameters, then tokenizer.* (deterministic order)."""
    kvs = [KV("general.architecture", T.STRING, fam.arch),
           KV("general.name", T.STRING, checkpoint_name(ck.path)),
           KV("general.file_type", T.UINT32, codec.spec.file_type),
           KV("general.quantization_version", T.UINT32, 2)]
    kvs += hparam_kvs(ck.config, fam.arch) + fam.extra_kvs(ck.config, fam.arch)
    weights = [(t.gguf_name, t.shape) for t in plan(ck, fam) if t.kind == "ternary"]
    kvs += codec.kvs(fam.arch, weights)  # layout and TL tiling keys
    return kvs + tokenizer_kvs(ck.path, ck.config["vocab_size"], pre_tokenizer(ck.path))
