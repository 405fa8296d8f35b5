"""Docker engine: installed from the distribution (default) or Docker CE's repository, with
/etc/docker/daemon.json managed as data and the daemon restarted only when that file changed.

DEFAULTS (host/group data overrides each key):

| key | default | meaning |
|---|---|---|
| docker_source | "distro" | "distro" (Debian/Ubuntu docker.io) or "docker-ce" (Docker's own repository) |
| docker_ce_repo_url | "https://download.docker.com/linux" | Docker CE repository base (an internal mirror may replace it) |
| docker_ce_version | None | pin for docker-ce packages (e.g. "5:27.3.1-1~debian.12~bookworm"); None = newest |
| docker_registry_mirrors | [] | Docker Hub mirrors ("registry-mirrors" in daemon.json) |
| docker_insecure_registries | [] | registries reached over plain HTTP |
| docker_log_max_size | "100m" | json-file log rotation: size of one file |
| docker_log_max_file | 3 | json-file log rotation: files kept |
| docker_nvidia_runtime | False | add the "nvidia" runtime (nvidia-container-runtime) to daemon.json |
| docker_daemon_extra | {} | further daemon.json keys, merged last |
"""

from __future__ import annotations

import json
from typing import Any

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.server import LinuxDistribution
from pyinfra.operations.util import any_changed

from tasks.converge import apt_source, deb_packages, files_synced, units_running

DEFAULTS = {
    "docker_source": "distro",
    "docker_ce_repo_url": "https://download.docker.com/linux",
    "docker_ce_version": None,
    "docker_registry_mirrors": [],
    "docker_insecure_registries": [],
    "docker_log_max_size": "100m",
    "docker_log_max_file": 3,
    "docker_nvidia_runtime": False,
    "docker_daemon_extra": {},
}
SOURCES = ("distro", "docker-ce")
DOCKER_CE_KEYRING = "/etc/apt/keyrings/docker.gpg"
NVIDIA_RUNTIME = {"args": [], "path": "nvidia-container-runtime"}


def daemon_config(data) -> dict:
    """daemon.json as data. The nvidia runtime entry is exactly what `nvidia-ctk runtime
    configure --runtime=docker` writes, so the two never fight over the file."""
    config: dict = {
        "log-driver": "json-file",
        "log-opts": {"max-size": str(data.docker_log_max_size), "max-file": str(data.docker_log_max_file)},
    }
    if data.docker_registry_mirrors:
        config["registry-mirrors"] = list(data.docker_registry_mirrors)
    if data.docker_insecure_registries:
        config["insecure-registries"] = list(data.docker_insecure_registries)
    if data.docker_nvidia_runtime:
        config["runtimes"] = {"nvidia": dict(NVIDIA_RUNTIME)}
    config.update(data.docker_daemon_extra or {})
    return config


class _Override:
    """host.data with some keys replaced (host.data itself is read-only)."""

    def __init__(self, data, **values) -> None:
        self._data, self._values = data, values

    def __getattr__(self, key):
        return self._values[key] if key in self._values else getattr(self._data, key)

    def get(self, key, default=None):
        return self._values[key] if key in self._values else self._data.get(key, default)


def render_daemon_json(data) -> str:
    return json.dumps(daemon_config(data), indent=2, sort_keys=True) + "\n"


def validate(data) -> None:
    """Fail before any host is touched on data that cannot work."""
    if data.docker_source not in SOURCES:
        raise ValueError(f"docker_source={data.docker_source!r}: allowed {', '.join(SOURCES)}")
    for key in ("docker_registry_mirrors", "docker_insecure_registries"):
        value = data.get(key)
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"{key}: must be a list of strings, got {value!r}")
    for url in data.docker_registry_mirrors:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"docker_registry_mirrors: {url!r} must start with http:// or https://")
    if not isinstance(data.docker_daemon_extra or {}, dict):
        raise ValueError("docker_daemon_extra: must be a mapping of daemon.json keys")


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
    validate(host.data)
    if host.data.docker_source == "distro":
        deb_packages(name="Install docker.io", packages=["docker.io"], cache_time=86400)
    else:
        distro = host.get_fact(LinuxDistribution)
        os_id = (distro.get("name") or "debian").lower()
        codename = distro.get("release_meta", {}).get("VERSION_CODENAME") or distro.get("release_meta", {}).get(
            "CODENAME", "bookworm")
        base = f"{host.data.docker_ce_repo_url}/{os_id}"
        apt_source(name="Docker CE repository", list_name="docker", key_url=f"{base}/gpg",
                   keyring=DOCKER_CE_KEYRING, source=f"deb [signed-by={DOCKER_CE_KEYRING}] {base} {codename} stable")
        version = host.data.docker_ce_version
        pkgs = ["docker-ce", "docker-ce-cli", "containerd.io"]
        if version:
            pkgs = [f"docker-ce={version}", f"docker-ce-cli={version}", "containerd.io"]
        deb_packages(name="Install docker-ce", packages=pkgs, cache_time=86400)
    data = host.data
    if nvidia_runtime is not None:
        data = _Override(host.data, docker_nvidia_runtime=nvidia_runtime)
    # files_synced shows daemon.json's diff under --diff, as files.put did, at one round trip.
    daemon = files_synced(name="daemon.json", files={"/etc/docker/daemon.json": render_daemon_json(data).encode()},
                          dirs=["/etc/docker"], mode="644", dir_mode="755")
    # Listed as a (conditional) change only where daemon.json or the toolkit will change.
    follows = [daemon, *([restart_after] if restart_after is not None else [])]
    units_running(name="Restart dockerd (daemon.json changed)", units=["docker.service"], restarted=True,
                  restart_after=follows, _if=any_changed(*follows))
    units_running(name="dockerd running", units=["docker.service"])
