"""Load a model for the runtime, from a packed GGUF file or from a source checkpoint.

Both paths give the same form: GGUF tensor names, ternary tensors as TernaryTensor (codes +
float32 multiplier), dense tensors as float arrays in the precision the file stores (float16 for
F16 embeddings, float32 otherwise; the model widens them). The checkpoint path goes through the
plan `pack` uses, but computes each tensor by the textbook definitions (model/reference.py), not
pack's fast paths: a lossless packed file and its source load to identical weights only when
pack ternarized right, which is what `verify` proves.

Tensors are lazy: each access decodes (or ternarizes) that one tensor from a memory map and
nothing is kept, so a full-size model is never held whole; callers cache what they reuse. A
GGUF's dense tensors are read-only views of the mapped file, not copies: fresh memory is slow to
touch on the machines we measured (perf-anchors.md §1), and a 2B4T embedding is 0.66 GB.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from bitconv.containers.gguf_reader import GGUFTensor, read_gguf, tensor_array
from bitconv.containers.gguf_writer import F16, F32
from bitconv.containers.packed_gguf import PackedGGUF, read_packed
from bitconv.containers.safetensors import MappedFiles, to_float32
from bitconv.formats.base import Codec
from bitconv.formats.hf import ScaleRule
from bitconv.formats.registry import get_codec
from bitconv.model import reference, ternary
from bitconv.model.checkpoint import Checkpoint, load_checkpoint
from bitconv.model.families import detect
from bitconv.model.families.base import PlannedTensor, plan
from bitconv.model.metadata import metadata
from bitconv.model.tensors import permute_heads
from bitconv.types import TernaryTensor

Tensor = TernaryTensor | npt.NDArray[np.floating]


class LazyTensors(Mapping[str, Tensor]):
    """name -> tensor, each built by its loader on every access (nothing is cached)."""

    def __init__(self, loaders: dict[str, Callable[[], Tensor]]) -> None:
        self._loaders = loaders

    def __getitem__(self, name: str) -> Tensor:
        return self._loaders[name]()

    def __contains__(self, name: object) -> bool:  # without decoding (Mapping's would)
        return name in self._loaders

    def __iter__(self) -> Iterator[str]:
        return iter(self._loaders)

    def __len__(self) -> int:
        return len(self._loaders)


@dataclass(frozen=True)
class Stored:
    """A tensor as known before it is read: its shape, whether it is ternary, and the bytes an
    element of it takes as loaded (float16 or float32 for a dense one; int8 codes: 1)."""

    shape: tuple[int, ...]
    ternary: bool
    itemsize: int

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


@dataclass(frozen=True)
class Weights:
    """A model: GGUF-style metadata and (lazy) tensors by GGUF name."""

    kvs: Mapping[str, Any]
    tensors: Mapping[str, Tensor]
    order: tuple[str, ...]  # tensor names in file order
    format: str = "i2s"  # the codec the ternary tensors are (or would be) packed with
    # every tensor's shape and kind, read from the header or the plan (runtime/memory.py)
    layout: Mapping[str, Stored] = field(default_factory=dict)
    # peak bytes a weight while one tensor is decoded, beyond what is kept (runtime/memory.py):
    # a GGUF's decoders need at most 5 (TL2's 4.3); a checkpoint's reference definitions work on
    # whole float32 tensors with a float64 mean, 9 at full 2B4T size (model/reference.py)
    transient: int = 5


def load_gguf(path: str | Path, kernel_config: str | Path | None = None) -> Weights:
    """Every tensor of a packed GGUF, unpacked through the format registry on access; a weight's
    companion tensors (e.g. a separate scale) are folded into its TernaryTensor. TL1/TL2 tensors
    are decoded with the file's tiling (bitconv/containers/kernel_config.py: `kernel_config`, the sidecar,
    or the metadata key), found here, before any tensor is read: InputError without one."""
    src = read_packed(read_gguf(path), kernel_config, plain=(F32, F16), verb="run")
    loaders: dict[str, Callable[[], Tensor]] = {
        t.name: partial(_decode if t.name in src.codecs else _dense, src, t) for t in src.tensors}
    order = tuple(t.name for t in src.tensors)
    layout = {t.name: Stored(t.shape, t.ggml_type not in (F32, F16), 2 if t.ggml_type == F16
                             else 4 if t.ggml_type == F32 else 1) for t in src.tensors}
    return Weights(dict(src.gf.kvs), LazyTensors(loaders), order, src.format or "i2s", layout)


def _decode(src: PackedGGUF, t: GGUFTensor) -> TernaryTensor:
    codes, m = src.decode(t)
    return TernaryTensor(t.name, codes, m)


def _dense(src: PackedGGUF, t: GGUFTensor) -> Tensor:
    return np.asarray(tensor_array(src.gf, t))


def load_any(path: str | Path, kernel_config: str | Path | None = None) -> Weights:
    """A GGUF file (TL tiling from `kernel_config` or as load_gguf finds it) or a checkpoint
    directory."""
    return (load_checkpoint_weights(path) if Path(path).is_dir()
            else load_gguf(path, kernel_config))


def load_checkpoint_weights(src: str | Path, scale_rule: ScaleRule | None = None,
                            format: str = "i2s", latent: bool = False) -> Weights:
    """What `pack` would write for `src`, unpacked: the reference a packed file must equal.

    latent=True gives the unquantized float weights instead of ternary ones wherever the
    checkpoint has them (1bitLLM, 2B4T -bf16): the model the ternary one approximates.
    """
    ck = load_checkpoint(src)
    fam = detect(ck.config)
    items = plan(ck, fam)
    rule = scale_rule or ternary.scale_rule(dict(ck.config))
    codec = get_codec(format)
    binary = 0 not in codec.spec.codes

    def load(t: PlannedTensor) -> Tensor:
        if t.kind == "ternary" and latent and not t.scale_source:
            with MappedFiles() as mf:
                return latent_rows(ck, mf, t)
        got = reference.tensor(ck, t, rule, scale_rule is None, binary)
        if isinstance(got, TernaryTensor):
            return replace(got, multiplier=stored(codec, got.multiplier))
        return got

    kvs = {kv.key: kv.value for kv in metadata(ck, fam, codec)}
    loaders: dict[str, Callable[[], Tensor]] = {t.gguf_name: partial(load, t) for t in items}
    layout = {t.gguf_name: Stored(t.shape, t.kind == "ternary", {"f16": 2, "f32": 4}.get(t.kind, 1))
              for t in items}
    return Weights(kvs, LazyTensors(loaders), tuple(t.gguf_name for t in items), format, layout,
                   transient=9)


def stored(codec: Codec, m: np.float32) -> np.float32:
    """The multiplier a file in this format gives back for `m`: `m` itself for a lossless
    codec; for a lossy one (an fp16 block scale) whatever one block round-trips to."""
    if codec.spec.lossless:
        return m
    one = np.ones((1, codec.spec.block_elems), np.int8)
    return np.float32(codec.decode(list(codec.encode(m, iter([one]))), one.shape)[1])


def has_latent(src: str | Path) -> bool:
    """Whether the checkpoint stores unquantized weights for its ternary tensors."""
    ck = load_checkpoint(src)
    return any(t.kind == "ternary" and not t.scale_source for t in plan(ck, detect(ck.config)))


def latent_rows(ck: Checkpoint, mf: MappedFiles, t: PlannedTensor) -> npt.NDArray[np.float32]:
    """The float weights of a latent ternary tensor, in GGUF row order (q/k permuted as packed)."""
    ref = ck.ref(t.source)
    w = np.array(to_float32(mf.view(ref), ref.dtype), dtype=np.float32)
    return permute_heads(w, t.shape[0] // t.heads) if t.heads else w
