"""The packed layouts bitconv writes and reads, one module per layout, and the names a user can
give `--format`.

    base.py       the typed Codec contract every GGUF layout implements, and the shared checks
    registry.py   name -> Codec object (variants such as tq2_0-fp16 are instances), the codec
                  of a stored tensor (`codec_for`), the codec that sizes each ggml type
    <layout>.py   i2s, i2s_arm, tl1, tl2 (+ tl_common, tiling), tq1_0, tq2_0, q1_0, q2_0
                  (+ tq_common): spec at formats/<name>.md, tests at tests/test_<name>.py
    hf.py         transformers' uint8 packing: the `hf` target, a checkpoint directory and not a
                  GGUF layout, so no Codec (stages/hf_export.py and repack_hf.py write it)

This file holds only names: the CLI takes its `--format` choices from it at import time, and
importing the codecs (numpy: about 0.1 s) would slow every `bitconv --help`.
"""
from __future__ import annotations

HF = "hf"  # the transformers checkpoint directory (formats/hf.md §5)
# Every `--format` value, in the order `--help` lists them: the GGUF layouts of registry.CODECS
# (tests/test_codec_contract.py checks they are the same) and HF.
FORMAT_NAMES = ("i2s", "tl1", "tl2", "tq1_0", "tq1_0-fp16", "tq2_0", "tq2_0-fp16", HF,
                "i2s-arm", "q2_0", "q2_0-fp16", "q1_0", "q1_0-fp16")
