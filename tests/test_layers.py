"""The house rules, read from the source (AST): which layer may import which.

    cli -> stages -> runtime -> model -> containers -> formats -> base (errors, types, workers,
                                                                         gguf_values)

A module may import its own layer and any layer to its right, never one to its left. Inside
`stages/`, a *stage* (one command: pull, pack, repack, verify, inspect, logits, eval, release)
uses stage helpers (snapshot, audit, gguf_export, hf_export, repack_hf, recipes), and only
`release` runs other stages, but for `pack`, which pulls a Hugging Face repo id it is given
first (`pull`). `synth/` (the checkpoints the project makes for its tests, demo and bench) sits
beside the stages: it may use everything below them, and nothing in the package uses it except
the CLI. `model/` never writes files: it does not import the writers.

Imports sit at the top of a module. Inside a function only (a) the CLI's imports, so that
`bitconv --help` and every command start without loading numpy and the stages they do not
need, and (b) the optional third-party packages in LAZY, whose import costs more than a command
that does not use them should pay (huggingface_hub ~0.5 s), or which only one path needs.
"""
from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).parents[1] / "bitconv"
ORDER = ("cli", "stages", "runtime", "model", "containers", "formats", "base")
BASE = ("errors", "types", "workers", "gguf_values")
STAGES = ("pull", "pack", "repack", "verify", "inspect", "logits", "eval", "release")
WRITERS = ("bitconv.containers.atomic", "bitconv.containers.gguf_writer")
# Violations found when this test was written, being removed step by step (issue 14): listed
# here so the test guards everything else now; an entry that no longer occurs fails the test.
KNOWN_LAYER: set[str] = set()
KNOWN_INNER: set[str] = set()
LAZY = ("huggingface_hub", "httpx", "httpx2", "tqdm", "tokenizers", "sentencepiece", "jinja2",
        "google")  # google.protobuf: SentencePiece's model format


def layer(module: str) -> str:
    """'bitconv.stages.pack' -> 'stages'; the package root's own modules by name."""
    parts = module.split(".")
    if len(parts) == 1:
        return "base"  # `from bitconv import __version__`
    top = parts[1]
    if top in ("cli", "__main__"):
        return "cli"
    if top in BASE or top.startswith("__"):  # __version__, __init__
        return "base"
    if top == "synth":
        return "synth"
    assert top in ORDER, f"{module}: not in a layer"
    return top


def module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    return ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)


def imports(path: Path) -> list[tuple[ast.stmt, str, bool]]:
    """(node, imported bitconv module or third-party name, inside a function?) per import."""
    tree, found = ast.parse(path.read_text()), []
    inner = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
             for n in ast.walk(f) if n is not f}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
            if node.module == "bitconv":
                names = [f"bitconv.{a.name}" for a in node.names]
            elif node.module.startswith("bitconv."):
                # `from bitconv.stages import hf_export` names module bitconv.stages.hf_export
                # (`from bitconv.formats import HF` a name in it: same layer either way)
                pkg = PKG.parent.joinpath(*node.module.split("."))
                names = ([f"{node.module}.{a.name}" for a in node.names] if pkg.is_dir()
                         else [node.module])
        else:
            continue
        found += [(node, n, id(node) in inner) for n in names]
    return found


def allowed(src: str, dst: str) -> bool:
    a, b = layer(src), layer(dst)
    if a == "synth":
        return b != "cli" and b != "stages"
    if b == "synth":
        return a == "cli" or a == "synth"
    if ORDER.index(a) > ORDER.index(b):
        return False
    if a == b == "stages":
        s, d = src.split(".")[2], dst.split(".")[2] if dst.count(".") >= 2 else ""
        return d not in STAGES or s == d or s == "release" or (s, d) == ("pack", "pull")
    return not (a == "model" and dst in WRITERS)


def test_every_import_follows_the_layers():
    bad = []
    for path in sorted(PKG.rglob("*.py")):
        src = module_name(path)
        for node, name, _ in imports(path):
            if name.startswith("bitconv") and not allowed(src, name):
                bad.append(f"{path.relative_to(PKG.parent)}: {src} imports {name}")
    assert set(bad) == KNOWN_LAYER, "\n".join(sorted(set(bad) ^ KNOWN_LAYER))


def test_imports_inside_functions_only_where_they_save_a_real_cost():
    bad = []
    for path in sorted(PKG.rglob("*.py")):
        if path.name in ("cli.py", "__main__.py"):
            continue
        for node, name, inner in imports(path):
            if inner and name.split(".")[0] not in LAZY:
                bad.append(f"{path.relative_to(PKG.parent)}: {name}")
    assert set(bad) == KNOWN_INNER, "\n".join(sorted(set(bad) ^ KNOWN_INNER))


def test_the_package_ships_no_test_code():
    """Test doubles (the fake hub) live in tests/support/: nothing installed may import them."""
    bad = [f"{path.relative_to(PKG.parent)}: {name}" for path in sorted(PKG.rglob("*.py"))
           for _, name, _ in imports(path) if name.split(".")[0] in ("tests", "conftest")]
    assert not bad, "\n".join(bad)
    assert not list(PKG.rglob("fakehub*")), "the fake hub belongs in tests/support/"


def test_the_rule_itself():
    """The checker refuses what the rule forbids (so a green run means something)."""
    assert not allowed("bitconv.runtime.weights", "bitconv.stages.pack")
    assert not allowed("bitconv.formats.i2s", "bitconv.containers.gguf_reader")
    assert not allowed("bitconv.stages.repack", "bitconv.stages.pack")
    assert not allowed("bitconv.stages.hf_export", "bitconv.stages.pack")
    assert allowed("bitconv.stages.pack", "bitconv.stages.gguf_export")
    assert allowed("bitconv.stages.pack", "bitconv.stages.pull")
    assert not allowed("bitconv.stages.pull", "bitconv.stages.pack")
    assert not allowed("bitconv.model.dense", "bitconv.containers.atomic")
    assert not allowed("bitconv.stages.pack", "bitconv.synth.checkpoints")
    assert allowed("bitconv.stages.release", "bitconv.stages.verify")
    assert allowed("bitconv.stages.verify", "bitconv.stages.audit")
    assert allowed("bitconv.runtime.weights", "bitconv.model.checkpoint")
    assert allowed("bitconv.cli", "bitconv.synth.checkpoints")
    assert layer("bitconv") == layer("bitconv.errors") == "base"


def test_the_public_api_is_the_stages_loaded_on_first_use():
    """`from bitconv import pack` gives the stage itself; `import bitconv` alone loads no numpy
    (checked in a fresh interpreter: this one has numpy already)."""
    import subprocess
    import sys

    import bitconv
    from bitconv.stages import pack, pull, release, repack, verify

    assert sorted(bitconv.__all__) == ["__version__", "pack", "pull", "release", "repack",
                                       "verify"]
    for mod in (pack, pull, release, repack, verify):
        name = mod.__name__.rsplit(".", 1)[1]
        assert getattr(bitconv, name) is getattr(mod, name)
    code = "import sys, bitconv, bitconv.errors; print('numpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout == "False\n"
