"""A local stand-in for the Hugging Face Hub: the HTTP endpoints huggingface_hub 2.4 calls, served
from plain directories, with a request log and switchable faults. For the tests and `make demo`.

Spec: shared/reference/hf.md §3.3 (recorded trace) and §3.8. Routes:

  GET  /api/models/{org}/{name}[/revision/{rev}][?blobs=true]  {"id", "sha", "siblings": [...]}
  GET  /api/models/{org}/{name}/tree/{rev}[/{dir}]             [{"type": "file", "path", "size",
                                                                 "oid", "lfs"?}] (recursive)
  POST /api/models/{org}/{name}/paths-info/{rev}               the same, for the paths asked
  HEAD|GET /{org}/{name}/resolve/{rev}/{path}                  the bytes (Range ok); LFS files
                                                               302 to the "CDN" below
  HEAD|GET /_cdn/{org}/{name}/{sha}/{path}                     on host "localhost": another host
                                                               for the client, as the real CDN is
  anything else                                                404 (e.g. /api/agent-harnesses)

A repo's commit sha is the sha1 of its sorted "path NUL git-blob-id LF" lines, so it changes exactly
when a file does; its one branch is "main". Files named like LFS files (*.safetensors, ...) are
listed with `lfs: {oid: sha256, size, pointerSize}` and answered with `X-Linked-Etag`/`-Size`.
No `xetHash` or Xet headers are sent, so clients download over plain HTTP.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import os
import signal
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal, Self

from tests.support.fakehub_http import Blob, Handler, Hit, lfs_pointer

LFS_SUFFIXES = (".safetensors", ".gguf", ".bin", ".model", ".pt", ".npy")


@dataclass
class Fault:
    """A misbehaviour for the requests whose path contains `match` (and are `method`, if set).

    status: answer `status`, with `X-Error-Code: error_code`. drop: close the connection when the
    body reaches file offset `offset`. corrupt: flip the byte at `offset`. stall: send nothing for
    `seconds` (API calls: no answer at all; files: from `offset` on). `offset` None = mid-file.
    `times`: how many requests it hits (None = all of them).
    """

    kind: Literal["status", "drop", "corrupt", "stall"]
    match: str = ""
    method: str | None = None
    times: int | None = None
    status: int = 500
    error_code: str | None = None
    offset: int | None = None
    seconds: float = 60.0


@dataclass
class FakeHub:
    """`with FakeHub(root) as hub:` serves root/<org>/<name>/ (or {repo_id: dir}) at `hub.url`."""

    repos: Path | Mapping[str, Path]
    host: str = "127.0.0.1"
    port: int = 0
    gated: set[str] = field(default_factory=set)  # repos whose files need `token`
    token: str | None = None
    verbose: bool = False
    faults: list[Fault] = field(default_factory=list)
    log: list[Hit] = field(default_factory=list)
    extra: dict[str, dict[str, bytes]] = field(default_factory=dict)  # repo -> {path: bytes}

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._listings: dict[str, tuple[str, dict[str, Blob]]] = {}
        self.closing = threading.Event()  # set on stop: releases stalled requests
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> Self:
        self._server = ThreadingHTTPServer((self.host, self.port), Handler)
        self._server.daemon_threads = True
        self._server.hub = self  # type: ignore[attr-defined]
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def stop(self) -> None:
        self.closing.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def inject(self, kind: str, **kw: Any) -> Fault:
        """Add a Fault, e.g. `hub.inject("corrupt", match="model.safetensors", times=1)`."""
        f = Fault(kind, **kw)  # type: ignore[arg-type]
        with self._lock:
            self.faults.append(f)
        return f

    def add_file(self, repo: str, path: str, data: bytes) -> None:
        """List (and serve) an extra file under any path, however hostile."""
        self.extra.setdefault(repo, {})[path] = data
        self.reload()

    def reload(self) -> None:
        """Forget the listings, after files changed on disk (a new commit on main)."""
        with self._lock:
            self._listings.clear()

    def commit(self, repo: str) -> str:
        listing = self.listing(repo)
        assert listing is not None, repo
        return listing[0]

    def files_served(self, method: str = "GET") -> list[str]:
        """Repo paths of the requests for file contents (GET) or file metadata (HEAD)."""
        return [h.file for h in self.log if h.method == method and h.file is not None]

    def listing(self, repo: str) -> tuple[str, dict[str, Blob]] | None:
        """(commit sha, {path: Blob}) of `repo`, or None if it is not served."""
        with self._lock:
            if repo in self._listings:
                return self._listings[repo]
        root = (self.repos.get(repo) if isinstance(self.repos, Mapping)
                else self.repos / repo if repo.count("/") == 1 and ".." not in repo else None)
        if root is None or not Path(root).is_dir():
            return None
        blobs = {}
        for p in sorted(Path(root).rglob("*")):
            if p.is_file() and ".git" not in p.parts:
                rel = p.relative_to(root).as_posix()
                blobs[rel] = _blob(rel, file=p)
        blobs.update({k: _blob(k, data=v) for k, v in self.extra.get(repo, {}).items()})
        lines = b"".join(b"%s\0%s\n" % (k.encode(), b.oid.encode())
                         for k, b in sorted(blobs.items()))
        with self._lock:
            self._listings[repo] = (hashlib.sha1(lines).hexdigest(), blobs)
            return self._listings[repo]

    def _fault(self, kinds: tuple[str, ...], method: str, path: str) -> Fault | None:
        with self._lock:
            for f in self.faults:
                if (f.kind in kinds and f.match in path and f.method in (None, method)
                        and f.times != 0):
                    f.times = None if f.times is None else f.times - 1
                    return f
        return None

    def _record(self, hit: Hit) -> None:
        with self._lock:
            self.log.append(hit)


def _blob(path: str, *, file: Path | None = None, data: bytes | None = None) -> Blob:
    size = file.stat().st_size if file is not None else len(data or b"")
    h, g = hashlib.sha256(), hashlib.sha1(b"blob %d\0" % size)  # git blob id: header + bytes
    with open(file, "rb") if file is not None else io.BytesIO(data or b"") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            g.update(chunk)
    if not path.endswith(LFS_SUFFIXES):
        return Blob(path, size, g.hexdigest(), None, file, data)
    pointer = lfs_pointer(h.hexdigest(), size)  # git holds the LFS pointer: its id is what /tree lists
    oid = hashlib.sha1(b"blob %d\0" % len(pointer) + pointer).hexdigest()
    return Blob(path, size, oid, h.hexdigest(), file, data)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m tests.support.fakehub",
                                 description="Serve ROOT/<org>/<name>/ as a local Hugging Face Hub "
                                             "until SIGTERM or Ctrl-C.")
    ap.add_argument("root", type=Path)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="0 (default): any free port")
    ap.add_argument("--port-file", type=Path, help="write the bound port here once listening")
    ap.add_argument("--verbose", action="store_true", help="log every request on stderr")
    args = ap.parse_args(argv)
    hub = FakeHub(args.root, host=args.host, port=args.port, verbose=args.verbose).start()
    if args.port_file:
        tmp = args.port_file.with_name(args.port_file.name + ".incomplete")
        tmp.write_text(f"{hub.port}\n")
        os.replace(tmp, args.port_file)  # a reader never sees a half-written port
    sys.stderr.write(f"fakehub: serving {args.root} at {hub.url}\n")
    signal.signal(signal.SIGTERM, lambda *_: hub.closing.set())
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C stops it as cleanly as SIGTERM
        hub.closing.wait()
    hub.stop()
    if args.port_file:
        args.port_file.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
