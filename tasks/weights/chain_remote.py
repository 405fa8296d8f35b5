"""fetch.py's receiver in a pipelined chain (``--chain``): chunks from the nearest source that has them,
verified one by one, recorded so the host's own peer server passes them on at once (``chain.py`` has
the layout, the wire format and why a chain).

Sources, nearest first: the upstream host, then the hosts before it, then (the chain's head, or any
host with ``--chain-hub``) the hub itself. A source that fails -- connection refused or cut, a stream
that ends early because that host's fetch died, a stall, a chunk whose bytes do not match its hash --
is dropped for the rest of the run with a ``reattach`` marker, and the receiver goes on from the same
chunk at the next source: a dead host in the middle of a chain stalls no one for longer than it takes
to notice (immediately when its processes die; ``stall_s`` at most when its host vanishes).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import quote

try:  # imported as tasks.weights.*
    from . import chain
    from . import manifest as mf
    from .fetch_exits import EXIT_AUTH, EXIT_ERROR, EXIT_PEER_MISMATCH, EXIT_UNREACHABLE, FetchError
    from .fetch_output import say
    from .hub_adapters import HfRemote, Listing, RemoteFile
except ImportError:  # run as a script from the uploaded directory
    import chain  # type: ignore[no-redef]
    import manifest as mf  # type: ignore[no-redef]
    from fetch_exits import (EXIT_AUTH, EXIT_ERROR, EXIT_PEER_MISMATCH,  # type: ignore[no-redef]
                             EXIT_UNREACHABLE, FetchError)
    from fetch_output import say  # type: ignore[no-redef]
    from hub_adapters import HfRemote, Listing, RemoteFile  # type: ignore[no-redef]

#: what a failing source may raise while it streams (never a local write: those propagate)
SOURCE_ERRORS = (OSError, ValueError, http.client.HTTPException)
HUB_TRIES = 3  # hub failures in a row (no chunk between) before the fetch fails; a cut resumes at its chunk


class SourceGone(Exception):
    """The current source cannot give the next chunk."""


class ChainRemote:
    """A chain receiver with the interface of the hub adapters (``listing()``, ``download()``)."""

    def __init__(self, sources: list[str], hub: HfRemote | None, repo: str, revision: str, token: str | None,
                 state: chain.ChainState, chunk_bytes: int, stall_s: float,
                 allow: list[str], ignore: list[str]) -> None:
        self.sources = [s.rstrip("/") for s in sources]
        self.hub_remote = hub  # None: this host may not read the hub
        self.repo, self.revision, self.token = repo, revision, token
        self.state, self.chunk, self.stall_s = state, chunk_bytes, stall_s
        self.allow, self.ignore = allow, ignore
        self.commit: str | None = None
        self.hub = "huggingface"
        self.hub_tries = HUB_TRIES

    # -- sources -------------------------------------------------------------------------------
    def _source(self) -> str:
        if self.sources:
            return self.sources[0]
        if self.hub_remote is not None:
            return "hub"
        raise FetchError(EXIT_UNREACHABLE, "chain: every source failed and this host may not read the hub "
                                           "(weights_fanout_fallback_hub)")

    def _drop(self, src: str, why: Any) -> None:
        if src == "hub":
            self.hub_tries -= 1
            if self.hub_tries <= 0:
                raise FetchError(EXIT_UNREACHABLE, f"chain: the hub failed: {why}")
            print(f"fetch.py: chain: the hub failed ({why}); resuming", file=sys.stderr, flush=True)
            return
        self.sources.remove(src)
        nxt = self.sources[0] if self.sources else ("hub" if self.hub_remote is not None else "none")
        print(f"fetch.py: chain: {src} failed ({why}); re-attaching to {nxt}", file=sys.stderr, flush=True)
        say("reattach", f"from={src}", f"to={nxt}")

    def _get(self, url: str) -> Any:
        req = urllib.request.Request(url, headers={"Authorization": f"Bearer {self.token}"})
        return urllib.request.urlopen(req, timeout=self.stall_s + 15)

    # -- listing -------------------------------------------------------------------------------
    def listing(self) -> Listing:
        while True:
            src = self._source()
            if src == "hub":
                return self._hub_listing()
            try:
                with self._get(f"{src}/api/llmfleet/chain/{self.repo}/listing") as resp:
                    got = json.loads(resp.read())
                self._check(src, got)
            except SOURCE_ERRORS as exc:
                self._drop(src, exc)
                continue
            self.commit, self.hub = got.get("commit"), got["hub"]
            files = {e["path"]: RemoteFile(e["path"], int(e["size"]), e.get("sha256"), e.get("blob_id"))
                     for e in got["files"]}
            return Listing(got["hub"], got.get("commit"), got["revision"], f"chain:{src}", files,
                           allow=list(got["allow"]), ignore=list(got["ignore"]))

    def _check(self, src: str, got: dict[str, Any]) -> None:
        if got.get("repo") != self.repo or self.revision not in (got.get("revision"), got.get("commit")):
            raise ValueError(f"relays {got.get('repo')}@{got.get('revision')}, wanted {self.repo}@{self.revision}")
        if got.get("chunk_bytes") != self.chunk:
            raise ValueError(f"chunk size {got.get('chunk_bytes')}, this host uses {self.chunk}")
        if self.allow or self.ignore:
            if (list(got["allow"]), list(got["ignore"])) != (self.allow, self.ignore):
                raise FetchError(EXIT_PEER_MISMATCH, f"{src}: --allow/--ignore differ from the chain's selection")

    def _hub_listing(self) -> Listing:
        """The head's listing: the hub's, through huggingface_hub, narrowed to the selection."""
        assert self.hub_remote is not None
        got = self.hub_remote.listing()
        keep = [p for p in mf.select(got.files, self.allow, self.ignore) if p != mf.MANIFEST_NAME]
        got.files = {p: got.files[p] for p in keep}
        got.allow, got.ignore = list(self.allow), list(self.ignore)
        self.commit, self.hub = got.commit, got.hub
        return got

    def state_listing(self, listing: Listing) -> dict[str, Any]:
        """The listing as this host's peer server relays it."""
        return {"repo": self.repo, "revision": listing.revision, "commit": listing.commit, "hub": listing.hub,
                "allow": list(listing.allow or []), "ignore": list(listing.ignore or []),
                "chunk_bytes": self.chunk,
                "files": [{"path": f.path, "size": f.size, "sha256": f.sha256, "blob_id": f.blob_id}
                          for f in sorted(listing.files.values(), key=lambda f: f.path)]}

    # -- download ------------------------------------------------------------------------------
    def download(self, staging: Path, paths: list[str], listing: Listing, workers: int) -> dict[str, str]:
        """Receive ``paths`` in order into ``staging``; return path -> sha256 of the whole file."""
        self.commit = listing.commit
        self.state.start(self.state_listing(listing))
        return {p: self._receive(staging, p, listing.files[p].size) for p in paths}

    def _receive(self, staging: Path, path: str, size: int) -> str:
        target = staging / path
        target.parent.mkdir(parents=True, exist_ok=True)
        total = chain.n_chunks(size, self.chunk)
        whole = hashlib.sha256()
        have = self._resume(target, path, size, whole)
        with open(target, "r+b" if target.exists() else "w+b") as fh:
            fh.seek(min(len(have) * self.chunk, size))
            fh.truncate()  # a torn chunk after the last verified one goes
            while len(have) < total:
                src = self._source()
                frames = self._pull(src, path, len(have), size)
                while len(have) < total:
                    try:
                        data, digest = next(frames)
                    except StopIteration:
                        self._drop(src, f"stream of {path} ended at chunk {len(have)} of {total}")
                        break
                    except SOURCE_ERRORS as exc:
                        self._drop(src, exc)
                        break
                    fh.write(data)
                    fh.flush()  # the bytes are in the page cache before the index names them
                    whole.update(data)
                    self.state.add(path, digest)
                    have.append(digest)
                    self.hub_tries = HUB_TRIES  # tries count failures in a row, without progress
        return whole.hexdigest()

    def _resume(self, target: Path, path: str, size: int, whole: Any) -> list[str]:
        """The verified chunks already on disk (each re-checked against its index line)."""
        recorded = self.state.chunks(path)
        have: list[str] = []
        if recorded and target.exists():
            with open(target, "rb") as fh:
                for digest in recorded[: chain.n_chunks(size, self.chunk)]:
                    data = fh.read(self.chunk)
                    if not data or hashlib.sha256(data).hexdigest() != digest:
                        break
                    whole.update(data)
                    have.append(digest)
        if len(have) != len(recorded):
            self.state.reset(path)
            for digest in have:
                self.state.add(path, digest)
        return have

    def _pull(self, src: str, path: str, first: int, size: int) -> Iterator[tuple[bytes, str]]:
        """Verified chunks of ``path`` from ``src``, from chunk ``first`` on."""
        if src == "hub":
            yield from self._pull_hub(path, first, size)
            return
        with self._get(f"{src}/api/llmfleet/chain/{self.repo}/stream/{first}/{quote(path)}") as resp:
            k = first
            while True:
                got = chain.read_frame(resp, self.chunk)
                if got is None:
                    return
                data, digest = got
                want = min(self.chunk, size - k * self.chunk)
                if len(data) != want or hashlib.sha256(data).hexdigest() != digest:
                    raise ValueError(f"chunk {k} of {path} does not match its hash (refused)")
                yield data, digest
                k += 1

    def _pull_hub(self, path: str, first: int, size: int) -> Iterator[tuple[bytes, str]]:
        """Chunks straight off the hub's stream (the hub gives a hash per file, checked at the end)."""
        from huggingface_hub import hf_hub_url

        assert self.hub_remote is not None
        url = hf_hub_url(self.repo, path, revision=self.commit or self.revision, endpoint=self.hub_remote.endpoint)
        headers = {"Range": f"bytes={first * self.chunk}-"}
        if self.hub_remote.token:
            headers["Authorization"] = f"Bearer {self.hub_remote.token}"
        req = urllib.request.Request(url, headers=headers)
        try:
            resp = urllib.request.urlopen(req, timeout=self.stall_s + 15)
        except urllib.error.HTTPError as exc:
            if exc.code >= 500:
                raise ConnectionError(f"hub: {path}: HTTP {exc.code}") from None  # tried again
            raise FetchError(EXIT_AUTH if exc.code in (401, 403) else EXIT_ERROR,
                             f"hub: {path}: HTTP {exc.code}") from None
        with resp:
            if first and resp.status != 206:
                raise ValueError(f"hub ignored the Range request for {path} (HTTP {resp.status})")
            for k in range(first, chain.n_chunks(size, self.chunk)):
                data = resp.read(min(self.chunk, size - k * self.chunk))
                if len(data) < min(self.chunk, size - k * self.chunk):
                    return  # cut inside this chunk: it is fetched again whole
                yield data, hashlib.sha256(data).hexdigest()
