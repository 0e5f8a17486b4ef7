"""Stage `pack`: a checkpoint directory -> a packed GGUF file (gguf_export.py) or an `hf`
checkpoint directory (hf_export.py), as the format says. A Hugging Face repo id is pulled first
(stages/pull.py `resolve_source`): the one stage `pack` runs.
"""
from __future__ import annotations

from pathlib import Path

from bitconv.errors import InputError
from bitconv.formats import HF
from bitconv.formats.hf import ScaleRule
from bitconv.formats.registry import get_codec
from bitconv.stages import gguf_export, hf_export
from bitconv.stages.pull import resolve_source
from bitconv.types import PackResult


def pack(src: str | Path, *, format: str = "i2s", out: str | Path | None = None,
         force: bool = False, scale_rule: ScaleRule | None = None,
         progress: bool = False, threads: int | None = None,
         scale_stat: str = "mean") -> PackResult:
    """Pack a BitNet checkpoint directory into a GGUF file of the given format.

    Args:
        src: Hugging Face checkpoint directory (config.json + safetensors), or a repo id
            (owner/name, not an existing path), pulled and verified first as by `pull`.
        format: one of bitconv.formats.FORMAT_NAMES.
        out: output path; default `<dir name>-<format>.gguf` in the current directory.
        force: overwrite an existing output.
        progress: progress bars on stderr (the pull's too).
        scale_rule: override the weight_scale convention (and skip its sanity check).
        threads: worker threads (default: one per core); the output bytes do not depend on it.
        scale_stat: "mean" (absmean, BitNet b1.58) or "median" (BitNet b1.58 Reloaded: the
            median of |W| as the ternarization scale; latent sources only, a research option
            that `verify` against the source reports as a multiplier mismatch).
    Example:
        >>> pack("tests/data/bitnet-b1.58-2B-4T", format="i2s").path
        PosixPath('bitnet-b1.58-2B-4T-i2s.gguf')
    """
    src = resolve_source(src, progress=progress).path
    codec = None if format == HF else get_codec(format)
    if scale_stat not in ("mean", "median"):
        raise InputError(f"scale statistic {scale_stat!r}: choose mean or median")
    if codec is None:  # hf: a checkpoint directory, not a GGUF
        if scale_stat != "mean":
            raise InputError("--scale-stat median writes GGUF formats only")
        return hf_export.export(src, out=out, force=force, scale_rule=scale_rule,
                                progress=progress)
    return gguf_export.export(src, codec, out=out, force=force, scale_rule=scale_rule,
                              progress=progress, threads=threads, scale_stat=scale_stat)
