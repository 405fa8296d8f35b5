import os

import pytest

from tests.unit.conftest import run_sh

from tasks.facts.host import HostResources

CANNED = """@@llmfleet meminfo
MemTotal:       528012345 kB
MemAvailable:   500000000 kB
@@llmfleet cpus
56
@@llmfleet disk /home/llm
/dev/nvme0n1p2 1921724676 400000000 1521724676  21% /home
@@llmfleet shm
tmpfs 264006172 0 264006172 0% /dev/shm
@@llmfleet os
PRETTY_NAME="Ubuntu 24.04.2 LTS"
NAME="Ubuntu"
VERSION_ID="24.04"
VERSION_CODENAME=noble
ID=ubuntu
@@llmfleet docker
cli=yes
@@llmfleet packages
docker-ce 5:28.1.1-1~ubuntu.24.04~noble ii 
nvidia-container-toolkit 1.17.8-1 ii 
""".splitlines()


def test_process_canned_ubuntu_host():
    fact = HostResources().process(CANNED)
    assert fact["mem_total_bytes"] == 528012345 * 1024
    assert fact["mem_available_bytes"] == 500000000 * 1024
    assert fact["cpus"] == 56
    assert fact["disk_path"] == "/home/llm"
    assert fact["disk"]["free_bytes"] == 1521724676 * 1024 and fact["disk"]["mount"] == "/home"
    assert fact["shm"]["total_bytes"] == 264006172 * 1024
    assert fact["os"] == {"id": "ubuntu", "version_id": "24.04", "pretty_name": "Ubuntu 24.04.2 LTS",
                          "codename": "noble"}
    assert fact["docker_cli"] is True
    assert (fact["docker_package"], fact["docker_version"]) == ("docker-ce", "5:28.1.1-1~ubuntu.24.04~noble")
    assert fact["nvidia_ctk_version"] == "1.17.8-1"


def test_removed_packages_are_not_installed():
    # dpkg keeps removed packages' config ("rc") and knows packages never installed ("un", no version).
    lines = ["@@llmfleet docker", "@@llmfleet packages", "docker.io 20.10.24+dfsg1-1 rc ",
             "docker-ce  un ", "nvidia-container-toolkit 1.17.8-1 rc "]
    fact = HostResources().process(lines)
    assert fact["docker_cli"] is False
    assert (fact["docker_package"], fact["docker_version"], fact["nvidia_ctk_version"]) == (None, None, None)


def test_command_walks_up_to_existing_parent(tmp_path):
    missing = tmp_path / "models" / "qwen3 30b"  # a space, and two levels that do not exist
    lines, rc = run_sh(HostResources().command(str(missing)))
    assert rc == 0
    fact = HostResources().process(lines)
    assert fact["disk_path"] == str(tmp_path)
    st = os.statvfs(tmp_path)
    assert abs(fact["disk"]["free_bytes"] - st.f_bavail * st.f_frsize) < 64 * 1024 * 1024
    assert fact["mem_total_bytes"] > 0 and fact["cpus"] >= 1


def test_relative_path_is_refused():
    with pytest.raises(ValueError, match="absolute"):
        HostResources().command("models/x")
