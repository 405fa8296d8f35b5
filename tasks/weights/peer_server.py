"""Serve verified model directories read-only to other hosts, speaking the Hugging Face Hub API.

Standalone script (stdlib only; siblings ``manifest.py`` and ``hub_protocol.py`` are uploaded with
it -- the directory ``tasks/weights/`` is what goes to a host)::

    python peer_server.py --model-dir /srv/models/qwen3/current [--model-dir ...] \\
        --bind <address peers reach this host at> --token-file /run/llmfleet/peer-<name>.token \\
        [--port 8765] [--ready-file PATH]

Every request must carry ``Authorization: Bearer <token>`` with the token in ``--token-file`` (a
root-only file; the token never appears on a command line): anything else gets ``401``. The deploy
writes a random token for each run on the senders and receivers of that run, binds the server to
the address the receivers use (never every interface), and stops it when the fan-out is done.

Each ``--model-dir`` must hold a ``manifest.json`` written by ``fetch.py`` (symlinks such as
``current`` are resolved once at start, so a revision switch later does not change what is being
served). Listings (sizes, sha256) come from the manifest -- nothing is re-hashed -- and only files
named in the manifest are served. A receiver runs::

    python fetch.py --peer http://<sender>:8765 --repo <id> --revision <rev> --dest /srv/models/<name>

which uses the real ``huggingface_hub.snapshot_download`` with the peer as endpoint (resumable via
Range), verifies every file against the peer's manifest (``GET /api/llmfleet/manifest/<repo>``),
and checks that repo/revision match what was asked for.

How copies spread over a fleet (see :func:`tasks.weights.fanout.plan_waves`): the first host(s)
download from the hub ("seeds"); every host that finished serves the next ones. With each sender
feeding ``fanout`` receivers per wave, the number of hosts holding the model grows by a factor of
``fanout + 1`` per wave, so N hosts are served after about ``log_(fanout+1)(N)`` waves (log2 for
fanout 1) at link speed, instead of N sequential copies from the hub or one uplink saturated by N
parallel ones. The hub is hit once per seed, not once per host.

With ``--chain-dest <dest> --chain-repo <id> --chain-revision <rev>`` (pipelined staging) the server
instead relays the revision this host is receiving, chunk by chunk as ``fetch.py --chain`` verifies
it, and the kept revision once it is there: ``/api/llmfleet/chain/<repo>/listing`` and
``/api/llmfleet/chain/<repo>/stream/<k>/<path>`` (``chain.py`` has the wire format and why a chain).

On start the server prints ``LLMFLEET_PEER listening <url>`` and, for each model,
``LLMFLEET_PEER serving <repo>@<revision> commit=<sha> files=<n> bytes=<total>``.

Exit codes: 0 clean stop (SIGTERM/SIGINT), 2 bad arguments, unusable model dir or token file.
"""

from __future__ import annotations

import argparse
import hmac
import signal
import sys
import threading
import time
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

try:  # imported as tasks.weights.peer_server
    from . import chain
    from . import hub_protocol as hp
    from . import manifest as mf
except ImportError:  # run as a script from the uploaded directory
    import chain  # type: ignore[no-redef]
    import hub_protocol as hp  # type: ignore[no-redef]
    import manifest as mf  # type: ignore[no-redef]

class ServedModel:
    """One verified revision directory and its manifest."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory.resolve()
        self.manifest = mf.read(self.directory)
        commit = self.manifest.get("commit") or ("0" * 40)
        files = {}
        for e in self.manifest["files"]:
            files[e["path"]] = hp.FileEntry(
                path=e["path"],
                size=e["size"],
                abspath=self.directory / e["path"],
                sha256=e["sha256"],
                lfs=True,
            )
        self.snapshot = hp.Snapshot(repo_id=self.manifest["repo"], commit=commit, files=files)

    def answers(self, revision: str) -> bool:
        return revision in (self.manifest["revision"], self.snapshot.commit)


class PeerHandler(hp.HfApiHandler):
    """HF API answers from manifests; ``/api/llmfleet/manifest/<repo>`` returns the manifest."""

    server_version = "llmfleet-peer/1"
    models: dict[str, ServedModel] = {}
    token: str = ""
    relay: chain.ChainState | None = None  # --chain-dest: the revision relayed while it arrives
    relay_repo: str = ""
    relay_chunk: int = 0
    relay_stall_s: float = 60.0

    def check_auth(self) -> None:
        """``401`` unless the request carries this run's bearer token (compared in constant time)."""
        given = self.headers.get("Authorization", "")
        if not (self.token and hmac.compare_digest(given.encode(), f"Bearer {self.token}".encode())):
            raise hp.HubError(401, "", "Invalid credentials in Authorization header")

    def handle_auth(self) -> bool:
        self.check_auth()
        return False  # authorised: on to the routes

    def resolve(self, repo_id: str, revision: str) -> hp.Snapshot:
        model = self.models.get(repo_id)
        if model is None:
            raise hp.HubError(404, "RepoNotFound", f"this peer does not serve {repo_id}")
        if not model.answers(revision):
            raise hp.HubError(404, "RevisionNotFound", f"this peer serves {repo_id}@{model.manifest['revision']}")
        return model.snapshot

    def handle_manifest(self) -> bool:
        parts = [unquote(p) for p in urlsplit(self.path).path.split("/")[1:]]
        if parts[:3] != ["api", "llmfleet", "manifest"]:
            return False
        repo_id, _ = hp.split_repo(parts[3:])
        model = self.models.get(repo_id)
        if model is None:
            raise hp.HubError(404, "RepoNotFound", f"this peer does not serve {repo_id}")
        self.send_json(200, model.manifest)
        return True

    def handle_chain(self) -> bool:
        parts = [unquote(p) for p in urlsplit(self.path).path.split("/")[1:]]
        return chain.handle_chain(parts, self.relay, self.relay_repo, self.relay_chunk, self.relay_stall_s,
                                  self.send_json, self.send_stream)

    def send_stream(self, frames: Any) -> None:
        """Chain frames as they come, then close (the receiver counts the chunks it expects)."""
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        try:
            for block in frames:
                self.wfile.write(block)
        except OSError:
            return

    def handle_request(self) -> None:
        self.dispatch([self.handle_auth, self.handle_chain, self.handle_manifest, self.handle_hf])


def make_server(model_dirs: list[Path], bind: str, port: int, token: str,
                relay: tuple[Path, str, str, int, float] | None = None) -> ThreadingHTTPServer:
    """Build (not start) a peer server for the given verified model directories, answering only
    requests that carry ``token``; ``relay`` = (dest, repo, revision, chunk bytes, stall s) also
    relays that revision chunk by chunk while this host receives it (``chain.py``)."""
    if not token:
        raise mf.ManifestError("--token-file: the token is empty")
    models: dict[str, ServedModel] = {}
    for d in model_dirs:
        m = ServedModel(d)
        if m.manifest["repo"] in models:
            raise mf.ManifestError(f"--model-dir {d}: repo {m.manifest['repo']} given twice")
        models[m.manifest["repo"]] = m
    attrs: dict[str, Any] = {"models": models, "token": token}
    if relay is not None:
        dest, repo, revision, chunk, stall_s = relay
        attrs.update(relay=chain.ChainState(dest, mf.rev_dirname(revision), since=time.time() - 1),
                     relay_repo=repo,
                     relay_chunk=chunk, relay_stall_s=stall_s)
    handler = type("BoundPeerHandler", (PeerHandler,), attrs)
    server = ThreadingHTTPServer((bind, port), handler)
    server.daemon_threads = True
    return server


def read_token(path: Path) -> str:
    """The token in ``path``; refused when others than its owner may read it."""
    if path.stat().st_mode & 0o077:
        raise mf.ManifestError(f"--token-file {path}: readable by group/others (chmod 600 it)")
    return path.read_text(encoding="utf-8").strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-dir", action="append", default=[], type=Path,
                        help="verified model directory (with manifest.json); repeatable")
    parser.add_argument("--chain-dest", type=Path, help="relay the revision being fetched into this model "
                        "directory chunk by chunk (pipelined staging; with --chain-repo/--chain-revision)")
    parser.add_argument("--chain-repo", help="repository id relayed with --chain-dest")
    parser.add_argument("--chain-revision", help="revision relayed with --chain-dest")
    parser.add_argument("--chain-chunk-bytes", type=int, default=1 << 20, help="chunk size of the chain")
    parser.add_argument("--chain-stall-s", type=float, default=60.0,
                        help="longest wait for a chunk before the stream is closed")
    parser.add_argument("--bind", required=True, help="the address peers reach this host at")
    parser.add_argument("--port", type=int, required=True, help="listen port (the host's weights_peer_port)")
    parser.add_argument("--token-file", type=Path, required=True,
                        help="root-only file holding the bearer token every request must carry")
    parser.add_argument("--ready-file", type=Path, help="write the listening URL here once bound")
    args = parser.parse_args(argv)
    relay = None
    if args.chain_dest:
        if not (args.chain_repo and args.chain_revision) or args.chain_chunk_bytes < 1:
            parser.error("--chain-dest: needs --chain-repo, --chain-revision and a --chain-chunk-bytes >= 1")
        relay = (args.chain_dest, args.chain_repo, args.chain_revision, args.chain_chunk_bytes, args.chain_stall_s)
    elif not args.model_dir:
        parser.error("--model-dir: required unless --chain-dest is given")
    try:
        server = make_server(args.model_dir, args.bind, args.port, read_token(args.token_file), relay)
    except (mf.ManifestError, OSError) as exc:
        print(f"peer_server: error: {exc}", file=sys.stderr)
        return 2
    host, port = server.server_address[:2]
    url = f"http://{host}:{port}"
    print(f"LLMFLEET_PEER listening {url}", flush=True)
    for m in server.RequestHandlerClass.models.values():  # type: ignore[attr-defined]
        man = m.manifest
        print(
            f"LLMFLEET_PEER serving {man['repo']}@{man['revision']} commit={man.get('commit')} "
            f"files={len(man['files'])} bytes={man.get('total_bytes')}",
            flush=True,
        )
    if relay is not None:
        print(f"LLMFLEET_PEER relaying {args.chain_repo}@{args.chain_revision} into {args.chain_dest} "
              f"chunk={args.chain_chunk_bytes}", flush=True)
    if args.ready_file:
        args.ready_file.write_text(url + "\n")

    def stop(*_: Any) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    server.serve_forever()
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
