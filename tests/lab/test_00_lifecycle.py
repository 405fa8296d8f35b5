"""`lab up 8` then `lab down` leaves nothing behind: no namespace, mount, bridge, cgroup, process."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tasks.lab import lab as lablib
from tasks.lab.config import LabConfig
from tasks.lab.hosts import CGROUP_FS, CGROUP_ROOTS

from .helpers import lab_name, ssh


def _traces(cfg: LabConfig) -> dict[str, list[str]]:
    netns = [l.split()[0] for l in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                                   text=True).stdout.splitlines()]
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    mounts = Path("/proc/self/mounts").read_text()
    procs = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    nft = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    return {
        "netns": [n for n in netns if n.startswith(f"{cfg.name}-")],
        "links": [l for l in links.splitlines() if cfg.bridge in l or f"vl{cfg.subnet_index}h" in l],
        "mounts": [m for m in mounts.splitlines() if str(cfg.run_dir) in m],
        "cgroups": [str(CGROUP_FS / r / cfg.cgroup) for r in CGROUP_ROOTS if (CGROUP_FS / r / cfg.cgroup).exists()],
        "processes": [p for p in procs.splitlines() if str(cfg.run_dir) in p],
        "nft": [t for t in nft.splitlines() if cfg.nft_table in t],
        "run_dir": [str(cfg.run_dir)] if cfg.run_dir.exists() else [],
    }


@pytest.mark.parametrize("in_memory", [False, True], ids=["disk", "in-memory"])
def test_up_8_then_down_leaves_nothing(in_memory):
    """On disk (the CLI's default) and in memory (the hosts' disks on a tmpfs: the test labs)."""
    cfg = LabConfig(lab_name("td"))
    lablib.down(cfg, log=lambda *_: None)
    before_forward = Path("/proc/sys/net/ipv4/ip_forward").read_text()
    state = lablib.up(cfg, 8, in_memory=in_memory)
    try:
        assert len(state["hosts"]) == 8
        traces = _traces(cfg)
        # The probe must see what the lab made, or its emptiness later proves nothing.
        assert len(traces["netns"]) == 8 and traces["mounts"] and traces["cgroups"] and traces["processes"]
        memory_disk = [m for m in traces["mounts"] if m.split()[1] == str(cfg.hosts_dir)]
        assert [m.split()[2] for m in memory_disk] == (["tmpfs"] if in_memory else []), memory_disk
        rows = lablib.status(cfg)
        assert {r["systemd"] for r in rows} <= {"running", "degraded"}, rows
        for h in (state["hosts"][0], state["hosts"][-1]):
            assert ssh(h["ip"], "hostname").stdout.strip() == h["name"]
            # systemd is PID 1 inside the host
            assert ssh(h["ip"], "cat /proc/1/comm").stdout.strip() == "systemd"
    finally:
        lablib.down(cfg)
    assert _traces(cfg) == {k: [] for k in _traces(cfg)}
    assert Path("/proc/sys/net/ipv4/ip_forward").read_text() == before_forward
