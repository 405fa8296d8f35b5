"""Multi-node replicas end to end in the lab (lab "mr": mr-h1 + mr-h2, two h100x8 hosts, one replica of
qwen235b_bf16 (tp 8 x pp 2, head mr-h1, headless worker mr-h2); mr-h3 h100x8 a one-host replica of the
same model (tp 8, nodes 1); mr-h4 the nginx gateway). One lab for every proof, in order:

- on the bare lab, a worker that cannot reach the head's master port (an nft rule in mr-h1's network
  namespace drops TCP 29501) is refused at preflight: both members refused, naming the worker, the port
  and the worker's interface, nothing installed on either (the next test's run, the rule gone, passes the
  same preflight and converges);
- a worker whose own preflight refuses it (it asks for more RAM than it has) refuses its replica the same
  way: both members refused, naming the worker and its reason, nothing installed;
- the two-host replica converges through the stand-in vLLM's real-TCP rendezvous, verifies through its
  head (the worker: its unit running and the head healthy), and a second run changes nothing;
- a rolling image upgrade (v0.18.0 -> v0.32.0) under a bounded client loop through the gateway fails no
  request: the two-host replica is one batch (its head drained), the one-host replica the next;
- a worker-only flag its vLLM refuses at start (``--api-server-count`` with ``--headless``, vLLM 0.32.0's
  serve.py) fails the worker's gate: every member rolls back and the old version serves again;
- the head's container killed: systemd restarts the head, the worker's head watch restarts the worker,
  the replica verifies again;
- the replica split into two one-host replicas under a client loop through the gateway: no request fails,
  the former worker loses its head watch unit, a second run changes nothing.

Lab limitations as in test_serving.py (memlock at the lab's hard limit; stand-in checkpoints).
"""

from __future__ import annotations

import contextlib
import json
import secrets
import subprocess
import time
import urllib.request

import pytest

from bench.client_loop import ClientLoop

from .helpers import Run, lab_name, own_lab, pyinfra, secrets_env, ssh, wait_until

PROFILES = ["h100x8", "h100x8", "h100x8", "cpu"]
SECRET = "mr_api_key"
OLD, NEW = "vllm/vllm-openai:v0.18.0", "vllm/vllm-openai:v0.32.0"
COMMON = {"preflight_weights_bytes": 1_000_000, "serve_api_key_secret": SECRET, "rollout_gate_wait_s": 20}
NAME = "qwen235b_bf16"
CONTAINER = f"llmfleet-{NAME}"
MODEL = "Qwen3-235B-A22B"
# What an operator's inventory says: the lab's hosts regrouped into a two-host replica, a one-host
# replica and the gateway.
REGROUP = """
bf16 = [(n, {**d, "replica": "mr-a", "replica_rank": i}) for i, (n, d) in enumerate(h100x8[:2])]
solo = [(n, {**d, "serve_nodes": 1, "serve_pipeline_parallel_size": 1}) for n, d in h100x8[2:]]
gateway = cpu
del h100x8, cpu
"""
BROKEN_WORKER = """
bf16[1][1]["serve_extra_args"] = ["--api-server-count", "1"]
"""
# The replica split into two one-host replicas (what an operator does to free a host, or after a failure).
SPLIT = """
bf16 = [(n, {k: v for k, v in d.items() if k not in ("replica", "replica_rank")} | {
    "serve_nodes": 1, "serve_pipeline_parallel_size": 1}) for n, d in bf16]
"""
# The worker alone asks for more RAM than it has: its own preflight refuses it.
SHORT_WORKER = """
bf16[1][1]["preflight_min_ram_gib"] = 100000
"""


@pytest.fixture(scope="module")
def mr_lab(tmp_path_factory):
    """The bare lab and its inventories (nothing deployed yet)."""
    work = tmp_path_factory.mktemp("mr")
    key = "sk-mr-" + secrets.token_hex(16)
    with own_lab("mr", PROFILES) as state, secrets_env(work / "secrets", **{SECRET: key}):
        inv = work / "inventory.py"
        inv.write_text(open(state["inventory"]).read() + REGROUP)
        broken = work / "broken.py"
        broken.write_text(inv.read_text() + BROKEN_WORKER)
        short = work / "short.py"
        short.write_text(inv.read_text() + SHORT_WORKER)
        split = work / "split.py"
        split.write_text(inv.read_text() + SPLIT)
        ips = {h["name"]: h["ip"] for h in state["hosts"]}
        yield {"inventory": inv, "broken": broken, "short": short, "split": split, "ips": ips, "key": key,
               "index": {h["name"]: h["index"] for h in state["hosts"]}}


@pytest.fixture(scope="module")
def mr(mr_lab):
    """The lab after the first deploy of the fleet (the two-host replica, the one-host one, the gateway)."""
    started = time.monotonic()
    first = deploy(mr_lab, OLD)
    return {**mr_lab, "first": first, "first_s": time.monotonic() - started}


def deploy(mr, image: str, *args: str, inventory=None, check: bool = True) -> Run:
    return pyinfra(inventory or mr["inventory"], f"deploys/{NAME}.py", *args, data={**COMMON, "serve_image": image},
                   check=check, timeout=1200)


def on(mr, host: str, command: str) -> str:
    return ssh(mr["ips"][host], command).stdout.strip()


def started_at(mr, host: str) -> str:
    """When the container started; "" while there is none (killed, before systemd starts it again)."""
    return ssh(mr["ips"][host], f"docker inspect -f '{{{{.State.StartedAt}}}}' {CONTAINER}",
               check=False).stdout.strip()


def unit(mr, host: str) -> str:
    return on(mr, host, f"cat /etc/systemd/system/{CONTAINER}.service")


def head_health(mr) -> int:
    try:
        with urllib.request.urlopen(f"http://{mr['ips']['mr-h1']}:8000/health", timeout=3) as resp:
            return resp.status
    except OSError:
        return 0


def loop(mr, **kw) -> ClientLoop:
    return ClientLoop(f"http://{mr['ips']['mr-h4']}:8000", mr["key"], MODEL, **kw)


@contextlib.contextmanager
def dropped(mr_lab, host: str, port: int):
    """An nft rule in ``host``'s network namespace dropping TCP ``port`` in, for as long as the block runs."""
    from tasks.lab.config import LabConfig

    ns = LabConfig(lab_name("mr")).netns(mr_lab["index"][host])
    rules = (f"table inet llmfleet_mr_drop {{\n  chain input {{\n    type filter hook input priority 0; policy accept;\n"
             f"    tcp dport {port} drop\n  }}\n}}\n")
    subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=rules, text=True, check=True, timeout=30)
    try:
        yield
    finally:
        subprocess.run(["ip", "netns", "exec", ns, "nft", "delete", "table", "inet", "llmfleet_mr_drop"],
                       check=False, timeout=30)


def test_a_worker_that_cannot_reach_the_heads_port_is_refused_at_preflight_nothing_installed(mr_lab):
    head_ip = mr_lab["ips"]["mr-h1"]
    words = on(mr_lab, "mr-h2", f"ip -o -4 route get {head_ip}").split()
    interface = words[words.index("dev") + 1]  # the worker's own kernel says which interface leads to the head
    with dropped(mr_lab, "mr-h1", 29501):
        run = deploy(mr_lab, OLD, "--limit", "bf16", check=False)
    assert run.returncode != 0
    said = run.stdout + run.stderr
    refusal = f"mr-h2 cannot reach the head {head_ip} on TCP port 29501 over interface {interface}: no answer within 3 s"
    for member in ("mr-h1", "mr-h2"):  # every member says why its replica was refused
        assert f"[{member}] refused: preflight of replica mr-a" in said, said[-4000:]
    assert said.count(refusal) >= 2, said[-4000:]
    assert not run.changed()
    for member in ("mr-h1", "mr-h2"):
        left = ssh(mr_lab["ips"][member], "command -v docker; ls /etc/systemd/system | grep llmfleet; ls /srv/models",
                   check=False).stdout
        assert left.strip() == "", f"{member} was touched: {left}"


def test_a_worker_its_own_preflight_refuses_fails_the_whole_replica_nothing_installed(mr_lab):
    # Refused alone, the worker would leave the head to start a replica that waits for it for ten minutes.
    run = deploy(mr_lab, OLD, "--limit", "bf16", inventory=mr_lab["short"], check=False)
    assert run.returncode != 0
    said = run.stdout + run.stderr
    # The worker refuses itself; the head, whose own preflight passes, is refused by the replica's check.
    assert "[mr-h2] preflight refused qwen235b_bf16: ram: " in said and "100000.0 GiB required" in said, said[-4000:]
    assert "[mr-h1] refused: preflight of replica mr-a" in said, said[-4000:]
    assert "mr-h2's own preflight refused it: ram: " in said and "mr-h1's own preflight" not in said
    assert not run.changed()
    for member in ("mr-h1", "mr-h2"):
        left = ssh(mr_lab["ips"][member], "command -v docker; ls /etc/systemd/system | grep llmfleet; ls /srv/models",
                   check=False).stdout
        assert left.strip() == "", f"{member} was touched: {left}"


def test_two_host_replica_converges_verifies_through_its_head_then_no_changes(mr):
    first = mr["first"].stdout + mr["first"].stderr  # the drop rule gone, the replica's preflight passes
    assert f"preflight of replica mr-a: every worker reaches {mr['ips']['mr-h1']}:29501" in first
    head, worker = unit(mr, "mr-h1"), unit(mr, "mr-h2")
    for text, rank in ((head, 0), (worker, 1)):
        assert "--network host" in text and "-p 8000:8000" not in text
        assert f"--nnodes 2 \\\n    --node-rank {rank} \\\n    --master-addr {mr['ips']['mr-h1']}" in text
        assert f"VLLM_HOST_IP={mr['ips'][f'mr-h{rank + 1}']}" in text and "NCCL_SOCKET_IFNAME=" in text
    assert "--headless" in worker and "--headless" not in head
    assert "--nnodes" not in unit(mr, "mr-h3") and "-p 8000:8000" in unit(mr, "mr-h3")
    verified = {h: json.loads(on(mr, h, f"cat /etc/llmfleet/{NAME}.last-verify.json")) for h in ("mr-h1", "mr-h2")}
    assert verified["mr-h1"]["ok"] and verified["mr-h1"]["checks"]["chat"]
    assert verified["mr-h2"]["ok"] and verified["mr-h2"]["checks"]["joined_head"] == mr["ips"]["mr-h1"]
    assert on(mr, "mr-h2", f"systemctl is-active {CONTAINER}-headwatch.service") == "active"
    # The worker serves no HTTP; the gateway routes to the head and the one-host replica only.
    assert "mr-h2" not in on(mr, "mr-h4", f"cat /etc/nginx/llmfleet/{NAME}.upstream.conf")
    upstream = on(mr, "mr-h4", f"cat /etc/nginx/llmfleet/{NAME}.upstream.conf")
    assert mr["ips"]["mr-h1"] in upstream and mr["ips"]["mr-h3"] in upstream and mr["ips"]["mr-h2"] not in upstream
    result = loop(mr, threads=2, max_requests=20, max_seconds=30).run()
    assert result.served == 20 and result.failed == 0
    again = deploy(mr, OLD)
    assert again.changed() == {}


def test_rolling_upgrade_of_the_two_host_replica_fails_no_request(mr):
    with loop(mr, threads=4, max_requests=20000, max_seconds=300) as client:
        run = deploy(mr, NEW)
    result = client.result
    assert result.failed == 0, dict(result.errors)
    assert set(result.versions) == {"vllm-standin/0.18.0", "vllm-standin/0.32.0"}
    changed = run.changed()
    assert changed[f"Model | {NAME}: drain batch 1/2"] == ["mr-h4"]  # the replica (its head) first, then mr-h3
    assert sorted(changed[f"Model | Batch 1/2 | {NAME}: verify endpoint"]) == ["mr-h1", "mr-h2"]
    assert changed[f"Model | Batch 2/2 | {NAME}: verify endpoint"] == ["mr-h3"]
    for host in ("mr-h1", "mr-h2", "mr-h3"):
        assert on(mr, host, f"docker inspect -f '{{{{.Config.Image}}}}' {CONTAINER}") == NEW
    # the replica's members restarted in batch 1, before the one-host replica's batch 2
    assert max(started_at(mr, "mr-h1"), started_at(mr, "mr-h2")) < started_at(mr, "mr-h3")


def test_a_worker_flag_its_vllm_refuses_rolls_the_whole_replica_back(mr):
    before_solo = started_at(mr, "mr-h3")
    run = deploy(mr, NEW, inventory=mr["broken"], check=False)
    assert run.returncode != 0
    text = run.stdout + run.stderr
    assert f"rollout of {NAME} stopped at" in text  # mr-h3's service is converged: in no batch
    assert "rolled back to" in text and "verified again" in text
    assert "--api-server-count" not in unit(mr, "mr-h2")  # the worker's previous unit is back
    for host in ("mr-h1", "mr-h2"):
        record = json.loads(on(mr, host, f"cat /etc/llmfleet/{NAME}.rollout.json"))
        assert record["outcome"] == "rolled_back", (host, record)
        assert json.loads(on(mr, host, f"cat /etc/llmfleet/{NAME}.last-verify.json"))["ok"] is True
    assert started_at(mr, "mr-h3") == before_solo  # the next batch never ran
    after = loop(mr, threads=2, max_requests=20, max_seconds=60).run()
    assert after.served == 20 and after.failed == 0


def test_the_heads_container_killed_restarts_both_members_and_the_replica_verifies_again(mr):
    before = {h: started_at(mr, h) for h in ("mr-h1", "mr-h2")}
    on(mr, "mr-h1", f"docker kill {CONTAINER}")
    wait_until(lambda: all(started_at(mr, h) not in ("", before[h]) for h in before) and head_health(mr) == 200,
               "the head and its worker restarted and the head healthy", timeout=120, interval=1)
    log = on(mr, "mr-h2", f"journalctl -u {CONTAINER}-headwatch.service --no-pager -o cat")
    assert "head gone" in log
    verify = pyinfra(mr["inventory"], "deploys/verify.py", "--limit", "bf16", data={"verify_wait_s": 60}, timeout=300)
    assert verify.errors() == {}


def test_a_replica_split_into_one_host_replicas_loses_the_head_watch_then_no_changes(mr):
    watch = f"{CONTAINER}-headwatch.service"
    assert on(mr, "mr-h2", f"systemctl is-active {watch}") == "active"
    with loop(mr, threads=2, max_requests=20000, max_seconds=300) as client:
        run = deploy(mr, NEW, inventory=mr["split"])
    assert client.result.failed == 0, dict(client.result.errors)
    removed = {h for name, hosts in run.changed().items() if name.endswith("no head watch (not a worker)")
               for h in hosts}
    assert removed == {"mr-h2"}, sorted(run.changed())
    left = ssh(mr["ips"]["mr-h2"], f"systemctl is-active {watch}; ls /etc/systemd/system | grep -c headwatch",
               check=False).stdout.split()
    assert left == ["inactive", "0"], left
    for host in ("mr-h1", "mr-h2"):
        assert "--nnodes" not in unit(mr, host) and "--headless" not in unit(mr, host)
    assert deploy(mr, NEW, inventory=mr["split"]).changed() == {}
