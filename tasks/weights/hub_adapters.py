"""Hub adapters of fetch.py: list a repository revision (files, sizes, hashes, commit) and download a
selection of it into a staging directory, through the official clients -- huggingface_hub for the
Hugging Face Hub and for fleet peers (``peer_server.py`` speaks its API), modelscope for ModelScope.
Client exceptions become :class:`FetchError` with the documented exit codes."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:  # imported as tasks.weights.*
    from . import manifest as mf
    from .fetch_exits import (EXIT_AUTH, EXIT_ERROR, EXIT_PEER_MISMATCH, EXIT_REPO_NOT_FOUND,
                              EXIT_REVISION_NOT_FOUND, EXIT_UNREACHABLE, EXIT_VERIFY, FetchError)
except ImportError:  # run as a script from the uploaded directory
    import manifest as mf  # type: ignore[no-redef]
    from fetch_exits import (EXIT_AUTH, EXIT_ERROR, EXIT_PEER_MISMATCH,  # type: ignore[no-redef]
                             EXIT_REPO_NOT_FOUND, EXIT_REVISION_NOT_FOUND, EXIT_UNREACHABLE, EXIT_VERIFY,
                             FetchError)


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


def client_env() -> None:
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

    def __init__(self, endpoint: str | None, token: str | None, repo: str, revision: str,
                 chunk_bytes: int | None = None) -> None:
        self.endpoint = endpoint
        self.token: str | bool = token or False
        self.repo = repo
        self.revision = revision
        self.chunk_bytes = chunk_bytes  # None: the library's own

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

        if self.chunk_bytes:
            constants.DOWNLOAD_CHUNK_SIZE = self.chunk_bytes
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

    def __init__(self, url: str, repo: str, revision: str, hub: str | None, token: str | None = None,
                 timeout_s: float = 30.0, chunk_bytes: int | None = None) -> None:
        self.url = url.rstrip("/")
        self.timeout_s, self.chunk_bytes = timeout_s, chunk_bytes
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
                                        timeout=self.timeout_s) as resp:
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
        self._hf = HfRemote(self.url, self.token, self.repo, commit or man["revision"],
                            self.chunk_bytes)
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

