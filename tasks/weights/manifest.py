"""Weights manifest and on-disk layout helpers shared by ``fetch.py`` and ``peer_server.py``.

This module is stdlib-only and has no ``tasks`` imports: the whole directory ``tasks/weights/``
(``fetch.py``, ``peer_server.py``, ``manifest.py``, ``hub_protocol.py``) is what gets uploaded to
a host (e.g. ``/opt/llmfleet/weights/``) and run there with the host's llmfleet venv; scripts import
their siblings either as package modules (tests, controller) or as plain modules (on the host).

On-disk layout of one model destination ``<dest>`` (e.g. ``/srv/models/qwen3-0.6b``)::

    <dest>/
      current -> revisions/<rev>            # symlink, switched atomically (rename of a temp link)
      revisions/<rev>/                      # one verified snapshot per revision
          config.json, model-0000x-of-0000n.safetensors, ...
          manifest.json                     # written last, after verification
      .staging-<rev>/                       # partial download (resumable), renamed to revisions/<rev>
      .lock                                 # flock held by a running fetch

``<rev>`` is the revision as requested (branch, tag or commit sha) with ``/`` replaced by ``--``.

manifest.json (format 1)::

    {"format": 1, "repo": "Qwen/Qwen3-0.6B", "hub": "huggingface", "revision": "main",
     "commit": "<40 hex or null>", "allow": [...], "ignore": [...], "source": "<endpoint or peer URL>",
     "files": [{"path": "config.json", "size": 726, "sha256": "<64 hex>"}, ...],
     "total_bytes": 1234, "verified_at": "2025-01-01T00:00:00Z"}
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import re
import time
from pathlib import Path
from typing import Any, Callable, Iterable

#: File name of the manifest inside a revision directory.
MANIFEST_NAME = "manifest.json"
#: Read size when hashing files (bytes).
HASH_CHUNK = 8 * 1024 * 1024
FORMAT = 1
HUBS = ("huggingface", "modelscope")
_REV_RE = re.compile(r"^[A-Za-z0-9._/-]{1,200}$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


class ManifestError(ValueError):
    """A manifest is missing, malformed, or does not describe the files on disk."""


def sha256_file(path: Path | str, chunk: int = HASH_CHUNK) -> str:
    """Return the hex sha256 of a file, read in ``chunk``-sized blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def git_blob_sha1(path: Path | str, chunk: int = HASH_CHUNK) -> str:
    """Return the git blob id (sha1 of ``blob <size>\\0<content>``) the hubs use for non-LFS files."""
    size = os.path.getsize(path)
    digest = hashlib.sha1(b"blob %d\0" % size)
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def rev_dirname(revision: str) -> str:
    """Map a revision (branch, tag, commit) to a directory name; reject anything path-like."""
    if not _REV_RE.match(revision) or ".." in revision or revision.startswith("/"):
        raise ManifestError(
            f"revision {revision!r}: allowed are 1-200 characters of A-Z a-z 0-9 . _ - / without '..'"
        )
    return revision.replace("/", "--")


def utc_now() -> str:
    """Current UTC time as ISO-8601 with a trailing Z."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def build(
    *,
    repo: str,
    hub: str,
    revision: str,
    commit: str | None,
    files: Iterable[dict[str, Any]],
    allow: list[str] | None = None,
    ignore: list[str] | None = None,
    source: str = "",
) -> dict[str, Any]:
    """Assemble a manifest dict (files sorted by path); ``verified_at`` is set to now."""
    entries = sorted(
        ({"path": f["path"], "size": int(f["size"]), "sha256": f["sha256"]} for f in files),
        key=lambda e: e["path"],
    )
    for e in entries:
        if not _SHA256_RE.match(e["sha256"] or ""):
            raise ManifestError(f"file {e['path']!r}: sha256 must be 64 lowercase hex characters")
    return {
        "format": FORMAT,
        "repo": repo,
        "hub": hub,
        "revision": revision,
        "commit": commit,
        "allow": list(allow or []),
        "ignore": list(ignore or []),
        "source": source,
        "files": entries,
        "total_bytes": sum(e["size"] for e in entries),
        "verified_at": utc_now(),
    }


def write(directory: Path, manifest: dict[str, Any]) -> Path:
    """Write ``manifest.json`` into ``directory`` atomically (temp file, fsync, rename)."""
    target = directory / MANIFEST_NAME
    tmp = directory / f".{MANIFEST_NAME}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(manifest, fh, indent=1, sort_keys=True)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, target)
    return target


def read(directory: Path) -> dict[str, Any]:
    """Read and sanity-check ``directory/manifest.json``; raise :class:`ManifestError` if unusable."""
    path = directory / MANIFEST_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ManifestError(f"{path}: no manifest") from exc
    except (OSError, ValueError) as exc:
        raise ManifestError(f"{path}: unreadable manifest ({exc})") from exc
    for key in ("repo", "hub", "revision", "files", "verified_at"):
        if key not in data:
            raise ManifestError(f"{path}: field {key!r} missing")
    if data.get("format") != FORMAT:
        raise ManifestError(f"{path}: format {data.get('format')!r} unsupported (want {FORMAT})")
    for entry in data["files"]:
        p = entry.get("path", "")
        if not p or p.startswith("/") or ".." in p.split("/") or p == MANIFEST_NAME:
            raise ManifestError(f"{path}: bad file path {p!r}")
    return data


def stat_mismatches(directory: Path, manifest: dict[str, Any]) -> list[str]:
    """Paths whose file is missing or has the wrong size (no hashing: cheap, no content read)."""
    bad = []
    for entry in manifest["files"]:
        try:
            if (directory / entry["path"]).stat().st_size != entry["size"]:
                bad.append(entry["path"])
        except OSError:
            bad.append(entry["path"])
    return bad


def hash_files(
    directory: Path,
    paths: Iterable[str],
    *,
    workers: int = 4,
    on_done: Callable[[str, int], None] | None = None,
) -> dict[str, str]:
    """sha256 of each path under ``directory`` using a thread pool (hashlib releases the GIL)."""
    paths = list(paths)
    results: dict[str, str] = {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = {pool.submit(sha256_file, directory / p): p for p in paths}
        for fut in concurrent.futures.as_completed(futures):
            p = futures[fut]
            results[p] = fut.result()
            if on_done is not None:
                on_done(p, (directory / p).stat().st_size)
    return results


def hash_mismatches(
    directory: Path, manifest: dict[str, Any], *, workers: int = 4
) -> list[str]:
    """Paths whose content does not match the manifest (missing, wrong size, or wrong sha256)."""
    bad = set(stat_mismatches(directory, manifest))
    todo = [e for e in manifest["files"] if e["path"] not in bad]
    got = hash_files(directory, (e["path"] for e in todo), workers=workers)
    bad.update(e["path"] for e in todo if got[e["path"]] != e["sha256"])
    return sorted(bad)


def matches_request(
    manifest: dict[str, Any],
    *,
    repo: str,
    revision: str,
    hub: str | None,
    allow: list[str] | None,
    ignore: list[str] | None,
) -> bool:
    """True when ``manifest`` describes this request (repo, revision, hub, patterns).

    ``hub``, ``allow`` and ``ignore`` set to None mean "any" (a peer copy inherits the peer's).
    """
    return (
        manifest.get("repo") == repo
        and revision in (manifest.get("revision"), manifest.get("commit"))
        and (hub is None or manifest.get("hub") == hub)
        and (allow is None or list(manifest.get("allow") or []) == list(allow))
        and (ignore is None or list(manifest.get("ignore") or []) == list(ignore))
    )


def select(paths: Iterable[str], allow: list[str], ignore: list[str]) -> list[str]:
    """Filter repo paths like huggingface_hub does: fnmatch, a trailing '/' means the whole folder."""
    import fnmatch

    def norm(p: str) -> str:
        return p + "*" if p.endswith("/") else p

    allow_n = [norm(p) for p in allow]
    ignore_n = [norm(p) for p in ignore]
    out = []
    for path in paths:
        if allow_n and not any(fnmatch.fnmatchcase(path, p) for p in allow_n):
            continue
        if any(fnmatch.fnmatchcase(path, p) for p in ignore_n):
            continue
        out.append(path)
    return sorted(out)


def exact_pattern(path: str) -> str:
    """An fnmatch pattern that matches exactly ``path`` (escapes ``* ? [``)."""
    return re.sub(r"([*?\[])", r"[\1]", path)
