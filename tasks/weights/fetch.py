"""Fetch model weights from Hugging Face, ModelScope or a fleet peer into a verified, switchable layout.

Standalone host-side script: stdlib + ``huggingface_hub`` / ``modelscope`` only, plus its siblings
(``HOST_FILES``, listed at the end of this docstring: they are uploaded together, e.g. to
``/opt/llmfleet/weights/``, and run with llmfleet's venv on the host, e.g. ``/opt/llmfleet/venv``)::

    python fetch.py --hub huggingface|modelscope --repo ID --revision REV --dest /srv/models/<name>
                    [--allow PATTERN]... [--ignore PATTERN]... [--endpoint URL] [--token-file PATH]
                    [--deep-verify] [--max-workers N] [--prune-keep N]
    python fetch.py --peer URL --repo ID --revision REV --dest /srv/models/<name> [...]

Behaviour, in order:

1. ``<dest>/current`` already points at ``revisions/<rev>`` whose ``manifest.json`` matches the
   request (repo, revision or commit, hub, allow/ignore patterns) and every listed file has its
   size: print ``LLMFLEET_WEIGHTS unchanged`` and exit 0 -- no network, no hashing.
   With ``--deep-verify`` every file is re-hashed first; damaged files are fetched again
   (only those) and replaced one by one with atomic renames, then ``changed`` is printed.
2. ``revisions/<rev>`` exists with a matching manifest (a retained older revision): switch
   ``current`` to it without network.
3. Otherwise list the files (hub API with sizes and sha256, or the peer's manifest), check free
   space for the bytes still missing BEFORE downloading, download with the official client's
   ``snapshot_download`` into ``<dest>/.staging-<rev>`` (resumable: a rerun keeps finished files;
   ModelScope also resumes the partial ``<file>.incomplete``; huggingface_hub 2.x resumes a cut
   transfer within the run with a Range request, and its per-process ``*.incomplete`` temp files are
   not reusable across runs, so stale ones are removed), verify sizes + sha256 (HF non-LFS files:
   git blob sha1), write ``manifest.json``, rename staging to ``revisions/<rev>`` and switch
   ``current`` by renaming a temporary symlink over it. Earlier revisions stay until
   ``--prune-keep N`` (keep the N newest revisions, always including ``current``).

``--peer URL`` fetches from another host's ``peer_server.py`` (same HF API; the peer answers from
its manifest) with the real huggingface_hub client; the peer's manifest must be for the requested
repo and revision (and ``--hub`` if given), and ``--allow``/``--ignore`` must be absent or equal to
the peer's -- else exit 9. With ``--peer``, ``--token-file`` holds the fan-out run's token the
peer requires (a peer answering 401 gives exit 5).

The token is read from ``--token-file`` and handed to the client in-process; it is never put in
argv or the environment, and every line written to stdout/stderr (client logs included) has it
replaced by ``***``.

Output markers on stdout (one line each, ``key=value`` fields)::

    LLMFLEET_WEIGHTS plan files=<n> bytes=<total> missing_bytes=<m> commit=<sha|none> source=<url>
    LLMFLEET_WEIGHTS progress bytes=<on disk in staging> total=<bytes>
    LLMFLEET_WEIGHTS verify bad=<n> [files=<comma list>]
    LLMFLEET_WEIGHTS current revision=<rev> commit=<sha|none> path=<dir>
    LLMFLEET_WEIGHTS pruned revision=<revdir>
    LLMFLEET_WEIGHTS unchanged
    LLMFLEET_WEIGHTS changed
    LLMFLEET_WEIGHTS error exit=<code> reason=<word>

While it downloads or verifies, a progress state file (``/run/llmfleet/progress/weights-<dest
name>.json``, see ``fetch_progress.py``) tells the control machine how far it is.

Exit codes: 0 ok (``changed`` or ``unchanged``), 1 unexpected error, 2 bad arguments,
3 repository not found, 4 revision not found, 5 authentication/authorisation failed (401/403),
6 hub or peer unreachable / unavailable (connection, timeout, 5xx), 7 not enough free disk space,
8 verification failed (size/hash mismatch; the bad staged files are removed so a rerun fetches
them again), 9 peer serves another repo/revision/selection, 10 another fetch holds ``<dest>/.lock``.
On every error ``<dest>/current`` is left untouched.

DEFAULTS (prefix ``weights_fetch_``):

- ``weights_fetch_max_workers``: parallel file downloads (``--max-workers``).
- ``weights_fetch_hash_workers``: threads hashing files during verification.
- ``weights_fetch_progress_interval_s``: seconds between ``progress`` lines.
- ``weights_fetch_space_margin_bytes``: free space kept in reserve beyond the missing bytes.
- ``weights_fetch_http_timeout_s``: timeout of the stdlib request for a peer's manifest.
- ``weights_fetch_hf_chunk_bytes``: huggingface_hub's read chunk. Its in-run resume after a cut
  connection restarts from the last whole chunk written (library default 10 MiB), so a smaller
  chunk loses less on each cut.

Files (all uploaded together, ``HOST_FILES``): this one is the command line; ``fetch_steps.py`` the
fetch in order; ``hub_adapters.py`` the hub clients; ``current_link.py`` the revision layout and the
``current`` switch; ``fetch_progress.py`` progress; ``fetch_output.py`` markers and token redaction;
``fetch_exits.py`` exit codes; ``manifest.py`` the manifest.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import socket
import sys
from pathlib import Path
from typing import Any

try:  # imported as tasks.weights.fetch
    from . import manifest as mf
    from .fetch_exits import (EXIT_AUTH, EXIT_ERROR, EXIT_LOCKED, EXIT_NO_SPACE, EXIT_OK, EXIT_PEER_MISMATCH,
                              EXIT_REPO_NOT_FOUND, EXIT_REVISION_NOT_FOUND, EXIT_UNREACHABLE, EXIT_USAGE,
                              EXIT_VERIFY, REASONS, FetchError)
    from .fetch_output import install_redaction, say
    from .fetch_progress import ProgressState
    from .fetch_steps import Request, disk_full, fetch
except ImportError:  # run as a script from the uploaded directory
    import manifest as mf  # type: ignore[no-redef]
    from fetch_exits import (EXIT_AUTH, EXIT_ERROR, EXIT_LOCKED, EXIT_NO_SPACE,  # type: ignore[no-redef]
                             EXIT_OK, EXIT_PEER_MISMATCH, EXIT_REPO_NOT_FOUND, EXIT_REVISION_NOT_FOUND,
                             EXIT_UNREACHABLE, EXIT_USAGE, EXIT_VERIFY, REASONS, FetchError)
    from fetch_output import install_redaction, say  # type: ignore[no-redef]
    from fetch_progress import ProgressState  # type: ignore[no-redef]
    from fetch_steps import Request, disk_full, fetch  # type: ignore[no-redef]

DEFAULTS: dict[str, Any] = {
    "weights_fetch_max_workers": 8,
    "weights_fetch_hash_workers": 4,
    "weights_fetch_progress_interval_s": 15.0,
    "weights_fetch_space_margin_bytes": 256 * 1024 * 1024,
    "weights_fetch_http_timeout_s": 30.0,
    "weights_fetch_hf_chunk_bytes": 1024 * 1024,
}

#: what the deploy uploads next to this script (the host runs it from that directory)
HOST_FILES = ("fetch.py", "fetch_steps.py", "chain.py", "chain_remote.py", "hub_adapters.py", "current_link.py", "fetch_progress.py",
              "fetch_output.py", "fetch_exits.py", "manifest.py", "peer_server.py", "hub_protocol.py")

__all__ = ["DEFAULTS", "EXIT_AUTH", "EXIT_ERROR", "EXIT_LOCKED", "EXIT_NO_SPACE", "EXIT_OK",
           "EXIT_PEER_MISMATCH", "EXIT_REPO_NOT_FOUND", "EXIT_REVISION_NOT_FOUND", "EXIT_UNREACHABLE",
           "EXIT_USAGE", "EXIT_VERIFY", "HOST_FILES", "REASONS", "FetchError", "disk_full",
           "install_redaction", "main", "parse_args"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="fetch.py", description="Fetch verified model weights (llmfleet).")
    p.add_argument("--hub", choices=mf.HUBS, help="source hub (required unless --peer)")
    p.add_argument("--peer", metavar="URL", help="fetch from a peer_server.py instead of the hub")
    p.add_argument("--repo", required=True, help="repository id, owner/name")
    p.add_argument("--revision", required=True, help="branch, tag or commit")
    p.add_argument("--dest", required=True, type=Path, help="model directory, e.g. /srv/models/<name>")
    p.add_argument("--allow", action="append", default=[], metavar="PATTERN")
    p.add_argument("--ignore", action="append", default=[], metavar="PATTERN")
    p.add_argument("--endpoint", help="hub endpoint URL (mirrors, stand-ins)")
    p.add_argument("--token-file", type=Path, help="file holding the hub token (with --peer: the fan-out token)")
    p.add_argument("--chain", action="store_true", help="pipelined staging: receive chunk by chunk, verified, "
                   "while this host's peer server passes them on (chain.py)")
    p.add_argument("--chain-from", action="append", default=[], metavar="URL",
                   help="with --chain: a peer to receive from, nearest first (none: read the hub)")
    p.add_argument("--chain-hub", action="store_true", help="with --chain: the hub is the last source")
    p.add_argument("--chain-token-file", type=Path, help="with --chain: file holding the fan-out token")
    p.add_argument("--chain-chunk-bytes", type=int, default=1 << 20, help="with --chain: chunk size")
    p.add_argument("--chain-stall-s", type=float, default=60.0,
                   help="with --chain: longest wait for a source's next chunk")
    p.add_argument("--deep-verify", action="store_true", help="re-hash every file of the revision")
    p.add_argument("--max-workers", type=int, default=DEFAULTS["weights_fetch_max_workers"])
    p.add_argument("--prune-keep", type=int, metavar="N", help="keep only the N newest revisions")
    p.add_argument("--progress-interval", type=float, default=DEFAULTS["weights_fetch_progress_interval_s"],
                   help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if not args.hub and not args.peer:
        p.error("--hub: required unless --peer is given (allowed: huggingface, modelscope)")
    if args.chain and args.peer:
        p.error("--chain: not with --peer (give the chain's peers as --chain-from)")
    if args.chain and not (args.chain_from or args.chain_hub):
        p.error("--chain: give --chain-from URL(s), --chain-hub, or both")
    if args.chain and args.chain_hub and args.hub != "huggingface":
        p.error("--chain-hub: the chain reads only the huggingface hub (allowed: --hub huggingface)")
    if args.chain and (args.chain_chunk_bytes < 1 or args.chain_stall_s <= 0):
        p.error("--chain-chunk-bytes / --chain-stall-s: must be > 0")
    if any(not u.startswith(("http://", "https://")) for u in args.chain_from):
        p.error("--chain-from: must be an http:// or https:// URL")
    if args.peer and args.endpoint:
        p.error("--endpoint: not used with --peer")
    if args.peer and not args.peer.startswith(("http://", "https://")):
        p.error("--peer: must be an http:// or https:// URL")
    if args.repo.count("/") != 1 or not all(args.repo.split("/")):
        p.error(f"--repo: {args.repo!r} must be owner/name")
    if args.max_workers < 1:
        p.error("--max-workers: must be >= 1")
    if args.prune_keep is not None and args.prune_keep < 1:
        p.error("--prune-keep: must be >= 1 (the current revision is always kept)")
    try:
        mf.rev_dirname(args.revision)
    except mf.ManifestError as exc:
        p.error(f"--revision: {exc}")
    return args


def read_token(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        st = path.stat()
        token = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise FetchError(EXIT_USAGE, f"--token-file: cannot read {path}: {exc.strerror}") from None
    if st.st_mode & 0o077:
        print(f"fetch.py: warning: --token-file {path} is readable by group/others", file=sys.stderr)
    if not token:
        raise FetchError(EXIT_USAGE, f"--token-file: {path} is empty")
    return token


def main(argv: list[str] | None = None) -> int:
    saved = sys.stdout, sys.stderr
    try:
        return _main(argv)
    finally:
        sys.stdout, sys.stderr = saved


def _main(argv: list[str] | None) -> int:
    install_redaction("")
    args = parse_args(argv)
    dest: Path = args.dest.absolute()
    try:
        token = read_token(args.token_file)
        chain_token = read_token(args.chain_token_file) if args.chain else None
        install_redaction(*(t for t in (token, chain_token) if t))
        dest.mkdir(parents=True, exist_ok=True)
        lock_fd = os.open(dest / ".lock", os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FetchError(EXIT_LOCKED, f"{dest}/.lock: another fetch is running") from None
        req = Request(
            hub=args.hub, repo=args.repo, revision=args.revision, dest=dest,
            allow=args.allow, ignore=args.ignore, endpoint=args.endpoint, token=token,
            peer=args.peer, deep_verify=args.deep_verify, max_workers=args.max_workers,
            prune_keep=args.prune_keep, progress_interval=args.progress_interval,
            hash_workers=DEFAULTS["weights_fetch_hash_workers"],
            space_margin=DEFAULTS["weights_fetch_space_margin_bytes"],
            http_timeout_s=DEFAULTS["weights_fetch_http_timeout_s"],
            hf_chunk_bytes=DEFAULTS["weights_fetch_hf_chunk_bytes"],
            progress_state=ProgressState(dest, f"weights {args.repo}@{args.revision}"),
            chain=list(args.chain_from) if args.chain else None, chain_hub=args.chain_hub,
            chain_token=chain_token, chain_chunk_bytes=args.chain_chunk_bytes, chain_stall_s=args.chain_stall_s,
        )
        try:  # only the holder of the lock owns the state file
            result = fetch(req)
        finally:
            req.progress_state.clear()
        say(result)
        return EXIT_OK
    except FetchError as exc:
        print(f"fetch.py: error: {exc}", file=sys.stderr, flush=True)
        say("error", f"exit={exc.code}", f"reason={REASONS[exc.code]}")
        return exc.code
    except OSError as exc:
        code = EXIT_NO_SPACE if disk_full(exc) else EXIT_ERROR
        where = f"{socket.gethostname()}: disk full: " if code == EXIT_NO_SPACE else ""
        print(f"fetch.py: error: {where}{exc}", file=sys.stderr, flush=True)
        say("error", f"exit={code}", f"reason={REASONS[code]}")
        return code
    except Exception as exc:  # noqa: BLE001 - still one marker line for the caller to parse
        print(f"fetch.py: error: unexpected {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        say("error", f"exit={EXIT_ERROR}", f"reason={REASONS[EXIT_ERROR]}")
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
