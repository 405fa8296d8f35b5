"""Hardening on lab hosts: preflight refuses what the host cannot do, bad input stops before any
command, CANN installers run only with their pinned sha256, and a dry run lists dockerd's restart only
where daemon.json changes. Every deploy that converges is run again: no changes."""

from __future__ import annotations

import json

from .helpers import inventory_with, pyinfra, ssh


def _host(lab, profile):
    return next(h for h in lab["hosts"] if h["profile"] == profile)


def test_preflight_refuses_a_device_the_host_lacks(lab, tmp_path):
    """serve_devices [0, 1, 2, 9] on the 8-GPU host: refused at preflight naming GPU9, nothing installed."""
    reports = tmp_path / "reports"
    inv = inventory_with(lab, tmp_path / "inv.py", {"rtx4090x8": {
        "preflight_recipe": "qwen30b", "serve_devices": [0, 1, 2, 9], "preflight_report_dir": str(reports)}})
    host = _host(lab, "rtx4090x8")
    run = pyinfra(inv, "deploys/bringup.py", "--limit", "rtx4090x8", check=False, counted=True)
    assert run.returncode != 0
    text = run.stdout + run.stderr
    assert "serve_devices [0, 1, 2, 9]: GPU9 not on this host, it has 8 GPU(s) (allowed indices 0-7)" in text
    assert run.changed() == {}, "a refused host gets no install step"
    verdict = json.loads((reports / f"{host['name']}.json").read_text())["verdict"]
    assert verdict["go"] is False and any(r.startswith("devices:") for r in verdict["reasons"])
    assert run.counts()[host["name"]].get("uploads", 0) == 0  # preflight only read facts


def test_context_over_the_model_limit_stops_before_any_command(lab, tmp_path):
    inv = inventory_with(lab, tmp_path / "inv.py", {"h100x8": {"serve_max_model_len": 65536}})
    host = _host(lab, "h100x8")
    run = pyinfra(inv, "deploys/qwen30b.py", "--limit", "h100x8", check=False, counted=True)
    text = run.stdout + run.stderr
    assert run.returncode != 0 and "Traceback" not in text
    assert (f"{host['name']}: serve_max_model_len: 65536 is more than Qwen/Qwen3-30B-A3B can take "
            "(max_position_embeddings 40960)") in text and "allowed: at most 40960" in text
    assert not run.counts().get(host["name"], {}).get("commands")


def _cann_installed(ip: str, version: str) -> bool:
    probe = f"test -f /usr/local/Ascend/ascend-toolkit/{version}/$(uname -m)-linux/ascend_toolkit_install.info"
    return ssh(ip, probe + " && echo yes || echo no").stdout.strip() == "yes"


def test_cann_runs_only_the_pinned_installer(lab, tmp_path):
    """CANN 8.5.1 on the Ascend host: no pin -> refused before any download; a wrong pin -> the download
    fails its check and nothing runs; the lab's pins (what it serves) -> installed, then no changes."""
    ascend = _host(lab, "ascend910b")
    version = "8.5.1"

    def run_with(extra, check=False):
        inv = inventory_with(lab, tmp_path / "inv.py", {"ascend910b": {"ascend_cann_version": version, **extra}})
        return pyinfra(inv, "deploys/bringup.py", "--limit", "ascend910b", check=check)

    unpinned = run_with({"ascend_cann_sha256": {}})
    assert unpinned.returncode != 0
    assert f"no sha256 pinned for Ascend-cann-toolkit_{version}_linux-" in unpinned.stderr
    assert not any("Fetch Ascend" in name or "Install CANN" in name for name in unpinned.changed())
    assert not _cann_installed(ascend["ip"], version)

    wrong = {name: "0" * 64 for name in lab_pins(lab)}
    mismatch = run_with({"ascend_cann_sha256": wrong})
    assert mismatch.returncode != 0
    assert "SHA256 did not match" in mismatch.stdout + mismatch.stderr
    assert not any("Install CANN" in name for name in mismatch.changed())
    assert not _cann_installed(ascend["ip"], version)

    first = run_with({}, check=True)  # the lab inventory's own pins
    assert any(f"Install CANN toolkit {version}" in name for name in first.changed())
    assert _cann_installed(ascend["ip"], version)
    assert run_with({}, check=True).changed() == {}


def lab_pins(lab) -> dict[str, str]:
    from tasks.lab.config import LabConfig
    from tasks.lab.inventory import served_cann_digests

    pins = served_cann_digests(LabConfig(lab["name"]))
    assert pins and all(len(v) == 64 for v in pins.values())
    return pins


def test_dry_run_lists_dockerd_restart_only_when_daemon_json_changes(lab, tmp_path):
    inv = inventory_with(lab, tmp_path / "inv.py", {})
    pyinfra(inv, "deploys/bringup.py", "--limit", "h100x8")  # converge (runtime only)
    again = pyinfra(inv, "deploys/bringup.py", "--limit", "h100x8")
    assert again.changed() == {}

    dry = pyinfra(inv, "deploys/bringup.py", "--limit", "h100x8", "--dry")
    restart = [op for op in dry.plan if "Restart dockerd" in op["name"]]
    assert restart and not restart[0]["hosts_with_change"] and not restart[0]["hosts_with_conditional_change"]
    assert dry.planned_changes() == {}

    # -y with --dry: change detection stays on (said so); a daemon.json change shows its diff and the restart.
    changed = inventory_with(lab, tmp_path / "inv2.py", {"h100x8": {"docker_log_max_file": 5}})
    yes = pyinfra(changed, "deploys/bringup.py", "--limit", "h100x8", "--dry", "-y", "--diff")
    text = yes.stdout + yes.stderr
    assert "--dry with -y" in text and '"max-file": "5"' in text
    plan = {op["name"]: op for op in yes.plan}
    name = next(n for n in plan if "Restart dockerd" in n)
    host = _host(lab, "h100x8")["name"]
    assert plan[name]["hosts_with_conditional_change"] == [host]
    daemon = json.loads(ssh(_host(lab, "h100x8")["ip"], "cat /etc/docker/daemon.json").stdout)
    assert daemon["log-opts"]["max-file"] == "3"  # --dry changed nothing
