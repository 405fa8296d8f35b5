"""Preflight across a multi-node replica (tasks/preflight_replica.py): the facts' commands run under sh
against loopback sockets (connected, refused, and a SYN left unanswered), captured outputs, and the
refusals built from them."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import time

import pytest

from tasks.facts.nvidia import NvidiaGpus
from tasks.preflight_replica import (InfinibandDevices, TcpReach, driver_branch, driver_refusals,
                                     infiniband_refusals, reach_refusals, replica_ports)
from tests.unit.conftest import real_fixture, run_sh


def reach(port: int, env: dict | None = None, **kw) -> dict:
    lines, rc = run_sh(TcpReach().command("127.0.0.1", port, **kw), env)
    assert rc == 0
    return TcpReach().process(lines)


@pytest.fixture()
def listening():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        yield server.getsockname()[1]


@pytest.fixture()
def unanswered():
    """A port whose SYNs go unanswered, on loopback: a listener that never accepts, its queue full (the
    kernel then drops new SYNs, as a firewall's drop rule does)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port, clients = server.getsockname()[1], []
    for _ in range(16):  # bounded: the queue of listen(0) holds one or two
        client = socket.socket()
        client.settimeout(0.3)
        clients.append(client)
        try:
            client.connect(("127.0.0.1", port))
        except socket.timeout:
            break
    else:
        pytest.skip("the kernel kept accepting into the queue: no unanswered SYN to test with")
    yield port
    for client in clients:
        client.close()
    server.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_reach_connected_refused_and_dropped(listening, unanswered):
    assert reach(listening)["result"] == "open"
    assert reach(free_port())["result"] == "refused"
    started = time.monotonic()
    assert reach(unanswered, timeout_s=1)["result"] == "timeout"
    assert time.monotonic() - started < 10


def test_reach_leaves_by_the_interface_given(listening):
    found = reach(listening, interface="lo")
    assert found["result"] == "open"
    assert found["via"] == "device" if os.geteuid() == 0 else found["via"].startswith("route (binding to lo")


def test_reach_without_python3_uses_bash(tmp_path, listening, unanswered):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "timeout"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    env = {"PATH": str(bin_dir)}
    assert reach(listening, env)["result"] == "open"
    assert reach(free_port(), env)["result"] == "refused"
    assert reach(unanswered, env, timeout_s=1)["result"] == "timeout"
    assert reach(listening, {"PATH": str(tmp_path / "empty")})["result"] == "unknown"


def test_reach_process_captured_lines():
    assert TcpReach().process(["reach=unreachable No route to host", "via=device"]) == {
        "result": "unreachable", "detail": "No route to host", "via": "device"}
    assert TcpReach().process([]) == TcpReach.default()


def test_refusal_names_host_port_and_interface():
    reaches = {29501: {"result": "timeout", "detail": "", "via": "device"},
               6379: {"result": "refused", "detail": "", "via": "device"}}
    (only,) = reach_refusals("gpu-12", "10.0.0.11", "eth1", reaches)
    assert only.startswith("gpu-12 cannot reach the head 10.0.0.11 on TCP port 29501 over interface eth1: "
                           "no answer within 3 s")
    assert reach_refusals("gpu-12", "10.0.0.11", "eth1", {29501: {"result": "open"}}) == []
    (unreachable,) = reach_refusals("gpu-12", "10.0.0.11", "eth1", {29501: {
        "result": "unreachable", "detail": "No route to host", "via": "route (binding to eth1: Operation not permitted)"}})
    assert "unreachable (No route to host)" in unreachable and "sent along the route" in unreachable


def test_ray_path_adds_rays_port():
    assert replica_ports(29501, ray=False) == (29501,)
    assert replica_ports(29511, ray=True) == (29511, 6379)


def test_driver_branches_compared_from_the_real_nvidia_smi_capture():
    lines = real_fixture("query-gpu-noheader-nounits.csv").splitlines()
    real = NvidiaGpus().process(lines + ["LLMFLEET_RC=0"])
    version = real["gpus"][0]["driver_version"]
    assert driver_branch(version) == version.split(".")[0] == "580"
    older = {**real, "gpus": [{**g, "driver_version": "570.133.20"} for g in real["gpus"]]}
    assert driver_refusals("bf16-a", {"gpu-11": real, "gpu-12": real}) == []
    (refusal,) = driver_refusals("bf16-a", {"gpu-11": real, "gpu-12": older})
    assert f"gpu-11 {version}, gpu-12 570.133.20" in refusal and "replica bf16-a" in refusal
    # A member without a working driver is its own preflight's refusal, not a branch mismatch.
    missing = NvidiaGpus().process(["LLMFLEET_NO_NVIDIA_SMI"])
    assert driver_refusals("bf16-a", {"gpu-11": real, "gpu-12": missing}) == []


def test_ascend_driver_versions_compared_whole():
    assert driver_refusals("a2", {"npu-1": {"driver_version": "24.1.rc2"}, "npu-2": {"driver_version": "24.1.rc2"}},
                           "ascend") == []
    assert driver_refusals("a2", {"npu-1": {"driver_version": "24.1.rc2"}, "npu-2": {"driver_version": "24.1.rc3"}},
                           "ascend")


IBV_DEVICES = """    device          	   node GUID
    ------          	----------------
    mlx5_0          	b8cef603000a1b2c
    mlx5_1          	b8cef603000a1b2d
"""


def test_infiniband_fact_reads_sysfs_dev_and_ibv_devices(tmp_path):
    lines, rc = run_sh(InfinibandDevices().command())
    assert rc == 0
    here = InfinibandDevices().process(lines)
    assert here["sysfs"] == sorted(os.listdir("/sys/class/infiniband")) if os.path.isdir("/sys/class/infiniband") \
        else here["sysfs"] == []
    # rdma-core's ibv_devices table (two header lines, then name and node GUID), from a stand-in on PATH.
    tool = tmp_path / "ibv_devices"
    tool.write_text(f"#!/bin/sh\ncat <<'EOF'\n{IBV_DEVICES}EOF\n")
    tool.chmod(0o755)
    lines, _ = run_sh(InfinibandDevices().command(), {"PATH": f"{tmp_path}:/usr/bin:/bin"})
    assert InfinibandDevices().process(lines)["ibv_devices"] == ["mlx5_0", "mlx5_1"]


def test_infiniband_refusals():
    ready = {"sysfs": ["mlx5_0", "mlx5_1"], "dev": ["rdma_cm", "uverbs0", "uverbs1"], "ibv_devices": None}
    assert infiniband_refusals("gpu-12", ["mlx5_0", "mlx5_1:1"], ready) == []
    assert infiniband_refusals("gpu-12", [], InfinibandDevices.default()) == []
    missing, no_verbs = infiniband_refusals("gpu-12", ["mlx5_0", "mlx5_2"], {**ready, "dev": ["rdma_cm"]})
    assert missing.startswith("gpu-12: InfiniBand HCA(s) mlx5_2 named by the recipe's ib_hcas are not on the host")
    assert "no uverbs device" in no_verbs
    # ibv_devices alone (sysfs not readable) is enough to find an HCA.
    assert infiniband_refusals("gpu-12", ["mlx5_0"], {"sysfs": [], "dev": ["uverbs0"], "ibv_devices": ["mlx5_0"]}) == []


# --- the deploy's check on @fake members: once per replica, a refusal fails every member -----------------

PROBE = "import errno, socket, sys"  # in TcpReach's command: the key of its fake response
GPUS = ["{i}, NVIDIA H100 80GB HBM3, {drv}, 81559, 0, 81080, 00000000:0{i}:00.0, 5, 5, 16, 16, 9.0, Enabled, "
        "Disabled".format(i=i, drv="{drv}") for i in range(8)]


def _members(reach_lines: list[str], worker_driver: str = "580.95.05", **data) -> dict:
    from tests.unit.test_multinode import ROUTE, _member

    head, worker = _member(0, **data), _member(1, **data)
    for (_, data), driver in ((head, "580.95.05"), (worker, worker_driver)):
        data["fake_responses"].update({PROBE: reach_lines, "nvidia-smi --query-gpu":
                                       [g.format(drv=driver) for g in GPUS] + ["LLMFLEET_RC=0"]})
    assert ROUTE in head[1]["fake_responses"]
    # The gateway stays in the run when both members are refused (pyinfra stops a run with no host left).
    return {"gateway": [("@fake/gw", {})], "bf16": [head, worker]}


def _preflight_in_parallel(groups: dict) -> tuple[object, dict[str, bool]]:
    import gevent
    from pyinfra.context import ctx_config, ctx_host, ctx_state

    from tasks.fleet import fleet_plan
    from tasks.preflight_replica import preflight_replica
    from tests.unit.test_fleet_plan import _state

    state, went = _state(groups), {}

    def run(h):
        with ctx_config.use(state.config.copy()), ctx_host.use(h):
            went[h.name] = preflight_replica(fleet_plan("qwen235b_bf16"), h.name)

    with ctx_state.use(state):
        gevent.joinall([gevent.spawn(run, h) for h in state.inventory], raise_error=True)
    return state, went


def test_a_worker_that_cannot_reach_the_head_fails_the_whole_replica(caplog):
    state, went = _preflight_in_parallel(_members(["reach=timeout", "via=device"]))
    assert went == {"@fake/gw": True, "@fake/m0": False, "@fake/m1": False}
    assert {h.name for h in state.failed_hosts} == {"@fake/m0", "@fake/m1"}
    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) == 2 and all("@fake/m1 cannot reach the head 10.0.0.1 on TCP port 29501 over interface "
                                      "eth1: no answer within 3 s" in r for r in refusals)
    # Read once per run: one probe, from the worker only, out of its interface.
    probes = {h.name: [str(c) for c in h.connector.executed_commands if PROBE in str(c)] for h in state.inventory}
    assert probes["@fake/m0"] == probes["@fake/gw"] == [] and len(probes["@fake/m1"]) == 1
    assert "10.0.0.1 29501 eth1 3" in probes["@fake/m1"][0]


def test_a_replica_whose_worker_reaches_the_head_goes_on(caplog):
    caplog.set_level(logging.INFO, logger="pyinfra")
    state, went = _preflight_in_parallel(_members(["reach=refused", "via=device"]))
    assert went == {"@fake/gw": True, "@fake/m0": True, "@fake/m1": True} and not state.failed_hosts
    said = [r.getMessage() for r in caplog.records]
    assert sum("preflight of replica bf16-a: every worker reaches 10.0.0.1:29501, drivers agree" in m
               for m in said) == 2


def test_on_the_ray_path_the_worker_must_reach_rays_port_too():
    state, _ = _preflight_in_parallel(_members(["reach=open", "via=device"], serve_image="vllm/vllm-openai:v0.10.1.1"))
    worker = state.inventory.get_host("@fake/m1")
    probes = [str(c) for c in worker.connector.executed_commands if PROBE in str(c)]
    assert sorted(p.split("10.0.0.1 ", 1)[1].split()[0] for p in probes) == ["29501", "6379"]


def test_driver_branches_differing_fail_the_replica(caplog):
    state, went = _preflight_in_parallel(_members(["reach=open", "via=device"], worker_driver="570.133.20"))
    assert not went["@fake/m0"] and not went["@fake/m1"]
    assert any("@fake/m0 580.95.05, @fake/m1 570.133.20" in r.getMessage() for r in caplog.records)


def _checked_members(worker_gpus: int = 8, worker_preflight: bool = True) -> dict:
    """Members whose own preflight runs (the fleet tests' base turns it off): an H100 x8 host each."""
    from tests.unit.test_facts_host import CANNED

    groups = _members(["reach=open", "via=device"], model_preflight=True, preflight_weights_bytes=1_000_000)
    for _, data in groups["bf16"]:
        data["fake_responses"]["@@llmfleet meminfo"] = CANNED
    worker = groups["bf16"][1][1]
    lines = worker["fake_responses"]["nvidia-smi --query-gpu"]
    worker["fake_responses"]["nvidia-smi --query-gpu"] = lines[:worker_gpus] + ["LLMFLEET_RC=0"]
    worker["model_preflight"] = worker_preflight
    return groups


def test_members_whose_own_preflight_passes_go_on():
    _, went = _preflight_in_parallel(_checked_members())
    assert went == {"@fake/gw": True, "@fake/m0": True, "@fake/m1": True}


def test_a_member_its_own_preflight_refuses_fails_the_whole_replica(caplog):
    # The worker has 4 of the 8 GPUs its share needs: alone it would be refused and the head would start
    # a replica that waits for it; the replica check refuses both, naming the worker and its reason.
    state, went = _preflight_in_parallel(_checked_members(worker_gpus=4))
    assert went == {"@fake/gw": True, "@fake/m0": False, "@fake/m1": False}
    assert {h.name for h in state.failed_hosts} == {"@fake/m0", "@fake/m1"}
    refusals = [r.getMessage() for r in caplog.records if "refused it" in r.getMessage()]
    assert len(refusals) == 2 and all("@fake/m1's own preflight refused it: gpu count: 4 GPU(s)" in r and "needs 8" in r
                                      for r in refusals), refusals
    assert not any("@fake/m0's own preflight" in r for r in refusals)


def test_a_member_without_preflight_is_not_checked_for_the_replica():
    _, went = _preflight_in_parallel(_checked_members(worker_gpus=4, worker_preflight=False))
    assert went == {"@fake/gw": True, "@fake/m0": True, "@fake/m1": True}
