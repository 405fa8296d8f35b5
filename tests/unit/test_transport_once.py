"""TCP_NODELAY on pyinfra's SSH sockets (real sockets on loopback) and the once-per-run fleet value
(real gevent greenlets)."""

from __future__ import annotations

import socket
from types import SimpleNamespace

import gevent
import pytest
from pyinfra.api import Config, Inventory, State

from tasks import transport
from tasks.once import once_per_run


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
    assert transport.install(state) == 1 and nodelay(tcp_pair) == 1
    transport.install(state)
    assert sum(isinstance(h, transport.NoDelayOnConnect) for h in state.callback_handlers) == 1


def test_callback_sets_the_option_when_a_host_connects(tcp_pair):
    transport.NoDelayOnConnect.host_connect(None, ssh_like_host(tcp_pair))
    assert nodelay(tcp_pair) == 1


def test_once_per_run_builds_once_while_other_greenlets_wait():
    cache: dict = {}
    calls = []

    def build():
        calls.append(1)
        gevent.sleep(0.05)  # a fact read: the other greenlets run meanwhile
        return {"plan": len(calls)}

    jobs = [gevent.spawn(once_per_run, cache, "k", build) for _ in range(5)]
    gevent.joinall(jobs, raise_error=True)
    assert calls == [1] and all(j.value == {"plan": 1} for j in jobs)
    assert once_per_run(cache, "k", build) == {"plan": 1} and calls == [1]


def test_once_per_run_passes_the_error_to_waiters_and_forgets_it():
    cache: dict = {}

    def fail():
        gevent.sleep(0.01)
        raise RuntimeError("host unreachable")

    jobs = [gevent.spawn(once_per_run, cache, "k", fail) for _ in range(3)]
    gevent.joinall(jobs)
    assert all(isinstance(j.exception, RuntimeError) for j in jobs)
    assert "k" not in cache
    assert once_per_run(cache, "k", lambda: "second try") == "second try"


def test_read_fleet_reads_every_host_at_once():
    """Each @fake host answers after 0.3 s: read in parallel, three hosts take ~0.3 s, not ~0.9 s."""
    import time

    from pyinfra.api.connect import connect_all
    from pyinfra.facts.server import Command

    from tasks.once import read_fleet

    hosts = [(f"@fake/h{i}", {"fake_delay": 0.3, "fake_delay_jitter": 0,
                              "fake_responses": {f"echo h{i}": [f"h{i}"]}}) for i in range(3)]
    state = State(Inventory((hosts, {})), Config())
    connect_all(state)
    start = time.monotonic()
    got = read_fleet(list(state.inventory), Command, lambda h: {"command": f"echo {h.name[6:]}"})
    assert got == {"@fake/h0": "h0", "@fake/h1": "h1", "@fake/h2": "h2"}
    assert time.monotonic() - start < 0.75
