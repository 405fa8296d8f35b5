"""Hub stand-in: a loopback HTTP server speaking the Hugging Face Hub and ModelScope API subsets.

Stand-in for huggingface.co / modelscope.cn in tests and the lab -- not a hub. It serves
repositories from a directory tree written by ``model_repo.publish``::

    <root>/<owner>/<name>/refs.json            revision name -> commit sha
    <root>/<owner>/<name>/commits/<sha>/...     files of that commit

Routes (as the real clients call them; huggingface_hub 2.4, modelscope 1.40 / modelscope-hub 0.5):

- Hugging Face: see ``tasks.weights.hub_protocol`` (``/api/models/..``, ``/{repo}/resolve/..``).
- ModelScope:
  ``GET /api/v1/models/{repo}`` (repo info),
  ``GET /api/v1/models/{repo}/revisions`` (``RevisionMap.Branches/Tags`` with ``CommitId``),
  ``GET /api/v1/models/{repo}/repo/files?Revision=&Recursive=&Root=`` (``Data.Files[]`` with
  ``Path``, ``Name``, ``Size``, ``Sha256``, ``Type``, ``Revision``, ``IsLFS``),
  ``GET|HEAD /api/v1/models/{repo}/repo?Revision=&FilePath=`` (file bytes, Range -> 206),
  ``GET /api/v1/repos/internalAccelerationInfo`` (404: no intra-cloud acceleration).
- Control: ``GET /_standin/stats`` -> ``{"file_bytes": n, "by_client": {addr: n},
  "by_file": {"owner/name/path": n}, "requests": n}`` (hub requests, control routes not counted); ``POST /_standin/reset`` clears stats and
  faults; ``POST /_standin/faults`` with one fault object (appended):
  ``{"cut_after_bytes": N, "path": "<file path>", "times": 1}`` closes the connection after N body
  bytes; ``{"status": 500, "path": optional, "times": 1}`` answers that status;
  ``{"unknown_repo": "owner/name"}`` makes a repository look absent.

A bearer token, when configured (``--token-file``), is required on every hub route: a wrong or
missing token gets ``401`` (HF: ``X-Error-Message: Invalid credentials in Authorization header``;
ModelScope: ``{"Code": 401, ...}``). ModelScope's ``m_session_id`` cookie is accepted too.

CLI::

    python -m tasks.lab.standins.hub --bind 127.0.0.1 --port 0 --root DIR [--token-file F]

prints ``stand-in hub listening http://ADDR:PORT``.

DEFAULTS (prefix ``standin_hub_``):

- ``standin_hub_lfs_suffixes``: file suffixes served as LFS files (sha256 in listings/ETags).
- ``standin_hub_lfs_min_bytes``: files at least this large are LFS regardless of suffix.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from http.cookies import SimpleCookie
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from tasks.weights import hub_protocol as hp
from tasks.weights import manifest as mf

DEFAULTS: dict[str, Any] = {
    "standin_hub_lfs_suffixes": (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".msgpack", ".h5"),
    "standin_hub_lfs_min_bytes": 1024 * 1024,
}


class HubState:
    """Repositories on disk, hash cache, byte counters, pending faults, expected token."""

    def __init__(self, root: Path, token: str | None = None) -> None:
        self.root = root
        self.token = token
        self.lock = threading.Lock()
        self.faults: list[dict[str, Any]] = []
        self._hashes: dict[tuple[str, int, int], tuple[str, str]] = {}
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.stats: dict[str, Any] = {"file_bytes": 0, "by_client": {}, "by_file": {}, "requests": 0}
            self.faults = []

    def snapshot_stats(self) -> dict[str, Any]:
        with self.lock:
            return json.loads(json.dumps(self.stats))

    def count(self, client: str, key: str, n: int) -> None:
        with self.lock:
            self.stats["file_bytes"] += n
            self.stats["by_client"][client] = self.stats["by_client"].get(client, 0) + n
            self.stats["by_file"][key] = self.stats["by_file"].get(key, 0) + n

    def take_fault(self, kind: str, path: str | None = None) -> dict[str, Any] | None:
        """Consume one matching fault of ``kind`` (decrementing ``times``)."""
        with self.lock:
            for fault in self.faults:
                if kind not in fault:
                    continue
                want = fault.get("path")
                if want is not None and path is not None and not (path == want or path.endswith("/" + want)):
                    continue
                if want is not None and path is None:
                    continue
                times = fault.get("times", 1)
                if times is not None:
                    if times <= 0:
                        continue
                    fault["times"] = times - 1
                return dict(fault)
        return None

    def hidden(self, repo_id: str) -> bool:
        with self.lock:
            return any(f.get("unknown_repo") == repo_id for f in self.faults)

    def _hash(self, path: Path) -> tuple[str, str]:
        st = path.stat()
        key = (str(path), st.st_size, st.st_mtime_ns)
        with self.lock:
            hit = self._hashes.get(key)
        if hit is None:
            hit = (mf.sha256_file(path), mf.git_blob_sha1(path))
            with self.lock:
                self._hashes[key] = hit
        return hit

    def snapshot(self, repo_id: str, revision: str) -> hp.Snapshot:
        """Resolve revision (name or commit) of a repo; raise hp.HubError for unknown ones."""
        owner, name = repo_id.split("/", 1)
        repo_dir = self.root / owner / name
        if self.hidden(repo_id) or not (repo_dir / "refs.json").is_file():
            raise hp.HubError(404, "RepoNotFound", f"Repository {repo_id} not found")
        refs = json.loads((repo_dir / "refs.json").read_text())
        commit = refs.get(revision) or (revision if (repo_dir / "commits" / revision).is_dir() else None)
        if commit is None or len(commit) != 40:
            raise hp.HubError(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        base = repo_dir / "commits" / commit
        files: dict[str, hp.FileEntry] = {}
        for p in sorted(base.rglob("*")):
            if not p.is_file():
                continue
            rel = p.relative_to(base).as_posix()
            size = p.stat().st_size
            sha256, blob = self._hash(p)
            lfs = rel.endswith(DEFAULTS["standin_hub_lfs_suffixes"]) or size >= DEFAULTS["standin_hub_lfs_min_bytes"]
            files[rel] = hp.FileEntry(path=rel, size=size, abspath=p, sha256=sha256, blob_id=blob, lfs=lfs)
        return hp.Snapshot(repo_id=repo_id, commit=commit, files=files)

    def revisions(self, repo_id: str) -> dict[str, str]:
        owner, name = repo_id.split("/", 1)
        return json.loads((self.root / owner / name / "refs.json").read_text())


class StandinHandler(hp.HfApiHandler):
    """HF routes from hub_protocol plus ModelScope routes, control routes, auth, stats and faults."""

    server_version = "llmfleet-standin-hub/1"
    state: HubState  # bound per server

    # -- hooks for hub_protocol ----------------------------------------------------------------
    def resolve(self, repo_id: str, revision: str) -> hp.Snapshot:
        return self.state.snapshot(repo_id, revision)

    def check_auth(self) -> None:
        want = self.state.token
        if not want:
            return
        auth = self.headers.get("Authorization", "")
        cookie = SimpleCookie(self.headers.get("Cookie", ""))
        session = cookie["m_session_id"].value if "m_session_id" in cookie else None
        if auth == f"Bearer {want}" or session == want:
            return
        raise hp.HubError(401, "", "Invalid credentials in Authorization header")

    def count_bytes(self, repo_id: str, entry: hp.FileEntry, n: int) -> None:
        self.state.count(self.client_address[0], f"{repo_id}/{entry.path}", n)

    def cut_after(self, repo_id: str, entry: hp.FileEntry) -> int | None:
        fault = self.state.take_fault("cut_after_bytes", entry.path)
        return None if fault is None else int(fault["cut_after_bytes"])

    # -- error format ----------------------------------------------------------------------------
    def send_error_for(self, err: hp.HubError) -> None:
        if urlsplit(self.path).path.startswith("/api/v1/"):
            self.send_json(err.status, {"Code": err.status, "Message": err.message, "Success": False,
                                        "RequestId": "stand-in"})
        else:
            self.send_hf_error(err)

    # -- routes ------------------------------------------------------------------------------------
    def handle_request(self) -> None:
        if not self.path.startswith("/_standin/"):
            with self.state.lock:
                self.state.stats["requests"] += 1
        self.dispatch([self.handle_control, self.handle_status_fault, self.handle_ms, self.handle_hf])

    def do_POST(self) -> None:  # noqa: N802
        self.handle_request()

    def handle_control(self) -> bool:
        path = urlsplit(self.path).path
        if not path.startswith("/_standin/"):
            return False
        if path == "/_standin/stats" and self.command == "GET":
            self.send_json(200, self.state.snapshot_stats())
        elif path == "/_standin/reset" and self.command == "POST":
            self.state.reset()
            self.send_json(200, {"ok": True})
        elif path == "/_standin/faults" and self.command == "POST":
            length = int(self.headers.get("Content-Length") or 0)
            fault = json.loads(self.rfile.read(length) or b"{}")
            if not isinstance(fault, dict) or not ({"cut_after_bytes", "status", "unknown_repo"} & fault.keys()):
                raise hp.HubError(400, "", "fault: one of cut_after_bytes, status, unknown_repo required")
            with self.state.lock:
                self.state.faults.append(fault)
            self.send_json(200, {"ok": True, "faults": len(self.state.faults)})
        else:
            raise hp.HubError(404, "", f"no control route {self.command} {path}")
        return True

    def handle_status_fault(self) -> bool:
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        file_path = query.get("FilePath", [None])[0]
        if file_path is None and "/resolve/" in url.path:
            file_path = unquote(url.path).split("/resolve/", 1)[1].split("/", 1)[-1]
        fault = self.state.take_fault("status", file_path)
        if fault is None:
            return False
        raise hp.HubError(int(fault["status"]), "", "stand-in injected failure")

    def handle_ms(self) -> bool:
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        parts = [unquote(p) for p in url.path.split("/")[1:]]
        if parts[:3] == ["api", "v1", "repos"]:
            raise hp.HubError(404, "", "no intra-cloud acceleration in the stand-in")
        if parts[:3] != ["api", "v1", "models"]:
            return False
        self.check_auth()
        repo_id, rest = hp.split_repo(parts[3:])
        if not rest:
            snap = self.state.snapshot(repo_id, "master" if "master" in self._refs(repo_id) else "main")
            owner, name = repo_id.split("/")
            self.ms_ok({"Id": repo_id, "Name": name, "Path": owner, "ModelType": [], "Revision": snap.commit})
            return True
        if rest == ["revisions"]:
            refs = self._refs(repo_id)
            branches = [{"Revision": r, "CommitId": c, "CreatedAt": 0} for r, c in sorted(refs.items())]
            self.ms_ok({"RevisionMap": {"Branches": branches, "Tags": []}})
            return True
        if rest == ["repo", "files"]:
            snap = self.state.snapshot(repo_id, query.get("Revision") or "master")
            root = (query.get("Root") or "").strip("/")
            recursive = (query.get("Recursive") or "false").lower() == "true"
            self.ms_ok({"Files": self._ms_files(snap, root, recursive)})
            return True
        if rest == ["repo"]:
            snap = self.state.snapshot(repo_id, query.get("Revision") or "master")
            entry = snap.files.get(query.get("FilePath", ""))
            if entry is None:
                raise hp.HubError(404, "", f"file {query.get('FilePath')!r} not found")
            self.send_file(repo_id, snap, entry, {"ETag": f'"{entry.sha256}"'})
            return True
        raise hp.HubError(404, "", f"no route {url.path}")

    def _refs(self, repo_id: str) -> dict[str, str]:
        self.state.snapshot(repo_id, next(iter(self._raw_refs(repo_id)), "main"))  # raises if unknown
        return self._raw_refs(repo_id)

    def _raw_refs(self, repo_id: str) -> dict[str, str]:
        try:
            return self.state.revisions(repo_id)
        except (OSError, ValueError):
            raise hp.HubError(404, "", f"Repository {repo_id} not found") from None

    @staticmethod
    def _ms_files(snap: hp.Snapshot, root: str, recursive: bool) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        dirs: set[str] = set()
        for entry in snap.files.values():
            if root and not entry.path.startswith(root + "/"):
                continue
            rel = entry.path[len(root) + 1 :] if root else entry.path
            if "/" in rel and not recursive:
                dirs.add((root + "/" if root else "") + rel.split("/", 1)[0])
                continue
            out.append({
                "Name": entry.path.rsplit("/", 1)[-1], "Path": entry.path, "Type": "blob",
                "Size": entry.size, "Sha256": entry.sha256, "Revision": snap.commit,
                "IsLFS": entry.lfs, "Mode": "33188", "CommitId": snap.commit,
            })
        out.extend({"Name": d.rsplit("/", 1)[-1], "Path": d, "Type": "tree", "Size": 0} for d in sorted(dirs))
        return out

    def ms_ok(self, data: Any) -> None:
        self.send_json(200, {"Code": 200, "Data": data, "Message": "success", "Success": True,
                             "RequestId": "stand-in"})


class StandinHub:
    """A running stand-in hub (thread) -- for tests; ``url`` is its endpoint."""

    def __init__(self, root: Path, *, bind: str = "127.0.0.1", port: int = 0, token: str | None = None) -> None:
        self.state = HubState(root, token)
        handler = type("BoundStandinHandler", (StandinHandler,), {"state": self.state})
        self.server = ThreadingHTTPServer((bind, port), handler)
        self.server.daemon_threads = True
        host, port = self.server.server_address[:2]
        self.url = f"http://{host}:{port}"
        self._thread: threading.Thread | None = None

    def start(self) -> "StandinHub":
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> "StandinHub":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="stand-in hub (Hugging Face + ModelScope API subset)")
    p.add_argument("--bind", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--root", required=True, type=Path)
    p.add_argument("--token-file", type=Path)
    args = p.parse_args(argv)
    if not args.root.is_dir():
        p.error(f"--root: {args.root} is not a directory")
    token = args.token_file.read_text().strip() if args.token_file else None
    hub = StandinHub(args.root, bind=args.bind, port=args.port, token=token)
    print(f"stand-in hub listening {hub.url}", flush=True)
    try:
        hub.server.serve_forever()
    except KeyboardInterrupt:
        pass
    hub.server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
