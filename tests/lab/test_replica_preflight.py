"""A worker that cannot reach its head's master port is refused at preflight (lab "rp": two h100x8 hosts,
one replica of qwen235b_bf16, tp 8 x pp 2). An nft rule in the head's network namespace drops TCP 29501;
the deploy refuses both members, naming the worker, the head's port and the worker's interface, and
installs nothing on either (no Docker, no unit, no weights). With the rule gone, the same deploy's dry
run passes the replica's preflight: the refusal was the dropped port's.

The lab stays as the preflight leaves it (nothing converged), so the module costs one bring-up of two
bare hosts and three pyinfra runs that stop at preflight."""

from __future__ import annotations

import contextlib
import secrets
import subprocess

import pytest

from .helpers import lab_name, own_lab, pyinfra, secrets_env, ssh

PROFILES = ["h100x8", "h100x8"]
PORT = 29501
# The two lab hosts as one replica: the lab's own inventory, each host given its rank.
INVENTORY = '''"""Lab rp's hosts as replica rp of qwen235b_bf16 (written by tests/lab/test_replica_preflight.py)."""
import runpy

_LAB = runpy.run_path({lab!r})
h100x8 = [(name, {{**data, "replica": "rp", "replica_rank": rank}}) for rank, (name, data) in enumerate(_LAB["h100x8"])]
'''


@pytest.fixture(scope="module")
def rp(tmp_path_factory):
    secrets_dir = tmp_path_factory.mktemp("secrets")
    with own_lab("rp", PROFILES) as state, \
            secrets_env(secrets_dir, qwen235b_api_key="sk-rp-" + secrets.token_hex(16)):
        inventory = tmp_path_factory.mktemp("inventory") / "replica_rp.py"
        inventory.write_text(INVENTORY.format(lab=str(state["inventory"])))
        head, worker = state["hosts"]
        yield {"inventory": inventory, "head": head, "worker": worker}


@contextlib.contextmanager
def dropped(host: dict, port: int):
    """An nft rule in ``host``'s network namespace dropping TCP ``port`` in, for as long as the block runs."""
    from tasks.lab.config import LabConfig

    ns = LabConfig(lab_name("rp")).netns(host["index"])
    rules = (f"table inet llmfleet_rp_drop {{\n  chain input {{\n    type filter hook input priority 0; policy accept;\n"
             f"    tcp dport {port} drop\n  }}\n}}\n")
    subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=rules, text=True, check=True, timeout=30)
    try:
        yield
    finally:
        subprocess.run(["ip", "netns", "exec", ns, "nft", "delete", "table", "inet", "llmfleet_rp_drop"],
                       check=False, timeout=30)


def interface_towards(src: dict, dst: dict) -> str:
    """The interface ``src``'s route to ``dst`` leaves by, as the kernel on ``src`` says."""
    words = ssh(src["ip"], f"ip -o -4 route get {dst['ip']}").stdout.split()
    return words[words.index("dev") + 1]


def test_worker_that_cannot_reach_the_heads_port_is_refused_and_nothing_installed(rp):
    head, worker = rp["head"], rp["worker"]
    interface = interface_towards(worker, head)
    with dropped(head, PORT):
        run = pyinfra(rp["inventory"], "deploys/qwen235b_bf16.py", check=False, timeout=600)
    assert run.returncode != 0
    said = run.stdout + run.stderr
    refusal = (f"{worker['name']} cannot reach the head {head['ip']} on TCP port {PORT} over interface {interface}: "
               "no answer within 3 s")
    for member in (head, worker):  # every member says why its replica was refused
        assert f"[{member['name']}] refused: preflight of replica rp" in said, said[-4000:]
    assert said.count(refusal) >= 2, said[-4000:]
    assert not run.changed()
    for member in (head, worker):
        left = ssh(member["ip"], "command -v docker; ls /etc/systemd/system | grep llmfleet; ls /srv/models",
                   check=False).stdout
        assert left.strip() == "", f"{member['name']} was touched: {left}"

    # The same deploy without the drop rule: the replica's preflight passes (a dry run installs nothing).
    dry = pyinfra(rp["inventory"], "deploys/qwen235b_bf16.py", "--dry", check=False, timeout=600)
    said = dry.stdout + dry.stderr
    assert f"preflight of replica rp: every worker reaches {head['ip']}:{PORT}" in said, said[-4000:]
    assert "cannot reach the head" not in said
