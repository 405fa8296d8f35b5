"""NVIDIA Container Toolkit settings (host data, prefix ``nvidia_toolkit_``): read by tasks.nvidia_toolkit."""

from __future__ import annotations

import re
from typing import ClassVar

from pydantic import Field

from tasks.settings.base import AbsPath, HttpUrl, Settings, checked


#: apt's form of a pinned toolkit version; dnf's drops the "-1".
PinnedVersion = checked(lambda v: bool(re.match(r"^\d+\.\d+\.\d+(-\d+)?$", v)),
                        "a pinned version like 1.17.8-1")


class NvidiaToolkitSettings(Settings):
    """NVIDIA Container Toolkit: every ``nvidia_toolkit_*`` key of the host data."""

    prefix: ClassVar[str] = "nvidia_toolkit_"
    title: ClassVar[str] = "NVIDIA Container Toolkit"

    nvidia_toolkit_repo_url: HttpUrl = Field(
        "https://nvidia.github.io/libnvidia-container",
        description="repository base; the key is `<base>/gpgkey`, packages `<base>/stable/deb/$(ARCH)` (apt) or "
                    "`<base>/stable/rpm/nvidia-container-toolkit.repo` (dnf)")
    nvidia_toolkit_key_url: HttpUrl | None = Field(
        None, description="key URL when it is not `<repo>/gpgkey` (internal mirrors)")
    nvidia_toolkit_version: PinnedVersion = Field(
        "1.17.8-1", description='pinned version of the four toolkit packages (apt form; dnf drops the "-1")')
    nvidia_toolkit_cdi_spec: AbsPath = Field(
        "/etc/cdi/nvidia.yaml", description="where the CDI spec is written (kept across reboots, unlike "
                                            "/var/run/cdi)")
