"""The preflight @deploy on @fake hosts: one round trip each, a report per host, no-go hosts failed."""

import json

import pytest
from pyinfra.api import Config, Inventory, State
from pyinfra.api.connect import connect_all
from pyinfra.api.deploy import add_deploy
from pyinfra.api.exceptions import PyinfraError

from tests.unit.test_facts_host import CANNED
from tests.unit.test_preflight import seed_001

from tasks.preflight import preflight

GOOD = ["{i}, NVIDIA GeForce RTX 2080 Ti, 550.144.03, 22528, 0, 22180, 00000000:0{i}:00.0, 3, 3, 16, 16, 7.5, "
        "Disabled, [N/A]".format(i=i) for i in range(4)] + ["LLMFLEET_RC=0"]
OLD = [line.replace("550.144.03", "530.30.02") for line in GOOD]


def _host(name, gpu_lines, report_dir):
    return (f"@fake/{name}", {
        "fake_delay": 0, "fake_delay_jitter": 0, "preflight_report_dir": str(report_dir),
        "fake_responses": {"nvidia-smi --query-gpu": gpu_lines, "nvswitch_dev": ["nvswitch_dev=0"],
                           "@@llmfleet meminfo": CANNED},
    })


def _run(hosts):
    inventory = Inventory((hosts, {}))
    state = State(inventory, Config())
    connect_all(state)
    add_deploy(state, preflight, seed_001())
    return state


def test_reports_written_and_no_go_host_failed(tmp_path):
    state = _run([_host("good", GOOD, tmp_path), _host("old", OLD, tmp_path)])
    good = json.loads((tmp_path / "@fake_good.json").read_text())
    old = json.loads((tmp_path / "@fake_old.json").read_text())
    assert good["verdict"]["go"] is True and good["facts"]["nvidia_gpus"]["status"] == "ok"
    assert old["verdict"]["go"] is False and "530.30.02" in old["verdict"]["reasons"][0]
    assert {h.name for h in state.failed_hosts} == {"@fake/old"}
    for host in state.inventory:
        commands = host.connector.executed_commands
        assert len(commands) == 1
        assert all(part in commands[0] for part in ("nvidia-smi --query-gpu", "@@llmfleet meminfo", "nvswitch_dev"))


def test_last_host_no_go_raises(tmp_path):
    with pytest.raises(PyinfraError, match="No hosts remaining"):
        _run([_host("old", OLD, tmp_path)])
