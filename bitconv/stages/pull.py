"""Stage pull: a Hugging Face repo id -> a local snapshot in which every file is verified.

Built on huggingface_hub 2.x, which checks only byte counts (shared/reference/hf.md §3.4), so
bitconv checks contents, against one commit throughout:
  1. HfApi.model_info(repo, revision, files_metadata=True): the commit sha and the listing (size,
     git blob id, LFS sha256) in one answer. (/tree would be a second request, and it takes no
     timeout in huggingface_hub 2.4: a stalled hub would hang it forever.)
  2. Any path that could leave the target (`../x`, `/etc/x`) refuses the whole listing; select what
     conversion needs (snapshot.DEFAULT_INCLUDE) or the --include globs.
  3. Per file: reuse it if the manifest verified it and its size and mtime are unchanged, else hash
     it; fetch what is missing or wrong with hf_hub_download(revision=sha); a mismatch is deleted
     and fetched once more, then reported. The manifest is written before the first transfer and
     after each file; refs/<revision> as huggingface_hub writes it.
A second pull of a complete snapshot transfers no file contents (one API call for a branch, none
for a sha). Offline (--offline, HF_HUB_OFFLINE=1) reads refs/ and the manifest only. A killed pull
keeps its verified files; a half-downloaded one restarts (huggingface_hub >= 1.18 keeps no partial
files across runs, and retries dropped transfers itself within one).

Read at each call: HF_ENDPOINT, HF_HUB_CACHE or HF_HOME, HF_TOKEN, HF_HUB_OFFLINE and
HF_HUB_ETAG_TIMEOUT (seconds to wait for metadata, default 10). huggingface_hub reads
HF_HUB_DOWNLOAD_TIMEOUT (how long a transfer may stall) when it is imported.
"""
from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bitconv import __version__
from bitconv.containers.atomic import replace_text
from bitconv.errors import BitconvError, NetworkError, PullError
from bitconv.stages.snapshot import (
    SHA,
    FileEntry,
    Snapshot,
    check,
    discard,
    from_cache,
    pick,
    strays,
    unchanged,
    unsafe,
)

REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}")


@dataclass(frozen=True)
class HubSettings:
    """Where and how to reach the hub, from the environment as huggingface_hub reads it."""

    endpoint: str
    cache_dir: Path
    token: str | None
    offline: bool
    timeout: float  # seconds to wait for metadata (API calls, HEAD)

    @classmethod
    def from_env(cls) -> HubSettings:
        from huggingface_hub import constants

        env = os.environ
        home = env.get("HF_HOME") or os.path.join(env.get("XDG_CACHE_HOME", "~/.cache"),
                                                  "huggingface")
        try:
            timeout = float(env.get("HF_HUB_ETAG_TIMEOUT") or 10)
        except ValueError:
            raise PullError(f"HF_HUB_ETAG_TIMEOUT={env['HF_HUB_ETAG_TIMEOUT']!r} "
                            "is not a number of seconds") from None
        offline = (env.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")
                   or constants.is_offline_mode())  # as huggingface_hub saw it at import
        return cls((env.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/"),
                   Path(os.path.expanduser(env.get("HF_HUB_CACHE") or os.path.join(home, "hub"))),
                   env.get("HF_TOKEN") or None, offline, timeout)


@dataclass(frozen=True)
class Source:
    """What `pack` reads: a local checkpoint directory, or a repo pulled and verified for it."""

    path: Path
    repo: str | None = None


def is_repo_id(s: str) -> bool:
    return bool(REPO_ID.fullmatch(s)) and ".." not in s and "--" not in s


def resolve_source(src: str | Path, *, progress: bool = False) -> Source:
    """An existing path is used as is; otherwise `owner/name` is pulled (HF cache) and verified.

    Example:
        >>> resolve_source("microsoft/bitnet-b1.58-2B-4T").path
        PosixPath('/root/.cache/huggingface/hub/models--microsoft--bitnet-b1.58-2B-4T/snapshots/…')
    """
    p = Path(src)
    if p.exists() or not is_repo_id(str(src)):
        return Source(p)  # a missing local path is reported by the stage that reads it
    return Source(pull(str(src), progress=progress).path, str(src))


def pull(repo_id: str, *, revision: str | None = None, local_dir: str | Path | None = None,
         include: Sequence[str] | None = None, offline: bool = False,
         progress: bool = False) -> Snapshot:
    """Download what conversion needs from `repo_id` at one commit, and verify every file.

    Args:
        repo_id: `owner/name` on the hub (HF_ENDPOINT, default https://huggingface.co).
        revision: branch, tag or 40-hex commit (default "main"); resolved to a sha and recorded.
        local_dir: real files in this directory instead of the HF cache (HF_HUB_CACHE / HF_HOME).
        include: fnmatch globs to fetch instead of snapshot.DEFAULT_INCLUDE.
        offline: use only what is cached (also HF_HUB_OFFLINE=1); names what is missing.
        progress: draw a byte progress bar on stderr.
    Returns:
        The verified Snapshot (`.path` is the directory to pack); its manifest is on disk.
    Raises:
        PullError (exit 1): unknown repo or revision, gated, unsafe listing, missing offline.
        NetworkError (exit 4): unreachable, timed out, HTTP 5xx, dropped or corrupt transfers.
    Example:
        >>> pull("microsoft/bitnet-b1.58-2B-4T-bf16").path.name   # the commit sha
        '1e107bd9886d57856c62a9c776acd94288a6f5ce'
    """
    if not is_repo_id(repo_id):
        raise PullError(f"{repo_id!r} is not a Hugging Face repo id (owner/name)")
    job = _Pull(repo_id, revision or "main", local_dir, include, HubSettings.from_env(), progress)
    return job.offline() if offline or job.s.offline else job.online()


class _Pull:
    """One pull: its repo, revision and settings, shared by the steps and the error messages."""

    def __init__(self, repo: str, rev: str, local_dir: str | Path | None,
                 include: Sequence[str] | None, s: HubSettings, progress: bool) -> None:
        self.repo, self.rev, self.s, self.progress = repo, rev, s, progress
        self.local_dir = Path(local_dir) if local_dir is not None else None
        self.include = tuple(include) if include else None
        self.storage = s.cache_dir / ("models--" + repo.replace("/", "--"))
        self.sha = ""

    @property
    def who(self) -> str:
        return f"{self.repo}@{self.sha[:7]}" if self.sha else self.repo

    def target(self, sha: str) -> Path:
        return self.local_dir if self.local_dir is not None else self.storage / "snapshots" / sha

    def online(self) -> Snapshot:
        if SHA.fullmatch(self.rev) and (done := self._already(self.target(self.rev))):
            return done  # a pinned commit, verified before and unchanged: no network at all
        with self._errors():
            self.sha, listing = self._listing()
        target = self.target(self.sha)
        wanted = pick(listing, self.include, self.who)
        old = Snapshot.read(target)
        prev = ({f.path: f for f in old.files}
                if old is not None and (old.repo, old.sha) == (self.repo, self.sha) else {})
        snap = Snapshot(target, self.repo, self.rev, self.sha, self.s.endpoint, self.include,
                        tuple(_reuse(prev.get(e.path), e, target) or e for e in wanted))
        if stray := strays(target, {e.path for e in wanted}, self.include):
            raise PullError(f"{target / stray[0]} is not part of {self.who}: remove it, "
                            "or pull into an empty --local-dir")
        if not (snap.complete and old is not None and snap.to_dict() == old.to_dict()):
            with self._errors():  # local disk errors (full, read-only) as one line
                target.mkdir(parents=True, exist_ok=True)
                snap.write()  # before any transfer: an interrupted or offline pull knows it
                self._write_ref()
                snap = self._fetch_all(snap)
        self._write_ref()
        return snap

    def _already(self, target: Path) -> Snapshot | None:
        snap = Snapshot.read(target)
        if (snap is None or not snap.complete
                or (snap.repo, snap.sha, snap.include) != (self.repo, self.rev, self.include)
                or strays(target, {f.path for f in snap.files}, self.include)):
            return None
        ok = all(unchanged(f, target / f.path) for f in snap.files)
        return replace(snap, revision=self.rev) if ok else None

    def _listing(self) -> tuple[str, list[FileEntry]]:
        from huggingface_hub import HfApi

        api = HfApi(endpoint=self.s.endpoint, token=self.s.token, library_name="bitconv",
                    library_version=__version__)
        info = api.model_info(self.repo, revision=self.rev, files_metadata=True,
                              timeout=self.s.timeout)
        if not SHA.fullmatch(info.sha or ""):
            raise PullError(f"{self.repo}: {self.s.endpoint} named no commit for {self.rev!r}; "
                            "is HF_ENDPOINT a Hugging Face hub?")
        self.sha = str(info.sha)
        out = []
        for x in info.siblings or []:
            if unsafe(x.rfilename):
                raise PullError(f"{self.who}: the hub lists an unsafe path {x.rfilename!r}; "
                                "refusing to pull from it")
            if x.lfs is None and (x.size is None or not x.blob_id):
                raise PullError(f"{self.who}: the hub lists {x.rfilename} without size and blob "
                                "id, so it cannot be verified")
            out.append(FileEntry(x.rfilename, x.lfs.size if x.lfs else int(x.size or 0),
                                 x.blob_id or "", x.lfs is not None,
                                 x.lfs.sha256 if x.lfs else None))
        return self.sha, out

    def _fetch_all(self, snap: Snapshot) -> Snapshot:
        from tqdm import tqdm

        files = list(snap.files)
        with tqdm(total=sum(f.size for f in files), desc=f"pull {self.repo}", unit="B",
                  unit_scale=True, file=sys.stderr, disable=not self.progress, leave=False) as bar:
            for i, e in enumerate(files):
                before = bar.n
                if not e.verified:
                    files[i] = self._fetch(e, snap.path / e.path, bar)
                    snap = replace(snap, files=tuple(files))
                    snap.write()  # a verified file survives an interruption of the next one
                bar.update(max(0, e.size - (bar.n - before)))  # bytes not seen as transfers
        return snap

    def _fetch(self, e: FileEntry, local: Path, bar: Any) -> FileEntry:
        if local.exists():  # left by an earlier run or another tool: hash before trusting it
            got, problem = check(e, local)
            if problem is None:
                return got
        self._discard(local)  # a wrong file, or a cache pointer whose blob is gone
        for attempt in (1, 2):
            self._download(e, force=attempt == 2, bar=bar)
            got, problem = check(e, local)
            if problem is None:
                return got
            self._discard(local)
            bar.total += e.size
        raise NetworkError(f"{self.who}: {e.path}: {problem} after a second download; deleted it "
                           "(the hub, a mirror or a proxy serves corrupt bytes)")

    def _download(self, e: FileEntry, force: bool, bar: Any) -> None:
        from huggingface_hub import hf_hub_download
        from tqdm import tqdm

        class Feed(tqdm):  # type: ignore[misc]  # huggingface_hub's per-file bar feeds ours
            def __init__(self, *a: Any, **kw: Any) -> None:
                super().__init__(*a, **{**kw, "disable": True})

            def update(self, n: float | None = 1) -> bool | None:
                return bar.update(n or 0)  # type: ignore[no-any-return]

        with self._errors(e.path):
            hf_hub_download(self.repo, e.path, revision=self.sha, cache_dir=self.s.cache_dir,
                            local_dir=self.local_dir, endpoint=self.s.endpoint, token=self.s.token,
                            etag_timeout=self.s.timeout, force_download=force, tqdm_class=Feed,
                            library_name="bitconv")

    def _discard(self, local: Path) -> None:
        discard(local)
        if self.local_dir is not None:  # huggingface_hub's record of the file, now wrong
            rel = local.relative_to(self.local_dir).as_posix()
            meta = self.local_dir / ".cache/huggingface/download" / f"{rel}.metadata"
            meta.unlink(missing_ok=True)

    def _write_ref(self) -> None:
        """Record revision -> sha as huggingface_hub does (best effort: read-only caches)."""
        ref = self.storage / "refs" / self.rev
        if self.local_dir is not None or self.rev == self.sha or unsafe(self.rev):
            return
        try:
            if not ref.is_file() or ref.read_text() != self.sha:
                ref.parent.mkdir(parents=True, exist_ok=True)
                replace_text(ref, self.sha)
        except OSError:
            pass

    def offline(self) -> Snapshot:
        return from_cache(self.repo, self.rev, self.local_dir, self.storage, self.include)

    @contextmanager
    def _errors(self, file: str | None = None) -> Iterator[None]:
        """Turn huggingface_hub's and httpx's exceptions into one-line bitconv errors."""
        try:
            yield
        except BitconvError:
            raise
        except Exception as e:
            err = self._translate(e, f"{self.who}: {file}" if file else self.who, file is not None)
            if err is None:
                raise  # not a known hub or network failure: a bug, keep the traceback
            raise err from e

    def _translate(self, e: BaseException, where: str, transfer: bool) -> BitconvError | None:
        import httpx2
        from huggingface_hub import errors as hf

        host = urlsplit(self.s.endpoint).netloc
        chain: list[BaseException] = [e]  # huggingface_hub often wraps the cause
        while (nxt := chain[-1].__cause__ or chain[-1].__context__) and len(chain) < 8:
            chain.append(nxt)
        for x in chain:
            resp = getattr(x, "response", None)
            code = getattr(resp, "status_code", None)
            if resp is not None:  # who answered: the hub, or the CDN it redirected to
                host = urlsplit(str(resp.url)).netloc or host
            if isinstance(x, hf.GatedRepoError):
                return PullError(f"{self.repo} is gated (HTTP {code}): accept its conditions on "
                                 "the model page, then set HF_TOKEN to a token of that account")
            if isinstance(x, hf.RepositoryNotFoundError):
                return PullError(f"{self.repo}: no such model on {self.s.endpoint} (if it is "
                                 "private, set HF_TOKEN to a token that can read it)")
            if isinstance(x, hf.RevisionNotFoundError):
                return PullError(f"{self.repo}: no revision {self.rev!r} on {self.s.endpoint}")
            if isinstance(x, hf.FileMetadataError):
                return PullError(f"{where}: {host} does not answer like a Hugging Face hub "
                                 "(no X-Repo-Commit); check HF_ENDPOINT")
            if isinstance(x, hf.HfHubHTTPError) and code in (401, 403):
                return PullError(f"{where}: {host} refused access (HTTP {code}); check that "
                                 f"HF_TOKEN is set and may read {self.repo}")
            if isinstance(x, hf.HfHubHTTPError) and code is not None:
                return NetworkError(f"{where}: {host} answered HTTP {code}; try again later")
            if isinstance(x, httpx2.TimeoutException):
                return NetworkError(
                    f"{where}: the transfer stalled (HF_HUB_DOWNLOAD_TIMEOUT) and did not "
                    "resume; pull again: verified files are kept" if transfer else
                    f"{where}: no answer from {host} within {self.s.timeout:g} s "
                    "(HF_HUB_ETAG_TIMEOUT); try again later, or raise the timeout")
            if isinstance(x, httpx2.ConnectError):
                return NetworkError(f"{where}: cannot connect to {host} "
                                    f"({str(x).splitlines()[0]}); check the network and "
                                    "HF_ENDPOINT, or pull with --offline")
            if isinstance(x, httpx2.TransportError):
                return NetworkError(f"{where}: the connection kept dropping and the transfer "
                                    "could not resume; pull again: verified files are kept")
        if isinstance(e, OSError) and e.errno is None:  # e.g. "Consistency check failed: …"
            return NetworkError(f"{where}: {str(e).splitlines()[0]}")
        if isinstance(e, OSError):  # the local disk: full, read-only, permissions
            return PullError(f"{where}: {e.strerror}: {e.filename}")
        return None


def _reuse(prev: FileEntry | None, e: FileEntry, target: Path) -> FileEntry | None:
    """The manifest's verified entry for `e`, if the hub lists the same file and it is intact."""
    return unchanged(prev, target / e.path) if prev is not None and prev.same_remote(e) else None
