"""Stage `load`: a Hugging Face checkpoint directory -> Checkpoint (config + lazy tensor refs).

Reads config.json and the safetensors headers only; tensor data stays on disk until a later
stage maps it. Handles one `model.safetensors`, or shards listed in
`model.safetensors.index.json` ({"metadata": {...}, "weight_map": {tensor: file}}).
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bitconv.errors import InputError
from bitconv.safetensors_io import TensorRef, read_header

INDEX = "model.safetensors.index.json"


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
    if not cfg.is_file():
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


_POSITIVE_INTS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "num_key_value_heads", "vocab_size", "max_position_embeddings", "head_dim")
_POSITIVE_FLOATS = ("rms_norm_eps", "rope_theta")


def _check_types(c: dict[str, Any], cfg: Path) -> None:
    """Types of the keys bitconv reads, so foreign JSON fails with a message, not a traceback."""
    for k in _POSITIVE_INTS:
        v = c.get(k)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v <= 0):
            raise InputError(f"{cfg}: {k} must be a positive integer, got {v!r}")
    for k in _POSITIVE_FLOATS:
        v = c.get(k)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0):
            raise InputError(f"{cfg}: {k} must be a positive number, got {v!r}")
    archs = c.get("architectures")
    if archs is not None and not (isinstance(archs, list) and all(isinstance(a, str) for a in archs)):
        raise InputError(f"{cfg}: architectures must be a list of class names, got {archs!r}")
    for k in ("quantization_config", "rope_parameters"):
        if c.get(k) is not None and not isinstance(c[k], dict):
            raise InputError(f"{cfg}: {k} must be an object, got {c[k]!r}")


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
    files = sorted(p.name for p in path.glob("*.safetensors"))
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
    if not path.is_dir():
        raise InputError(f"{path}: not a directory")
    config = read_config(path)
    files, weight_map = _weight_files(path)
    tensors: dict[str, TensorRef] = {}
    for name in files:
        if not (path / name).is_file():
            raise InputError(f"{path}: shard {name} listed in {INDEX} is missing")
        for tname, ref in read_header(path / name).items():
            if tname in tensors:
                raise InputError(f"{path}: tensor {tname!r} appears in two files")
            tensors[tname] = ref
    for tname, fname in (weight_map or {}).items():
        if tname not in tensors or tensors[tname].path.name != fname:
            raise InputError(f"{path}: {INDEX} lists {tname!r} in {fname}, which lacks it")
    return Checkpoint(path, config, tensors, tuple(files))
