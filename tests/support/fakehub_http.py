"""The fake hub's HTTP side: routes each request (fakehub.py's docstring lists them) to the
repo listings and blobs of the FakeHub that owns the server, applying its faults and logging
every answer. The records it serves (Blob) and logs (Hit) live here too, so that fakehub.py imports
this module and not the other way round (the FakeHub it serves is only a type here)."""
from __future__ import annotations

import io
import json
import sys
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

if TYPE_CHECKING:
    from tests.support.fakehub import FakeHub

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
                "pointerSize": len(lfs_pointer(self.sha256, self.size))} if self.sha256 else None

    def entry(self) -> dict[str, Any]:
        e = {"type": "file", "path": self.path, "size": self.size, "oid": self.oid}
        return e | ({"lfs": self.lfs()} if self.sha256 else {})



@dataclass
class Hit:
    """One request, logged when its answer starts; `file` is set when it was about a repo file."""

    method: str
    path: str
    status: int
    file: str | None = None
    sent: int = 0  # file bytes sent



def lfs_pointer(sha256: str | None, size: int) -> bytes:
    return (f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\n"
            f"size {size}\n").encode()


class Handler(BaseHTTPRequestHandler):
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
