"""Fresh servers to ready-to-serve: preflight + runtime on NVIDIA and Ascend profiles; the driver-530
host is refused with a reason naming its driver and the image's CUDA need, the others converge."""

from __future__ import annotations

import json

from .helpers import inventory_with, pyinfra, ssh

RECIPES = {"rtx4090x8": "qwen30b", "rtx4090-drv530": "qwen30b", "h100x8": "qwen30b",
           "ascend910b": "qwen3_ascend"}


def _by_profile(lab):
    return {h["profile"]: h for h in lab["hosts"]}


def test_bringup_converges_refuses_old_driver_then_no_changes(lab, tmp_path):
    inv = inventory_with(lab, tmp_path / "inv.py",
                         {profile: {"preflight_recipe": r, "preflight_report_dir": str(tmp_path / "reports")}
                          for profile, r in RECIPES.items()})
    hosts = _by_profile(lab)
    old = hosts["rtx4090-drv530"]["name"]
    good = sorted(h["name"] for p, h in hosts.items() if p != "rtx4090-drv530")

    first = pyinfra(inv, "deploys/bringup.py", check=False)
    assert first.returncode != 0  # one host was refused: the run says so
    assert first.errors() == {}
    changed = first.changed()
    touched = {name for names in changed.values() for name in names}
    assert old not in touched, "the refused host must get no install step"
    assert touched <= set(good)
    assert "530.30.02" in first.stderr and "CUDA 12.4" in first.stderr and "550.54.14" in first.stderr
    report = json.loads((tmp_path / "reports" / f"{old}.json").read_text())
    assert report["verdict"]["go"] is False

    # NVIDIA hosts: the toolkit at its pin, Docker runs --gpus, daemon.json already what nvidia-ctk writes.
    for profile in ("rtx4090x8", "h100x8"):
        ip = hosts[profile]["ip"]
        assert "1.17.8-1" in ssh(ip, "dpkg-query -W -f='${Version}' nvidia-container-toolkit").stdout
        ssh(ip, "docker run --rm --gpus all llmfleet-lab/smoke:1 true")
        out = ssh(ip, "cp /etc/docker/daemon.json /tmp/d.json && nvidia-ctk runtime configure --runtime=docker "
                      "--config=/tmp/d.json >/dev/null && cmp -s <(python3 -m json.tool --sort-keys /tmp/d.json) "
                      "<(python3 -m json.tool --sort-keys /etc/docker/daemon.json) && echo same", check=False)
        assert "same" in out.stdout, out.stderr
        assert ssh(ip, "test -s /etc/cdi/nvidia.yaml && echo ok").stdout.strip() == "ok"
    # Ascend: CANN at its version; Docker present.
    ascend = hosts["ascend910b"]["ip"]
    info = ssh(ascend, "cat /usr/local/Ascend/ascend-toolkit/latest/*-linux/ascend_toolkit_install.info").stdout
    assert "version=8.3.RC2" in info
    assert ssh(ascend, "docker info --format '{{.ServerVersion}}'").stdout.strip()

    second = pyinfra(inv, "deploys/bringup.py", check=False)
    assert second.changed() == {}
    assert second.operations and all(old not in op["no_change"] for op in second.operations)
    # The second preflight reads what the first run installed from the package database.
    h100 = hosts["h100x8"]
    seen = json.loads((tmp_path / "reports" / f"{h100['name']}.json").read_text())["facts"]["host"]
    assert seen["docker_cli"] is True and seen["docker_package"] == "docker.io"
    assert seen["docker_version"] == ssh(h100["ip"], "dpkg-query -W -f='${Version}' docker.io").stdout.strip()
    assert seen["nvidia_ctk_version"] == "1.17.8-1"
