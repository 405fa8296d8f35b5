"""The lab's image registry (Debian's docker-registry) and a small OCI pusher.

The machine has no Docker engine (engines run inside lab hosts only), so images are
assembled here as plain layers (gzip tars) and pushed with the registry HTTP API v2.
Repositories keep their real names (``vllm/vllm-openai``, ``ascend/vllm-ascend``): lab
hosts use the registry as their Docker Hub mirror, and llmfleet's own image mirror setting
for other registries (quay.io).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import subprocess
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from .config import CACHE_DIR, LabConfig

MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"
LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
CONFIG_V1 = "application/vnd.docker.container.image.v1+json"


def registry_config(cfg: LabConfig) -> Path:
    storage = CACHE_DIR / f"registry-{cfg.name}"
    storage.mkdir(parents=True, exist_ok=True)
    path = cfg.run_dir / "registry.yml"
    path.write_text(
        "version: 0.1\n"
        "log:\n  level: warn\n"
        f"storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: {cfg.registry}\n",
    )
    return path


def registry_command(cfg: LabConfig) -> list[str]:
    return ["docker-registry", "serve", str(registry_config(cfg))]


@dataclass
class Layer:
    digest: str  # sha256 of the gzip blob
    diff_id: str  # sha256 of the uncompressed tar
    path: Path  # the gzip blob on disk
    size: int


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layer_from_dir(root: Path, cache_key: str) -> Layer:
    """A layer of a whole tree (the base image), made once per cache key."""
    blob = CACHE_DIR / "layers" / f"{cache_key}.tar.gz"
    meta = blob.with_suffix(".json")
    if not meta.exists():
        blob.parent.mkdir(parents=True, exist_ok=True)
        raw = subprocess.run(
            ["tar", "-C", str(root), "--numeric-owner", "--exclude=./.llmfleet-complete", "-cf", "-", "."],
            check=True, capture_output=True,
        ).stdout
        data = gzip.compress(raw, compresslevel=1, mtime=0)
        blob.write_bytes(data)
        meta.write_text(json.dumps({"digest": _sha(data), "diff_id": _sha(raw)}))
    info = json.loads(meta.read_text())
    return Layer(info["digest"], info["diff_id"], blob, blob.stat().st_size)


def layer_from_tree(root: Path, entries: list[str], prefix: str, cache_key: str) -> Layer:
    """A layer of some top-level ``entries`` of ``root``, placed under ``prefix`` in the image, made
    once per cache key. Reproducible (sorted names, mtime 0, root-owned, gzip without a timestamp):
    the same files give the same digest, so the registry stores a shared layer once."""
    blob = CACHE_DIR / "layers" / f"{cache_key}.tar.gz"
    meta = blob.with_suffix(".json")
    if not meta.exists():
        blob.parent.mkdir(parents=True, exist_ok=True)
        tar = subprocess.Popen(
            ["tar", "-C", str(root), "--sort=name", "--mtime=@0", "--owner=0", "--group=0", "--numeric-owner",
             f"--transform=s,^,{prefix.strip('/')}/,", "-cf", "-", "--", *entries], stdout=subprocess.PIPE)
        raw_sha, gz_sha = hashlib.sha256(), hashlib.sha256()
        tmp = blob.with_suffix(".tmp")
        with open(tmp, "wb") as out:
            # Streamed: a torch layer is gigabytes and must not sit in memory.
            gz = _HashingWriter(out, gz_sha)
            with gzip.GzipFile(fileobj=gz, mode="wb", compresslevel=1, mtime=0) as zipped:
                for chunk in iter(lambda: tar.stdout.read(1 << 20), b""):
                    raw_sha.update(chunk)
                    zipped.write(chunk)
        if tar.wait() != 0:
            raise RuntimeError(f"tar of {root} for layer {cache_key} failed")
        tmp.replace(blob)
        meta.write_text(json.dumps({"digest": "sha256:" + gz_sha.hexdigest(),
                                    "diff_id": "sha256:" + raw_sha.hexdigest()}))
    info = json.loads(meta.read_text())
    return Layer(info["digest"], info["diff_id"], blob, blob.stat().st_size)


class _HashingWriter(io.RawIOBase):
    """A file wrapper hashing what goes through it (the gzip blob's digest, in one pass)."""

    def __init__(self, out, digest) -> None:
        self.out, self.digest = out, digest

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.digest.update(data)
        return self.out.write(data)


def layer_from_files(files: dict[str, tuple[bytes, int]]) -> Layer:
    """A small deterministic layer of files (path -> (content, mode))."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs: set[str] = set()
        for path in sorted(files):
            parts = path.strip("/").split("/")
            for i in range(1, len(parts)):
                d = "/".join(parts[:i])
                if d not in dirs:
                    dirs.add(d)
                    info = tarfile.TarInfo(d)
                    info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
                    tar.addfile(info)
            content, mode = files[path]
            info = tarfile.TarInfo(path.strip("/"))
            info.size, info.mode, info.mtime = len(content), mode, 0
            tar.addfile(info, io.BytesIO(content))
    raw = buf.getvalue()
    data = gzip.compress(raw, compresslevel=6, mtime=0)
    blob = CACHE_DIR / "layers" / (hashlib.sha256(data).hexdigest() + ".tar.gz")
    blob.parent.mkdir(parents=True, exist_ok=True)
    if not blob.exists():
        blob.write_bytes(data)
    return Layer(_sha(data), _sha(raw), blob, len(data))


class Pusher:
    def __init__(self, registry: str) -> None:
        self.base = f"http://{registry}/v2"
        self.http = requests.Session()

    def wait(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.http.get(self.base + "/", timeout=2).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"registry at {self.base} did not answer within {timeout}s")

    def _blob(self, repo: str, digest: str, data: bytes | Path) -> None:
        if self.http.head(f"{self.base}/{repo}/blobs/{digest}", timeout=30).status_code == 200:
            return
        start = self.http.post(f"{self.base}/{repo}/blobs/uploads/", timeout=30)
        start.raise_for_status()
        location = start.headers["Location"]
        if location.startswith("/"):
            location = self.base[: -len("/v2")] + location
        sep = "&" if "?" in location else "?"
        headers = {"Content-Type": "application/octet-stream"}
        if isinstance(data, Path):  # streamed from disk: a torch layer is gigabytes
            with open(data, "rb") as body:
                headers["Content-Length"] = str(data.stat().st_size)
                put = self.http.put(f"{location}{sep}digest={digest}", data=body, headers=headers, timeout=600)
        else:
            put = self.http.put(f"{location}{sep}digest={digest}", data=data, headers=headers, timeout=600)
        put.raise_for_status()

    def push(self, repo: str, tag: str, layers: list[Layer], config: dict) -> str:
        """Push an image (layers bottom-up) and return its manifest digest."""
        for layer in layers:
            self._blob(repo, layer.digest, layer.path)
        config = dict(config, rootfs={"type": "layers", "diff_ids": [l.diff_id for l in layers]})
        config_bytes = json.dumps(config, sort_keys=True).encode()
        self._blob(repo, _sha(config_bytes), config_bytes)
        manifest = {
            "schemaVersion": 2,
            "mediaType": MANIFEST_V2,
            "config": {"mediaType": CONFIG_V1, "size": len(config_bytes), "digest": _sha(config_bytes)},
            "layers": [{"mediaType": LAYER_GZIP, "size": l.size, "digest": l.digest} for l in layers],
        }
        body = json.dumps(manifest).encode()
        res = self.http.put(f"{self.base}/{repo}/manifests/{tag}", data=body,
                            headers={"Content-Type": MANIFEST_V2}, timeout=60)
        res.raise_for_status()
        return _sha(body)

    def tags(self, repo: str) -> list[str]:
        res = self.http.get(f"{self.base}/{repo}/tags/list", timeout=10)
        return res.json().get("tags") or [] if res.status_code == 200 else []
