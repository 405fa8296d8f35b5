"""tasks/pyinfra_ext.py: TCP_NODELAY on pyinfra's SSH sockets (real sockets on loopback), the one
value store per run (real gevent greenlets), operation results, and the contract of every pyinfra
internal it relies on: a pyinfra release that changes one fails here, naming it."""

from __future__ import annotations

import socket
from types import SimpleNamespace

import gevent
import pytest
from pyinfra.api import Config, Inventory, State

from tasks import pyinfra_ext as transport
from tasks.pyinfra_ext import once_per_run, run_store


@pytest.fixture
def tcp_pair():
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname())
    accepted, _ = server.accept()
    yield client
    for s in (client, accepted, server):
        s.close()


def ssh_like_host(sock, connected=True):
    """A host whose connector holds a paramiko-shaped client (get_transport().sock)."""
    client = SimpleNamespace(get_transport=lambda: SimpleNamespace(sock=sock))
    return SimpleNamespace(connector=SimpleNamespace(client=client), connected=connected)


def nodelay(sock) -> int:
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


def test_no_delay_sets_the_option_on_a_tcp_socket(tcp_pair):
    assert nodelay(tcp_pair) == 0  # the kernel's default, which paramiko keeps
    assert transport.no_delay(ssh_like_host(tcp_pair)) is True
    assert nodelay(tcp_pair) == 1


def test_other_connectors_and_unix_sockets_are_left_alone():
    assert transport.no_delay(SimpleNamespace(connector=SimpleNamespace())) is False  # @local, @docker
    a, b = socket.socketpair()
    try:
        assert transport.no_delay(ssh_like_host(a)) is False
    finally:
        a.close()
        b.close()


def test_install_covers_connected_hosts_and_registers_one_callback(tcp_pair, monkeypatch):
    state = State(Inventory(([("@fake/a", {})], {})), Config())
    hosts = [ssh_like_host(tcp_pair), ssh_like_host(None, connected=False)]
    monkeypatch.setattr(type(state.inventory), "__iter__", lambda self: iter(hosts))
    assert transport.install_no_delay(state) == 1 and nodelay(tcp_pair) == 1
    transport.install_no_delay(state)
    assert sum(isinstance(h, transport.NoDelayOnConnect) for h in state.callback_handlers) == 1


def test_callback_sets_the_option_when_a_host_connects(tcp_pair):
    transport.NoDelayOnConnect.host_connect(None, ssh_like_host(tcp_pair))
    assert nodelay(tcp_pair) == 1


def test_once_per_run_builds_once_while_other_greenlets_wait():
    state = State()
    calls = []

    def build():
        calls.append(1)
        gevent.sleep(0.05)  # a fact read: the other greenlets run meanwhile
        return {"plan": len(calls)}

    jobs = [gevent.spawn(once_per_run, "k", build, state) for _ in range(5)]
    gevent.joinall(jobs, raise_error=True)
    assert calls == [1] and all(j.value == {"plan": 1} for j in jobs)
    assert once_per_run("k", build, state) == {"plan": 1} and calls == [1]
    other = State()  # another run builds its own
    assert once_per_run("k", build, other) == {"plan": 2} and run_store(state)["k"] == {"plan": 1}


def test_once_per_run_passes_the_error_to_waiters_and_forgets_it():
    state = State()

    def fail():
        gevent.sleep(0.01)
        raise RuntimeError("host unreachable")

    jobs = [gevent.spawn(once_per_run, "k", fail, state) for _ in range(3)]
    gevent.joinall(jobs)
    assert all(isinstance(j.exception, RuntimeError) for j in jobs)
    assert "k" not in run_store(state)
    assert once_per_run("k", lambda: "second try", state) == "second try"


def test_a_finished_runs_values_go_with_its_state():
    import gc

    state = State()
    once_per_run("k", lambda: "v", state)
    assert len(transport._RUNS) >= 1 and state in transport._RUNS
    del state
    gc.collect()
    assert not any(run_store(s).get("k") == "v" for s in list(transport._RUNS))


def test_read_fleet_reads_every_host_at_once():
    """Each @fake host answers after 0.3 s: read in parallel, three hosts take ~0.3 s, not ~0.9 s."""
    import time

    from pyinfra.api.connect import connect_all
    from pyinfra.facts.server import Command

    from tasks.fleet.reads import read_fleet

    hosts = [(f"@fake/h{i}", {"fake_delay": 0.3, "fake_delay_jitter": 0,
                              "fake_responses": {f"echo h{i}": [f"h{i}"]}}) for i in range(3)]
    state = State(Inventory((hosts, {})), Config())
    connect_all(state)
    start = time.monotonic()
    got = read_fleet(list(state.inventory), Command, lambda h: {"command": f"echo {h.name[6:]}"})
    assert got == {"@fake/h0": "h0", "@fake/h1": "h1", "@fake/h2": "h2"}
    assert time.monotonic() - start < 0.75


# --- the contract: what tasks/pyinfra_ext.py relies on in pyinfra's internals -----------------------


def _one_op_state(**host_data):
    """A real State with one @fake host and one operation added through pyinfra's API."""
    from pyinfra.api.connect import connect_all
    from pyinfra.api.operation import add_op
    from pyinfra.operations import server

    state = State(Inventory(([("@fake/a", {"fake_delay": 0, "fake_delay_jitter": 0, **host_data})], {})), Config())
    connect_all(state)
    meta = add_op(state, server.shell, commands=["true"])
    return state, state.inventory.get_host("@fake/a"), meta


def test_contract_state_ops_hold_each_hosts_operation_meta():
    state, host, metas = _one_op_state()
    (op_data,) = state.ops[host].values()
    assert op_data.operation_meta is metas[host]
    assert transport.host_unchanged(state, host)  # nothing executed yet


def test_contract_operation_meta_change_and_results():
    from pyinfra.api.operation import OperationMeta
    from pyinfra.api.operations import run_ops

    state, host, metas = _one_op_state()
    meta = metas[host]
    assert isinstance(meta, OperationMeta) and "_maybe_is_change" in vars(meta)
    assert transport.change_known(meta) in (True, False, None)
    assert transport.will_change_on(state, host.name, [meta]) is True  # runs the body in the host's context
    assert transport.change_known(meta) is True  # will_change keeps what it found
    run_ops(state)
    assert meta.is_complete() and meta.executed and meta.did_succeed()
    assert not transport.host_unchanged(state, host)  # a command ran: batched reads are stale


def test_contract_stage_and_executing_flags():
    from pyinfra.api.state import StateStage

    state = State(Inventory(([("@fake/a", {})], {})), Config())
    assert state.is_executing is False
    state.set_stage(StateStage.Prepare)
    assert transport.stage(state) == StateStage.Prepare
    assert isinstance(state.failed_hosts, set)


def test_contract_callbacks_and_ssh_connector_shape():
    import inspect

    from pyinfra.api.state import BaseStateCallback
    from pyinfra.connectors.ssh import SSHConnector

    assert list(inspect.signature(BaseStateCallback.host_connect).parameters) == ["state", "host"]
    state = State(Inventory(([("@fake/a", {})], {})), Config())
    state.add_callback_handler(transport.NoDelayOnConnect())
    assert any(isinstance(h, transport.NoDelayOnConnect) for h in state.callback_handlers)
    assert "self.client = SSHClient()" in inspect.getsource(SSHConnector)  # connector.client: paramiko's
    import paramiko

    assert hasattr(paramiko.SSHClient, "get_transport") and "sock" in inspect.getsource(paramiko.Transport.__init__)


def test_pyinfra_is_the_pinned_release():
    """The pin (pyproject: pyinfra>=3.10,<3.11) and what these contracts were checked against."""
    import pyinfra

    from importlib.metadata import version

    assert version("pyinfra").startswith("3.10."), "a new pyinfra: rerun this file, then lift the pin"
    assert pyinfra.__name__ == "pyinfra"
