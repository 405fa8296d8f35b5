"""A signed apt repository on the lab bridge, standing in for NVIDIA's.

It has NVIDIA's layout (``<base>/gpgkey``, ``<base>/stable/deb/$(ARCH)/`` flat repository with
InRelease and Release.gpg) and the toolkit's four packages at two versions, so the
production code path (key download, dearmor, ``signed-by`` source, pinned install) is the
one exercised. The packages install the stand-in binaries of standins/nvidia_ctk.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from .config import CACHE_DIR

TOOLKIT_VERSIONS = ("1.17.7-1", "1.17.8-1")
GNUPGHOME = CACHE_DIR / "gnupg"
KEY_UID = "llmfleet lab stand-in repository <lab@llmfleet.invalid>"
STANDIN = Path(__file__).parent / "standins" / "nvidia_ctk.py"

# package -> (files it ships, dependencies at the same version)
PACKAGES = {
    "libnvidia-container1": ([], []),
    "libnvidia-container-tools": (["/usr/bin/nvidia-container-cli"], ["libnvidia-container1"]),
    "nvidia-container-toolkit-base": (["/usr/bin/nvidia-ctk", "/usr/bin/nvidia-container-runtime"], []),
    "nvidia-container-toolkit": (
        ["/usr/bin/nvidia-container-runtime-hook"],
        ["nvidia-container-toolkit-base", "libnvidia-container-tools"],
    ),
}


def _gpg(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["gpg", "--batch", "--homedir", str(GNUPGHOME), *args], check=True,
                          capture_output=True, **kw)


def _ensure_key() -> None:
    if (GNUPGHOME / ".llmfleet-key").exists():
        return
    shutil.rmtree(GNUPGHOME, ignore_errors=True)
    GNUPGHOME.mkdir(parents=True, mode=0o700)
    _gpg("--passphrase", "", "--quick-gen-key", KEY_UID, "ed25519", "sign", "never")
    (GNUPGHOME / ".llmfleet-key").touch()


def _build_deb(pkg: str, version: str, out: Path) -> None:
    files, deps = PACKAGES[pkg]
    upstream = version.split("-")[0]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "DEBIAN").mkdir()
        depends = ", ".join(f"{d} (= {version})" for d in deps)
        control = (
            f"Package: {pkg}\nVersion: {version}\nArchitecture: amd64\n"
            "Maintainer: llmfleet lab <lab@llmfleet.invalid>\n"
            + (f"Depends: {depends}\n" if depends else "")
            + f"Description: llmfleet lab stand-in for NVIDIA's {pkg}\n"
            " Installs stand-in binaries under the real names; no GPU support.\n"
        )
        (root / "DEBIAN/control").write_text(control)
        script = STANDIN.read_text().replace("@VERSION@", upstream)
        for path in files:
            target = root / path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(script)
            os.chmod(target, 0o755)
        doc = root / "usr/share/doc" / pkg
        doc.mkdir(parents=True)
        (doc / "README.llmfleet-standin").write_text("llmfleet lab stand-in package\n")
        subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(root),
                        str(out / f"{pkg}_{version}_amd64.deb")], check=True, capture_output=True)


def build(root: Path) -> Path:
    """Build (or rebuild) the repository under ``root``; return the base directory to serve."""
    _ensure_key()
    base = root / "libnvidia-container"
    repo = base / "stable/deb/amd64"
    shutil.rmtree(base, ignore_errors=True)
    repo.mkdir(parents=True)
    for version in TOOLKIT_VERSIONS:
        for pkg in PACKAGES:
            _build_deb(pkg, version, repo)
    packages = subprocess.run(["dpkg-scanpackages", "--multiversion", "."], cwd=repo, check=True,
                              capture_output=True).stdout
    (repo / "Packages").write_bytes(packages)
    release = subprocess.run(
        ["apt-ftparchive", "-o", "APT::FTPArchive::Release::Origin=llmfleet-lab-standin", "release", "."],
        cwd=repo, check=True, capture_output=True,
    ).stdout
    (repo / "Release").write_bytes(release)
    _gpg("--yes", "--clearsign", "-o", str(repo / "InRelease"), str(repo / "Release"))
    _gpg("--yes", "-abs", "-o", str(repo / "Release.gpg"), str(repo / "Release"))
    (base / "gpgkey").write_bytes(_gpg("--armor", "--export").stdout)
    return base
