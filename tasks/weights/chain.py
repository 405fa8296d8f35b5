"""Pipelined ("chain") staging: the on-disk chunk state a receiving host keeps, the wire format, and the
server side that passes verified chunks on while the host is still receiving.

Stdlib only, no ``tasks`` imports (uploaded to hosts with ``fetch.py`` and ``peer_server.py``).

Why a chain, and why this peer server rather than a BitTorrent swarm (aria2): with every host's link
full duplex at rate R, a chain h1 <- hub, h2 <- h1, ... hN <- h(N-1) in which every host forwards a
chunk as soon as it has verified it moves each byte over every link once and keeps every link busy:
N hosts finish one download time plus (N-1) chunk times after the start (``S/R + (N-1)*C/R``; 8 hosts,
1 MiB chunks at 100 mbit: +0.6 s). A tree with pipelining needs a sender's uplink to feed ``w`` children
(``w*R``), so it is slower unless uplinks are wider than downlinks; a swarm reaches the same bound but
needs a tracker (or DHT), a .torrent with SHA-1 pieces built after the hub download (aria2 cannot make
one, and cannot verify pieces against the hub's sha256 while it downloads), and would give up the
authenticated, resumable, manifest-verified transfer this project already has. Measured on the lab
(bench/weights_fanout.py, README "Weights to many hosts"; 25 MB, every link 100 mbit, a loaded 2-core
machine): staging at N=8 16.5 s in a chain, 65.5 s in waves, 9.4 s for N=1; the hub serves one copy.

Layout on a receiving host (next to ``<dest>/.staging-<rev>``, which holds the bytes)::

    <dest>/.chain-<rev>/listing.json       the revision's file list (size, sha256 or blob id), chunk size
    <dest>/.chain-<rev>/writer             pid of the fetch that is receiving
    <dest>/.chain-<rev>/idx/<path>.idx     one sha256 per verified chunk of <path>, in order

A chunk's line is appended only after its bytes are written and, when they came from a peer, checked
against the sha256 the peer sent: a host serves only chunks it has verified, and a chunk corrupted
on its way (or on a relay's disk) is refused by the next host, so a bad byte is never passed on. The
chunk hashes start at the host that reads the hub, which computes them off the hub's stream; every
file is then verified whole against the hub's sha256 on every host before it is kept (fetch_steps).

Wire format (``GET /api/llmfleet/chain/<repo>/stream/<k>/<path>``, bearer token as every peer
request): frames ``b"<length> <sha256 hex>\\n" + <length> bytes`` for chunks k, k+1, ... of the file;
the server waits (bounded by ``stall_s``) for chunks not yet there while the host's fetch runs, and
closes the connection early when that fetch has gone -- the receiver then re-attaches elsewhere.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

STATE_DIR = ".chain-{revdir}"
POLL_S = 0.02  # how often a waiting server looks for a new chunk (a local stat: cheap)


class ChainState:
    """The chunk state of one revision being received under ``dest`` (see the module docstring)."""

    def __init__(self, dest: Path, revdir: str, since: float = 0.0) -> None:
        self.since = since  # server side: a writer file older than this is a previous run's (the server's start
        # less 1 s, as file times come from a coarse clock)
        self.dest = dest
        self.revdir = revdir
        self.dir = dest / STATE_DIR.format(revdir=revdir)
        self.staging = dest / f".staging-{revdir}"
        self.final = dest / "revisions" / revdir

    # -- receiver side -------------------------------------------------------------------------
    def start(self, listing: dict[str, Any]) -> None:
        """Claim the state for this fetch: keep verified chunks when the listing is the same content
        (commit, files, chunk size), else start over. Writes the writer pid, then the listing."""
        try:
            same = self.listing() == listing
        except (OSError, ValueError):
            same = False
        if not same and self.dir.exists():
            for f in sorted(self.dir.rglob("*"), reverse=True):
                f.rmdir() if f.is_dir() else f.unlink()
        (self.dir / "idx").mkdir(parents=True, exist_ok=True)
        (self.dir / "writer").write_text(str(os.getpid()))
        tmp = self.dir / "listing.json.tmp"
        tmp.write_text(json.dumps(listing, sort_keys=True))
        os.replace(tmp, self.dir / "listing.json")

    def index_path(self, path: str) -> Path:
        return self.dir / "idx" / f"{path}.idx"

    def chunks(self, path: str) -> list[str]:
        """Hashes of the verified chunks of ``path``, in order (a torn last line is dropped)."""
        try:
            text = self.index_path(path).read_text()
        except OSError:
            return []
        return [line for line in text.split("\n") if len(line) == 64]

    def reset(self, path: str) -> None:
        self.index_path(path).unlink(missing_ok=True)

    def add(self, path: str, digest: str) -> None:
        """Record one more verified chunk of ``path`` (its bytes are already written)."""
        f = self.index_path(path)
        f.parent.mkdir(parents=True, exist_ok=True)
        with open(f, "a") as fh:
            fh.write(digest + "\n")

    def remove(self) -> None:
        if self.dir.exists():
            for f in sorted(self.dir.rglob("*"), reverse=True):
                f.rmdir() if f.is_dir() else f.unlink()
            self.dir.rmdir()

    # -- server side ---------------------------------------------------------------------------
    def listing(self) -> dict[str, Any]:
        return json.loads((self.dir / "listing.json").read_text())

    def writer(self) -> str:
        """``waiting`` (this run's fetch has not started: a previous run's state does not count),
        ``alive`` or ``gone`` (no more chunks will come)."""
        f = self.dir / "writer"
        try:
            if f.stat().st_mtime < self.since:
                return "waiting"
            os.kill(int(f.read_text()), 0)
            return "alive"
        except FileNotFoundError:
            return "waiting"
        except (OSError, ValueError):
            return "gone"

    def finished(self) -> dict[str, Any] | None:
        """The manifest of the verified revision once the fetch has kept it (then serve from there)."""
        try:
            return json.loads((self.final / "manifest.json").read_text())
        except (OSError, ValueError):
            return None


def n_chunks(size: int, chunk: int) -> int:
    return -(-size // chunk)


def frame(data: bytes, digest: str) -> bytes:
    return b"%d %s\n" % (len(data), digest.encode())


def read_frame(fh: BinaryIO, max_len: int) -> tuple[bytes, str] | None:
    """One frame from the stream; None at a clean end. Raises ValueError on a malformed frame."""
    head = fh.readline(128)
    if not head:
        return None
    length, digest = head.decode("ascii").split()
    n = int(length)
    if not 0 < n <= max_len or len(digest) != 64:
        raise ValueError(f"bad frame header {head[:80]!r}")
    data = fh.read(n)
    if len(data) != n:
        raise ValueError(f"stream ended inside a chunk ({len(data)} of {n} bytes)")
    return data, digest


def listing_of_manifest(man: dict[str, Any], chunk: int) -> dict[str, Any]:
    """The chain listing a host that holds a verified revision serves (its manifest's files)."""
    return {"repo": man["repo"], "revision": man["revision"], "commit": man.get("commit"), "hub": man["hub"],
            "allow": man.get("allow") or [], "ignore": man.get("ignore") or [], "chunk_bytes": chunk,
            "files": [{"path": e["path"], "size": e["size"], "sha256": e["sha256"], "blob_id": None}
                      for e in man["files"]]}


def wait_listing(state: ChainState, chunk: int, stall_s: float) -> dict[str, Any] | None:
    """The listing to serve: the kept revision's, else the one being received; waits (bounded) while a
    fetch may still write it. None when there is none to give."""
    deadline = time.monotonic() + stall_s
    while True:
        man = state.finished()
        if man is not None:
            return listing_of_manifest(man, chunk)
        writer = state.writer()
        if writer != "waiting":
            try:
                return state.listing()
            except (OSError, ValueError):
                if writer == "gone":
                    return None
        if time.monotonic() > deadline:
            return None
        time.sleep(POLL_S)


def stream_chunks(state: ChainState, path: str, first: int, chunk: int, stall_s: float) -> Iterator[bytes]:
    """Frames of ``path`` from chunk ``first`` on. From a kept revision every chunk is read and hashed
    here; from staging only chunks the index lists, with the index's hash (so bytes changed on this
    disk since are refused downstream). Ends early when the fetch is gone or nothing came for ``stall_s``."""
    man = state.finished()
    size = next((e["size"] for e in (man or {}).get("files", []) if e["path"] == path), None)
    if size is None:
        files = {e["path"]: e["size"] for e in state.listing()["files"]}
        size = files[path]
    total = n_chunks(size, chunk)
    k, waited_since = first, time.monotonic()
    while k < total:
        if state.finished() is not None:
            yield from _from_file(state.final / path, k, total, chunk, None)
            return
        have = state.chunks(path)
        if len(have) > k:
            try:
                yield from _from_file(state.staging / path, k, len(have), chunk, have)
            except FileNotFoundError:  # kept in the meantime: the next turn reads the revision
                continue
            k, waited_since = len(have), time.monotonic()
            continue
        if state.writer() == "gone" or time.monotonic() - waited_since > stall_s:
            if state.finished() is not None:  # kept between the two looks
                continue
            return
        time.sleep(POLL_S)


def _from_file(f: Path, start: int, stop: int, chunk: int, digests: list[str] | None) -> Iterator[bytes]:
    with open(f, "rb") as fh:
        fh.seek(start * chunk)
        for k in range(start, stop):
            data = fh.read(chunk)
            if not data:
                return
            yield frame(data, digests[k] if digests else hashlib.sha256(data).hexdigest()) + data


def handle_chain(parts: list[str], state: ChainState | None, repo: str, chunk: int, stall_s: float,
                 send_json: Callable[[int, Any], None], send_stream: Callable[[Iterator[bytes]], None]) -> bool:
    """Route ``/api/llmfleet/chain/<repo>/(listing|stream/<k>/<path>)`` for peer_server.py; False when
    the path is not a chain route."""
    if parts[:3] != ["api", "llmfleet", "chain"]:
        return False
    if state is None or parts[3:5] != repo.split("/"):
        send_json(404, {"error": f"this peer does not relay {'/'.join(parts[3:5])}"})
        return True
    rest = parts[5:]
    listing = wait_listing(state, chunk, stall_s)
    if listing is None:
        send_json(503, {"error": "this peer holds no copy and is not fetching one"})
        return True
    if rest == ["listing"]:
        send_json(200, listing)
        return True
    if len(rest) >= 3 and rest[0] == "stream" and rest[1].isdigit():
        path = "/".join(rest[2:])
        if path not in {e["path"] for e in listing["files"]} or listing["chunk_bytes"] != chunk:
            send_json(404, {"error": f"{path}: not in the relayed revision (or another chunk size)"})
            return True
        send_stream(stream_chunks(state, path, int(rest[1]), chunk, stall_s))
        return True
    send_json(404, {"error": "no such chain route"})
    return True
