"""Host resources that decide whether a model can be served: memory, disk, /dev/shm, OS, Docker, NVIDIA CTK.

One fact, ``HostResources(path)``, gathers all of it in one round trip (pyinfra 3.10 does not cache facts:
each ``host.get_fact`` is a round trip, so several small facts would cost several).
"""

from __future__ import annotations

import shlex
from typing import Any

from pyinfra.api import FactBase

SECTION = "@@llmfleet "

#: Packages that provide Docker Engine, in the order they are reported: Debian/Ubuntu's, Docker's, Fedora's.
DOCKER_PACKAGES = ("docker.io", "docker-ce", "moby-engine")
CTK_PACKAGE = "nvidia-container-toolkit"
PACKAGES = " ".join((*DOCKER_PACKAGES, CTK_PACKAGE))


def _df_line(line: str) -> dict[str, Any] | None:
    """One ``df -Pk`` data line -> sizes in bytes and the mount point."""
    parts = line.split()
    if len(parts) < 6 or not parts[1].isdigit():
        return None
    return {
        "filesystem": parts[0],
        "total_bytes": int(parts[1]) * 1024,
        "used_bytes": int(parts[2]) * 1024,
        "free_bytes": int(parts[3]) * 1024,
        "mount": " ".join(parts[5:]),
    }


class HostResources(FactBase[dict]):
    """
    RAM, free disk at a path, /dev/shm size, OS, and the installed Docker Engine and NVIDIA Container
    Toolkit packages, in one round trip.

    + path: absolute path whose filesystem must hold the weights (e.g. the model dir). It need not exist
      yet: the command walks up to the nearest existing parent and reports that one (``disk_path``).

    Returns ``{"mem_total_bytes", "mem_available_bytes", "cpus", "disk_path", "disk": {filesystem,
    total_bytes, used_bytes, free_bytes, mount}|None, "shm": {...}|None, "os": {"id", "version_id",
    "pretty_name", "codename"}, "docker_cli": bool (a docker command on PATH), "docker_package":
    "docker.io"|"docker-ce"|"moby-engine"|None, "docker_version": str|None (that package's version),
    "nvidia_ctk_version": str|None (nvidia-container-toolkit's package version)}``.
    """

    @staticmethod
    def default() -> dict:
        return {}

    def command(self, path: str) -> str:
        if not isinstance(path, str) or not path.startswith("/"):
            raise ValueError(f"HostResources path must be an absolute path, got {path!r}")
        quoted = shlex.quote(path)
        return (
            f'echo "{SECTION}meminfo"; grep -E "^(MemTotal|MemAvailable):" /proc/meminfo; '
            f'echo "{SECTION}cpus"; getconf _NPROCESSORS_ONLN 2>/dev/null || nproc; '
            f'p={quoted}; while [ ! -e "$p" ] && [ "$p" != / ]; do p=$(dirname "$p"); done; '
            # No pipes through tail/head: this runs on every host every run (df's header is skipped).
            f'echo "{SECTION}disk $p"; df -Pk "$p" 2>/dev/null; '
            f'echo "{SECTION}shm"; df -Pk /dev/shm 2>/dev/null; '
            f'echo "{SECTION}os"; cat /etc/os-release 2>/dev/null; '
            # Versions from the package database, not from `docker version` / `nvidia-ctk --version`: those
            # start two Go programs and a daemon round trip on every host on every run (~65 ms of host CPU of
            # a no-op's ~300), for rows that only inform; whether dockerd runs is the runtime's to converge.
            f'echo "{SECTION}docker"; if command -v docker >/dev/null 2>&1; then echo cli=yes; fi; '
            f'echo "{SECTION}packages"; if command -v dpkg-query >/dev/null 2>&1; then '
            f"dpkg-query -W -f='${{Package}} ${{Version}} ${{db:Status-Abbrev}}\\n' {PACKAGES} 2>/dev/null; "
            "elif command -v rpm >/dev/null 2>&1; then "
            f"rpm -q --qf '%{{NAME}} %{{VERSION}}-%{{RELEASE}} ii\\n' {PACKAGES} 2>/dev/null; fi; true"
        )

    def process(self, output: list[str]) -> dict:
        sections: dict[str, list[str]] = {}
        disk_path = None
        current = ""
        for line in output:
            if line.startswith(SECTION):
                name, _, arg = line[len(SECTION):].partition(" ")
                current = name
                if name == "disk":
                    disk_path = arg.strip() or None
                sections[current] = []
            elif current:
                sections[current].append(line)

        mem: dict[str, int] = {}
        for line in sections.get("meminfo", []):
            key, _, rest = line.partition(":")
            fields = rest.split()
            if fields and fields[0].isdigit():
                mem[key.strip()] = int(fields[0]) * 1024  # /proc/meminfo reports kB (KiB)

        cpus = None
        for line in sections.get("cpus", []):
            if line.strip().isdigit():
                cpus = int(line.strip())
                break

        os_release: dict[str, str] = {}
        for line in sections.get("os", []):
            key, sep, value = line.partition("=")
            if sep:
                os_release[key.strip()] = value.strip().strip('"')

        installed: dict[str, str] = {}
        for line in sections.get("packages", []):
            fields = line.split()
            # dpkg lists known-but-removed packages too ("rc", "un"): only "ii" is installed.
            if len(fields) == 3 and fields[2].startswith("ii"):
                installed[fields[0]] = fields[1]
        docker_package = next((name for name in DOCKER_PACKAGES if name in installed), None)

        disk = next((d for d in map(_df_line, sections.get("disk", [])) if d), None)
        shm = next((d for d in map(_df_line, sections.get("shm", [])) if d), None)
        return {
            "mem_total_bytes": mem.get("MemTotal"),
            "mem_available_bytes": mem.get("MemAvailable"),
            "cpus": cpus,
            "disk_path": disk_path,
            "disk": disk,
            "shm": shm,
            "os": {
                "id": os_release.get("ID"),
                "version_id": os_release.get("VERSION_ID"),
                "pretty_name": os_release.get("PRETTY_NAME"),
                "codename": os_release.get("VERSION_CODENAME"),
            },
            "docker_cli": "cli=yes" in sections.get("docker", []),
            "docker_package": docker_package,
            "docker_version": installed.get(docker_package) if docker_package else None,
            "nvidia_ctk_version": installed.get(CTK_PACKAGE),
        }
