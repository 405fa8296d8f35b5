"""Docker settings (host data, prefix ``docker_``): read by tasks.docker."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from tasks.settings.base import HttpUrl, Positive, Settings


class DockerSettings(Settings):
    """Docker: every ``docker_*`` key of the host data."""

    prefix: ClassVar[str] = "docker_"
    title: ClassVar[str] = "Docker"

    docker_source: Literal["distro", "docker-ce"] = Field(
        "distro", description='"distro" (Debian/Ubuntu docker.io) or "docker-ce" (Docker\'s own repository)')
    docker_ce_repo_url: HttpUrl = Field(
        "https://download.docker.com/linux", description="Docker CE repository base (an internal mirror may replace"
                                                         " it)")
    docker_ce_version: str | None = Field(
        None, description='pin for docker-ce packages (e.g. "5:27.3.1-1~debian.12~bookworm"); None = newest')
    docker_registry_mirrors: list[HttpUrl] = Field(
        [], description='Docker Hub mirrors ("registry-mirrors" in daemon.json)')
    docker_insecure_registries: list[str] = Field(
        [], description="registries reached over plain HTTP")
    docker_log_max_size: str = Field(
        "100m", description="json-file log rotation: size of one file")
    docker_log_max_file: Positive = Field(
        3, description="json-file log rotation: files kept")
    docker_nvidia_runtime: bool = Field(
        False, description='add the "nvidia" runtime (nvidia-container-runtime) to daemon.json')
    docker_daemon_extra: dict[str, Any] = Field(
        {}, description="further daemon.json keys, merged last")
