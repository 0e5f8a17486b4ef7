"""Byte identity across refactors: what `pack` and `repack` write, and what `--help` says.

`tests/golden/outputs.json` holds the sha256 of every file `pack` writes for every fixture (and the
committed tiny model) in every format, of every file `repack` writes from each one's first packed
GGUF to every format, the one line of every refusal, and every command's help text. It was
recorded before the house redesign (issue 14) by running this module as a script
(`python tests/test_byte_identity.py`); its provenance line names the commit. The redesign
promises no change of behaviour, so a difference here is a regression unless a commit that
changes output on purpose re-records it and says why.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

GOLDEN = Path(__file__).parent / "golden" / "outputs.json"
TINY = Path(__file__).parents[1] / "models" / "bitnet-tiny-shakespeare"


def _digest(path: Path) -> dict[str, str]:
    """sha256 per file: the file itself, or every file under a directory (relative names)."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return {str(p.relative_to(path) if path.is_dir() else p.name):
            hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def _outcome(run, out: Path) -> dict[str, str]:
    """Hashes of what one job wrote (output + sidecar), or its refusal as 'Class: message'."""
    try:
        res = run()
    except Exception as e:  # noqa: BLE001 - a refusal is part of the recorded behaviour
        return {"refused": f"{type(e).__name__}: {e}"}
    got = _digest(Path(res.path))
    sidecar = Path(str(res.path) + ".kernel_config.ini")
    if sidecar.exists():
        got.update(_digest(sidecar))
    return got


def outputs(fixtures: Path, work: Path) -> dict[str, dict[str, dict[str, str]]]:
    from bitconv.formats import FORMAT_NAMES, HF
    from bitconv.stages.pack import pack
    from bitconv.stages.repack import repack

    sources = {n: fixtures / n for n in sorted(p.name for p in fixtures.iterdir())}
    sources["bitnet-tiny-shakespeare"] = TINY
    packed: dict[str, dict[str, str]] = {}
    repacked: dict[str, dict[str, str]] = {}
    for name, src in sources.items():
        first = None
        for fmt in sorted(FORMAT_NAMES):
            out = work / "pack" / name / fmt / "out"
            out.parent.mkdir(parents=True)
            got = _outcome(
                lambda src=src, fmt=fmt, out=out: pack(src, format=fmt, out=out, threads=1), out)
            packed[f"{name} {fmt}"] = got
            if first is None and "refused" not in got and fmt != HF:
                first = out
        for fmt in sorted(FORMAT_NAMES):
            out = work / "repack" / name / fmt / "out"
            out.parent.mkdir(parents=True)
            repacked[f"{name} {fmt}"] = _outcome(
                lambda first=first, fmt=fmt, out=out: repack(
                    first, format=fmt, out=out, allow_lossy=True), out)
    text = json.dumps({"pack": packed, "repack": repacked})
    for path, alias in ((work, "<work>"), (fixtures, "<fixtures>"), (TINY, "<tiny>")):
        text = text.replace(str(path), alias)  # refusals name their paths
    return {**json.loads(text), "help": help_texts()}


def help_texts() -> dict[str, dict[str, str]]:
    from bitconv.cli import cli as bitconv
    from tests.support.cli import cli

    texts = {"bitconv": cli("--help", terminal_width=100).output}
    for name in sorted(bitconv.commands):
        cmd = bitconv.commands[name]
        subs = sorted(getattr(cmd, "commands", {}))
        for args in [[name]] + [[name, s] for s in subs]:
            r = cli(*args, "--help", terminal_width=100)
            texts[" ".join(args)] = r.output
    return {"": texts}


def test_pack_repack_and_help_are_byte_identical(fixtures_root, tmp_path):
    want = json.loads(GOLDEN.read_text())
    got = outputs(fixtures_root, tmp_path)
    for part in ("pack", "repack", "help"):
        diff = sorted(k for k in want[part] | got[part] if want[part].get(k) != got[part].get(k))
        assert not diff, f"{part}: {len(diff)} differ, e.g. {diff[:5]}"


if __name__ == "__main__":  # record: python tests/test_byte_identity.py
    import tempfile

    sys.path.insert(0, str(Path(__file__).parents[1]))  # tests.support, as pytest's pythonpath does

    from bitconv.synth.checkpoints import FIXTURES, make_fixture

    with tempfile.TemporaryDirectory() as d:
        root = Path(d) / "data"
        for n in FIXTURES:
            make_fixture(n, root / n)
        data = outputs(root, Path(d) / "work")
    sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True, cwd=GOLDEN.parent, check=True).stdout.strip()
    data = {"provenance": f"recorded by tests/test_byte_identity.py at commit {sha} "
                          f"(python {sys.version.split()[0]}, {os.uname().machine})", **data}
    GOLDEN.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    print(f"{GOLDEN}: {len(data['pack'])} pack, {len(data['repack'])} repack, "
          f"{len(data['help'][''])} help texts")
