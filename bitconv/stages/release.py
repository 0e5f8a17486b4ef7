"""Stage release: recipe -> pull -> pack every format -> verify each -> MANIFEST.json + SHA256SUMS.

Layout of `--out DIR` (default `release/<recipe name>`):

    DIR/<name>-<format>.gguf | DIR/<name>-hf/    the artifacts
    DIR/MANIFEST.json                            tool version, source (repo, sha, input sha256),
                                                 per artifact: format, files, sizes, sha256, key
    DIR/SHA256SUMS                               `sha256sum -c` format, every artifact file

Idempotent: an artifact whose key (tool version, source commit and input hashes, format) equals
the manifest's and whose files still hash as recorded is kept, not rebuilt. New artifacts are
built and verified in DIR/.staging and moved into place only when every one verified; a failing
verify publishes nothing and leaves the previous release untouched. Deterministic: no
timestamps, sorted keys and files, so the same recipe and inputs give identical bytes at any -j.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bitconv import __version__
from bitconv.containers.atomic import atomic_output, default_output, publish
from bitconv.errors import InputError, VerifyError
from bitconv.stages.pack import pack
from bitconv.stages.pull import pull
from bitconv.stages.recipes import check_facts, load_recipe
from bitconv.stages.verify import verify


@dataclass(frozen=True)
class Artifact:
    format: str
    path: str  # relative to the release dir
    files: dict[str, tuple[int, str]]  # relative path -> (size, sha256)
    key: str
    verify: str
    rebuilt: bool


@dataclass(frozen=True)
class ReleaseResult:
    out: Path
    recipe: str
    sha: str
    artifacts: tuple[Artifact, ...]

    def to_json(self) -> str:
        return json.dumps({"out": str(self.out), "recipe": self.recipe, "sha": self.sha,
                           "artifacts": [{"format": a.format, "path": a.path,
                                          "rebuilt": a.rebuilt, "verify": a.verify}
                                         for a in self.artifacts]}, indent=2)


def release(recipe: str | Path, *, out: str | Path | None = None, jobs: int = 1,
            progress: bool = False) -> ReleaseResult:
    """Run the recipe's whole pipeline into `out` (see the module doc). Raises VerifyError (exit
    3) when an artifact fails to verify, InputError when the source contradicts the recipe."""
    r = load_recipe(recipe)
    out = Path(out) if out is not None else Path("release") / r.name
    snap = pull(r.repo, revision=r.commit or r.revision, progress=progress)
    if r.commit and snap.sha != r.commit:
        raise InputError(f"{r.path}: the hub gave commit {snap.sha}, the recipe pins {r.commit}")
    inputs = {f.path: f.sha256 or "" for f in snap.files}
    for name, want in r.inputs.items():
        if inputs.get(name) != want:
            raise InputError(f"{r.path}: input {name} has sha256 {inputs.get(name)}, "
                             f"the recipe expects {want}")
    check_facts(r, snap.path)  # every fact the recipe declares, before anything is packed
    source = {"repo": r.repo, "revision": r.revision, "sha": snap.sha, "inputs": inputs}
    old = _read_manifest(out)
    plan: list[tuple[str, str, str]] = []  # (format, relative path, key)
    for fmt in r.formats:
        rel = str(default_output(r.name, fmt))
        key = _sha256_bytes(json.dumps([__version__, source, fmt], sort_keys=True).encode())
        plan.append((fmt, rel, key))
    kept = {a["format"]: a for a in old.get("artifacts", [])
            if any(a["format"] == f and a["key"] == k for f, _, k in plan) and _intact(out, a)}
    todo = [p for p in plan if p[0] not in kept]
    staging = out / ".staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            built = dict(zip([p[0] for p in todo], pool.map(
                lambda p: _build(snap.path, staging, p[0], p[1]), todo)))
        for fmt, rel, _ in todo:
            if built[fmt] is not None:
                raise VerifyError(f"{rel}: {built[fmt]}")
        for _, rel, _ in todo:  # the artifact and any sidecar (e.g. a TL kernel config)
            for entry in sorted(staging.glob(rel + "*")):
                publish(entry, out / entry.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    artifacts = []
    for fmt, rel, key in plan:
        files = (_hash_files(out, rel) if fmt not in kept
                 else {k: (v["size"], v["sha256"]) for k, v in kept[fmt]["files"].items()})
        artifacts.append(Artifact(fmt, rel, files, key, "ok", fmt not in kept))
    manifest = {"bitconv": __version__, "recipe": r.name, "source": source,
                "artifacts": [{"format": a.format, "path": a.path, "key": a.key,
                               "verify": a.verify,
                               "files": {k: {"size": s, "sha256": h}
                                         for k, (s, h) in sorted(a.files.items())}}
                              for a in artifacts]}
    sums = "".join(f"{h}  {k}\n" for a in artifacts for k, (_, h) in sorted(a.files.items()))
    _write(out / "MANIFEST.json", json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    _write(out / "SHA256SUMS", sums)
    return ReleaseResult(out, r.name, snap.sha, tuple(artifacts))


def _build(src: Path, staging: Path, fmt: str, rel: str) -> str | None:
    """Pack one format into staging and verify it; the first failure as text, or None."""
    path = pack(src, format=fmt, out=staging / rel).path
    report = verify(path, source=src, drift=False)
    return None if report.ok else report.first_failure


def _read_manifest(out: Path) -> dict[str, Any]:
    try:
        data = json.loads((out / "MANIFEST.json").read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _intact(out: Path, a: dict[str, Any]) -> bool:
    """The recorded files are all there with their recorded size and sha256."""
    try:
        return all(_hash(out / k) == (v["size"], v["sha256"]) for k, v in a["files"].items())
    except (OSError, KeyError, TypeError):
        return False


def _hash_files(out: Path, rel: str) -> dict[str, tuple[int, str]]:
    paths = sorted(p for e in out.glob(rel + "*")
                   for p in (e.rglob("*") if e.is_dir() else [e]) if p.is_file())
    return {p.relative_to(out).as_posix(): _hash(p) for p in paths}


def _hash(path: Path) -> tuple[int, str]:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    return path.stat().st_size, h.hexdigest()


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write(path: Path, text: str) -> None:
    with atomic_output(path, force=True) as f:
        f.write(text.encode("utf-8"))
