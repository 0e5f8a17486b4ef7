"""Recipes: one declarative TOML file per real model, read by `bitconv release`.

    name     = "bitnet-b1.58-2B-4T"                 # the artifacts' stem
    repo     = "microsoft/bitnet-b1.58-2B-4T"       # Hugging Face repo id
    revision = "main"                               # branch or tag that `recipe lock` resolves
    commit   = "0123…"                              # 40-hex pinned sha; absent = not locked yet
    family   = "bitnet-b1.58"                       # a bitconv family name (bitconv.model.families)
    formats  = ["i2s", "tq2_0"]                     # what `release` packs
    note     = "…"                                  # optional free text

    [model]                                         # facts the pulled checkpoint must show
    hidden = 2560, intermediate = 6912, layers = 30, heads = 20, kv_heads = 5, vocab = 128256
    tied = true                                     # lm_head shares the embedding
    params = 2412820480                             # parameter count the shapes give

    [inputs]                                        # sha256 of input files, once known
    "model.safetensors" = "…"

Unknown keys are refused (a typo must not silently drop a setting). `release` checks every
declared fact against the pulled checkpoint before it packs anything (`check_facts`):
    family          the family detected from config.json (model/families `detect`)
    hidden .. vocab config.json's hidden_size, intermediate_size, num_hidden_layers,
                    num_attention_heads, num_key_value_heads (default: heads), vocab_size
    tied            config.json's tie_word_embeddings; absent or null: the family's default
                    (`Family.tied_output`, what bitconv packs: bitnet archs tie, llama does not)
    params          the parameter count of the checkpoint's tensors: every tensor pack reads
                    (families/base `plan`, which checks each stored shape against config.json),
                    packed uint8 weights at their logical out x in; weight_scale scalars and
                    rotary buffers are not parameters. Counted from the tensors, not from the
                    config dims (tests/test_recipes.py does that for the recipe itself), so a
                    present or missing lm_head counts as it is.
"""
from __future__ import annotations

import json
import math
import re
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bitconv.containers.atomic import atomic_output
from bitconv.errors import InputError
from bitconv.formats import FORMAT_NAMES
from bitconv.model.checkpoint import load_checkpoint
from bitconv.model.families import FAMILIES, detect
from bitconv.model.families.base import plan

_TOP = {"name", "repo", "revision", "commit", "family", "formats", "note", "model", "inputs"}
_MODEL = {"hidden": int, "intermediate": int, "layers": int, "heads": int, "kv_heads": int,
          "vocab": int, "tied": bool, "params": int}
_SHA1 = re.compile(r"[0-9a-f]{40}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_REPO = re.compile(r"[\w.-]+/[\w.-]+")


@dataclass(frozen=True)
class ModelFacts:
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    tied: bool
    params: int


@dataclass(frozen=True)
class Recipe:
    path: Path
    name: str
    repo: str
    revision: str
    commit: str | None
    family: str
    formats: tuple[str, ...]
    model: ModelFacts | None  # None: no verified facts yet (the note says why)
    inputs: dict[str, str] = field(default_factory=dict)
    note: str = ""


def load_recipe(path: str | Path) -> Recipe:
    """Parse and validate one recipe file; InputError naming the file and the key otherwise."""
    path = Path(path)
    try:  # an OSError (missing, a directory, unreadable) is the CLI's one line
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise InputError(f"{path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as e:
        raise InputError(f"{path}: not valid TOML ({e})") from None

    def bad(msg: str) -> InputError:
        return InputError(f"{path}: {msg}")

    unknown = sorted(set(raw) - _TOP)
    if unknown:
        raise bad(f"unknown key {unknown[0]!r}")
    for key in ("name", "repo", "revision", "family"):
        if not isinstance(raw.get(key), str) or not raw[key]:
            raise bad(f"{key!r} must be a non-empty string")
    if not _REPO.fullmatch(raw["repo"]):
        raise bad(f"repo {raw['repo']!r} is not of the form owner/name")
    commit = raw.get("commit")
    if commit is not None and not (isinstance(commit, str) and _SHA1.fullmatch(commit)):
        raise bad("commit must be a 40-character lowercase hex sha")
    if raw["family"] not in FAMILIES:
        raise bad(f"family {raw['family']!r} is not one of: {', '.join(sorted(FAMILIES))}")
    formats = raw.get("formats")
    if not isinstance(formats, list) or not formats or not all(isinstance(f, str) for f in formats):
        raise bad("formats must be a non-empty list of format names")
    for f in formats:
        if f not in FORMAT_NAMES:
            raise bad(f"format {f!r} is not one of: {', '.join(sorted(FORMAT_NAMES))}")
    if len(set(formats)) != len(formats):
        raise bad("formats lists a format twice")
    return Recipe(path, raw["name"], raw["repo"], raw["revision"], commit, raw["family"],
                  tuple(formats), _facts(raw.get("model"), bad), _inputs(raw.get("inputs"), bad),
                  str(raw.get("note", "")))


def _facts(model: Any, bad: Any) -> ModelFacts | None:
    if model is None:
        return None
    if not isinstance(model, dict):
        raise bad("[model] must be a table")
    for key, typ in _MODEL.items():
        v = model.get(key)
        if not isinstance(v, typ) or (typ is int and isinstance(v, int)
                                      and (isinstance(v, bool) or v <= 0)):
            kind = "true or false" if typ is bool else "a positive integer"
            raise bad(f"[model] {key} must be {kind}")
    unknown = sorted(set(model) - set(_MODEL))
    if unknown:
        raise bad(f"[model] has unknown key {unknown[0]!r}")
    if model["hidden"] % model["heads"] or model["heads"] % model["kv_heads"]:
        raise bad("[model] heads must divide hidden, and kv_heads must divide heads")
    return ModelFacts(**{k: model[k] for k in _MODEL})


# [model] fact -> the config.json key it is read from
CONFIG_KEYS = {"hidden": "hidden_size", "intermediate": "intermediate_size",
               "layers": "num_hidden_layers", "heads": "num_attention_heads",
               "kv_heads": "num_key_value_heads", "vocab": "vocab_size"}


def check_facts(r: Recipe, path: Path) -> None:
    """Every fact `r` declares, against the checkpoint directory `path` (see the module doc);
    InputError naming the recipe, the fact, what it declares and what the checkpoint has."""
    ck = load_checkpoint(path)
    fam = detect(ck.config)
    if fam.name != r.family:
        raise InputError(f"{r.path}: family = {_toml(r.family)}, but the checkpoint's "
                         f"config.json is of family {fam.name}")
    m = r.model
    if m is None:
        return
    cfg = ck.config
    for fact, key in CONFIG_KEYS.items():
        have = cfg.get(key, cfg.get("num_attention_heads") if fact == "kv_heads" else None)
        if have != getattr(m, fact):
            raise InputError(f"{r.path}: [model] {fact} = {getattr(m, fact)}, but the "
                             f"checkpoint's config.json has {key} = {have}")
    tied = cfg.get("tie_word_embeddings")
    if tied is None and fam.tied_output is not m.tied:
        raise InputError(f"{r.path}: [model] tied = {_toml(m.tied)}, but the checkpoint's "
                         f"config.json has no tie_word_embeddings and family {fam.name} "
                         f"defaults to {_toml(fam.tied_output)}")
    if tied is not None and tied is not m.tied:
        raise InputError(f"{r.path}: [model] tied = {_toml(m.tied)}, but the checkpoint's "
                         f"config.json has tie_word_embeddings = {_toml(tied)}")
    params = sum(math.prod(t.shape) for t in plan(ck, fam))
    if params != m.params:
        raise InputError(f"{r.path}: [model] params = {m.params}, but the checkpoint's tensors "
                         f"hold {params} parameters")


def _toml(v: Any) -> str:
    """A value as the recipe (TOML) and config.json (JSON) spell it: true, false, 3, "x"."""
    return json.dumps(v)


def _inputs(inputs: Any, bad: Any) -> dict[str, str]:
    if inputs is None:
        return {}
    if not isinstance(inputs, dict) or not all(
            isinstance(v, str) and _SHA256.fullmatch(v) for v in inputs.values()):
        raise bad("[inputs] maps file names to 64-character lowercase hex sha256")
    return dict(sorted(inputs.items()))


def lock(recipe: Recipe, commit: str, inputs: dict[str, str]) -> Recipe:
    """Record a resolved commit and the input hashes in the recipe file (rewritten atomically,
    every other line kept as it was)."""
    text = recipe.path.read_text(encoding="utf-8")
    line = f'commit = "{commit}"'
    if re.search(r"(?m)^commit\s*=.*$", text):
        text = re.sub(r"(?m)^commit\s*=.*$", line, text, count=1)
    else:
        text = re.sub(r"(?m)^(revision\s*=.*)$", rf"\1\n{line}", text, count=1)
    text = re.sub(r"(?ms)^\[inputs\].*?(?=^\[|\Z)", "", text).rstrip("\n") + "\n"
    text += "\n[inputs]\n" + "".join(f'"{k}" = "{v}"\n' for k, v in sorted(inputs.items()))
    with atomic_output(recipe.path, force=True) as f:
        f.write(text.encode("utf-8"))
    return replace(load_recipe(recipe.path))


def find_recipes(root: str | Path = "recipes") -> list[Path]:
    return sorted(Path(root).glob("*.toml"))
