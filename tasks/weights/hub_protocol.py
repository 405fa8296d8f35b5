"""Server side of the Hugging Face Hub HTTP API subset that ``huggingface_hub.snapshot_download`` uses.

Stdlib only, no ``tasks`` imports (uploaded to hosts together with ``peer_server.py``).
Used by ``peer_server.py`` (a host serving its verified copy to other hosts) and by the lab's hub
stand-in. Routes, as huggingface_hub 2.x calls them:

- ``GET /api/models/{repo}`` and ``GET /api/models/{repo}/revision/{rev}[?blobs=True]``: repo info,
  ``sha`` = commit, ``siblings[]`` with ``rfilename``, ``size``, ``blobId`` and ``lfs.{sha256,size}``.
- ``GET /api/models/{repo}/tree/{rev}[/{path}]?recursive=True``: tree entries
  ``{"type": "file", "path", "size", "oid", "lfs": {"oid": sha256, "size", "pointerSize"}}``.
- ``HEAD|GET /{repo}/resolve/{rev}/{path}``: file bytes with ``ETag``, ``X-Repo-Commit``,
  ``X-Linked-Etag``/``X-Linked-Size`` (LFS files), ``Accept-Ranges`` and single-range ``206`` answers,
  which the client uses to resume a cut transfer.

Errors carry ``X-Error-Code`` (``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``) or, for a
wrong token, ``401`` with ``X-Error-Message: Invalid credentials in Authorization header`` -- the
headers huggingface_hub maps to its exception classes.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qs, unquote, urlsplit

#: Bytes written per send call when streaming a file.
SEND_CHUNK = 256 * 1024

_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")


class HubError(Exception):
    """An HTTP error answer: status, hub error code (X-Error-Code) and message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass
class FileEntry:
    """One file of a repository snapshot as the server describes it."""

    path: str
    size: int
    abspath: Path
    sha256: str | None = None  # set for LFS files (and every file a peer serves)
    blob_id: str | None = None  # git blob sha1 for non-LFS files
    lfs: bool = True


@dataclass
class Snapshot:
    """A repository at one commit."""

    repo_id: str
    commit: str
    files: dict[str, FileEntry] = field(default_factory=dict)


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """Parse a single ``Range: bytes=a-b`` header into an inclusive (start, end); None = whole file.

    Raises :class:`HubError` 416 when the range cannot be satisfied.
    """
    if not header:
        return None
    m = _RANGE_RE.match(header.strip())
    if not m or (m.group(1) == "" and m.group(2) == ""):
        return None  # multi-range or garbage: answer the whole file, as many servers do
    if m.group(1) == "":
        length = int(m.group(2))
        if length == 0:
            raise HubError(416, "RangeNotSatisfiable", "empty suffix range")
        return max(0, size - length), size - 1
    start = int(m.group(1))
    end = int(m.group(2)) if m.group(2) else size - 1
    if start >= size or end < start:
        raise HubError(416, "RangeNotSatisfiable", f"range {header} outside 0-{size - 1}")
    return start, min(end, size - 1)


def model_info_json(snap: Snapshot, *, blobs: bool) -> dict[str, Any]:
    """Body of ``GET /api/models/{repo}/revision/{rev}``."""
    siblings = []
    for entry in sorted(snap.files.values(), key=lambda e: e.path):
        sib: dict[str, Any] = {"rfilename": entry.path}
        if blobs:
            sib["size"] = entry.size
            sib["blobId"] = entry.blob_id or (entry.sha256 or "")[:40]
            if entry.lfs and entry.sha256:
                sib["lfs"] = {"size": entry.size, "sha256": entry.sha256, "pointerSize": 134}
        siblings.append(sib)
    return {
        "_id": snap.repo_id,
        "id": snap.repo_id,
        "modelId": snap.repo_id,
        "sha": snap.commit,
        "private": False,
        "gated": False,
        "disabled": False,
        "tags": [],
        "siblings": siblings,
    }


def tree_json(snap: Snapshot, prefix: str, recursive: bool) -> list[dict[str, Any]]:
    """Body of ``GET /api/models/{repo}/tree/{rev}[/{prefix}]``."""
    prefix = prefix.strip("/")
    out: list[dict[str, Any]] = []
    dirs: set[str] = set()
    for entry in sorted(snap.files.values(), key=lambda e: e.path):
        if prefix and not entry.path.startswith(prefix + "/"):
            continue
        rel = entry.path[len(prefix) + 1 :] if prefix else entry.path
        if "/" in rel and not recursive:
            dirs.add((prefix + "/" if prefix else "") + rel.split("/", 1)[0])
            continue
        parts = entry.path.split("/")
        for i in range(len(prefix.split("/")) if prefix else 0, len(parts) - 1):
            if recursive:
                dirs.add("/".join(parts[: i + 1]))
        item: dict[str, Any] = {
            "type": "file",
            "path": entry.path,
            "size": entry.size,
            "oid": entry.blob_id or (entry.sha256 or "")[:40],
        }
        if entry.lfs and entry.sha256:
            item["lfs"] = {"oid": entry.sha256, "size": entry.size, "pointerSize": 134}
        out.append(item)
    out.extend({"type": "directory", "path": d, "oid": "0" * 40, "size": 0} for d in sorted(dirs))
    return out


def split_repo(parts: list[str]) -> tuple[str, list[str]]:
    """Take ``owner/name`` off the front of URL path segments."""
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise HubError(404, "RepoNotFound", "repository id must be owner/name")
    return f"{parts[0]}/{parts[1]}", parts[2:]


class HfApiHandler(BaseHTTPRequestHandler):
    """Request handler speaking the HF API subset; subclasses provide the data.

    Subclasses implement :meth:`resolve` and may override :meth:`check_auth`, :meth:`count_bytes`
    and :meth:`cut_after` (a fault hook: number of body bytes after which to drop the connection).
    """

    protocol_version = "HTTP/1.1"
    server_version = "llmfleet-hub-protocol/1"

    # -- hooks -------------------------------------------------------------------------------
    def resolve(self, repo_id: str, revision: str) -> Snapshot:  # pragma: no cover - abstract
        raise NotImplementedError

    def check_auth(self) -> None:
        """Raise HubError(401) when the request is not authorised. Default: open."""

    def count_bytes(self, repo_id: str, entry: FileEntry, n: int) -> None:
        """Called with the number of file-body bytes actually written."""

    def cut_after(self, repo_id: str, entry: FileEntry) -> int | None:
        """Return N to close the connection after N body bytes of this response (fault injection)."""
        return None

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        if os.environ.get("LLMFLEET_HTTP_LOG"):
            super().log_message(format, *args)

    # -- helpers -----------------------------------------------------------------------------
    def send_json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def send_hf_error(self, err: HubError) -> None:
        headers = {"X-Error-Message": err.message}
        if err.code:
            headers["X-Error-Code"] = err.code
        self.send_json(err.status, {"error": err.message}, headers)

    def send_file(self, repo_id: str, snap: Snapshot, entry: FileEntry, extra: dict[str, str]) -> None:
        """Stream ``entry`` honouring a single Range; count bytes; apply the cut fault."""
        rng = parse_range(self.headers.get("Range"), entry.size)
        start, end = rng if rng else (0, entry.size - 1)
        length = max(0, end - start + 1)
        self.send_response(206 if rng else 200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(length))
        self.send_header("Accept-Ranges", "bytes")
        if rng:
            self.send_header("Content-Range", f"bytes {start}-{end}/{entry.size}")
        for k, v in extra.items():
            self.send_header(k, v)
        self.end_headers()
        if self.command == "HEAD" or length == 0:
            return
        cut = self.cut_after(repo_id, entry)
        remaining = length if cut is None else min(length, cut)
        chunk = SEND_CHUNK
        with open(entry.abspath, "rb") as fh:
            fh.seek(start)
            while remaining > 0:
                block = fh.read(min(chunk, remaining))
                if not block:
                    break
                try:
                    self.wfile.write(block)
                except OSError:
                    self.close_connection = True
                    return
                self.count_bytes(repo_id, entry, len(block))
                remaining -= len(block)
        if cut is not None and cut < length:
            self.wfile.flush()
            self.close_connection = True
            try:
                import socket

                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    # -- HF routes ---------------------------------------------------------------------------
    def handle_hf(self) -> bool:
        """Serve the request if it is an HF API route; return False when the path is not one."""
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        parts = [unquote(p) for p in url.path.split("/")[1:]]
        if parts[:2] == ["api", "models"]:
            self.check_auth()
            repo_id, rest = split_repo(parts[2:])
            if not rest:
                snap = self.resolve(repo_id, "main")
                self.send_json(200, model_info_json(snap, blobs="blobs" in query))
                return True
            if rest[0] == "revision" and len(rest) >= 2:
                snap = self.resolve(repo_id, "/".join(rest[1:]))
                blobs = query.get("blobs", ["false"])[0].lower() == "true"
                self.send_json(200, model_info_json(snap, blobs=blobs))
                return True
            if rest[0] == "tree" and len(rest) >= 2:
                snap = self.resolve(repo_id, rest[1])
                recursive = query.get("recursive", ["false"])[0].lower() == "true"
                self.send_json(200, tree_json(snap, "/".join(rest[2:]), recursive))
                return True
            raise HubError(404, "", f"no route {url.path}")
        if len(parts) >= 5 and parts[2] == "resolve":
            self.check_auth()
            repo_id, rest = split_repo(parts)
            snap = self.resolve(repo_id, rest[1])
            filename = "/".join(rest[2:])
            entry = snap.files.get(filename)
            if entry is None:
                raise HubError(404, "EntryNotFound", f"{filename} not in {repo_id}@{snap.commit}")
            etag = entry.sha256 if entry.lfs and entry.sha256 else (entry.blob_id or entry.sha256 or "")
            extra = {"ETag": f'"{etag}"', "X-Repo-Commit": snap.commit}
            if entry.lfs and entry.sha256:
                extra["X-Linked-Etag"] = f'"{entry.sha256}"'
                extra["X-Linked-Size"] = str(entry.size)
            self.send_file(repo_id, snap, entry, extra)
            return True
        return False

    def dispatch(self, routes: list[Callable[[], bool]]) -> None:
        """Try each route; translate HubError into an HF-style error answer; 404 otherwise."""
        try:
            for route in routes:
                if route():
                    return
            raise HubError(404, "", f"no route {self.path}")
        except HubError as err:
            self.send_error_for(err)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def send_error_for(self, err: HubError) -> None:
        """Hook to format errors (the stand-in answers ModelScope routes in ModelScope's format)."""
        self.send_hf_error(err)

    def do_HEAD(self) -> None:  # noqa: N802 - stdlib naming
        self.handle_request()

    def do_GET(self) -> None:  # noqa: N802
        self.handle_request()

    def handle_request(self) -> None:
        self.dispatch([self.handle_hf])
