"""Rollout planning: batches, fleet-wide settings, the operation order of a 3-replica fleet with a
gateway (pyinfra's CLI ordering on @fake hosts), the halt rule, and the rollback point's fact."""

from __future__ import annotations

import dataclasses
import sys

import pyinfra
import pytest
from pyinfra.api import Config, Inventory, State
from pyinfra.api.connect import connect_all
from pyinfra.api.state import StateStage
from pyinfra.context import ctx_host, ctx_state

from tasks import rollout
from tasks.rollout.plan import Handles
from tasks.gateway import GatewayModel, Replica
from tasks.spec import SpecError

from .conftest import run_sh


def test_batches_by_size_percentage_and_cap():
    hosts = [f"h{i}" for i in range(1, 9)]
    assert rollout.make_batches(hosts[:3]) == [["h1"], ["h2"], ["h3"]]
    assert rollout.make_batches(hosts, 3) == [hosts[0:3], hosts[3:6], hosts[6:8]]
    assert rollout.make_batches(hosts, "25%") == [hosts[0:2], hosts[2:4], hosts[4:6], hosts[6:8]]
    assert rollout.make_batches(hosts, 4, max_unavailable=2) == [hosts[i:i + 2] for i in range(0, 8, 2)]
    assert rollout.make_batches(hosts[:3], "10%") == [["h1"], ["h2"], ["h3"]]  # at least one host
    assert rollout.make_batches(hosts, 1, enabled=False) == [hosts]
    assert rollout.make_batches([], 2) == []


@pytest.mark.parametrize("bad", [0, -1, "x", "0%", "150%", 1.5])
def test_bad_batch_size_names_the_key(bad):
    with pytest.raises(SpecError, match="rollout_batch_size"):
        rollout.make_batches(["a", "b"], bad)


def test_batch_settings_must_agree_across_replicas():
    assert rollout.fleet_setting({"a": {"rollout_batch_size": 2}, "b": {"rollout_batch_size": 2}},
                                 "rollout_batch_size") == 2
    with pytest.raises(SpecError, match="a has 2, b has 3"):
        rollout.fleet_setting({"a": {"rollout_batch_size": 2}, "b": {"rollout_batch_size": 3}}, "rollout_batch_size")


class _FakeHost:
    def __init__(self, name):
        self.name = name


class _FakeState:
    def __init__(self):
        self.failed_hosts = set()
        self.is_executing = True


class _Result:
    """An OperationMeta's results, as pyinfra leaves them once the operation ran."""

    def __init__(self, succeeded: bool, executed: bool = True):
        self._ok, self.executed = succeeded, executed

    def is_complete(self):
        return True

    def did_succeed(self):
        return self._ok


def test_halt_rule_ignores_failures_from_before_the_rollout():
    state = _FakeState()
    state.failed_hosts = {_FakeHost("h2")}  # refused by preflight before the first batch
    model = GatewayModel("m", "m", 8000, (), None)
    plan = rollout.Plan("m", (("h1",), ("h2",), ("h3",)), ("gw",), model)
    progress = rollout.Progress(plan, state)
    assert progress.is_open(0) and progress.is_open(1) and progress.is_open(2)
    state.failed_hosts.add(_FakeHost("h1"))  # h1 failed its gate in batch 1
    assert progress.is_open(0) and not progress.is_open(1) and not progress.is_open(2)
    assert progress.skipped("h3")() and not progress.skipped("h1")()
    # Put back, from pyinfra's results of the gates: the rolled-back host (verified again) yes; a host
    # whose rollback failed no.
    progress.register("h1", Handles((), checked=_Result(False), again=_Result(True)))
    assert progress.outcome("h1") == rollout.ROLLED_BACK and progress.to_restore(0)() == ["h1"]
    progress.register("h1", Handles((), checked=_Result(False), again=_Result(False)))
    assert progress.outcome("h1") == rollout.ROLLBACK_FAILED and progress.to_restore(0)() == []
    assert plan.later_hosts(0) == ["h2", "h3"]
    with pytest.raises(dataclasses.FrozenInstanceError):  # the plan is read-only: outcomes are pyinfra's
        plan.batches = ()


@pytest.fixture
def cli_order(monkeypatch):
    """pyinfra's CLI orders operations by call site (what the rollout relies on)."""
    import tasks.weights.deploy as weights

    monkeypatch.setattr(weights, "fetch_weights", lambda spec, plan=None: None)  # not this test's subject
    monkeypatch.setattr(pyinfra, "is_cli", True)


def _plan_fleet(n: int, converged: tuple[int, ...] = (), absent: tuple[int, ...] = (), watch: tuple[int, ...] = (),
                **data) -> State:
    from tasks.model import deploy_model

    fd = {"fake_delay": 0, "fake_delay_jitter": 0, "model_preflight": False, "serve_api_key_secret": None, **data}
    replicas = [(f"@fake/r{i}", dict(fd, ssh_hostname=f"10.0.0.{i + 1}")) for i in range(n)]
    for i in converged:  # these replicas answer the plan's service read as a host serve() already ran on
        replicas[i][1]["fake_responses"] = {"@unit_file=": _converged_service(replicas[i][1], i in watch)}
    for i in absent:  # these are being taken off
        replicas[i][1]["serve_state"] = "absent"
    state = State(Inventory((replicas + [("@fake/gw", dict(fd))], fd), gateway=(["@fake/gw"], {})), Config())
    connect_all(state)
    state.set_stage(StateStage.Prepare)
    with ctx_state.use(state):
        for h in list(state.inventory.get_active_hosts()):
            with ctx_host.use(h):
                deploy_model("qwen30b")
    return state


def _converged_service(data: dict, head_watch: bool = False) -> list[str]:
    """``head_watch``: the host also keeps a head-watch unit from when it was a multi-node worker."""
    from tasks.spec import load_spec

    from .test_service_converged import converged_host, digest_output

    want, paths = rollout.desired_service(load_spec("qwen30b", data), _Data(data))
    files = converged_host(want)
    if head_watch:
        files[want.watch_file] = ("file", "644", b"[Unit]\n")
    files[f"{paths.previous}/unit"] = files[want.unit_file]  # its rollback point is this version
    return [f"@unit_file={paths.unit_file}", f"@saved_unit={paths.previous}/unit", *digest_output(files),
            "ActiveState=active", "UnitFileState=enabled", "NeedDaemonReload=no",
            f"org.llmfleet.image={want.image_ref}",  # off the running docker run's argv
            'saved={"image": "%s", "weights": null}' % want.image_ref]


class _Data(dict):
    """Host data as desired_service reads it (``.get``), before pyinfra wraps it."""


def _order(state: State) -> list[tuple[str, list[str]]]:
    out = []
    for op_hash in state.get_op_order():
        name = sorted(state.op_meta[op_hash].names)[0]
        out.append((name, [h.name for h in state.inventory if op_hash in state.ops[h]]))
    return out


def test_batches_are_pyinfra_operation_order_with_gateway_drain(cli_order):
    order = _order(_plan_fleet(3))
    names = [n for n, _ in order]
    everyone = ["@fake/r0", "@fake/r1", "@fake/r2", "@fake/gw"]
    for b, replica in enumerate(["@fake/r0", "@fake/r1", "@fake/r2"], 1):
        begin = names.index(f"Model | qwen30b batch {b}/3 ({replica}): begin")
        drain = names.index(f"Model | qwen30b: drain batch {b}/3")
        drained = names.index(f"Model | qwen30b batch {b}/3 ({replica}): drained")
        unit = names.index(f"Model | Batch {b}/3 | Service | qwen30b: unit llmfleet-qwen30b.service")
        verify = names.index(f"Model | Batch {b}/3 | qwen30b: verify endpoint")
        rollback = names.index(f"Model | Batch {b}/3 | qwen30b: roll back to the previous version")
        gated = names.index(f"Model | qwen30b batch {b}/3 ({replica}): gated")
        back = names.index(f"Model | qwen30b: put back batch {b}/3")
        assert begin < drain < drained < unit < verify < rollback < gated < back
        assert order[begin][1] == everyone and order[gated][1] == everyone  # barriers: one op on all hosts
        assert order[unit][1] == [replica] and order[drain][1] == ["@fake/gw"]
        if b < 3:
            assert back < names.index(f"Model | qwen30b batch {b + 1}/3 (@fake/r{b}): begin")
    # Staging (image pull, rollback point) comes before the first batch, on all replicas at once.
    assert names.index("Model | qwen30b: image vllm/vllm-openai:v0.8.5") < names.index(
        "Model | qwen30b batch 1/3 (@fake/r0): begin")
    assert "Model | Gateway | qwen30b: gateway server block" in names


def test_converged_replicas_are_in_no_batch_and_get_no_service_operation(cli_order):
    order = _order(_plan_fleet(3, converged=(1,)))
    names = [n for n, _ in order]
    assert "Model | qwen30b batch 1/2 (@fake/r0): begin" in names
    assert "Model | qwen30b batch 2/2 (@fake/r2): begin" in names
    service_ops = [(n, hosts) for n, hosts in order if "| Service |" in n]
    assert service_ops and all("@fake/r1" not in hosts for _, hosts in service_ops)
    # No rollback point operation: r1's is its running version already, r0 and r2 run nothing yet.
    assert not [n for n in names if "rollback point" in n]


def test_a_converged_fleet_has_no_batch_no_barrier_and_no_service_operation(cli_order):
    names = [n for n, _ in _order(_plan_fleet(3, converged=(0, 1, 2)))]
    assert not [n for n in names if "batch" in n or "| Service |" in n or "rollback point" in n]
    assert "Model | Gateway | qwen30b: gateway server block" in names  # the gateway still converges


def test_batch_size_two_restarts_two_hosts_per_batch(cli_order):
    order = dict(_order(_plan_fleet(4, rollout_batch_size=2)))
    assert order["Model | Batch 1/2 | Service | qwen30b: unit llmfleet-qwen30b.service"] == ["@fake/r0", "@fake/r1"]
    assert order["Model | Batch 2/2 | Service | qwen30b: unit llmfleet-qwen30b.service"] == ["@fake/r2", "@fake/r3"]


def test_service_version_fact_and_rollback_point_comparison(tmp_path):
    unit = tmp_path / "llmfleet-m.service"
    unit.write_text("[Service]\nExecStart=/usr/bin/docker run --label org.llmfleet.weights=Q/M@abc img:1\n")
    model = tmp_path / "model"
    (model / "revisions" / "abc").mkdir(parents=True)
    (model / "current").symlink_to("revisions/abc")
    previous = tmp_path / "m.previous"
    previous.mkdir()
    (previous / "unit").write_text(unit.read_text())
    (previous / "state.json").write_text('{"image": "img:1", "weights": "revisions/abc"}\n')
    fact = rollout.ServiceVersion()
    lines, _ = run_sh(fact.command(str(unit), "llmfleet-m.service", str(model), str(previous)))
    v = fact.process(lines)
    assert v["live_weights"] == "revisions/abc" and v["live_label"] == "Q/M@abc"
    assert v["live_unit"] == v["saved_unit"] and v["saved"]["image"] == "img:1"
    assert not rollout.point_is_current(v)  # no service runs here: no live image
    assert rollout.point_is_current({**v, "live_image": "img:1"})
    assert not rollout.point_is_current({**v, "live_image": "img:1", "live_weights": "revisions/new"})


def test_service_version_reads_the_image_off_the_running_docker_run(tmp_path):
    """The image comes from the service's main process (MainPID, from systemd) and its argv; no
    docker CLI. systemd is not PID 1 on this machine: a systemctl double answers `show` for a real
    process started with the unit's label argument."""
    import os
    import subprocess
    import sys

    image = "vllm/vllm-openai:v0.8.5"
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "--label",
                             "org.llmfleet.service=m", "--label", f"org.llmfleet.image={image}", "-e", "A=B=C"])
    try:
        bindir = tmp_path / "bin"
        bindir.mkdir()
        (bindir / "systemctl").write_text(
            "#!/bin/sh\nprintf 'ActiveState=active\\nMainPID=%s\\nUnitFileState=enabled\\nNeedDaemonReload=no\\n' "
            f"{proc.pid}\n")
        (bindir / "systemctl").chmod(0o755)
        fact = rollout.ServiceVersion()
        cmd = fact.command("/etc/systemd/system/u.service", "u.service", "/srv/m", "/etc/llmfleet/m.previous")
        assert "docker" not in cmd
        lines, rc = run_sh(cmd, {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}"})
    finally:
        proc.kill()
        proc.wait()
    v = fact.process(lines)
    assert rc == 0 and v["live_image"] == image and v["live_active"] == "active"
    assert v["unit"] == {"ActiveState": "active", "UnitFileState": "enabled", "NeedDaemonReload": "no"}
    plan = rollout.Plan("m", [], [], GatewayModel("m", "m", 8000, (), None),
                        observed={"h1": v, "h2": {**v, "live_active": "failed"}})
    assert plan.images_present("h1", image) == {image: "running"}  # the container runs it: present
    assert plan.images_present("h1", "vllm/vllm-openai:v0.9.0") is None  # another image: the op asks Docker
    assert plan.images_present("h2", image) is None  # not running
    assert plan.images_present("h3", image) is None  # not read


def test_service_version_without_a_running_service_has_no_image(tmp_path):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "systemctl").write_text("#!/bin/sh\nprintf 'ActiveState=inactive\\nMainPID=0\\n'\n")
    (bindir / "systemctl").chmod(0o755)
    import os

    fact = rollout.ServiceVersion()
    lines, rc = run_sh(fact.command("/etc/systemd/system/u.service", "u.service", "/srv/m", "/etc/llmfleet/m.previous"),
                       {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}"})
    v = fact.process(lines)
    assert rc == 0 and v["live_active"] == "inactive" and "live_image" not in v


def test_probe_error_reads_the_probe_json():
    class Meta:
        stdout_lines = ['{"ok": false, "error": "/health: not healthy within the wait (HTTP 500)"}']
        stderr_lines = ["llmfleet verify FAILED ..."]

    assert rollout.probe_error(Meta()) == "/health: not healthy within the wait (HTTP 500)"


def test_upgrade_summary_names_image_weights_and_unit():
    class Spec:
        name = "m"

        class model:
            repo_id, revision = "Q/M", "def"

    class Unit:
        _maybe_is_change = True

    live = {"live_unit": "x", "live_image": "img:1", "live_label": "Q/M@abc"}
    text = rollout.upgrade_summary(Spec, "img:2", live, Unit, "2/3")
    assert text == ("rollout m batch 2/3: image img:1 -> img:2; weights Q/M@abc -> Q/M@def (fetched before the "
                    "restart); unit changes: restart")
    assert "new service" in rollout.upgrade_summary(Spec, "img:2", {}, Unit, "1/1")


def test_a_removed_replica_is_drained_first_then_its_service_removed(cli_order):
    order = _order(_plan_fleet(3, converged=(0, 1, 2), absent=(2,)))
    names = [n for n, _ in order]
    hosts = dict(order)
    drain = names.index("Model | qwen30b: drain removed replicas")
    drained = names.index("Model | qwen30b: removed replicas drained")
    stop = names.index("Model | Remove model | qwen30b: stop and disable")
    unit = names.index("Model | Remove model | qwen30b: remove /etc/systemd/system/llmfleet-qwen30b.service")
    forget = names.index("Model | Remove model | qwen30b: systemd forgets the unit")
    assert drain < drained < stop < unit < forget
    assert hosts["Model | qwen30b: drain removed replicas"] == ["@fake/gw"]
    assert hosts["Model | Remove model | qwen30b: stop and disable"] == ["@fake/r2"]
    assert "Model | Remove model | qwen30b: remove /etc/llmfleet/qwen30b.verify.json" in names
    # The others are converged: no batch, no service operation, no removal.
    assert not [n for n in names if "batch" in n or "| Service |" in n]
    assert all(h == ["@fake/r2"] for n, h in order if "Remove model" in n)


def test_a_removed_former_worker_loses_its_head_watch_too(cli_order):
    order = dict(_order(_plan_fleet(3, converged=(0, 1, 2), absent=(2,), watch=(2,))))
    assert order["Model | Remove model | qwen30b: remove head watch llmfleet-qwen30b-headwatch.service"] == ["@fake/r2"]


def test_a_removed_replica_with_nothing_left_gets_no_operation(cli_order):
    names = [n for n, _ in _order(_plan_fleet(3, converged=(0, 1), absent=(2,)))]  # r2 has nothing on it
    assert not [n for n in names if "Remove model" in n or "removed replicas" in n]
