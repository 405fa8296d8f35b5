"""NVIDIA Container Toolkit from NVIDIA's signed repository (or an internal mirror), pinned.

The Docker side (the ``nvidia`` runtime in daemon.json) is written by tasks/docker.py from
data, byte-for-byte what ``nvidia-ctk runtime configure --runtime=docker`` would add, so the
toolkit's configure command is not needed on a managed host and the two never fight over
the file. A CDI spec is generated when missing or when the toolkit changed.

Settings (host data, prefix ``nvidia_toolkit_``): ``tasks.settings.nvidia_toolkit.NvidiaToolkitSettings``, each key
described there once (README.md's settings table is generated from it).
"""

from __future__ import annotations

import shlex
from typing import Callable

from pyinfra import host, state
from pyinfra.api import deploy, operation
from pyinfra.facts.server import Which
from pyinfra.operations import dnf, files

from tasks.converge import FileDigests, apt_source, deb_packages
from tasks.facts.planned import declaring, read
from tasks.settings.nvidia_toolkit import NvidiaToolkitSettings

DEFAULTS = NvidiaToolkitSettings.defaults()
PACKAGES = ("nvidia-container-toolkit", "nvidia-container-toolkit-base", "libnvidia-container-tools",
            "libnvidia-container1")
KEYRING = "/usr/share/keyrings/nvidia-container-toolkit-keyring.gpg"


def apt_source_line(repo_url: str) -> str:
    return f"deb [signed-by={KEYRING}] {repo_url.rstrip('/')}/stable/deb/$(ARCH) /"


@declaring(lambda path, **_: [(FileDigests, {"paths": [path]})])
@operation()
def cdi_spec(path: str, regenerate: Callable[[], bool] | None = None):
    """
    The CDI spec at ``path``: generated when missing, or regenerated when ``regenerate()`` says so
    (the toolkit changed in this run; known only while executing, so ``--dry`` reports a missing
    spec only).

    + path: where ``nvidia-ctk cdi generate`` writes the spec
    + regenerate: callable, e.g. the toolkit package operation's ``did_change``

    Example:

    .. code:: python

        cdi_spec(name="CDI spec", path="/etc/cdi/nvidia.yaml", regenerate=toolkit.did_change)
    """
    changed = bool(regenerate and state.is_executing and regenerate())
    if read(FileDigests, paths=[path]).get(path, {}).get("type") in ("file", "link") and not changed:
        host.noop(f"{path} exists")
        return
    yield f"nvidia-ctk cdi generate --output={shlex.quote(path)}"


@deploy("NVIDIA Container Toolkit", data_defaults=DEFAULTS)
def install_nvidia_toolkit():
    """
    Add NVIDIA's signed repository, install the pinned toolkit, generate the CDI spec.
    Returns the package operation, so that dockerd can be restarted when the toolkit changed.

    Example:

    .. code:: python

        from tasks.nvidia_toolkit import install_nvidia_toolkit
        install_nvidia_toolkit()
    """
    settings = NvidiaToolkitSettings.of(host)
    repo = settings.nvidia_toolkit_repo_url.rstrip("/")
    key_url = settings.nvidia_toolkit_key_url or f"{repo}/gpgkey"
    version = settings.nvidia_toolkit_version
    if host.get_fact(Which, command="apt-get"):
        apt_source(name="Toolkit repository", list_name="nvidia-container-toolkit", key_url=key_url,
                   keyring=KEYRING, source=apt_source_line(repo))
        toolkit = deb_packages(name=f"Toolkit {version}", packages=[f"{p}={version}" for p in PACKAGES],
                               cache_time=86400)
    else:
        rpm_version = version.split("-")[0]
        files.download(name="Toolkit repository", src=f"{repo}/stable/rpm/nvidia-container-toolkit.repo",
                       dest="/etc/yum.repos.d/nvidia-container-toolkit.repo", mode="644")
        toolkit = dnf.packages(name=f"Toolkit {rpm_version}",
                               packages=[f"{p}-{rpm_version}" for p in PACKAGES])
    cdi_spec(name="CDI spec", path=settings.nvidia_toolkit_cdi_spec, regenerate=toolkit.did_change)
    return toolkit
