"""The trained tiny BitNet b1.58 (models/bitnet-tiny-shakespeare[-bf16], scripts/train_tiny.py).

- transformers loads both exports (packed/offline and bf16 masters/online) and its logits equal
  bitconv's exact mode's as test_transformers_xcheck.check_agreement requires;
- the two exports hold the same model: an I2_S packed from the packed repo verifies (exit 0,
  tensors bit for bit) against the -bf16 masters as its source, and the other way round;
- greedy text from `bitconv run` on the packed file is not degenerate (a model that collapsed
  to one token, as the random fixtures do, repeats itself);
- the training log and model card state what the issue asks (seed, threads, held-out plays, license).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.support.cli import cli

MODELS = Path(__file__).resolve().parents[1] / "models"
PACKED = MODELS / "bitnet-tiny-shakespeare"
BF16 = MODELS / "bitnet-tiny-shakespeare-bf16"
# A held-out line (Hamlet is never seen in training): the continuation must use many tokens.
PROMPT = "HAMLET.\nTo be, or not to be"
MIN_DISTINCT = 12  # of 48 greedy tokens; a collapsed model repeats 1-3 (the fixtures: 1)


@pytest.mark.parametrize("src", [PACKED, BF16], ids=["packed", "bf16"])
def test_transformers_agrees_with_exact_mode(src, monkeypatch):
    pytest.importorskip("transformers")
    import test_transformers_xcheck as xcheck
    ref, ours, theirs, ours_in = xcheck.run_both(src, src, monkeypatch)
    cfg = json.loads((src / "config.json").read_text())
    assert cfg["quantization_config"]["quantization_mode"] == ("offline" if src == PACKED
                                                               else "online")
    xcheck.check_agreement(ref, ours, theirs, ours_in)


@pytest.mark.parametrize(("packed_from", "source"), [(PACKED, BF16), (BF16, PACKED)],
                         ids=["packed-vs-bf16", "bf16-vs-packed"])
def test_both_exports_hold_the_same_codes(packed_from, source, tmp_path):
    out = tmp_path / "m-i2s.gguf"
    r = cli("pack", packed_from, "--format", "i2s", "-o", out)
    assert r.exit_code == 0, r.output
    r = cli("verify", out, "--source", source)
    assert r.exit_code == 0, r.output
    assert re.search(r"ok\s+tensors\s+all \d+ tensors equal the source's, bit for bit", r.output)
    assert re.search(r"ok\s+logits .* bit-identical", r.output)


def test_greedy_text_is_not_degenerate(tmp_path):
    out = tmp_path / "m-i2s.gguf"
    assert cli("pack", PACKED, "--format", "i2s", "-o", out).exit_code == 0
    from tokenizers import Tokenizer

    r = cli("run", out, "-p", PROMPT, "-n", "48")
    assert r.exit_code == 0, r.output
    tok = Tokenizer.from_file(str(PACKED / "tokenizer.json"))
    ids = tok.encode(r.output, add_special_tokens=False).ids
    assert len(set(ids)) > MIN_DISTINCT, r.output


def test_log_and_card_state_the_run():
    log = (PACKED / "train_log.txt").read_text()
    for what in ("sha256", "seed", "thread(s)", "torch ", "held-out loss", "wall time",
                 "steps/s", "hamlet_gut"):
        assert what in log, what
    card = (PACKED / "README.md").read_text()
    assert "license: cc-by-2.5" in card and "Open Knowledge Foundation" in card
    assert "hamlet_gut" in card
    assert (BF16 / "train_log.txt").read_text() == log
