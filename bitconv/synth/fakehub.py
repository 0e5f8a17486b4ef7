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
import json
import os
import signal
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from collections.abc import Mapping
from typing import IO, Any, Literal
from urllib.parse import parse_qs, quote, unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".gguf", ".bin", ".model", ".pt", ".npy")
CHUNK = 1 << 16


@dataclass(frozen=True)
class Blob:
    """One file of a repo: on disk (`file`) or in memory (`data`, e.g. for hostile listings)."""

    path: str
    size: int
    oid: str            # git blob sha1 as the Hub lists it (of the LFS pointer, for LFS files)
    sha256: str | None  # content sha256, for LFS files
    file: Path | None = None
    data: bytes | None = None

    def open(self) -> IO[bytes]:
        return open(self.file, "rb") if self.file is not None else io.BytesIO(self.data or b"")

    def lfs(self) -> dict[str, Any] | None:
        return {"oid": self.sha256, "size": self.size,
                "pointerSize": len(_pointer(self.sha256, self.size))} if self.sha256 else None

    def entry(self) -> dict[str, Any]:
        e = {"type": "file", "path": self.path, "size": self.size, "oid": self.oid}
        return e | ({"lfs": self.lfs()} if self.sha256 else {})


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
class Hit:
    """One request, logged when its answer starts; `file` is set when it was about a repo file."""

    method: str
    path: str
    status: int
    file: str | None = None
    sent: int = 0  # file bytes sent


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

    def start(self) -> FakeHub:
        self._server = ThreadingHTTPServer((self.host, self.port), _Handler)
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

    def __enter__(self) -> FakeHub:
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
    pointer = _pointer(h.hexdigest(), size)  # git holds the LFS pointer: its id is what /tree lists
    oid = hashlib.sha1(b"blob %d\0" % len(pointer) + pointer).hexdigest()
    return Blob(path, size, oid, h.hexdigest(), file, data)


def _pointer(sha256: str | None, size: int) -> bytes:
    return (f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\n"
            f"size {size}\n").encode()


class _Handler(BaseHTTPRequestHandler):
    server_version = "fakehub/1"

    @property
    def hub(self) -> FakeHub:
        return self.server.hub  # type: ignore[attr-defined,no-any-return]

    def log_message(self, format: str, *args: Any) -> None:
        if self.hub.verbose:
            sys.stderr.write(f"fakehub: {format % args}\n")

    def do_GET(self) -> None:
        self._route("GET")

    def do_HEAD(self) -> None:
        self._route("HEAD")

    def do_POST(self) -> None:
        self._route("POST")

    def _route(self, method: str) -> None:
        url = urlsplit(self.path)
        path, query = unquote(url.path), parse_qs(url.query)
        is_file = "/resolve/" in path or path.startswith("/_cdn/")  # files stall in _stream
        f = self.hub._fault(("status",) if is_file else ("status", "stall"), method, path)
        if f is not None and f.kind == "status":
            return self._error(method, path, f.status, f.error_code)
        if f is not None:  # a stalled API call: no answer at all
            self.hub._record(Hit(method, path, 0))
            self.hub.closing.wait(f.seconds)
            self.close_connection = True
            return
        p = path.strip("/").split("/")
        if p[:2] == ["api", "models"] and len(p) >= 4:
            return self._api(method, path, "/".join(p[2:4]), p[4:], query)
        if p[0] == "_cdn" and len(p) >= 5:
            return self._file(method, path, "/".join(p[1:3]), p[3], "/".join(p[4:]), cdn=True)
        if len(p) >= 5 and p[2] == "resolve":
            return self._file(method, path, "/".join(p[:2]), p[3], "/".join(p[4:]))
        self._error(method, path, 404, None)

    def _resolve(self, repo: str, rev: str) -> tuple[str, dict[str, Blob]] | str:
        r = self.hub.listing(repo)
        if r is None:
            return "RepoNotFound"
        return r if rev in ("main", r[0]) else "RevisionNotFound"

    def _api(self, method: str, path: str, repo: str, rest: list[str],
             query: dict[str, list[str]]) -> None:
        kind, rev = (rest[0] if rest else "revision"), (rest[1] if len(rest) > 1 else "main")
        r = self._resolve(repo, rev)
        if isinstance(r, str):
            return self._error(method, path, 404, r)
        sha, blobs = r
        if kind == "revision":  # ?blobs=true adds size, blob id and LFS info to each sibling
            meta = query.get("blobs") == ["true"]
            sib = [{"rfilename": b.path} | ({"size": b.size, "blobId": b.oid} if meta else {})
                   | ({"lfs": {"sha256": b.sha256, "size": b.size,
                               "pointerSize": (b.lfs() or {})["pointerSize"]}}
                      if meta and b.sha256 else {})
                   for b in blobs.values()]
            return self._json(method, path, {"id": repo, "sha": sha, "siblings": sib})
        if kind == "tree":
            base = "/".join(rest[2:]).rstrip("/")
            return self._json(method, path, [b.entry() for p, b in blobs.items()
                                             if not base or p.startswith(base + "/")])
        if kind == "paths-info" and method == "POST":
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
            asked = parse_qs(body).get("paths", [])
            return self._json(method, path, [blobs[p].entry() for p in asked if p in blobs])
        self._error(method, path, 404, None)

    def _file(self, method: str, path: str, repo: str, rev: str, name: str,
              cdn: bool = False) -> None:
        r = self._resolve(repo, rev)
        if isinstance(r, str):
            return self._error(method, path, 404, r)
        sha, blobs = r
        b = blobs.get(name)
        if b is None:
            return self._error(method, path, 404, "EntryNotFound", {"X-Repo-Commit": sha})
        auth = self.headers.get("Authorization")
        if not cdn and repo in self.hub.gated and auth != f"Bearer {self.hub.token}":
            msg = (f"Access to model {repo} is restricted. You must have access to it and be "
                   "authenticated to access it. Please log in." if auth is None else
                   f"Access to model {repo} is restricted and you are not in the authorized list.")
            return self._error(method, path, 401 if auth is None else 403, "GatedRepo",
                               {"X-Error-Message": msg})
        head = {"X-Repo-Commit": sha, "Accept-Ranges": "bytes"}
        if b.sha256 and not cdn:  # LFS: metadata on the redirect, bytes from "another host"
            cdn_host = "localhost" if self.hub.host == "127.0.0.1" else self.hub.host
            head |= {"Location": f"http://{cdn_host}:{self.hub.port}/_cdn/{repo}/{sha}/{quote(name)}",
                     "ETag": f'"{b.oid}"', "X-Linked-Etag": f'"{b.sha256}"',
                     "X-Linked-Size": str(b.size), "Content-Length": "0"}
            return self._send(method, path, 302, head, file=name)
        head["ETag"] = f'"{b.sha256 or b.oid}"'
        start, end, rng = 0, b.size, self.headers.get("Range")
        if rng:  # "bytes=N-" (what huggingface_hub sends on a retry) or "bytes=N-M"
            a, _, z = rng.removeprefix("bytes=").partition("-")
            try:
                start, end = int(a), (int(z) + 1 if z else b.size)
            except ValueError:
                start = -1
            if not 0 <= start <= end <= b.size:
                return self._error(method, path, 416, None)
            head["Content-Range"] = f"bytes {start}-{end - 1}/{b.size}"
        head["Content-Length"] = str(end - start)
        self._send(method, path, 206 if rng else 200, head, file=name, blob=b, span=(start, end))

    def _send(self, method: str, path: str, status: int, headers: dict[str, str], *,
              file: str | None = None, body: bytes = b"", blob: Blob | None = None,
              span: tuple[int, int] = (0, 0)) -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        hit = Hit(method, path, status, file)
        self.hub._record(hit)
        if method != "HEAD":
            if blob is not None:
                hit.sent = self._stream(method, path, blob, *span)
            else:
                self.wfile.write(body)

    def _stream(self, method: str, path: str, b: Blob, start: int, end: int) -> int:
        """Send bytes [start, end) of `b`, with at most one drop/corrupt/stall fault applied."""
        f = self.hub._fault(("drop", "corrupt", "stall"), method, path)
        at = -1 if f is None else b.size // 2 if f.offset is None else f.offset
        pos = start
        with b.open() as src:
            src.seek(start)
            while pos < end:
                n = min(CHUNK, end - pos)
                if f is not None and f.kind != "corrupt" and pos <= at < pos + n:
                    n = at - pos  # send up to the fault's offset, then drop or stall there
                    if n == 0:
                        if f.kind == "stall":
                            self.hub.closing.wait(f.seconds)
                        self.close_connection = True
                        return pos - start
                chunk = bytearray(src.read(n))
                if f is not None and f.kind == "corrupt" and pos <= at < pos + len(chunk):
                    chunk[at - pos] ^= 0xFF
                try:
                    self.wfile.write(chunk)
                except OSError:  # the client went away (e.g. it timed out on a stall)
                    return pos - start
                pos += len(chunk)
        return pos - start

    def _json(self, method: str, path: str, obj: Any) -> None:
        body = json.dumps(obj).encode()
        self._send(method, path, 200, {"Content-Type": "application/json",
                                       "Content-Length": str(len(body))}, body=body)

    def _error(self, method: str, path: str, status: int, code: str | None,
               extra: dict[str, str] | None = None) -> None:
        body = json.dumps({"error": code or "error"}).encode()
        head = {"Content-Type": "application/json", "Content-Length": str(len(body))}
        head |= ({"X-Error-Code": code} if code else {}) | (extra or {})
        self._send(method, path, status, head, body=body)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bitconv.synth.fakehub",
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
