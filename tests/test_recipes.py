"""Recipes: every shipped file parses and agrees with its family; bad files give one-line errors."""
from __future__ import annotations

from pathlib import Path

import pytest

from bitconv.errors import InputError, PackError
from bitconv.formats import HF, hf
from bitconv.formats.registry import get_codec
from bitconv.stages.recipes import find_recipes, load_recipe

ROOT = Path(__file__).parent.parent / "recipes"
SHIPPED = find_recipes(ROOT)


def test_the_promised_models_have_recipes():
    names = {p.stem for p in SHIPPED}
    assert {"bitnet-b1.58-2B-4T", "bitnet-b1.58-2B-4T-bf16", "bitnet_b1_58-large",
            "bitnet_b1_58-3B", "Llama3-8B-1.58-100B-tokens", "Falcon3-1B-Instruct-1.58bit",
            "Falcon3-10B-Instruct-1.58bit", "Falcon-E-3B-Instruct"} <= names


def _shapes(r):
    """(out, in) of every ternary weight, derived here from the recipe's facts (hf.md §1.7, §2)."""
    m = r.model
    hd = m.hidden // m.heads
    per_layer = [(m.hidden, m.hidden), (m.kv_heads * hd, m.hidden), (m.kv_heads * hd, m.hidden),
                 (m.hidden, m.hidden), (m.intermediate, m.hidden), (m.intermediate, m.hidden),
                 (m.hidden, m.intermediate)]
    return per_layer


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_recipe_parses_and_matches_its_family(path):
    r = load_recipe(path)
    assert r.name == path.stem
    if r.model is None:
        assert "unverified" in r.note.lower()
        return
    m = r.model
    # parameter count from the facts: embeddings, 7 linears, 2 norms (+2 sub-norms for the
    # bitnet archs, which llama lacks), the final norm and an untied lm_head
    sub = m.hidden + m.intermediate if r.family in ("bitnet", "bitnet-b1.58") else 0
    layer = sum(o * i for o, i in _shapes(r)) + 2 * m.hidden + sub
    params = m.vocab * m.hidden * (1 if m.tied else 2) + m.layers * layer + m.hidden
    assert params == m.params
    # every listed format can hold every ternary weight of this model
    for fmt in r.formats:
        check = hf.check_shape if fmt == HF else get_codec(fmt).check_shape
        for shape in _shapes(r):
            check(shape)


def test_3b_shapes_rule_out_i2s_and_tq():
    r = load_recipe(ROOT / "bitnet_b1_58-3B.toml")
    with pytest.raises(PackError, match="i2s needs in_features % 128 == 0, got 8640"):
        for shape in _shapes(r):
            get_codec("i2s").check_shape(shape)


GOOD = '''name = "x"
repo = "o/x"
revision = "main"
family = "llama"
formats = ["i2s"]
'''


@pytest.mark.parametrize("text, message", [
    ("name = ", "not valid TOML"),
    (GOOD + 'colour = "red"\n', "unknown key 'colour'"),
    (GOOD.replace('repo = "o/x"', 'repo = "x"'), "repo 'x' is not of the form owner/name"),
    (GOOD.replace('"llama"', '"gpt2"'),
     "family 'gpt2' is not one of: bitnet, bitnet-b1.58, bitnet-hf, llama"),
    (GOOD.replace('["i2s"]', '["q4_0"]'), "format 'q4_0' is not one of: "),
    (GOOD.replace('["i2s"]', '[]'), "formats must be a non-empty list of format names"),
    (GOOD + 'commit = "abc"\n', "commit must be a 40-character lowercase hex sha"),
    (GOOD + "[model]\nhidden = 0\n", "[model] hidden must be a positive integer"),
    (GOOD + '[inputs]\n"a" = "zz"\n', "[inputs] maps file names to 64-character lowercase hex"),
])
def test_bad_recipes_are_refused(tmp_path, text, message):
    p = tmp_path / "x.toml"
    p.write_text(text)
    with pytest.raises(InputError) as e:
        load_recipe(p)
    assert str(e.value).startswith(f"{p}: ") and message in str(e.value)


def test_the_recipe_families_are_the_registry(tmp_path):
    """One family list: every registered family (bitnet-hf too) is a valid recipe family."""
    from bitconv.model.families import FAMILIES

    for name in FAMILIES:
        p = tmp_path / "x.toml"
        p.write_text(GOOD.replace('"llama"', f'"{name}"'))
        assert load_recipe(p).family == name
