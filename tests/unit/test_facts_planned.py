"""tasks.facts.planned on @fake hosts: the declared reads of a host arrive in one round trip while
nothing has changed the host; after a change (or a failure), or in another pyinfra stage, reads go
to the host again, so an operation never acts on a value from before an earlier operation's change."""

from __future__ import annotations

from pyinfra.api import Config, FactBase, Inventory, State, deploy
from pyinfra.api.connect import connect_all
from pyinfra.api.deploy import add_deploy
from pyinfra.api.operations import run_ops
from pyinfra.api.state import StateStage

from tasks.converge import DebPackages, deb_packages, units_running
from tasks.facts.planned import declare, read
from tasks.facts.together import MARK

ACTIVE = ["@unit=docker.service", "LoadState=loaded", "ActiveState=active", "UnitFileState=enabled"]
INACTIVE = [line.replace("=active", "=inactive") for line in ACTIVE]


@deploy("Runtime")
def runtime():
    deb_packages(name="docker.io", packages=["docker.io"])
    units_running(name="dockerd running", units=["docker.service"])


def _run(responses: dict, check_for_changes: bool = False, fn=runtime):
    """Prepare and execute as the CLI does (its stages; check_for_changes=False is its -y)."""
    data = {"fake_delay": 0, "fake_delay_jitter": 0, "fake_responses": responses}
    state = State(Inventory(([("@fake/h", data)], {})), Config(), check_for_changes=check_for_changes)
    connect_all(state)
    state.set_stage(StateStage.Prepare)
    add_deploy(state, fn)
    state.set_stage(StateStage.Execute)
    run_ops(state)
    return state.inventory.get_host("@fake/h").connector.executed_commands


def test_a_converged_host_reads_everything_in_one_round_trip():
    commands = _run({"dpkg-query": ["ii  docker.io 20.10.24+dfsg1-1+b3"], "systemctl show": ACTIVE})
    # dpkg's consistency, the packages, the unit: three facts, one command
    assert len(commands) == 1 and commands[0].count(MARK) == 3


def test_after_a_change_the_next_operation_reads_the_host_again():
    # docker.io is missing: installing it starts dockerd (the package's postinst), so the
    # batch's "inactive" is stale by the time "dockerd running" runs; it must look again.
    commands = _run({"dpkg-query": [], "apt-get install": [], "systemctl show": INACTIVE})
    assert MARK in commands[0]
    assert "apt-get install" in commands[1]
    assert commands[2].startswith("if command -v systemctl") and MARK not in commands[2]
    assert commands[3:] == ["systemctl start docker.service"]


def test_a_failed_operation_also_ends_the_batch():
    @deploy("Runtime, ignoring errors")
    def tolerant():
        deb_packages(name="docker.io", packages=["docker.io"], _ignore_errors=True)
        units_running(name="dockerd running", units=["docker.service"])

    commands = _run({"dpkg-query": [], "apt-get install": {"success": False}, "systemctl show": ACTIVE},
                    fn=tolerant)
    assert MARK in commands[0] and "apt-get install" in commands[1]
    assert len(commands) == 3 and MARK not in commands[2] and "systemctl show" in commands[2]


def test_change_detection_reads_each_alone_then_execution_reads_once():
    # Without -y pyinfra runs each body as its operation is called (the next is not declared yet):
    # one read per operation (deb_packages' two facts together), as without batching; executing then
    # reads everything in one round trip.
    commands = _run({"dpkg-query": ["ii  docker.io 20.10.24+dfsg1-1+b3"], "systemctl show": ACTIVE},
                    check_for_changes=True)
    assert len(commands) == 3 and commands[0].count(MARK) == 2 and MARK not in commands[1]
    assert "dpkg-query" in commands[0] and "systemctl show" in commands[1] and commands[2].count(MARK) == 3


class Guarded(FactBase):
    def requires_command(self):
        return "apt-get"

    def command(self):
        return "apt-get --version"

    def process(self, output):
        return output


def test_facts_that_cannot_join_a_batch_and_undeclared_reads_go_alone():
    seen = {}

    @deploy("Reads")
    def reads():
        deb_packages(name="docker.io", packages=["docker.io"])
        units_running(name="dockerd running", units=["docker.service"])
        declare(Guarded)  # requires_command: pyinfra wraps its command, so it cannot join a batch
        seen["guarded"] = read(Guarded)
        seen["other"] = read(DebPackages, names=["python3-venv"])  # never declared

    commands = _run({"apt-get --version": ["apt 2.6.1"], "python3-venv": ["ii  python3-venv 3.11.2-1+b1"],
                     "dpkg-query": ["ii  docker.io 20.10.24+dfsg1-1+b3"], "systemctl show": ACTIVE}, fn=reads)
    assert seen == {"guarded": ["apt 2.6.1"], "other": {"python3-venv": "3.11.2-1+b1"}}
    assert MARK not in commands[0] and MARK not in commands[1]
    assert len(commands) == 3 and commands[2].count(MARK) == 3
