"""The fleet plan (tasks/fleet): built once per run before any host's operation, read-only, shared by
every host planning in parallel; fleet-wide settings agree or the run stops naming hosts and values;
weights plans per model over the hosts serving it (gateways and hosts being removed are no weights host)."""

from __future__ import annotations

import dataclasses

import gevent
import pytest
from pyinfra.api import Config, Inventory, State
from pyinfra.api.connect import connect_all
from pyinfra.context import ctx_config, ctx_host, ctx_state

from tasks.bad_input import BadInput
from tasks.fleet import FleetPlan, fleet_plan

BASE = {"fake_delay": 0.01, "fake_delay_jitter": 0, "fake_responses": {}, "model_preflight": False,
        "serve_api_key_secret": None}


def _state(groups: dict[str, list[tuple[str, dict]]]) -> State:
    names = [(name, {**BASE, **data}) for members in groups.values() for name, data in members]
    state = State(Inventory((names, {}), **{g: ([n for n, _ in m], {}) for g, m in groups.items()}), Config(),
                  check_for_changes=False)
    connect_all(state)
    return state


def _plan_in_parallel(state: State, recipe) -> dict[str, FleetPlan]:
    """What pyinfra's CLI does: every host planned in its own greenlet."""
    got = {}

    def plan(h):
        with ctx_config.use(state.config.copy()), ctx_host.use(h):
            got[h.name] = fleet_plan(recipe)

    with ctx_state.use(state):
        gevent.joinall([gevent.spawn(plan, h) for h in state.inventory], raise_error=True)
    return got


def _replicas(n: int, **data) -> list[tuple[str, dict]]:
    return [(f"@fake/r{i}", {"ssh_hostname": f"10.0.0.{i + 1}", **data}) for i in range(n)]


def test_one_read_only_plan_per_run_shared_by_every_host():
    state = _state({"gateway": [("@fake/gw", {})], "replicas": _replicas(3)})
    plans = _plan_in_parallel(state, "qwen30b")
    (plan,) = {id(p): p for p in plans.values()}.values()  # the same object for all four hosts
    assert set(plan.specs) == {"@fake/r0", "@fake/r1", "@fake/r2"} and plan.gateways == ("@fake/gw",)
    assert plan.rollout.batches == (("@fake/r0",), ("@fake/r1",), ("@fake/r2",))
    assert plan.settings["rollout_batch_size"] == 1 and plan.settings["weights_fanout"] is False
    assert plan.weights_hosts == {"Qwen/Qwen3-30B-A3B@" + plan.specs["@fake/r0"].model.revision:
                                  ("@fake/r0", "@fake/r1", "@fake/r2")}
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.rollout = None
    with pytest.raises(TypeError):  # MappingProxyType: no host writes into the plan
        plan.specs["@fake/gw"] = plan.specs["@fake/r0"]
    with pytest.raises(TypeError):
        plan.weights_for(plan.specs["@fake/r0"]).roles["@fake/r0"] = None
    for h in state.inventory:  # each host's service and weights state read once, the gateway's never
        service = [c for c in h.connector.executed_commands if "@unit_file=" in str(c)]
        manifest = [c for c in h.connector.executed_commands if "manifest.json" in str(c)]
        assert (len(service), len(manifest)) == ((0, 0) if h.name == "@fake/gw" else (1, 1)), h.name


def test_a_new_run_gets_a_new_plan():
    first, second = (_plan_in_parallel(_state({"replicas": _replicas(1)}), "qwen30b") for _ in range(2))
    assert first["@fake/r0"] is not second["@fake/r0"]


@pytest.mark.parametrize("key, values", [("rollout_batch_size", (2, 1)), ("rollout_enabled", (True, False))])
def test_disagreeing_rollout_settings_stop_the_run_before_any_host_is_touched(key, values):
    state = _state({"replicas": [("@fake/r0", {key: values[0]}), ("@fake/r1", {key: values[1]})]})
    with ctx_state.use(state), ctx_host.use(state.inventory.get_host("@fake/r1")):
        with pytest.raises(BadInput) as exc:
            fleet_plan("qwen30b")
    (problem,) = exc.value.problems
    assert problem.field == key and "every replica of a rollout" in problem.message
    assert f"@fake/r0 has {values[0]!r}" in problem.message and f"@fake/r1 has {values[1]!r}" in problem.message
    assert not any(h.connector.executed_commands for h in state.inventory)


def test_a_host_being_removed_and_a_gateway_are_no_weights_hosts():
    """A fan-out seed must fetch: the gateway (listed first) and a host whose model is being taken off
    (``serve_state: absent``: it fetches nothing) get no weights role."""
    state = _state({"gateway": [("@fake/gw", {"weights_fanout": True})], "replicas": [
        ("@fake/gone", {"weights_fanout": True, "ssh_hostname": "10.0.0.4", "serve_state": "absent"}),
        *_replicas(2, weights_fanout=True)]})
    plan = _plan_in_parallel(state, "qwen30b")["@fake/r0"]
    (hosts,) = plan.weights_hosts.values()
    weights_plan = plan.weights_for(plan.specs["@fake/r0"])
    assert hosts == ("@fake/r0", "@fake/r1") and set(weights_plan.roles) == set(hosts)
    assert weights_plan.hub_seeds == ("@fake/r0",) and weights_plan.roles["@fake/r1"].kind == "chain"  # the default mode
    assert "@fake/gone" in plan.specs and plan.specs["@fake/gone"].state == "absent"
