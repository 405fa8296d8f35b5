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
server=28.1.1
@@llmfleet ctk
NVIDIA Container Toolkit CLI version 1.17.8
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
    assert fact["docker_server_version"] == "28.1.1" and fact["docker_error"] is None
    assert fact["nvidia_ctk_version"] == "1.17.8"


def test_docker_daemon_down_keeps_error():
    lines = ["@@llmfleet docker", "cli=yes", "server=",
             "Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?"]
    fact = HostResources().process(lines)
    assert fact["docker_cli"] is True and fact["docker_server_version"] is None
    assert "Cannot connect to the Docker daemon" in fact["docker_error"]


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
