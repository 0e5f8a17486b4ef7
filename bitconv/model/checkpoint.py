"""A Hugging Face checkpoint directory -> Checkpoint (config + lazy tensor refs).

Reads config.json and the safetensors headers only; tensor data stays on disk until a later
stage maps it. Handles one `model.safetensors`, or shards listed in
`model.safetensors.index.json` ({"metadata": {...}, "weight_map": {tensor: file}}).
"""
from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bitconv.containers.safetensors import TensorRef, read_header
from bitconv.errors import InputError

INDEX = "model.safetensors.index.json"
# `bitconv pull` records where a snapshot came from here (stages/snapshot.py writes it); a dotfile,
# so no glob for model files sees it
MANIFEST = ".bitconv-pull.json"


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint directory: parsed config.json and every tensor's location."""

    path: Path
    config: Mapping[str, Any]
    tensors: Mapping[str, TensorRef]
    files: tuple[str, ...]  # safetensors files, in index order

    def ref(self, name: str) -> TensorRef:
        if name not in self.tensors:
            raise InputError(f"{self.path.name}: missing tensor {name!r}")
        return self.tensors[name]


def read_config(path: Path) -> dict[str, Any]:
    cfg = path / "config.json"
    if not cfg.exists() and not cfg.is_symlink():  # anything else fails to open in one line
        raise InputError(f"{path}: no config.json (is this a Hugging Face checkpoint directory?)")
    try:
        config = json.loads(cfg.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise InputError(f"{cfg}: malformed JSON ({e.msg} at line {e.lineno})") from None
    except UnicodeDecodeError:
        raise InputError(f"{cfg}: not UTF-8 text") from None
    if not isinstance(config, dict):
        raise InputError(f"{cfg}: expected a JSON object")
    _check_types(config, cfg)
    return config


# Every config.json field bitconv reads, with the JSON type it must have (`field` reads them,
# `read_config` checks them all up front, so a foreign or hand-edited config fails with one line
# naming the field, never a traceback deep in a later stage). Dotted keys are inside an object.
# NULLABLE: fields transformers itself treats `null` as "absent, use the default" for; a null
# anywhere else is a wrong type. Integers go into GGUF UINT32 keys, numbers into FLOAT32 ones.
_F32_MAX = 3.4028234663852886e38
_KINDS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "int": ("a positive integer below 2^31", lambda v: type(v) is int and 0 < v < 2**31),
    "num": ("a positive float32 number",
            lambda v: type(v) in (int, float) and 0 < v <= _F32_MAX),  # NaN fails both
    "str": ("a string", lambda v: isinstance(v, str)),
    "object": ("an object", lambda v: isinstance(v, dict)),
    "names": ("a list of class names",
              lambda v: isinstance(v, list) and all(isinstance(a, str) for a in v)),
}
FIELDS: dict[str, str] = {
    "architectures": "names", "model_type": "str", "hidden_act": "str",
    "hidden_size": "int", "intermediate_size": "int", "num_hidden_layers": "int",
    "num_attention_heads": "int", "num_key_value_heads": "int", "head_dim": "int",
    "vocab_size": "int", "max_position_embeddings": "int",
    "rms_norm_eps": "num", "rope_theta": "num",
    "rope_scaling": "object", "rope_scaling.rope_type": "str", "rope_scaling.type": "str",
    "rope_scaling.factor": "num",
    "rope_parameters": "object", "rope_parameters.rope_type": "str",
    "rope_parameters.rope_theta": "num",
    "quantization_config": "object", "quantization_config.quant_method": "str",
    "quantization_config.linear_class": "str", "quantization_config.quantization_mode": "str",
}
NULLABLE = frozenset({"num_key_value_heads", "head_dim", "rope_scaling", "rope_parameters",
                      "quantization_config"})
_MISSING = object()


def field(config: Mapping[str, Any], key: str, default: Any = _MISSING) -> Any:
    """The value of config.json field `key` (dotted for nested), checked against its type in
    FIELDS. Absent, or null where NULLABLE allows it: `default`, or InputError naming the key
    when no default is given. The one accessor for config values.

    Example:
        >>> field({"hidden_size": 2560}, "hidden_size")
        2560
    """
    value: Any = config
    for part in key.split("."):
        value = value.get(part, _MISSING) if isinstance(value, Mapping) else _MISSING
    if value is _MISSING or (value is None and key in NULLABLE):
        if default is _MISSING:
            raise InputError(f"config.json: missing {key!r}")
        return default
    what, ok = _KINDS[FIELDS[key]]
    if not ok(value):
        raise InputError(f"config.json: {key} must be {what}, got {_json(value)}")
    return value


def _json(v: Any) -> str:
    text = json.dumps(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_types(c: dict[str, Any], cfg: Path) -> None:
    """Every field in FIELDS that is present must have its type (nested ones too)."""
    for key in FIELDS:
        try:
            field(c, key, None)
        except InputError as e:
            raise InputError(f"{cfg}: {str(e).removeprefix('config.json: ')}") from None


def _weight_files(path: Path) -> tuple[list[str], dict[str, str] | None]:
    """The safetensors files of the checkpoint and, if sharded, the index's weight map."""
    index = path / INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            files = sorted(set(weight_map.values()))
            if not all(isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()):
                raise TypeError
        except (ValueError, KeyError, TypeError, AttributeError):
            raise InputError(f"{index}: malformed index (expected a weight_map)") from None
        bad = [f for f in files if "/" in f or "\\" in f or f in ("", ".", "..")]
        if bad:
            raise InputError(f"{index}: shard name {bad[0]!r} points outside the checkpoint")
        return files, weight_map
    # listdir, not glob: glob answers [] for a directory it may not read
    files = sorted(n for n in os.listdir(path) if n.endswith(".safetensors"))
    if not files:
        raise InputError(f"{path}: no *.safetensors weights")
    return files, None


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read config.json and the safetensors headers of a checkpoint directory.

    Example:
        >>> ck = load_checkpoint("tests/data/bitnet-b1.58-2B-4T")
        >>> ck.tensors["model.norm.weight"].shape
    """
    path = Path(path)
    if not stat.S_ISDIR(path.stat().st_mode):  # a missing path, a loop: OSError, one CLI line
        raise InputError(f"{path}: not a directory")
    config = read_config(path)
    files, weight_map = _weight_files(path)
    tensors: dict[str, TensorRef] = {}
    for name in files:
        if weight_map is not None and not (path / name).exists():
            raise InputError(f"{path}: shard {name} listed in {INDEX} is missing")
        for tname, ref in read_header(path / name).items():
            if tname in tensors:
                raise InputError(f"{path}: tensor {tname!r} appears in two files")
            tensors[tname] = ref
    for tname, fname in (weight_map or {}).items():
        if tname not in tensors or tensors[tname].path.name != fname:
            raise InputError(f"{path}: {INDEX} lists {tname!r} in {fname}, which lacks it")
    return Checkpoint(path, config, tensors, tuple(files))


def checkpoint_name(path: Path) -> str:
    """A checkpoint's name: its repo's, if it was pulled (cache dirs are named by commit sha)."""
    try:
        repo = json.loads((path / MANIFEST).read_text(encoding="utf-8"))["repo"]
    except (OSError, ValueError, KeyError, TypeError):
        repo = None
    return repo.split("/")[-1] if isinstance(repo, str) else path.resolve().name
