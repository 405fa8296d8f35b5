"""Where a lab lives: its name, addresses and directories.

Several labs can exist side by side (tests and benchmarks use their own), so every name
the lab creates on the machine (bridge, namespaces, veths, nft table, cgroups) carries
the lab's name, and each lab gets its own /24 from 10.77.0.0/16, a range used by the
lab alone: nothing else on the machine or beyond is ever addressed.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

CACHE_DIR = Path(os.environ.get("LLMFLEET_LAB_CACHE", "/var/cache/llmfleet-lab"))
RUN_DIR = Path(os.environ.get("LLMFLEET_LAB_RUN", "/var/lib/llmfleet-lab"))
REPO_ROOT = Path(__file__).resolve().parents[2]

REGISTRY_PORT = 5000
APT_PORT = 8080
HUB_PORT = 8090
PYPI_PORT = 8081

@contextlib.contextmanager
def cache_lock():
    """Serialise work on the shared cache (rootfs, layers, keys, wheels) between labs brought up at once."""
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with open(CACHE_DIR / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


_NAME = re.compile(r"^[a-z][a-z0-9]{0,7}$")


@dataclass(frozen=True)
class LabConfig:
    name: str = "lab"

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(
                f"lab name {self.name!r}: must be 1-8 lowercase letters/digits starting with a letter",
            )

    @property
    def subnet_index(self) -> int:
        # Stable per name, so a lab keeps its addresses across up/down.
        if self.name == "lab":
            return 0
        return 1 + int(hashlib.sha256(self.name.encode()).hexdigest(), 16) % 250

    @property
    def prefix(self) -> str:
        return f"10.77.{self.subnet_index}"

    @property
    def bridge_ip(self) -> str:
        return f"{self.prefix}.1"

    @property
    def bridge(self) -> str:
        return f"llmf-{self.name}"

    @property
    def nft_table(self) -> str:
        return f"llmfleet_{self.name}"

    @property
    def cgroup(self) -> str:
        return f"llmfleet-{self.name}"

    @property
    def run_dir(self) -> Path:
        return RUN_DIR / self.name

    @property
    def hosts_dir(self) -> Path:
        """The hosts' disks: overlay upper dirs and /var/lib/docker, one directory per host."""
        return self.run_dir / "hosts"

    @property
    def state_file(self) -> Path:
        return self.run_dir / "state.json"

    @property
    def ssh_key(self) -> Path:
        return CACHE_DIR / "id_ed25519"

    def host_name(self, index: int) -> str:
        # Test labs of checkouts run side by side carry $LLMFLEET_LAB_TAG before their name (bridge,
        # namespaces and addresses apart); their hosts keep the untagged names the tests use.
        return f"{self.name.removeprefix(os.environ.get('LLMFLEET_LAB_TAG', ''))}-h{index}"

    def host_ip(self, index: int) -> str:
        return f"{self.prefix}.{10 + index}"

    def netns(self, index: int) -> str:
        return f"{self.name}-h{index}"

    def veth(self, index: int) -> str:
        return f"vl{self.subnet_index}h{index}"

    @property
    def registry(self) -> str:
        return f"{self.bridge_ip}:{REGISTRY_PORT}"

    @property
    def apt_url(self) -> str:
        return f"http://{self.bridge_ip}:{APT_PORT}"

    @property
    def hub_url(self) -> str:
        return f"http://{self.bridge_ip}:{HUB_PORT}"

    @property
    def pypi_url(self) -> str:
        return f"http://{self.bridge_ip}:{PYPI_PORT}/simple/"
