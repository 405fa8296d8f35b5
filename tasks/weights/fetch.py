"""Fetch model weights from Hugging Face, ModelScope or a fleet peer into a verified, switchable layout.

Standalone host-side script: stdlib + ``huggingface_hub`` / ``modelscope`` only, plus its sibling
``manifest.py`` (the directory ``tasks/weights/`` is what gets uploaded, e.g. to
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
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import io
import json
import logging
import os
import shutil
import socket
import sys
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:  # imported as tasks.weights.fetch
    from . import manifest as mf
except ImportError:  # run as a script from the uploaded directory
    import manifest as mf  # type: ignore[no-redef]

DEFAULTS: dict[str, Any] = {
    "weights_fetch_max_workers": 8,
    "weights_fetch_hash_workers": 4,
    "weights_fetch_progress_interval_s": 15.0,
    "weights_fetch_space_margin_bytes": 256 * 1024 * 1024,
    "weights_fetch_http_timeout_s": 30.0,
    "weights_fetch_hf_chunk_bytes": 1024 * 1024,
}

MARK = "LLMFLEET_WEIGHTS"
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_REPO_NOT_FOUND = 3
EXIT_REVISION_NOT_FOUND = 4
EXIT_AUTH = 5
EXIT_UNREACHABLE = 6
EXIT_NO_SPACE = 7
EXIT_VERIFY = 8
EXIT_PEER_MISMATCH = 9
EXIT_LOCKED = 10
REASONS = {
    EXIT_ERROR: "error",
    EXIT_USAGE: "usage",
    EXIT_REPO_NOT_FOUND: "repo-not-found",
    EXIT_REVISION_NOT_FOUND: "revision-not-found",
    EXIT_AUTH: "auth",
    EXIT_UNREACHABLE: "unreachable",
    EXIT_NO_SPACE: "no-space",
    EXIT_VERIFY: "verify",
    EXIT_PEER_MISMATCH: "peer-mismatch",
    EXIT_LOCKED: "locked",
}
STAGING_MARKER = ".llmfleet-staging.json"


class FetchError(Exception):
    """A failure with a documented exit code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


# ---------------------------------------------------------------------------------------------
# output: markers and token redaction
# ---------------------------------------------------------------------------------------------
class _RedactingStream(io.TextIOBase):
    """Text stream wrapper that replaces secrets before writing (covers client logs and tqdm)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.secrets: list[str] = []

    def write(self, s: str) -> int:
        for secret in self.secrets:
            s = s.replace(secret, "***")
        return self._inner.write(s)

    def flush(self) -> None:
        self._inner.flush()

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self._inner.fileno()


def say(*fields: str) -> None:
    """Print one machine-readable marker line."""
    print(MARK, *fields, flush=True)


def install_redaction(secret: str) -> None:
    """Route stdout/stderr through the redactor and make clients' loggers quiet and redacted."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if not isinstance(stream, _RedactingStream):
            stream = _RedactingStream(stream)
            setattr(sys, name, stream)
        if secret and secret not in stream.secrets:
            stream.secrets.append(secret)


def quiet_client_loggers() -> None:
    """Warnings and errors only from the clients; handlers re-pointed at the redacting stderr."""
    for name in ("huggingface_hub", "modelscope", "modelscope_hub", "httpx", "httpx2", "urllib3"):
        logger = logging.getLogger(name)
        logger.setLevel(logging.WARNING)
        for handler in logger.handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream in (sys.__stderr__, sys.__stdout__):
                handler.setStream(sys.stderr)


# ---------------------------------------------------------------------------------------------
# remote listing + download
# ---------------------------------------------------------------------------------------------
@dataclass
class RemoteFile:
    path: str
    size: int
    sha256: str | None = None
    blob_id: str | None = None


@dataclass
class Listing:
    hub: str
    commit: str | None
    revision: str
    source: str
    files: dict[str, RemoteFile] = field(default_factory=dict)
    allow: list[str] | None = None  # a peer's selection, when it has one
    ignore: list[str] | None = None


def _client_env() -> None:
    """Environment for the clients, set before they are imported (they read it at import)."""
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    os.environ["HF_HUB_OFFLINE"] = "0"
    os.environ.setdefault("TQDM_DISABLE", "1")


def _hf_error(exc: BaseException, what: str) -> FetchError:
    """Map huggingface_hub / httpx2 exceptions to exit codes."""
    from huggingface_hub import errors as hf_errors

    try:
        import httpx2 as httpx_mod
    except ImportError:  # pragma: no cover - older clients use httpx
        import httpx as httpx_mod  # type: ignore[no-redef]

    status = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(exc, hf_errors.RevisionNotFoundError):
        return FetchError(EXIT_REVISION_NOT_FOUND, f"{what}: revision not found")
    if isinstance(exc, hf_errors.GatedRepoError) or status in (401, 403):
        return FetchError(EXIT_AUTH, f"{what}: authentication failed or no access (HTTP {status})")
    if isinstance(exc, hf_errors.RepositoryNotFoundError):
        return FetchError(EXIT_REPO_NOT_FOUND, f"{what}: repository not found")
    if isinstance(exc, (httpx_mod.TransportError, hf_errors.OfflineModeIsEnabled)) or (
        status is not None and status >= 500
    ):
        return FetchError(EXIT_UNREACHABLE, f"{what}: unreachable ({type(exc).__name__}: {exc})")
    if isinstance(exc, (hf_errors.LocalEntryNotFoundError, getattr(hf_errors, "IncompleteSnapshotError", ()))):
        return FetchError(EXIT_UNREACHABLE, f"{what}: could not reach the hub ({type(exc).__name__})")
    if isinstance(exc, hf_errors.HfHubHTTPError):
        return FetchError(EXIT_ERROR, f"{what}: HTTP {status}: {exc}")
    return FetchError(EXIT_ERROR, f"{what}: {type(exc).__name__}: {exc}")


class HfRemote:
    """Hugging Face Hub (or a peer speaking its API) through huggingface_hub."""

    hub = "huggingface"

    def __init__(self, endpoint: str | None, token: str | None, repo: str, revision: str) -> None:
        self.endpoint = endpoint
        self.token: str | bool = token or False
        self.repo = repo
        self.revision = revision

    def listing(self) -> Listing:
        from huggingface_hub import HfApi

        api = HfApi(endpoint=self.endpoint, token=self.token)
        try:
            info = api.model_info(self.repo, revision=self.revision, files_metadata=True)
        except Exception as exc:  # noqa: BLE001 - mapped to exit codes
            raise _hf_error(exc, f"{self.repo}@{self.revision}") from None
        files = {}
        for s in info.siblings or []:
            files[s.rfilename] = RemoteFile(
                path=s.rfilename,
                size=int(s.size if s.size is not None else (s.lfs.size if s.lfs else 0)),
                sha256=s.lfs.sha256 if s.lfs else None,
                blob_id=s.blob_id,
            )
        return Listing(self.hub, info.sha, self.revision, self.endpoint or "https://huggingface.co", files)

    def download(self, staging: Path, paths: list[str], listing: Listing, workers: int) -> None:
        from huggingface_hub import constants, snapshot_download

        constants.DOWNLOAD_CHUNK_SIZE = DEFAULTS["weights_fetch_hf_chunk_bytes"]
        try:
            snapshot_download(
                self.repo,
                revision=listing.commit or self.revision,
                local_dir=staging,
                cache_dir=staging / ".cache" / "hf-hub",
                allow_patterns=[mf.exact_pattern(p) for p in paths],
                max_workers=workers,
                endpoint=self.endpoint,
                token=self.token,
            )
        except Exception as exc:  # noqa: BLE001
            raise _hf_error(exc, f"download {self.repo}@{self.revision}") from None


def _ms_error(exc: BaseException, what: str, api: Any = None, repo: str = "") -> FetchError:
    """Map modelscope_hub exceptions (and the requests.HTTPError its compat layer raises)."""
    from modelscope_hub import errors as ms

    cause = exc.__cause__ if isinstance(exc.__cause__, ms.HubError) else exc
    if isinstance(cause, ms.FileDownloadError):
        failures = list((getattr(cause, "failed_files", None) or {}).values())
        for kind in (ms.AuthenticationError, ms.PermissionDeniedError, ms.NetworkError, ms.FileIntegrityError):
            hit = next((f for f in failures if isinstance(f, kind)), None)
            if hit is not None:
                return _ms_error(hit, what, api, repo)
    if isinstance(cause, (ms.AuthenticationError, ms.PermissionDeniedError)):
        return FetchError(EXIT_AUTH, f"{what}: authentication failed or no access")
    if isinstance(cause, ms.NotExistError):
        if api is not None:
            try:
                api.legacy.get_repo_info(repo, "model")
            except ms.NotExistError:
                return FetchError(EXIT_REPO_NOT_FOUND, f"{what}: repository not found")
            except Exception:  # noqa: BLE001 - fall through to "revision"
                pass
            return FetchError(EXIT_REVISION_NOT_FOUND, f"{what}: revision not found")
        return FetchError(EXIT_REPO_NOT_FOUND, f"{what}: repository or revision not found")
    if isinstance(cause, (ms.NetworkError, ms.ServerError)):
        return FetchError(EXIT_UNREACHABLE, f"{what}: unreachable ({type(cause).__name__})")
    if isinstance(cause, ms.FileIntegrityError):
        return FetchError(EXIT_VERIFY, f"{what}: {cause}")
    status = getattr(getattr(cause, "response", None), "status_code", None)
    if status in (401, 403):
        return FetchError(EXIT_AUTH, f"{what}: authentication failed (HTTP {status})")
    return FetchError(EXIT_ERROR, f"{what}: {type(cause).__name__}: {cause}")


class MsRemote:
    """ModelScope through modelscope (snapshot_download) and modelscope_hub (listing)."""

    hub = "modelscope"

    def __init__(self, endpoint: str | None, token: str | None, repo: str, revision: str) -> None:
        self.endpoint = endpoint
        self.token = token or ""  # "" (not None) so no stored credential is picked up implicitly
        self.repo = repo
        self.revision = revision

    def _api(self) -> Any:
        from modelscope_hub import HubApi

        api = HubApi(endpoint=self.endpoint, token=self.token)
        if self.endpoint is None:
            # Same choice as modelscope's snapshot_download (modelscope.cn vs .ai), so the
            # listing and the download talk to the same site.
            try:
                self.endpoint = api.resolve_endpoint_for_read(self.repo, repo_type="model")
                api = HubApi(endpoint=self.endpoint, token=self.token)
            except Exception:  # noqa: BLE001 - keep the configured default
                pass
        return api

    def listing(self) -> Listing:
        api = self._api()
        what = f"{self.repo}@{self.revision}"
        try:
            infos = api.list_repo_files(self.repo, "model", revision=self.revision, recursive=True)
        except Exception as exc:  # noqa: BLE001
            raise _ms_error(exc, what, api, self.repo) from None
        files = {
            i.path: RemoteFile(path=i.path, size=int(i.size), sha256=(i.sha256 or None))
            for i in infos
            if not i.is_dir and i.path
        }
        commit = self._commit(api)
        return Listing(self.hub, commit, self.revision, api._config.endpoint or "", files)

    def _commit(self, api: Any) -> str | None:
        """Best effort: the commit a branch/tag points at (ModelScope's revisions API)."""
        if len(self.revision) == 40 and _is_hex(self.revision):
            return self.revision
        try:
            for entry in api.legacy.list_revisions(self.repo, "model"):
                if entry.get("Revision") == self.revision:
                    return entry.get("CommitId") or entry.get("CommitID") or entry.get("Sha")
        except Exception:  # noqa: BLE001 - informational only
            return None
        return None

    def download(self, staging: Path, paths: list[str], listing: Listing, workers: int) -> None:
        from modelscope.hub.snapshot_download import snapshot_download

        try:
            snapshot_download(
                model_id=self.repo,
                revision=self.revision,
                cache_dir=str(staging / ".cache" / "modelscope"),
                local_dir=str(staging),
                allow_patterns=[mf.exact_pattern(p) for p in paths],
                max_workers=workers,
                token=self.token,
                endpoint=self.endpoint,
            )
        except Exception as exc:  # noqa: BLE001
            raise _ms_error(exc, f"download {self.repo}@{self.revision}", None, self.repo) from None


def _is_hex(s: str) -> bool:
    return all(c in "0123456789abcdef" for c in s)


class PeerRemote:
    """Another host's ``peer_server.py``: its manifest is the listing, huggingface_hub downloads."""

    def __init__(self, url: str, repo: str, revision: str, hub: str | None, token: str | None = None) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.repo = repo
        self.revision = revision
        self.want_hub = hub
        self.hub = hub or "huggingface"
        self._hf: HfRemote | None = None

    def listing(self) -> Listing:
        man_url = f"{self.url}/api/llmfleet/manifest/{self.repo}"
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        try:
            with urllib.request.urlopen(urllib.request.Request(man_url, headers=headers),
                                        timeout=DEFAULTS["weights_fetch_http_timeout_s"]) as resp:
                man = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            if exc.code in (401, 403):
                raise FetchError(EXIT_AUTH, f"peer {self.url} refused the fan-out token (HTTP {exc.code})") from None
            if exc.code == 404:
                raise FetchError(EXIT_PEER_MISMATCH, f"peer {self.url} does not serve {self.repo}") from None
            raise FetchError(EXIT_UNREACHABLE, f"peer {self.url}: HTTP {exc.code}") from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise FetchError(EXIT_UNREACHABLE, f"peer {self.url} unreachable: {exc}") from None
        if man.get("repo") != self.repo or self.revision not in (man.get("revision"), man.get("commit")):
            raise FetchError(
                EXIT_PEER_MISMATCH,
                f"peer {self.url} serves {man.get('repo')}@{man.get('revision')}, wanted {self.repo}@{self.revision}",
            )
        if self.want_hub and man.get("hub") != self.want_hub:
            raise FetchError(EXIT_PEER_MISMATCH, f"peer {self.url} copy comes from {man.get('hub')}, not {self.want_hub}")
        self.hub = man["hub"]
        commit = man.get("commit")
        self._hf = HfRemote(self.url, self.token, self.repo, commit or man["revision"])
        served = self._hf.listing()  # through the real client: must agree with the manifest
        try:
            files = {e["path"]: RemoteFile(e["path"], int(e["size"]), e["sha256"]) for e in man["files"]}
        except (KeyError, TypeError, ValueError) as exc:
            raise FetchError(EXIT_VERIFY, f"peer {self.url}: malformed manifest ({exc!r})") from None
        if {p: (f.size, f.sha256) for p, f in served.files.items()} != {
            p: (f.size, f.sha256) for p, f in files.items()
        }:
            raise FetchError(EXIT_VERIFY, f"peer {self.url}: API listing disagrees with its manifest")
        return Listing(
            self.hub, commit, man["revision"], f"peer:{self.url}", files,
            allow=list(man.get("allow") or []), ignore=list(man.get("ignore") or []),
        )

    def download(self, staging: Path, paths: list[str], listing: Listing, workers: int) -> None:
        assert self._hf is not None, "listing() first"
        self._hf.download(staging, paths, listing, workers)


# ---------------------------------------------------------------------------------------------
# layout operations
# ---------------------------------------------------------------------------------------------
def current_target(dest: Path) -> str | None:
    """The link text of ``<dest>/current`` (e.g. ``revisions/main``), or None."""
    try:
        return os.readlink(dest / "current")
    except OSError:
        return None


def switch_current(dest: Path, revdir: str) -> None:
    """Point ``<dest>/current`` at ``revisions/<revdir>`` by renaming a fresh temp symlink over it."""
    tmp = dest / f".current.tmp-{os.getpid()}"
    try:
        tmp.unlink()
    except FileNotFoundError:
        pass
    os.symlink(f"revisions/{revdir}", tmp)
    os.replace(tmp, dest / "current")
    _fsync_dir(dest)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False if unsupported."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def prune(dest: Path, keep: int) -> list[str]:
    """Remove all but the ``keep`` newest revision dirs (never the current one); return removed names."""
    revisions = dest / "revisions"
    if not revisions.is_dir():
        return []
    cur = (current_target(dest) or "").removeprefix("revisions/")

    def stamp(d: Path) -> str:
        try:
            return mf.read(d)["verified_at"]
        except mf.ManifestError:
            return ""

    dirs = sorted((d for d in revisions.iterdir() if d.is_dir()), key=stamp, reverse=True)
    kept = [d for d in dirs if d.name == cur]
    removed = []
    for d in dirs:
        if d.name == cur:
            continue
        if len(kept) < keep:
            kept.append(d)
        else:
            shutil.rmtree(d)
            removed.append(d.name)
    return removed


class Progress(threading.Thread):
    """Prints a ``progress`` line every interval with the bytes present under the staging dir."""

    def __init__(self, staging: Path, total: int, interval: float) -> None:
        super().__init__(daemon=True)
        self.staging, self.total, self.interval = staging, total, interval
        self.stopped = threading.Event()

    def on_disk(self) -> int:
        """Bytes of downloaded and partial files (client metadata under .cache is not counted)."""
        n = 0
        for root, _dirs, files in os.walk(self.staging):
            in_cache = os.path.relpath(root, self.staging).split(os.sep)[0] == ".cache"
            for f in files:
                if f == STAGING_MARKER or (in_cache and not f.endswith(".incomplete")):
                    continue
                try:
                    n += os.lstat(os.path.join(root, f)).st_size
                except OSError:
                    pass
        return n

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            say("progress", f"bytes={self.on_disk()}", f"total={self.total}")

    def stop(self) -> None:
        self.stopped.set()
        say("progress", f"bytes={self.on_disk()}", f"total={self.total}")


# ---------------------------------------------------------------------------------------------
# the fetch
# ---------------------------------------------------------------------------------------------
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
    hash_workers: int = DEFAULTS["weights_fetch_hash_workers"]
    progress_interval: float = DEFAULTS["weights_fetch_progress_interval_s"]

    @property
    def revdir(self) -> str:
        return mf.rev_dirname(self.revision)


def make_remote(req: Request) -> HfRemote | MsRemote | PeerRemote:
    """Import the client the request needs (after setting its environment) and wrap it."""
    _client_env()
    if req.peer or req.hub == "huggingface":
        import huggingface_hub  # noqa: F401 - import now so its log handler binds the redacting stderr
    else:
        import modelscope.hub.snapshot_download  # noqa: F401
        import modelscope_hub  # noqa: F401
    if req.peer:
        remote: Any = PeerRemote(req.peer, req.repo, req.revision, req.hub, req.token)
    elif req.hub == "huggingface":
        remote = HfRemote(req.endpoint, req.token, req.repo, req.revision)
    else:
        remote = MsRemote(req.endpoint, req.token, req.repo, req.revision)
    quiet_client_loggers()
    return remote


def check_space(dest: Path, missing_bytes: int) -> None:
    """Fail with EXIT_NO_SPACE before downloading when the filesystem cannot hold what is missing."""
    free = shutil.disk_usage(dest).free
    margin = DEFAULTS["weights_fetch_space_margin_bytes"]
    if free < missing_bytes + margin:
        raise no_space(dest, "not enough free disk space", missing_bytes, free)


def no_space(dest: Path, what: str, needed: int, free: int | None = None) -> FetchError:
    """The one line of a full disk: host, path, bytes still needed and free (the operator's next step)."""
    if free is None:
        try:
            free = shutil.disk_usage(dest).free
        except OSError:
            free = -1
    margin = DEFAULTS["weights_fetch_space_margin_bytes"]
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


def finish_staging(staging: Path, listing: Listing, paths: list[str], workers: int) -> dict[str, str]:
    """Drop client metadata and stray files, verify every expected file; return path -> sha256."""
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
    sums = mf.hash_files(staging, paths, workers=workers)
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
    check_space(req.dest, missing)
    progress = Progress(staging, total, req.progress_interval)
    progress.start()
    try:
        remote.download(staging, paths, listing, req.max_workers)
    except Exception as exc:
        if disk_full(exc):
            still = total - bytes_present(staging, listing, paths)
            raise no_space(req.dest, "disk full while downloading", still) from None
        raise
    finally:
        progress.stop()
    return finish_staging(staging, listing, paths, req.hash_workers)


def _manifest_for(req: Request, listing: Listing, sums: dict[str, str], paths: list[str]) -> dict[str, Any]:
    allow, ignore = (listing.allow or [], listing.ignore or []) if req.peer else (req.allow, req.ignore)
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
    any_selection = bool(req.peer) and not (req.allow or req.ignore)
    if existing is not None and mf.matches_request(
        existing, repo=req.repo, revision=req.revision, hub=req.hub,
        allow=None if any_selection else req.allow,
        ignore=None if any_selection else req.ignore,
    ):
        bad = mf.stat_mismatches(target, existing)
        if not bad and req.deep_verify:
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
    if req.peer and (req.allow or req.ignore) and (req.allow, req.ignore) != (listing.allow, listing.ignore):
        raise FetchError(EXIT_PEER_MISMATCH, "--allow/--ignore differ from the peer's selection")
    paths = mf.select(listing.files, req.allow, req.ignore) if not req.peer else sorted(listing.files)
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
        if not _exchange(staging, target):
            aside = req.dest / f".trash-{req.revdir}-{os.getpid()}"
            os.rename(target, aside)
            os.rename(staging, target)
        else:
            aside = staging
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.rename(staging, target)
    _fsync_dir(revisions)
    switch_current(req.dest, req.revdir)
    _after_switch(req, man, target)
    return "changed"


def _after_switch(req: Request, man: dict[str, Any], target: Path) -> None:
    say("current", f"revision={req.revision}", f"commit={man.get('commit') or 'none'}", f"path={target}")
    if req.prune_keep is not None:
        for name in prune(req.dest, req.prune_keep):
            say("pruned", f"revision={name}")


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------
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
    p.add_argument("--deep-verify", action="store_true", help="re-hash every file of the revision")
    p.add_argument("--max-workers", type=int, default=DEFAULTS["weights_fetch_max_workers"])
    p.add_argument("--prune-keep", type=int, metavar="N", help="keep only the N newest revisions")
    p.add_argument("--progress-interval", type=float, default=DEFAULTS["weights_fetch_progress_interval_s"],
                   help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if not args.hub and not args.peer:
        p.error("--hub: required unless --peer is given (allowed: huggingface, modelscope)")
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
        install_redaction(token or "")
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
        )
        result = fetch(req)
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
