"""The fetch itself, in order (fetch.py's docstring has the behaviour): unchanged check, repair of a
damaged revision, listing, space check, download into staging, verification, manifest, switch of
``current``, pruning."""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:  # imported as tasks.weights.*
    from . import manifest as mf
    from .chain import ChainState
    from .chain_remote import ChainRemote
    from .current_link import current_target, exchange, fsync_dir, prune, switch_current
    from .fetch_exits import EXIT_NO_SPACE, EXIT_PEER_MISMATCH, EXIT_USAGE, EXIT_VERIFY, FetchError
    from .fetch_output import quiet_client_loggers, say
    from .fetch_progress import STAGING_MARKER, Progress, ProgressState
    from .hub_adapters import HfRemote, Listing, MsRemote, PeerRemote, RemoteFile, client_env
except ImportError:  # run as a script from the uploaded directory
    import manifest as mf  # type: ignore[no-redef]
    from chain import ChainState  # type: ignore[no-redef]
    from chain_remote import ChainRemote  # type: ignore[no-redef]
    from current_link import current_target, exchange, fsync_dir, prune, switch_current  # type: ignore[no-redef]
    from fetch_exits import (EXIT_NO_SPACE, EXIT_PEER_MISMATCH, EXIT_USAGE,  # type: ignore[no-redef]
                             EXIT_VERIFY, FetchError)
    from fetch_output import quiet_client_loggers, say  # type: ignore[no-redef]
    from fetch_progress import STAGING_MARKER, Progress, ProgressState  # type: ignore[no-redef]
    from hub_adapters import HfRemote, Listing, MsRemote, PeerRemote, RemoteFile, client_env  # type: ignore[no-redef]


@dataclass
class Request:
    hub: str | None
    repo: str
    revision: str
    dest: Path
    allow: list[str]
    ignore: list[str]
    endpoint: str | None
    token: str | None
    peer: str | None
    deep_verify: bool
    max_workers: int
    prune_keep: int | None
    hash_workers: int
    progress_interval: float
    space_margin: int  # bytes kept free beyond what is still to download
    http_timeout_s: float
    hf_chunk_bytes: int
    progress_state: ProgressState | None = None  # the state file the control machine reads
    chain: list[str] | None = None  # pipelined staging: sources nearest first ([] = the chain's head)
    chain_hub: bool = False  # the chain may read the hub (its head; others as a last resort)
    chain_token: str | None = None
    chain_chunk_bytes: int = 1 << 20
    chain_stall_s: float = 60.0

    @property
    def revdir(self) -> str:
        return mf.rev_dirname(self.revision)

    @property
    def from_peers(self) -> bool:
        """The listing (and the selection) comes from other hosts, not from this request."""
        return bool(self.peer) or bool(self.chain)


def make_remote(req: Request) -> HfRemote | MsRemote | PeerRemote:
    """Import the client the request needs (after setting its environment) and wrap it."""
    client_env()
    if req.chain is not None:  # huggingface_hub is imported only if the hub is read: peers start faster
        hub = HfRemote(req.endpoint, req.token, req.repo, req.revision) if req.chain_hub else None
        remote: Any = ChainRemote(req.chain, hub, req.repo, req.revision, req.chain_token,
                                  ChainState(req.dest, req.revdir), req.chain_chunk_bytes, req.chain_stall_s,
                                  req.allow, req.ignore)
        quiet_client_loggers()
        return remote
    if req.peer or req.hub == "huggingface":
        import huggingface_hub  # noqa: F401 - import now so its log handler binds the redacting stderr
    else:
        import modelscope.hub.snapshot_download  # noqa: F401
        import modelscope_hub  # noqa: F401
    if req.peer:
        remote = PeerRemote(req.peer, req.repo, req.revision, req.hub, req.token, req.http_timeout_s,
                                 req.hf_chunk_bytes)
    elif req.hub == "huggingface":
        remote = HfRemote(req.endpoint, req.token, req.repo, req.revision, req.hf_chunk_bytes)
    else:
        remote = MsRemote(req.endpoint, req.token, req.repo, req.revision)
    quiet_client_loggers()
    return remote


def check_space(dest: Path, missing_bytes: int, margin: int) -> None:
    """Fail with EXIT_NO_SPACE before downloading when the filesystem cannot hold what is missing."""
    free = shutil.disk_usage(dest).free
    if free < missing_bytes + margin:
        raise no_space(dest, "not enough free disk space", missing_bytes, margin, free)


def no_space(dest: Path, what: str, needed: int, margin: int, free: int | None = None) -> FetchError:
    """The one line of a full disk: host, path, bytes still needed and free (the operator's next step)."""
    if free is None:
        try:
            free = shutil.disk_usage(dest).free
        except OSError:
            free = -1
    return FetchError(
        EXIT_NO_SPACE,
        f"{socket.gethostname()}: {dest}: {what}: {needed} bytes still to download (+{margin} reserve), "
        f"{free} bytes free",
    )


def disk_full(exc: BaseException) -> bool:
    """True when ``exc`` is, or wraps, a write that failed for lack of space (ENOSPC/EDQUOT).

    The clients wrap the OSError of a failed write: huggingface_hub re-raises it from its worker
    threads, modelscope collects it in ``FileDownloadError.failed_files``, and the adapters here
    map it with ``raise ... from None`` (which keeps it as ``__context__``).
    """
    todo, seen = [exc], 0
    while todo and seen < 32:  # bounded: exception graphs may be cyclic
        e = todo.pop()
        seen += 1
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        todo += [x for x in (e.__cause__, e.__context__) if x is not None]
        failed = getattr(e, "failed_files", None)
        if isinstance(failed, dict):
            todo += [x for x in failed.values() if isinstance(x, BaseException)]
    return False


def _expected_ok(path: Path, f: RemoteFile, sha: str) -> bool:
    if path.stat().st_size != f.size:
        return False
    if f.sha256:
        return sha == f.sha256
    if f.blob_id and len(f.blob_id) == 40:
        return mf.git_blob_sha1(path) == f.blob_id
    return True  # the hub gave no hash: size only; the manifest records the local sha256


def finish_staging(staging: Path, listing: Listing, paths: list[str], workers: int,
                   known: dict[str, str] | None = None) -> dict[str, str]:
    """Drop client metadata and stray files, verify every expected file; return path -> sha256
    (``known``: sums the download computed off the bytes it wrote, not hashed again)."""
    shutil.rmtree(staging / ".cache", ignore_errors=True)
    wanted = set(paths)
    for root, _dirs, files in os.walk(staging):
        for name in files:
            full = Path(root) / name
            rel = full.relative_to(staging).as_posix()
            if rel not in wanted and rel != STAGING_MARKER:
                full.unlink()
    missing = [p for p in paths if not (staging / p).is_file()]
    if missing:
        raise FetchError(EXIT_VERIFY, f"client finished but files are missing: {', '.join(missing[:5])}")
    known = known or {}
    sums = {**mf.hash_files(staging, [p for p in paths if p not in known], workers=workers), **known}
    bad = [p for p in paths if not _expected_ok(staging / p, listing.files[p], sums[p])]
    if bad:
        for p in bad:
            (staging / p).unlink()
        say("verify", f"bad={len(bad)}", f"files={','.join(bad)}")
        raise FetchError(EXIT_VERIFY, f"hash/size mismatch (removed, rerun refetches): {', '.join(bad)}")
    return sums


def prepare_staging(staging: Path, key: dict[str, Any]) -> None:
    """Create/reuse the staging dir; wipe it if it belongs to another repo/commit; drop stale HF temps."""
    marker = staging / STAGING_MARKER
    if staging.exists():
        try:
            same = json.loads(marker.read_text()) == key
        except (OSError, ValueError):
            same = False
        if not same:
            shutil.rmtree(staging)
    staging.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps(key))
    # huggingface_hub 2.x names its partial files per process; a killed run's leftovers are never reused.
    for stale in (staging / ".cache" / "huggingface" / "download").rglob("*.incomplete"):
        stale.unlink(missing_ok=True)


def bytes_present(staging: Path, listing: Listing, paths: list[str]) -> int:
    """Bytes of finished files (right size) and ModelScope partials already in staging."""
    n = 0
    for p in paths:
        f = staging / p
        try:
            size = f.stat().st_size
            if size == listing.files[p].size:
                n += size
                continue
        except OSError:
            pass
        try:
            n += min(Path(str(f) + ".incomplete").stat().st_size, listing.files[p].size)
        except OSError:
            pass
    return n


def download_verified(
    req: Request, remote: Any, listing: Listing, paths: list[str], staging: Path
) -> dict[str, str]:
    """Space check, client download into ``staging``, verification. Returns path -> sha256."""
    # Keyed on content, not source: switching hub -> mirror -> peer keeps partial downloads.
    prepare_staging(staging, {"repo": req.repo, "revision": req.revision, "commit": listing.commit})
    total = sum(listing.files[p].size for p in paths)
    missing = total - bytes_present(staging, listing, paths)
    say(
        "plan", f"files={len(paths)}", f"bytes={total}", f"missing_bytes={missing}",
        f"commit={listing.commit or 'none'}", f"source={listing.source}",
    )
    check_space(req.dest, missing, req.space_margin)
    progress = Progress(staging, total, req.progress_interval, req.progress_state)
    progress.start()
    try:
        known = remote.download(staging, paths, listing, req.max_workers)
    except Exception as exc:
        if disk_full(exc):
            still = total - bytes_present(staging, listing, paths)
            raise no_space(req.dest, "disk full while downloading", still, req.space_margin) from None
        raise
    finally:
        progress.stop()
    if req.progress_state is not None:
        req.progress_state.write("verify", total, total)
    return finish_staging(staging, listing, paths, req.hash_workers, known)


def _manifest_for(req: Request, listing: Listing, sums: dict[str, str], paths: list[str]) -> dict[str, Any]:
    allow, ignore = (listing.allow or [], listing.ignore or []) if req.from_peers else (req.allow, req.ignore)
    return mf.build(
        repo=req.repo,
        hub=listing.hub,
        revision=listing.revision,
        commit=listing.commit,
        files=[{"path": p, "size": listing.files[p].size, "sha256": sums[p]} for p in paths],
        allow=allow,
        ignore=ignore,
        source=listing.source,
    )


def repair(req: Request, target: Path, man: dict[str, Any], bad: list[str]) -> None:
    """Fetch only the damaged files of a verified revision and swap them in one by one."""
    say("verify", f"bad={len(bad)}", f"files={','.join(bad)}")
    remote = make_remote(req)
    listing = remote.listing()
    if man.get("commit") and listing.commit and listing.commit != man["commit"]:
        # A moved branch: fetch the recorded commit so the repaired files match the manifest.
        if isinstance(remote, HfRemote):
            remote.revision = man["commit"]
            listing = remote.listing()
    by_path = {e["path"]: e for e in man["files"]}
    for p in bad:
        f = listing.files.get(p)
        if f is None or f.size != by_path[p]["size"] or (f.sha256 and f.sha256 != by_path[p]["sha256"]):
            raise FetchError(EXIT_VERIFY, f"{p}: the source no longer has the content the manifest records")
        f.sha256 = by_path[p]["sha256"]  # verify against the manifest
    staging = req.dest / f".staging-{req.revdir}"
    download_verified(req, remote, listing, bad, staging)
    for p in bad:
        (target / p).parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging / p, target / p)
    man = dict(man, verified_at=mf.utc_now())
    mf.write(target, man)
    shutil.rmtree(staging, ignore_errors=True)


def fetch(req: Request) -> str:
    """Run the whole fetch; return ``"changed"`` or ``"unchanged"``; raise FetchError on failure."""
    revisions = req.dest / "revisions"
    target = revisions / req.revdir
    is_current = current_target(req.dest) == f"revisions/{req.revdir}"

    existing = None
    try:
        existing = mf.read(target)
    except mf.ManifestError:
        pass
    any_selection = req.from_peers and not (req.allow or req.ignore)
    if existing is not None and mf.matches_request(
        existing, repo=req.repo, revision=req.revision, hub=req.hub,
        allow=None if any_selection else req.allow,
        ignore=None if any_selection else req.ignore,
    ):
        bad = mf.stat_mismatches(target, existing)
        if not bad and req.deep_verify:
            if req.progress_state is not None:
                req.progress_state.write("verify", 0, int(existing.get("total_bytes") or 0))
            bad = mf.hash_mismatches(target, existing, workers=req.hash_workers)
        if bad:
            repair(req, target, existing, bad)
        if is_current and not bad:
            say("current", f"revision={req.revision}", f"commit={existing.get('commit') or 'none'}", f"path={target}")
            return "unchanged"
        switch_current(req.dest, req.revdir)
        _after_switch(req, existing, target)
        return "changed"

    remote = make_remote(req)
    listing = remote.listing()
    if req.from_peers and (req.allow or req.ignore) and (req.allow, req.ignore) != (listing.allow, listing.ignore):
        raise FetchError(EXIT_PEER_MISMATCH, "--allow/--ignore differ from the peer's selection")
    from_hub = not req.from_peers and req.chain is None
    paths = mf.select(listing.files, req.allow, req.ignore) if from_hub else sorted(listing.files)
    paths = [p for p in paths if p != mf.MANIFEST_NAME]
    if not paths:
        raise FetchError(EXIT_USAGE, "--allow/--ignore: no file of the repository matches")
    staging = req.dest / f".staging-{req.revdir}"
    sums = download_verified(req, remote, listing, paths, staging)
    (staging / STAGING_MARKER).unlink(missing_ok=True)
    man = _manifest_for(req, listing, sums, paths)
    mf.write(staging, man)
    revisions.mkdir(exist_ok=True)
    if target.exists():
        # Same revision name, new content (other patterns or a moved branch): swap, never leave
        # `current` dangling when it points here.
        if not exchange(staging, target):
            aside = req.dest / f".trash-{req.revdir}-{os.getpid()}"
            os.rename(target, aside)
            os.rename(staging, target)
        else:
            aside = staging
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.rename(staging, target)
    fsync_dir(revisions)
    switch_current(req.dest, req.revdir)
    _after_switch(req, man, target)
    return "changed"


def _after_switch(req: Request, man: dict[str, Any], target: Path) -> None:
    ChainState(req.dest, req.revdir).remove()  # a chain's chunk state is done with once kept
    say("current", f"revision={req.revision}", f"commit={man.get('commit') or 'none'}", f"path={target}")
    if req.prune_keep is not None:
        for name in prune(req.dest, req.prune_keep):
            say("pruned", f"revision={name}")

