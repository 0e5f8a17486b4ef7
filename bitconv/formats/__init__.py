"""Registry of packed layouts: one codec module per format, looked up by its `--format` name.

Every codec module exposes the same surface (later formats follow this contract):

    SPEC                                   FormatSpec: name, ggml/file type ids, block geometry
    check_shape(shape) -> None             PackError if (out_features, in_features) cannot be packed
    nbytes(shape) -> int                   size of one packed tensor's data
    pack_body(codes) -> uint8 array        whole-row chunk of int8 codes -> body bytes (streamable)
    pack_tail(multiplier) -> uint8 array   the per-tensor bytes after the body
    pack(codes, multiplier) -> uint8 array body + tail, length nbytes(codes.shape)
    unpack(data, shape) -> (codes, multiplier)   the inverse; InputError on malformed data

Each format has a normative spec at formats/<name>.md and tests at tests/test_<name>.py.
"""
from __future__ import annotations

from types import ModuleType

from bitconv.errors import PackError
from bitconv.formats import i2s

FORMATS: dict[str, ModuleType] = {"i2s": i2s}


def get_format(name: str) -> ModuleType:
    """Return the codec module registered as `name`, or raise PackError listing the choices."""
    try:
        return FORMATS[name]
    except KeyError:
        raise PackError(
            f"unknown format {name!r}; choose one of: {', '.join(sorted(FORMATS))}"
        ) from None
