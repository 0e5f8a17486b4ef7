"""The local side of `pull`: which files to take, hashing them, the pull manifest, offline reads.

A pulled snapshot is a directory (the HF cache's `snapshots/<sha>/`, or `--local-dir`) holding the
files of one commit, plus `.bitconv-pull.json`, the manifest. A dotfile, so no glob for model
files (`*.json`, `*.safetensors`) picks it up; huggingface_hub's cache scanner tolerates it.

    {"bitconv_pull": 1, "repo": "org/name", "revision": "main", "sha": "<40 hex>",
     "endpoint": "https://huggingface.co", "include": null, "complete": true,
     "files": [{"path": "model.safetensors", "size": 2891800, "lfs": true,
                "sha256": "<hex>", "git_oid": "<hex>", "mtime_ns": 1732370000000000000}, ...]}

Per file: `size`, `git_oid` (git blob id; of the LFS pointer for LFS files), `lfs` and, for LFS
files, `sha256` are the hub's listing; `sha256` of other files and `mtime_ns` are filled in once the
local file has been verified. `complete` = every listed file verified. An incomplete manifest is
written before the first download, so an interrupted or offline pull still knows what is missing.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, replace
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from bitconv.containers.atomic import replace_text
from bitconv.errors import PullError
from bitconv.model.checkpoint import MANIFEST

# What conversion reads: config, tokenizer, weights (top level only: subfolders hold other formats)
DEFAULT_INCLUDE = ("config.json", "generation_config.json", "tokenizer.json",
                   "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json",
                   "*.safetensors", "model.safetensors.index.json")
SHA = re.compile(r"[0-9a-f]{40}")


@dataclass(frozen=True)
class FileEntry:
    """One file of the snapshot: the hub's listing, and once verified its local sha256 and mtime."""

    path: str
    size: int
    git_oid: str
    lfs: bool
    sha256: str | None          # the hub's for LFS files; computed for the others
    mtime_ns: int | None = None  # set when verified: an unchanged size+mtime skips re-hashing

    @property
    def verified(self) -> bool:
        return self.sha256 is not None and self.mtime_ns is not None

    def same_remote(self, other: FileEntry) -> bool:
        return (self.path, self.size, self.git_oid, self.lfs) == \
            (other.path, other.size, other.git_oid, other.lfs) and \
            (not self.lfs or self.sha256 == other.sha256)


@dataclass(frozen=True)
class Snapshot:
    """A pulled commit: where its files are and what they were verified to be."""

    path: Path
    repo: str
    revision: str
    sha: str
    endpoint: str
    include: tuple[str, ...] | None
    files: tuple[FileEntry, ...]

    @property
    def complete(self) -> bool:
        return all(f.verified for f in self.files)

    @property
    def manifest(self) -> Path:
        return self.path / MANIFEST

    def to_dict(self) -> dict[str, Any]:
        return {"bitconv_pull": 1, "repo": self.repo, "revision": self.revision, "sha": self.sha,
                "endpoint": self.endpoint,
                "include": list(self.include) if self.include is not None else None,
                "complete": self.complete, "files": [asdict(f) for f in self.files]}

    def to_json(self) -> str:
        return json.dumps({"path": str(self.path), **self.to_dict()}, indent=2)

    def write(self) -> None:
        """Write the manifest atomically (a reader sees the old one or the new one)."""
        replace_text(self.manifest, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def read(cls, path: Path) -> Snapshot | None:
        """The manifest in `path`, or None if there is none (or it is unreadable: pull again)."""
        try:
            d = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
            files = tuple(FileEntry(**f) for f in d["files"])
            inc = tuple(d["include"]) if d["include"] is not None else None
            return cls(path, d["repo"], d["revision"], d["sha"], d["endpoint"], inc, files)
        except (OSError, ValueError, KeyError, TypeError):
            return None


def unsafe(path: str) -> bool:
    """A listed path that could escape the target directory (`../x`, `/etc/x`, `a\\b`, `a//b`)."""
    parts = path.split("/")
    return (path.startswith("/") or "\\" in path or "\0" in path
            or any(p in ("", ".", "..") for p in parts))


def select(paths: list[str], include: tuple[str, ...] | None) -> list[str]:
    """The paths a pull takes: DEFAULT_INCLUDE at the top level, or any match of `include`."""
    def taken(p: str) -> bool:
        if p == MANIFEST or p.startswith(".cache/"):  # ours, and huggingface_hub's local_dir state
            return False
        if include is None:
            return "/" not in p and any(fnmatchcase(p, pat) for pat in DEFAULT_INCLUDE)
        return any(fnmatchcase(p, pat) for pat in include)
    return sorted(p for p in paths if taken(p))


def pick(listing: list[FileEntry], include: tuple[str, ...] | None, who: str) -> list[FileEntry]:
    """select() over a listing; refuses an empty result, and by default one without weights."""
    by_path = {e.path: e for e in listing}
    paths = select(list(by_path), include)
    if include is not None and not paths:
        raise PullError(f"{who}: no file matches --include {' '.join(include)}")
    if include is None and ("config.json" not in paths
                            or not any(p.endswith(".safetensors") for p in paths)):
        raise PullError(f"{who}: no config.json and *.safetensors at the top level "
                        "(bitconv converts safetensors checkpoints; --include fetches others)")
    return [by_path[p] for p in paths]


def from_cache(repo: str, rev: str, local_dir: Path | None, storage: Path,
               include: tuple[str, ...] | None) -> Snapshot:
    """`repo`@`rev` from refs/ and the manifest alone (offline), every file checked; or a
    PullError naming what is missing. `storage` is the repo's HF cache dir (models--org--name)."""
    where, sha = f"{repo}@{rev}", rev
    if local_dir is None and not SHA.fullmatch(rev):
        ref = storage / "refs" / rev
        if not ref.is_file():
            raise PullError(f"{where}: offline, and not in the cache ({storage.parent}); "
                            "pull it once with network")
        sha = ref.read_text().strip()
    target = local_dir if local_dir is not None else storage / "snapshots" / sha
    snap = Snapshot.read(target)
    if snap is None or snap.repo != repo or sha not in (snap.revision, snap.sha):
        raise PullError(f"{where}: offline, and {target} has no bitconv pull manifest for it; "
                        "pull it once with network")
    who = f"{repo}@{snap.sha[:7]}"
    done, missing, bad = check_all(pick(list(snap.files), include, who), target)
    if missing:
        raise PullError(f"{who}: offline, and {len(missing)} file(s) are missing from {target}: "
                        f"{', '.join(missing)}; pull again with network")
    if bad:
        raise PullError(f"{who}: offline, and {', '.join(bad)} does not match the hub's "
                        "listing; pull again with network")
    by_path = {f.path: f for f in done}
    merged = replace(snap, files=tuple(by_path.get(f.path, f) for f in snap.files))
    if merged != snap:
        merged.write()  # verified offline, against the listing the hub gave
    return replace(merged, revision=rev, include=include, files=tuple(done))


def strays(root: Path, wanted: set[str], include: tuple[str, ...] | None) -> list[str]:
    """Files in `root` that the selection would take but the commit lacks (an older pull's)."""
    if not root.is_dir():
        return []
    found = [p.relative_to(root).as_posix() for p in root.rglob("*")
             if (p.is_file() or p.is_symlink()) and ".cache" not in p.relative_to(root).parts]
    return [p for p in select(found, include) if p not in wanted]


def digest(path: Path, git: bool) -> tuple[str, str | None]:
    """sha256 of the file and, if `git`, its git blob id: sha1(b"blob <size>\\0" + bytes)."""
    size = path.stat().st_size
    h, g = hashlib.sha256(), hashlib.sha1(b"blob %d\0" % size) if git else None
    buf = bytearray(1 << 22)  # one reused 4 MiB buffer: multi-GB files stream through it
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
            if g is not None:
                g.update(view[:n])
    return h.hexdigest(), g.hexdigest() if g is not None else None


def check(e: FileEntry, path: Path) -> tuple[FileEntry, str | None]:
    """Hash `path` against the listing `e`: (the verified entry, None) or (e, what differs)."""
    st = path.stat()
    if st.st_size != e.size:
        return e, f"size {st.st_size} (the hub lists {e.size})"
    sha, oid = digest(path, git=not e.lfs)
    if e.lfs and sha != e.sha256:
        return e, f"sha256 {sha[:12]}… (the hub lists {str(e.sha256)[:12]}…)"
    if not e.lfs and oid != e.git_oid:
        return e, f"git blob id {str(oid)[:12]}… (the hub lists {e.git_oid[:12]}…)"
    return replace(e, sha256=sha, mtime_ns=st.st_mtime_ns), None


def check_all(files: list[FileEntry], root: Path) -> tuple[list[FileEntry], list[str], list[str]]:
    """Check `files` under `root` with no network: (verified entries, missing paths, mismatches)."""
    done, missing, bad = [], [], []
    for e in files:
        path = root / e.path
        if not path.exists():
            missing.append(e.path)
            continue
        got, problem = (ok, None) if (ok := unchanged(e, path)) else check(e, path)
        done.append(got)
        bad += [f"{e.path} ({problem})"] if problem else []
    return done, missing, bad


def unchanged(e: FileEntry | None, path: Path) -> FileEntry | None:
    """`e` if it was verified and the file still has its size and mtime (no re-hash), else None."""
    try:
        st = path.stat()
    except OSError:
        return None
    if e is not None and e.verified and (st.st_size, st.st_mtime_ns) == (e.size, e.mtime_ns):
        return e
    return None


def discard(path: Path) -> None:
    """Delete a file that failed verification; for a cache pointer, also the blob(s) it links to."""
    hops = [path]
    while hops[-1].is_symlink() and len(hops) < 8:
        hops.append(hops[-1].parent / os.readlink(hops[-1]))
    for p in hops:
        p.unlink(missing_ok=True)
