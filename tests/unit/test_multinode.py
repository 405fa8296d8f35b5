"""Multi-node replicas: the inventory's replicas validated before any host is touched, the fleet plan's
members and roles, each member's unit (native --nnodes, the Ray path, InfiniBand, Ascend 910B), the route
fact that picks the interface."""

from __future__ import annotations

import pytest
from pyinfra.context import ctx_host, ctx_state

from tasks.bad_input import BadInput
from tasks.facts.network import RouteTo
from tasks.fleet import fleet_plan
from tasks.fleet.replicas import gather
from tasks.requirement import requirement_from_spec
from tasks.service import Layout, desired, docker_run_argv
from tasks.settings.service import ServiceSettings
from tasks.spec import SpecError, load_spec
from tasks.vllm.cmdline import render
from tasks.vllm.multinode import Role
from tests.unit.conftest import run_sh
from tests.unit.test_fleet_plan import _plan_in_parallel, _state
from tests.unit.test_service import systemd_split

OPTS = ServiceSettings()
ROUTE = "ip -o -4 route get"


def _member(rank: int, name: str = "", **data) -> tuple[str, dict]:
    """A member of replica bf16-a on 10.0.0.(rank+1), whose route to its peer leaves by eth1."""
    peer = "10.0.0.2" if rank == 0 else "10.0.0.1"
    return (name or f"@fake/m{rank}", {"ssh_hostname": f"10.0.0.{rank + 1}", "replica": "bf16-a", "replica_rank": rank,
                               "fake_responses": {ROUTE: [f"{peer} dev eth1 src 10.0.0.{rank + 1} uid 0"]}, **data})


def _problems(members: list[tuple[str, dict]], recipe: str = "qwen235b_bf16") -> list:
    specs = {name: load_spec(recipe, {k: v for k, v in data.items() if k.startswith("serve_")})
             for name, data in members}
    return gather(dict(members), specs)[1]


# --- validation, before any host is touched ----------------------------------------------------------


def test_a_whole_replica_passes_and_is_ordered_head_first():
    members = [_member(1), _member(0)]
    specs = {n: load_spec("qwen235b_bf16") for n, _ in members}
    replicas, problems = gather(dict(members), specs)
    assert problems == []
    (replica,) = replicas.values()
    assert replica.hosts == ("@fake/m0", "@fake/m1") and replica.head.address == "10.0.0.1"
    assert replica.master_port == 29501 and replica.peer_of("@fake/m0") == "10.0.0.2"


@pytest.mark.parametrize("members, host, field, words", [
    ([_member(0), _member(0, "@fake/x", ssh_hostname="10.0.0.9")], "@fake/x", "replica_rank", "each of 0..1 once"),
    ([_member(0), _member(2)], "@fake/m2", "replica_rank", "allowed: 0..1"),
    ([_member(0)], "@fake/m0", "replica", "exactly 2 hosts"),
    ([_member(0), _member(1, replica_rank=None)], "@fake/m1", "replica_rank", "0 for the head"),
    ([("@fake/solo", {})], "@fake/solo", "replica", "spans 2 hosts"),
    ([_member(0), _member(1, replica_master_port=29600)], "@fake/m1", "replica_master_port", "one port"),
    ([_member(0), _member(1, serve_max_model_len=8192)], "@fake/m1", "serve_max_model_len", "same serving fields"),
    ([_member(0, serve_devices=list(range(8))), _member(1)], "@fake/m0", "serve_devices", "8 on every member"),
])
def test_a_broken_replica_is_named_by_host_field_and_what_is_allowed(members, host, field, words):
    members = [(n, {k: v for k, v in d.items() if v is not None}) for n, d in members]
    found = [p for p in _problems(members) if p.host == host and p.field == field]
    assert found and words in found[0].message, _problems(members)


def test_a_member_of_another_recipe_is_refused():
    specs = {"@fake/m0": load_spec("qwen235b_bf16"), "@fake/m1": load_spec("qwen30b")}
    problems = gather(dict([_member(0), _member(1)]), specs)[1]
    assert [(p.host, p.field) for p in problems][0] == ("@fake/m1", "recipe")
    assert "one recipe per replica" in problems[0].message


def test_parallel_sizes_must_split_over_the_nodes_and_devices_count_per_node():
    with pytest.raises(SpecError, match=r"nodes: tensor x pipeline x data parallel = 16 does not split evenly over 3"):
        load_spec("qwen235b_bf16", {"serve_nodes": 3})
    with pytest.raises(SpecError, match=r"devices: 16 given but tensor x pipeline x data parallel / 2 hosts = 8"):
        load_spec("qwen235b_bf16", {"serve_devices": list(range(16))})
    assert load_spec("qwen235b_bf16", {"serve_devices": list(range(8))}).gpus_per_node == 8
    with pytest.raises(SpecError, match="--nnodes is rendered from the field 'nodes'"):
        load_spec("qwen235b_bf16", {"serve_extra_args": ["--nnodes", "2"]})


def test_bad_replica_data_stops_the_run_before_any_host_is_touched():
    state = _state({"bf16": [_member(0), _member(0, "@fake/x", ssh_hostname="10.0.0.2")]})
    with ctx_state.use(state), ctx_host.use(state.inventory.get_host("@fake/m0")):
        with pytest.raises(BadInput) as exc:
            fleet_plan("qwen235b_bf16")
    assert [(p.host, p.field) for p in exc.value.problems] == [("@fake/x", "replica_rank")]
    assert all(not h.connector.executed_commands for h in state.inventory)  # no fact read, nothing run


def test_replica_settings_are_typed():
    problems = _problems([_member(0, replica_rank=True, replica_interface="not an interface name"), _member(1)])
    assert {(p.host, p.field) for p in problems} >= {("@fake/m0", "replica_rank"), ("@fake/m0", "replica_interface")}


# --- the fleet plan: replicas, members, roles from the hosts' routes -------------------------------------


def test_the_plan_knows_the_replica_and_each_members_role_from_its_route():
    state = _state({"bf16": [_member(0), _member(1)]})
    plan = _plan_in_parallel(state, "qwen235b_bf16")["@fake/m1"]
    assert plan.replica_of("@fake/m1").head.host == "@fake/m0" and plan.replica_of("@fake/x") is None
    head, worker = plan.rollout.roles["@fake/m0"], plan.rollout.roles["@fake/m1"]
    assert (head.rank, head.host_ip, head.interface, head.master_addr) == (0, "10.0.0.1", "eth1", "10.0.0.1")
    assert (worker.rank, worker.host_ip, worker.nnodes) == (1, "10.0.0.2", 2)
    routes = [str(c) for c in state.inventory.get_host("@fake/m1").connector.executed_commands if ROUTE in str(c)]
    assert len(routes) == 1 and "getent ahostsv4 10.0.0.1" in routes[0]  # one read per member, to its head


def test_a_member_without_a_route_to_its_head_stops_the_run_naming_host_and_field():
    worker = _member(1)
    worker[1]["fake_responses"] = {ROUTE: []}
    state = _state({"bf16": [_member(0), worker]})
    with pytest.raises(BadInput) as exc:
        _plan_in_parallel(state, "qwen235b_bf16")
    (problem,) = exc.value.problems
    assert (problem.host, problem.field) == ("@fake/m1", "replica_interface") and "no route to 10.0.0.1" in problem.message


def test_the_route_fact_runs_under_sh_and_reads_the_kernels_answer():
    fact = RouteTo()
    lines, rc = run_sh(fact.command(peer="127.0.0.1"))
    assert rc == 0 and fact.process(lines) == {"interface": "lo", "address": "127.0.0.1"}
    lines, _ = run_sh(fact.command(peer="127.0.0.1", interface="lo"))
    assert fact.process(lines) == {"interface": "lo", "address": "127.0.0.1"}
    lines, _ = run_sh(fact.command(peer="no-such-host.invalid"))
    assert fact.process(lines) == {}
    assert fact.process(["2: eth1    inet 10.9.0.5/24 brd 10.9.0.255 scope global eth1"]) == \
        {"interface": "eth1", "address": "10.9.0.5"}


# --- units ---------------------------------------------------------------------------------------------


def _role(rank: int, **kw) -> Role:
    return Role(**{"replica": "bf16-a", "nnodes": 2, "rank": rank, "master_addr": "10.0.0.1", "master_port": 29501,
                   "host_ip": f"10.0.0.{rank + 1}", "interface": "eth1", **kw})


def _words(spec, role) -> list[str]:
    lines = docker_run_argv(spec, spec.image.ref, "/srv/models/x", render(spec, role=role), Layout.of(spec, OPTS),
                            OPTS, False, role)
    return [w for group in lines for w in group]


def _env(words: list[str]) -> dict[str, str]:
    return dict(words[i + 1].split("=", 1) for i, w in enumerate(words) if w == "-e")


def test_native_head_and_worker_units():
    spec = load_spec("qwen235b_bf16")
    head, worker = _words(spec, _role(0)), _words(spec, _role(1))
    for words, rank in ((head, "0"), (worker, "1")):
        assert ["--network", "host"] == words[words.index("--network"):words.index("--network") + 2]
        assert "-p" not in words  # the host's network: the ranks' ports are picked at run time
        args = words[words.index(spec.image.ref) + 1:]
        flags = {a: args[i + 1] for i, a in enumerate(args[:-1]) if a.startswith("--")}
        assert (flags["--nnodes"], flags["--node-rank"], flags["--master-addr"], flags["--master-port"]) == \
            ("2", rank, "10.0.0.1", "29501")
        assert flags["--tensor-parallel-size"] == "8" and flags["--pipeline-parallel-size"] == "2"
        env = _env(words)
        assert env["VLLM_HOST_IP"] == f"10.0.0.{int(rank) + 1}"
        assert env["NCCL_SOCKET_IFNAME"] == env["GLOO_SOCKET_IFNAME"] == "eth1" and "NCCL_IB_HCA" not in env
        assert "IPC_LOCK" not in words and "/dev/infiniband" not in words
    assert "--headless" not in head and head[-1] != "--headless"
    assert "--headless" in worker


def test_the_unit_file_of_a_worker_parses_back_to_the_same_words():
    spec = load_spec("qwen235b_bf16", {"serve_api_key_secret": None})
    want = desired(spec, spec.image.ref, "/srv/models/x", {}, _role(1))
    text = want.unit_text.decode()
    exec_start = text.split("ExecStart=", 1)[1].split("\nExecStop=", 1)[0]
    assert systemd_split(exec_start) == _words(spec, _role(1))
    with pytest.raises(SpecError, match="spans 2 host"):
        desired(spec, spec.image.ref, "/srv/models/x", {}, None)


def test_infiniband_when_the_recipe_asks():
    spec = load_spec("qwen235b_bf16", {"serve_ib_hcas": ["mlx5_0", "mlx5_1:1"]})
    words = _words(spec, _role(1))
    assert _env(words)["NCCL_IB_HCA"] == "mlx5_0,mlx5_1:1"
    assert ["--cap-add", "IPC_LOCK"] == words[words.index("--cap-add"):words.index("--cap-add") + 2]
    assert words[words.index("--device") + 1] == "/dev/infiniband"
    with pytest.raises(SpecError, match="ib_hcas"):
        load_spec("qwen30b", {"serve_ib_hcas": ["mlx5_0"]})  # one host: no inter-node traffic


def test_ray_path_where_the_images_vllm_has_no_nnodes():
    spec = load_spec("qwen235b_bf16", {"serve_image": "vllm/vllm-openai:v0.10.1.1"})
    head, worker = _words(spec, _role(0)), _words(spec, _role(1))
    assert head[head.index("--entrypoint") + 1] == "/bin/bash"
    script = head[-1]
    assert script.startswith("ray start --head --port=6379 --node-ip-address=10.0.0.1 && exec python3 -m "
                              "vllm.entrypoints.openai.api_server --model /model")
    assert "--distributed-executor-backend ray" in script and "--nnodes" not in script
    assert worker[worker.index("--entrypoint") + 1] == "ray"
    assert worker[worker.index(spec.image.ref) + 1:] == ["start", "--block", "--address=10.0.0.1:6379",
                                                         "--node-ip-address=10.0.0.2"]


def test_ascend_910b_two_node_replica_env_and_devices():
    spec = load_spec("qwen3_ascend", {"serve_image": "quay.io/ascend/vllm-ascend:v0.18.0", "serve_nodes": 2,
                                      "serve_tensor_parallel_size": 8, "serve_pipeline_parallel_size": 2,
                                      "serve_devices": list(range(8))})
    for rank in (0, 1):
        words = _words(spec, _role(rank))
        env = _env(words)
        ip = f"10.0.0.{rank + 1}"
        assert {k: env[k] for k in ("HCCL_IF_IP", "HCCL_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME", "TP_SOCKET_IFNAME",
                                    "HCCL_BUFFSIZE", "VLLM_HOST_IP")} == \
            {"HCCL_IF_IP": ip, "HCCL_SOCKET_IFNAME": "eth1", "GLOO_SOCKET_IFNAME": "eth1", "TP_SOCKET_IFNAME": "eth1",
             "HCCL_BUFFSIZE": "1024", "VLLM_HOST_IP": ip}
        assert "NCCL_SOCKET_IFNAME" not in env and env["ASCEND_RT_VISIBLE_DEVICES"] == "0,1,2,3,4,5,6,7"
        devices = [words[i + 1] for i, w in enumerate(words) if w == "--device"]
        assert devices == [f"/dev/davinci{i}" for i in range(8)] + ["/dev/davinci_manager", "/dev/devmm_svm",
                                                                    "/dev/hisi_hdc"]
        assert words[words.index(spec.image.ref) + 1:][:3] == ["vllm", "serve", "/model"]
        assert ("--headless" in words) == (rank == 1) and words[words.index("--node-rank") + 1] == str(rank)
    ours = load_spec("qwen3_ascend", {"serve_image": "quay.io/ascend/vllm-ascend:v0.18.0", "serve_nodes": 2,
                                      "serve_tensor_parallel_size": 8, "serve_pipeline_parallel_size": 2,
                                      "serve_devices": list(range(8)), "serve_extra_env": {"HCCL_BUFFSIZE": "512"}})
    assert _env(_words(ours, _role(0)))["HCCL_BUFFSIZE"] == "512"  # the recipe's own value wins


def test_each_member_needs_its_share_of_gpus_and_plans_memory_for_its_pipeline_stage():
    import dataclasses

    from tasks.plan import plan

    spec = load_spec("qwen235b_bf16")
    req = requirement_from_spec(spec, "/srv/models/x")
    assert req.gpus_needed == req.devices_needed == 8 and req.serving.tp == 8 and req.serving.pp == 2
    h100 = dataclasses.replace(req.serving, gpu_mem_gib=79.2)
    split, one_stage = plan(req.model_config, h100), plan(req.model_config, dataclasses.replace(h100, pp=1))
    # ~470 GB over 16 GPUs: each GPU holds half the layers of what tp 8 alone would give it
    assert 26 < split.weights_gib_per_gpu < 30 and split.weights_gib_per_gpu < 0.55 * one_stage.weights_gib_per_gpu
    assert split.kv_cache_gib_per_gpu > 30  # fits, with room for KV cache


# --- restart, verify and roll back together -------------------------------------------------------------


def test_a_worker_unit_comes_with_a_head_watch_and_verifies_through_the_head():
    spec = load_spec("qwen235b_bf16", {"serve_api_key_secret": None})
    worker = desired(spec, spec.image.ref, "/srv/models/x", {}, _role(1))
    head = desired(spec, spec.image.ref, "/srv/models/x", {}, _role(0))
    assert head.watch_text == b"" and b'"head"' not in head.verify_text
    assert b'"head": "10.0.0.1"' in worker.verify_text
    text = worker.watch_text.decode()
    assert "--head 10.0.0.1 --port 8000 --unit llmfleet-qwen235b_bf16.service" in text
    assert worker.watch_file in worker.paths() and "/usr/local/lib/llmfleet/head_watch.py" in worker.paths()


def test_a_host_no_longer_a_worker_is_pending_until_its_head_watch_is_gone():
    from tasks.service import pending

    spec = load_spec("qwen235b_bf16", {"serve_api_key_secret": None})
    was_worker = desired(spec, spec.image.ref, "/srv/models/x", {}, _role(1))
    solo = load_spec("qwen235b_bf16", {"serve_api_key_secret": None, "serve_nodes": 1,
                                       "serve_pipeline_parallel_size": 1})
    now_solo = desired(solo, solo.image.ref, "/srv/models/x", {}, None)  # its replica became one-host ones
    assert now_solo.watch_text == b"" and now_solo.watch_file in now_solo.paths()
    left = {"files": {was_worker.watch_file: {"type": "file", "sha256": "0" * 64, "mode": "644", "user": "root",
                                              "group": "root"}}}
    assert (f"{now_solo.watch_file} left from a replica this host is no longer a worker of"
            in pending(now_solo, left))
    assert not any("no longer a worker" in r for r in pending(now_solo, {"files": {}}))


def test_the_plan_batches_a_replica_as_one_unit_and_restarts_every_member_together():
    from tasks.rollout.plan import together

    roles = {"m0": _role(0), "m1": _role(1)}
    pending = together({"m0": [], "m1": ["/etc/systemd/system/x differs"], "solo": []}, roles)
    assert pending["m0"] == ["restarts with replica bf16-a: m1 restart(s)"] and pending["solo"] == []
    from tasks.service import needs_restart

    assert needs_restart(pending["m0"]) and not needs_restart(["/etc/x differs"])


def test_a_fresh_two_node_replica_is_one_batch_and_the_gateway_routes_to_its_head():
    state = _state({"gateway": [("@fake/gw", {})], "bf16": [_member(0), _member(1)],
                    "solo": [("@fake/s0", {"ssh_hostname": "10.0.0.9", "serve_nodes": 1,
                                           "serve_pipeline_parallel_size": 1})]})
    plan = _plan_in_parallel(state, "qwen235b_bf16")["@fake/gw"]
    batches = plan.rollout.batches
    assert sorted(batches) == [("@fake/m0", "@fake/m1"), ("@fake/s0",)]  # batch size 1 = one replica
    assert [r.host for r in plan.rollout.model.replicas] == ["@fake/m0", "@fake/s0"]


class _Meta:
    def __init__(self, ok: bool | None, lines=()):
        self.ok, self.stdout_lines, self.stderr_lines, self.executed = ok, list(lines), [], ok is not None

    def is_complete(self):
        return self.ok is not None

    def did_error(self):
        return self.ok is False

    def did_succeed(self):
        return self.ok is True


def test_one_members_failed_gate_fails_every_members_gate():
    from tasks.rollout.operations import outcome_of, probe_error
    from tasks.rollout.plan import Handles, ReplicaGate

    class Progress:
        handles: dict = {}

    progress = Progress()
    head_gate = ReplicaGate(_Meta(True, ['{"ok": true}']), progress, ("w",))
    worker_gate = ReplicaGate(_Meta(False, ['{"error": "/health: the container exited"}']), progress, ("h",))
    progress.handles = {"h": Handles(restart=(), checked=head_gate, again=None),
                        "w": Handles(restart=(), checked=worker_gate, again=None)}
    assert head_gate.did_error() and not head_gate.did_succeed() and worker_gate.did_error()
    assert probe_error(head_gate) == "member w of this multi-node replica failed its verification"
    assert outcome_of(head_gate, _Meta(True)) == "rolled_back"
    progress.handles["w"] = Handles(restart=(), checked=ReplicaGate(_Meta(True), progress, ("h",)), again=None)
    assert head_gate.did_succeed() and not head_gate.did_error()


def test_head_watch_restarts_the_worker_only_after_the_head_was_healthy_and_went_away(monkeypatch):
    """A real HTTP head on loopback: up, then gone; the watch restarts the worker once, and not while
    the head had never answered."""
    import http.server
    import threading

    from tasks.probe import head_watch

    calls = []
    monkeypatch.setattr(head_watch.subprocess, "run", lambda argv, **kw: calls.append(argv))
    monkeypatch.setattr(head_watch.time, "sleep", lambda s: None)

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Health)
    url = f"http://127.0.0.1:{server.server_port}/health"
    assert head_watch.watch(url, "w.service", 0.5, 3, rounds=4) == 0  # never healthy: not armed, no restart
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    real_healthy = head_watch.healthy
    polls = iter([True, True] + [False] * 3 + [False] * 3)

    def scripted(u, timeout):
        up = next(polls)
        if up:
            assert real_healthy(u, timeout)  # the real head answered
        else:
            assert not real_healthy(u.replace(str(server.server_port), "1"), timeout)  # refused: gone
        return up

    monkeypatch.setattr(head_watch, "healthy", scripted)
    assert head_watch.watch(url, "w.service", 0.5, 3, rounds=8) == 1  # up, up, 3 misses -> restart; disarmed
    assert calls == [["systemctl", "try-restart", "w.service"]]
    server.shutdown()


def test_status_shows_a_worker_by_replica_rank_and_its_heads_view(tmp_path):
    """The host script against a worker's verify config whose head (a real HTTP server on 127.0.0.2)
    answers /health: the worker's row is its head's health; the row names replica, rank and joined."""
    import http.server
    import json
    import threading

    from tasks import status

    class Head(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/health" else 404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.2", 0), Head)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    etc = tmp_path / "etc"
    etc.mkdir()
    config = {"name": "q", "unit": "llmfleet-q.service", "container": "llmfleet-q", "port": server.server_port,
              "served_model_name": "big", "replica": "r1", "rank": 1, "nnodes": 2, "head": "127.0.0.2"}
    (etc / "q.verify.json").write_text(json.dumps(config))
    fact = status.FleetStatus()
    lines, rc = run_sh(fact.command(str(etc), str(tmp_path / "none"), 2))
    server.shutdown()
    (rec,) = [r for r in fact.process(lines) if r["kind"] == "service"]
    assert rc == 0 and rec["health"] == 200 and rec["replica"] == {"replica": "r1", "rank": 1, "nnodes": 2,
                                                                  "head": "127.0.0.2"}
    row = status.row("w1", {**rec, "unit_state": "active"}, now=0)
    assert row["model"] == "big [replica r1 rank 1/2 worker of 127.0.0.2, joined]"
    assert "not joined" in status.row("w1", {**rec, "unit_state": "failed"}, now=0)["model"]
