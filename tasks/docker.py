"""Docker engine: installed from the distribution (default) or Docker CE's repository, with
/etc/docker/daemon.json managed as data and the daemon restarted only when that file changed.

Settings (host data, prefix ``docker_``): ``tasks.settings.docker.DockerSettings``, each key
described there once (README.md's settings table is generated from it).
"""

from __future__ import annotations

import json
from typing import Any

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.server import LinuxDistribution
from pyinfra.operations.util import any_changed

from tasks.converge import apt_source, deb_packages, files_synced, units_running
from tasks.settings.docker import DockerSettings

DEFAULTS = DockerSettings.defaults()
DOCKER_CE_KEYRING = "/etc/apt/keyrings/docker.gpg"
NVIDIA_RUNTIME = {"args": [], "path": "nvidia-container-runtime"}


def daemon_config(settings: DockerSettings) -> dict:
    """daemon.json as data. The nvidia runtime entry is exactly what `nvidia-ctk runtime
    configure --runtime=docker` writes, so the two never fight over the file."""
    config: dict = {
        "log-driver": "json-file",
        "log-opts": {"max-size": settings.docker_log_max_size, "max-file": str(settings.docker_log_max_file)},
    }
    if settings.docker_registry_mirrors:
        config["registry-mirrors"] = list(settings.docker_registry_mirrors)
    if settings.docker_insecure_registries:
        config["insecure-registries"] = list(settings.docker_insecure_registries)
    if settings.docker_nvidia_runtime:
        config["runtimes"] = {"nvidia": dict(NVIDIA_RUNTIME)}
    config.update(settings.docker_daemon_extra)
    return config


def render_daemon_json(settings: DockerSettings) -> str:
    return json.dumps(daemon_config(settings), indent=2, sort_keys=True) + "\n"


@deploy("Docker engine", data_defaults=DEFAULTS)
def install_docker(nvidia_runtime: bool | None = None, restart_after: Any = None) -> None:
    """
    Install Docker and manage ``/etc/docker/daemon.json``; restart dockerd only when it changed.

    + nvidia_runtime: add the ``nvidia`` runtime (overrides ``docker_nvidia_runtime``)
    + restart_after: a further operation (``OperationMeta``) whose change restarts dockerd, e.g. the
      toolkit's packages: Docker looks for the toolkit's hook only when it starts

    Example:

    .. code:: python

        from tasks.docker import install_docker
        install_docker()
    """
    settings = DockerSettings.of(host)
    if nvidia_runtime is not None:
        settings = settings.model_copy(update={"docker_nvidia_runtime": nvidia_runtime})
    if settings.docker_source == "distro":
        deb_packages(name="Install docker.io", packages=["docker.io"], cache_time=86400)
    else:
        distro = host.get_fact(LinuxDistribution)
        os_id = (distro.get("name") or "debian").lower()
        codename = distro.get("release_meta", {}).get("VERSION_CODENAME") or distro.get("release_meta", {}).get(
            "CODENAME", "bookworm")
        base = f"{settings.docker_ce_repo_url}/{os_id}"
        apt_source(name="Docker CE repository", list_name="docker", key_url=f"{base}/gpg",
                   keyring=DOCKER_CE_KEYRING, source=f"deb [signed-by={DOCKER_CE_KEYRING}] {base} {codename} stable")
        version = settings.docker_ce_version
        pkgs = ["docker-ce", "docker-ce-cli", "containerd.io"]
        if version:
            pkgs = [f"docker-ce={version}", f"docker-ce-cli={version}", "containerd.io"]
        deb_packages(name="Install docker-ce", packages=pkgs, cache_time=86400)
    # files_synced shows daemon.json's diff under --diff, as files.put did, at one round trip.
    daemon = files_synced(name="daemon.json", files={"/etc/docker/daemon.json": render_daemon_json(settings).encode()},
                          dirs=["/etc/docker"], mode="644", dir_mode="755")
    # Listed as a (conditional) change only where daemon.json or the toolkit will change.
    follows = [daemon, *([restart_after] if restart_after is not None else [])]
    units_running(name="Restart dockerd (daemon.json changed)", units=["docker.service"], restarted=True,
                  restart_after=follows, _if=any_changed(*follows))
    units_running(name="dockerd running", units=["docker.service"])
