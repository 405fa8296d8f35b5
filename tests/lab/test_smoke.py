"""First end-to-end proof: the smoke deploy converges lab hosts, and a second run changes nothing."""

from __future__ import annotations

from .helpers import pyinfra, ssh


def test_smoke_converges_then_no_changes(lab, inventory):
    # The session lab is shared: a module that ran before on this worker may have converged the smoke
    # service already (test_standin_image installs Docker through it). Take the service off first, so
    # the first run below has to install it, whatever ran before.
    for h in lab["hosts"]:
        ssh(h["ip"], "systemctl disable --now llmfleet-smoke 2>/dev/null; "
                     "rm -f /etc/systemd/system/llmfleet-smoke.service; systemctl daemon-reload")
    first = pyinfra(inventory, "deploys/smoke.py")
    hosts = sorted(h["name"] for h in lab["hosts"])
    changed = first.changed()
    assert changed["Smoke container | Smoke unit"] == hosts
    assert changed["Smoke container | Smoke answers"] == hosts
    for h in lab["hosts"]:
        assert ssh(h["ip"], "systemctl is-enabled llmfleet-smoke").stdout.strip() == "enabled"
        assert "Directory listing" in ssh(h["ip"], "curl -fsS http://127.0.0.1:18000/").stdout

    second = pyinfra(inventory, "deploys/smoke.py")
    assert second.operations, "the second run executed no operations at all"
    assert second.changed() == {}
    # Hosts run different operations (toolkit on NVIDIA, CANN on Ascend); every host ran some, none changed.
    assert set().union(*(op["no_change"] for op in second.operations)) == set(hosts)

    dry = pyinfra(inventory, "deploys/smoke.py", "--dry")
    assert dry.planned_changes() == {}
