"""The runtime deploys on @fake hosts: a RHEL-family host gets NVIDIA's dnf repository and the pinned rpm
versions; bad data fails before any host is touched."""

from __future__ import annotations

import pytest
from pyinfra.api import Config, Inventory, State
from pyinfra.api.connect import connect_all
from pyinfra.api.deploy import add_deploy
from pyinfra.api.operations import run_ops

from tasks.bad_input import BadInput
from tasks.docker import install_docker, render_daemon_json
from tasks.nvidia_toolkit import install_nvidia_toolkit
from tasks.settings.docker import DockerSettings


def _state(data: dict, deploy, *args) -> State:
    host = ("@fake/h", {"fake_delay": 0, "fake_delay_jitter": 0, **data})
    state = State(Inventory(([host], {})), Config())
    connect_all(state)
    add_deploy(state, deploy, *args)
    return state


def test_rhel_host_gets_dnf_repository_and_pinned_rpms():
    # No apt-get on the host: `command -v apt-get` answers nothing.
    state = _state({"fake_responses": {}, "nvidia_toolkit_version": "1.17.8-1",
                    "nvidia_toolkit_repo_url": "https://mirror.internal/libnvidia-container"}, install_nvidia_toolkit)
    run_ops(state)
    (host,) = state.inventory
    commands = "\n".join(host.connector.executed_commands)
    assert "https://mirror.internal/libnvidia-container/stable/rpm/nvidia-container-toolkit.repo" in commands
    assert "/etc/yum.repos.d/nvidia-container-toolkit.repo" in commands
    for pkg in ("nvidia-container-toolkit-1.17.8", "nvidia-container-toolkit-base-1.17.8",
                "libnvidia-container-tools-1.17.8", "libnvidia-container1-1.17.8"):
        assert pkg in commands
    assert "nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml" in commands
    assert "apt-get" not in commands.replace("command -v apt-get", "")


def test_unpinned_toolkit_version_is_refused_naming_the_field():
    with pytest.raises(BadInput, match="nvidia_toolkit_version"):
        _state({"nvidia_toolkit_version": "latest"}, install_nvidia_toolkit)


def test_daemon_json_is_data_and_bad_mirrors_are_refused():
    data = dict(docker_source="distro", docker_registry_mirrors=["https://m.internal"], docker_insecure_registries=[],
                docker_log_max_size="50m", docker_log_max_file=5, docker_nvidia_runtime=True, docker_daemon_extra={})
    text = render_daemon_json(DockerSettings.of(data))
    assert '"registry-mirrors": [\n    "https://m.internal"\n  ]' in text
    assert '"nvidia": {\n      "args": [],\n      "path": "nvidia-container-runtime"' in text
    assert '"max-size": "50m"' in text
    with pytest.raises(BadInput, match="docker_registry_mirrors.*'m.internal': allowed: an http"):
        DockerSettings.of({**data, "docker_registry_mirrors": ["m.internal"]})
    with pytest.raises(BadInput, match="docker_source.*'snap'.*allowed: distro, docker-ce"):
        DockerSettings.of({**data, "docker_source": "snap"})
    with pytest.raises(BadInput, match="did you mean docker_registry_mirrors"):
        DockerSettings.of({**data, "docker_registry_mirror": ["https://m.internal"]})


def test_docker_bad_data_fails_before_any_command():
    with pytest.raises(BadInput, match="docker_source"):
        _state({"docker_source": "snap"}, install_docker)
