"""Weights deploy: the fleet plan, the state fact's reading of a real layout, command lines, secrets."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tasks import secrets
from tasks.weights import fetch as fetch_script
from tasks.weights import manifest as mf
from tasks.weights.deploy import (
    FetchRequest,
    PythonPackages,
    normalise,
    WeightsState,
    fetch_command,
    model_dirname,
    plan_fleet,
)

REQ = FetchRequest(hub="huggingface", repo="org/tiny", revision="v1", dest="/srv/models/org--tiny",
                   endpoint="http://hub:8090", token_file="/etc/llmfleet/secrets/hf-token")


def held(req: FetchRequest = REQ) -> dict:
    return {"current": "revisions/v1", "bad": [], "error": None,
            "manifest": {"repo": req.repo, "hub": req.hub, "revision": "v1", "commit": "a" * 40,
                         "allow": [], "ignore": [], "total_bytes": 10, "files": 3}}


def hosts(n: int) -> list[str]:
    return [f"h{i}" for i in range(1, n + 1)]


def test_matches_needs_link_manifest_and_no_bad_file():
    assert REQ.matches(held())
    assert not REQ.matches({})
    assert not REQ.matches({**held(), "bad": ["model-00001-of-00002.safetensors"]})
    assert not REQ.matches({**held(), "current": "revisions/v0"})
    other_hub = {**held(), "manifest": {**held()["manifest"], "hub": "modelscope"}}
    assert not REQ.matches(other_hub)
    assert not FetchRequest(**{**REQ.__dict__, "allow": ("*.json",)}).matches(held())


def test_no_fanout_every_missing_host_fetches_from_hub():
    names = hosts(3)
    plan = plan_fleet(names, {"h1": held(), "h2": {}, "h3": {}}, dict.fromkeys(names, REQ), fanout=False)
    assert [plan.roles[h].kind for h in names] == ["skip", "hub", "hub"]
    assert plan.waves == 0 and plan.hub_seeds == ("h2", "h3")


def test_fanout_one_hub_seed_then_log2_waves():
    names = hosts(8)
    urls = {h: f"http://{h}:8765" for h in names}
    plan = plan_fleet(names, {}, dict.fromkeys(names, REQ), fanout=True, peer_urls=urls)
    assert plan.hub_seeds == ("h1",) and plan.roles["h1"].kind == "hub"
    assert plan.waves == 3  # 1 -> 2 -> 4 -> 8 holders
    assert plan.roles["h2"].sender == "http://h1:8765" and plan.roles["h2"].wave == 1
    # every receiver's sender already holds the model before its wave
    done_by = {"h1": 0}
    for k in range(1, plan.waves + 1):
        for h in names:
            r = plan.roles[h]
            if r.kind == "peer" and r.wave == k:
                sender = r.sender.split("//")[1].split(":")[0]
                assert done_by[sender] < k
                done_by[h] = k
    assert sorted(done_by) == names
    assert plan.roles["h1"].serve_from == 1


def test_fanout_existing_holder_is_the_seed_no_hub_copy():
    names = hosts(4)
    plan = plan_fleet(names, {"h3": held()}, dict.fromkeys(names, REQ), fanout=True)
    assert plan.hub_seeds == ()
    assert plan.roles["h3"].kind == "skip" and plan.roles["h3"].serve_from == 1
    assert {plan.roles[h].kind for h in ("h1", "h2", "h4")} == {"peer"}


def test_fanout_groups_and_cache_host():
    names = hosts(4)
    groups = {"h1": "a", "h2": "a", "h3": "b", "h4": "b"}
    plan = plan_fleet(names, {}, dict.fromkeys(names, REQ), fanout=True, groups=groups)
    assert plan.hub_seeds == ("h1", "h3") and plan.waves == 1
    plan = plan_fleet(names, {}, dict.fromkeys(names, REQ), fanout=True, groups=groups, cache_host="h4")
    assert plan.hub_seeds == ("h4",) and plan.waves == 2
    with pytest.raises(ValueError, match="weights_cache_host"):
        plan_fleet(names, {}, dict.fromkeys(names, REQ), fanout=True, cache_host="nope")


def chain_plan(names, states=None, **kw):
    urls = {h: f"http://{h}:8765" for h in names}
    return plan_fleet(names, states or {}, dict.fromkeys(names, REQ), fanout=True, peer_urls=urls, mode="chain", **kw)


def test_chain_one_hub_read_every_host_at_once_sources_nearest_first():
    names = hosts(8)
    plan = chain_plan(names)
    assert plan.chains == (tuple(names),) and plan.hub_seeds == ("h1",) and plan.waves == 0
    head = plan.roles["h1"]
    assert (head.kind, head.chain_hub, head.sources, head.serve_from) == ("chain", True, (), 1)
    assert plan.roles["h4"].sources == ("http://h3:8765", "http://h2:8765", "http://h1:8765")
    assert all(plan.roles[h].kind == "chain" and not plan.roles[h].chain_hub for h in names[1:])
    assert plan.roles["h8"].serve_from is None  # the last one passes nothing on
    assert plan.relays and len(plan.token) >= 40
    single = chain_plan(["h1"])
    assert single.chains == (("h1",),) and not single.relays and single.token == ""


def test_chain_slow_hosts_at_the_end_cache_host_first():
    names = hosts(5)
    plan = chain_plan(names, link_mbit={"h2": 100, "h3": 10_000, "h5": 1_000})
    # undeclared speeds count as fast and keep inventory order; the slowest declared host is last
    assert plan.chains == (("h1", "h4", "h3", "h5", "h2"),)
    plan = chain_plan(names, link_mbit={"h1": 100}, cache_host="h3")
    assert plan.chains == (("h3", "h2", "h4", "h5", "h1"),) and plan.hub_seeds == ("h3",)


def test_chain_holders_head_chains_and_back_each_other_up_no_hub():
    names = hosts(6)
    plan = chain_plan(names, {"h1": held(), "h4": held()})
    assert plan.hub_seeds == () and plan.chains == (("h1", "h2", "h5"), ("h4", "h3", "h6"))
    assert plan.roles["h5"].sources == ("http://h2:8765", "http://h1:8765", "http://h4:8765")
    assert plan.roles["h1"].kind == "skip" and plan.roles["h1"].serve_from == 1
    repair = chain_plan(names, {h: held() for h in names if h != "h2"})  # a rerun after h2 died
    assert repair.chains == (("h1", "h2"),) and repair.roles["h2"].sources[0] == "http://h1:8765"
    assert len(repair.roles["h2"].sources) == 5  # every holder can take over
    damaged = chain_plan(hosts(4), {"h2": {**held(), "bad": ["model.safetensors"]}})  # deep verify found it
    assert damaged.chains == (("h1", "h3", "h4", "h2"),)  # it would pass its bad file on: last


def test_chain_modelscope_head_downloads_first_then_relays():
    names = hosts(3)
    ms = FetchRequest(**{**REQ.__dict__, "hub": "modelscope"})
    urls = {h: f"http://{h}:8765" for h in names}
    plan = plan_fleet(names, {}, dict.fromkeys(names, ms), fanout=True, peer_urls=urls, mode="chain")
    assert plan.roles["h1"].kind == "hub" and plan.roles["h1"].serve_from == 1
    assert plan.chains == (("h1", "h2", "h3"),) and plan.roles["h3"].sources == ("http://h2:8765", "http://h1:8765")


def test_chain_fetch_command_carries_sources_and_the_hub_only_where_read():
    cmd = fetch_command(REQ, None, True, chain=("http://h2:8765", "http://h1:8765"))
    assert "--chain --chain-from http://h2:8765 --chain-from http://h1:8765 --chain-hub" in cmd
    assert "--chain-token-file /run/llmfleet/llmfleet-weights-peer-org--tiny.token" in cmd
    assert "--endpoint http://hub:8090 --token-file /etc/llmfleet/secrets/hf-token" in cmd
    no_hub = fetch_command(REQ, None, False, chain=("http://h1:8765",))
    assert "--chain-hub" not in no_hub and "--endpoint" not in no_hub and "hf-token" not in no_hub
    head = fetch_command(REQ, None, False, chain=())
    assert "--chain-hub" in head and "--chain-from" not in head and "--chain-token-file" not in head


def test_converged_fleet_plans_nothing():
    names = hosts(4)
    plan = plan_fleet(names, dict.fromkeys(names, held()), dict.fromkeys(names, REQ), fanout=True)
    assert plan.waves == 0 and plan.hub_seeds == ()
    assert all(r.kind == "skip" and r.serve_from is None for r in plan.roles.values())


def test_argv_hub_and_peer():
    argv = REQ.argv()
    assert argv[2] == "/opt/llmfleet/weights/fetch.py"
    assert ["--endpoint", "http://hub:8090"] == argv[argv.index("--endpoint"):argv.index("--endpoint") + 2]
    assert "--token-file" in argv
    peer = REQ.argv("http://h1:8765")
    # from a peer: no hub endpoint, no hub token; the fan-out run's token file (root-only, in /run)
    assert "--endpoint" not in peer and REQ.token_file not in peer
    assert peer[peer.index("--token-file") + 1] == "/run/llmfleet/llmfleet-weights-peer-org--tiny.token"
    assert peer[peer.index("--peer") + 1] == "http://h1:8765"
    # fetch.py accepts what we render
    assert fetch_script.parse_args(peer[3:]).peer == "http://h1:8765"
    assert fetch_script.parse_args(argv[3:]).token_file.name == "hf-token"


def test_fetch_command_names_each_failure_and_falls_back():
    cmd = fetch_command(REQ, "http://h1:8765", fallback_hub=True)
    assert "systemd-run --unit=llmfleet-weights-org--tiny" in cmd
    assert "repository org/tiny not found at http://hub:8090" in cmd
    assert "falling back to http://hub:8090" in cmd
    assert cmd.count("systemd-run") == 2
    assert fetch_command(REQ, None, True).count("systemd-run") == 1
    proc = subprocess.run(["sh", "-n", "-c", cmd], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_model_dirname_is_unit_safe():
    assert model_dirname("Qwen/Qwen3-0.6B") == "Qwen--Qwen3-0.6B"
    assert model_dirname("a/b c") == "a--b_c"


def _layout(tmp_path):
    rev = tmp_path / "revisions" / "v1"
    rev.mkdir(parents=True)
    (rev / "config.json").write_text("{}")
    (rev / "model.safetensors").write_bytes(b"x" * 100)
    files = [{"path": p, "size": (rev / p).stat().st_size, "sha256": mf.sha256_file(rev / p)}
             for p in ("config.json", "model.safetensors")]
    mf.write(rev, mf.build(repo="org/tiny", hub="huggingface", revision="v1", commit="a" * 40, files=files))
    (tmp_path / "current").symlink_to("revisions/v1")
    return rev


def _run_state(dest, deep: bool) -> dict:
    """The fact's own command under sh: the listing, with ``deep`` the digests too."""
    fact = WeightsState()
    out = subprocess.run(["sh", "-c", fact.command(str(dest), deep)], capture_output=True, text=True, check=True).stdout
    return fact.process(out.splitlines())


def _python_state(dest) -> dict:
    """The same state as the fetch side reads it (tasks/weights/manifest.py, what fetch.py verifies
    with): the ground truth the fact's shell reading is checked against."""
    import os

    from pathlib import Path

    out = {"current": None, "manifest": None, "bad": [], "error": None}
    try:
        out["current"] = os.readlink(Path(dest) / "current")
    except OSError:
        return out
    base = Path(dest) / "current"
    try:
        m = json.loads((base / "manifest.json").read_text())
        out["manifest"] = {k: m.get(k) for k in ("repo", "hub", "revision", "commit", "allow", "ignore",
                                                  "total_bytes")}
        out["manifest"]["files"] = len(m["files"])
        out["bad"] = mf.stat_mismatches(base, m)
    except Exception as exc:  # noqa: BLE001 - the fact reports any failure as text
        out["error"] = f"{type(exc).__name__}: {exc}"
    return out


def test_state_fact_on_a_real_layout(tmp_path):
    rev = _layout(tmp_path)
    st = _run_state(tmp_path, deep=False)
    assert st["current"] == "revisions/v1" and st["bad"] == []
    assert st["manifest"]["repo"] == "org/tiny" and st["manifest"]["files"] == 2
    assert FetchRequest(hub="huggingface", repo="org/tiny", revision="v1", dest=str(tmp_path)).matches(st)
    # same size, flipped bytes: only the deep read sees it
    data = bytearray((rev / "model.safetensors").read_bytes())
    data[10] ^= 0xFF
    (rev / "model.safetensors").write_bytes(bytes(data))
    assert _run_state(tmp_path, deep=False)["bad"] == []
    assert _run_state(tmp_path, deep=True)["bad"] == ["model.safetensors"]
    assert mf.hash_mismatches(tmp_path / "current", mf.read(tmp_path / "current")) == ["model.safetensors"]
    (rev / "config.json").unlink()
    assert _run_state(tmp_path, deep=False)["bad"] == ["config.json"]
    assert _run_state(tmp_path, deep=False) == _python_state(tmp_path)  # the listing agrees with Python


def test_state_fact_listing_agrees_with_python_on_odd_layouts(tmp_path):
    rev = _layout(tmp_path)
    (rev / "sub dir").mkdir()
    (rev / "sub dir" / "tok.json").write_text("{}")
    (rev / "blobs").mkdir()
    (rev / "blobs" / "b1").write_bytes(b"y" * 7)
    (rev / "linked.bin").symlink_to("blobs/b1")  # a hub cache's link to a blob counts as the blob
    (rev / "dangling.bin").symlink_to("blobs/none")
    files = [{"path": p, "size": s, "sha256": "0" * 64} for p, s in
             (("config.json", 2), ("sub dir/tok.json", 2), ("linked.bin", 7), ("dangling.bin", 7), ("gone", 1))]
    mf.write(rev, mf.build(repo="org/tiny", hub="huggingface", revision="v1", commit="a" * 40, files=files))
    st = _run_state(tmp_path, deep=False)
    assert st == _python_state(tmp_path)
    assert st["bad"] == ["dangling.bin", "gone"] and st["manifest"]["files"] == 5 and st["error"] is None
    (rev / "manifest.json").write_text("{not json")
    assert _run_state(tmp_path, deep=False)["error"].startswith("JSONDecodeError")
    (rev / "manifest.json").unlink()
    assert _run_state(tmp_path, deep=False)["error"].startswith("FileNotFoundError")
    assert _python_state(tmp_path)["error"].startswith("FileNotFoundError")


def test_state_fact_empty_dir(tmp_path):
    empty = {"current": None, "manifest": None, "bad": [], "error": None}
    assert _run_state(tmp_path / "absent", deep=False) == empty == _python_state(tmp_path / "absent")
    assert _run_state(tmp_path / "absent", deep=True) == empty


def test_state_fact_starts_no_python_on_the_host():
    assert "python3" not in WeightsState().command("/srv/m")
    assert "python3" not in WeightsState().command("/srv/m", deep=True)
    assert "sha256sum" in WeightsState().command("/srv/m", deep=True)


def test_python_packages_normalises_names():
    got = PythonPackages().process(["huggingface_hub-2.4.0", "modelscope-1.40.2", "garbage", "a-1-2"])
    assert got == {"huggingface-hub": "2.4.0", "modelscope": "1.40.2"}


def test_python_packages_matches_importlib_metadata_of_a_real_venv(tmp_path):
    """The fact's glob over dist-info names agrees with what Python itself reports for a venv."""
    import importlib.metadata
    import subprocess
    import sys

    venv = sys.prefix  # the test run's own venv (bin/python and lib/python3.X/site-packages)
    if venv == sys.base_prefix:
        pytest.skip("not running in a venv")
    out = subprocess.run(["sh", "-c", PythonPackages().command(venv)], capture_output=True, text=True,
                         check=True).stdout.splitlines()
    got = PythonPackages().process(out)
    site = [p for p in sys.path if p.startswith(venv) and p.endswith("site-packages")]
    want = {normalise(d.metadata["Name"]): d.version for d in importlib.metadata.distributions(path=site)}
    assert got == want and "pyinfra" in got
    assert subprocess.run(["sh", "-c", PythonPackages().command(str(tmp_path / "none"))], capture_output=True,
                          text=True, check=True).stdout == ""


def test_secret_name_checks(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMFLEET_SECRETS_DIR", str(tmp_path))
    with pytest.raises(ValueError, match="weights_token_secret: 'hf_abc/../x' is not a secret name"):
        secrets.local_secret("hf_abc/../x", "weights_token_secret")
    with pytest.raises(ValueError, match="no secret file 'hf-token'"):
        secrets.local_secret("hf-token", "weights_token_secret")
    (tmp_path / "hf-token").write_text("tok\n")
    (tmp_path / "hf-token").chmod(0o600)
    assert secrets.local_secret("hf-token") == tmp_path / "hf-token"
    st = secrets.SecretFileState().process([f"{'0' * 64} 600 root:root"])
    assert st == {"sha256": "0" * 64, "mode": "600", "owner": "root:root"}
    assert secrets.SecretFileState().process([]) == {}


def test_secret_state_command_reads_digest_and_mode(tmp_path):
    f = tmp_path / "tok"
    f.write_text("s3cret\n")
    f.chmod(0o600)
    out = subprocess.run(["sh", "-c", secrets.SecretFileState().command(str(f))], capture_output=True,
                         text=True, check=True).stdout
    st = secrets.SecretFileState().process(out.splitlines())
    assert st["sha256"] == secrets.sha256_of(f) and st["mode"] == "600"
    assert "s3cret" not in out
    assert json.dumps(st).count("s3cret") == 0


def test_fleet_plan_reads_each_host_once_when_hosts_plan_in_parallel():
    """The CLI plans hosts in parallel greenlets (pyinfra_cli.util._parallel_load_hosts): the fleet
    plan must still read each host's WeightsState once, not once per planning host."""
    import gevent
    from pyinfra.api import Config, Inventory, State
    from pyinfra.api.connect import connect_all
    from pyinfra.context import ctx_config, ctx_host, ctx_state

    from tasks.spec import load_spec
    from tasks.weights.deploy import fetch_weights

    data = {"fake_delay": 0.01, "fake_delay_jitter": 0, "fake_responses": {}}
    hosts = [(f"@fake/h{i}", dict(data)) for i in range(4)]
    state = State(Inventory((hosts, {})), Config(), check_for_changes=False)
    connect_all(state)
    spec = load_spec("qwen30b", {})

    def plan(h):  # what pyinfra_cli.util._parallel_load_hosts does per host
        with ctx_config.use(state.config.copy()), ctx_host.use(h):
            fetch_weights(spec)

    with ctx_state.use(state):
        gevent.joinall([gevent.spawn(plan, h) for h in state.inventory], raise_error=True)
    for h in state.inventory:
        reads = [c for c in h.connector.executed_commands if "manifest.json" in c]
        assert len(reads) == 1, (h.name, len(reads))


def _fake_state(groups: dict[str, list[tuple[str, dict]]]):
    """A connected pyinfra State of @fake hosts: group name -> [(host, data)]."""
    from pyinfra.api import Config, Inventory, State
    from pyinfra.api.connect import connect_all

    base = {"fake_delay": 0, "fake_delay_jitter": 0, "fake_responses": {}}
    names = [(name, {**base, **data}) for members in groups.values() for name, data in members]
    state = State(Inventory((names, {}), **{g: ([n for n, _ in m], {}) for g, m in groups.items()}),
                  Config(), check_for_changes=False)
    connect_all(state)
    return state


def test_gateway_listed_first_is_no_weights_host_and_never_the_seed():
    from pyinfra.context import ctx_host, ctx_state

    from tasks.spec import load_spec
    from tasks.weights.deploy import fleet_hosts, fleet_plan

    state = _fake_state({"gateway": [("@fake/gw", {})],
                         "replicas": [(f"@fake/r{i}", {"weights_fanout": True, "ssh_hostname": f"10.0.0.{i + 1}"})
                                      for i in range(3)]})
    spec = load_spec("qwen30b", {})
    replica = state.inventory.get_host("@fake/r1")
    with ctx_state.use(state), ctx_host.use(replica):
        assert [h.name for h in fleet_hosts()] == ["@fake/r0", "@fake/r1", "@fake/r2"]
        plan = fleet_plan(spec)
    assert plan.hub_seeds == ("@fake/r0",) and "@fake/gw" not in plan.roles
    gateway = state.inventory.get_host("@fake/gw")
    assert not [c for c in gateway.connector.executed_commands if "manifest.json" in c]


@pytest.mark.parametrize("key, values", [
    ("weights_fanout", (True, False)),
    ("weights_fanout_width", (2, 1)),
    ("weights_cache_host", ("@fake/r0", None)),
])
def test_disagreeing_fleet_weights_settings_stop_the_run_naming_hosts(key, values):
    from pyinfra.context import ctx_host, ctx_state

    from tasks.bad_input import BadInput
    from tasks.model import validate_fleet

    state = _fake_state({"replicas": [("@fake/r0", {"weights_fanout": True, key: values[0]}),
                                      ("@fake/r1", {"weights_fanout": True, key: values[1]})]})
    with ctx_state.use(state), ctx_host.use(state.inventory.get_host("@fake/r0")):
        with pytest.raises(BadInput) as exc:
            validate_fleet("qwen30b")
    field, message = exc.value.problems[0].field, exc.value.problems[0].message
    assert field == key and "every host of a weights fan-out" in message
    assert f"@fake/r0 has {values[0]!r}" in message and f"@fake/r1 has {values[1]!r}" in message
    assert not any(h.connector.executed_commands for h in state.inventory)  # no host touched


@pytest.mark.parametrize("mode", ["waves", "chain"])
def test_fanout_run_token_bind_address_and_cleanup_on_fake_hosts(mode, monkeypatch):
    """A whole fan-out deploy on two @fake hosts: the sender binds the address the receiver uses, both
    get this run's random token as a root-only file (uploaded, never in a command or an argument), the
    receiver presents it, and both stop the server and remove the token at the end."""
    from pyinfra.api import Config, Inventory, State
    from pyinfra.api.connect import connect_all
    from pyinfra.api.deploy import add_deploy
    from pyinfra.api.operations import run_ops
    from pyinfra.connectors.fake import FakeConnector

    from tasks.spec import load_spec
    from tasks.weights.deploy import fetch_weights

    uploads = []

    def put_file(self, filename_or_io, remote_filename, remote_temp_filename=None, **kwargs):
        uploads.append((self.host.name, remote_filename, filename_or_io.read()))
        return True

    monkeypatch.setattr(FakeConnector, "put_file", put_file)
    data = {"fake_delay": 0, "fake_delay_jitter": 0, "fake_responses": {}, "weights_fanout": True,
            "weights_fanout_mode": mode}
    hosts = [("@fake/h1", {**data, "ssh_hostname": "10.0.0.1"}), ("@fake/h2", {**data, "ssh_hostname": "10.0.0.2"})]
    state = State(Inventory((hosts, {})), Config(), check_for_changes=False)
    connect_all(state)
    add_deploy(state, fetch_weights, load_spec("qwen30b", {}))
    run_ops(state)
    h1, h2 = (state.inventory.get_host(f"@fake/h{i}") for i in (1, 2))
    token_file = "/run/llmfleet/llmfleet-weights-peer-Qwen--Qwen3-30B-A3B.token"
    tokens = {remote: content for _, remote, content in uploads if remote.startswith("/run/llmfleet/")}
    assert {name for name, remote, _ in uploads if remote.startswith("/run/llmfleet/")} == {"@fake/h1", "@fake/h2"}
    (token,) = set(tokens.values())
    assert len(token) >= 40 and list(tokens) == ["/run/llmfleet/.llmfleet-weights-peer-Qwen--Qwen3-30B-A3B.token.new"]
    every = h1.connector.executed_commands + h2.connector.executed_commands
    assert not any(token.decode() in str(c) for c in every)
    (serve,) = [str(c) for c in h1.connector.executed_commands if "systemd-run --unit=llmfleet-weights-peer" in str(c)]
    assert f"--bind 10.0.0.1 --port 8765 --token-file {token_file}" in serve
    assert ("--chain-dest /srv/models/Qwen--Qwen3-30B-A3B" in serve) == (mode == "chain")
    flag = "--peer" if mode == "waves" else "--chain-from"
    (peer_fetch,) = [str(c) for c in h2.connector.executed_commands if f"{flag} http" in str(c)]
    token_flag = "--token-file" if mode == "waves" else "--chain-token-file"
    assert f"{flag} http://10.0.0.1:8765" in peer_fetch and f"{token_flag} {token_file}" in peer_fetch
    if mode == "chain":  # a ModelScope model: the head downloads through its client, then relays
        assert "fetch.py --hub modelscope" in str(h1.connector.executed_commands)
        assert "--chain-hub" not in peer_fetch  # the chain reads only the Hugging Face protocol
    for h in (h1, h2):
        assert f"rm -f /run/llmfleet-weights-peer-Qwen--Qwen3-30B-A3B.url {token_file}" in str(
            h.connector.executed_commands[-1])


def test_peer_address_is_an_ip_the_control_machine_resolves():
    from types import SimpleNamespace

    from tasks.weights.deploy import peer_address

    def h(name, **hostdata):
        return SimpleNamespace(name=name, data=hostdata)

    assert peer_address(h("gpu-01", ssh_hostname="10.1.2.3"), SimpleNamespace(weights_peer_address=None)) == "10.1.2.3"
    assert peer_address(h("gpu-01"), SimpleNamespace(weights_peer_address="localhost")) in ("127.0.0.1", "::1")
    with pytest.raises(ValueError, match="gpu-01: weights_peer_address: 'no-such-host.invalid'"):
        peer_address(h("gpu-01"), SimpleNamespace(weights_peer_address="no-such-host.invalid"))


def test_run_token_only_with_waves_and_never_in_the_plans_repr():
    names = ["h1", "h2"]
    plan = plan_fleet(names, {}, dict.fromkeys(names, REQ), fanout=True)
    assert plan.waves == 1 and len(plan.token) >= 40 and plan.token not in repr(plan)
    assert plan_fleet(names, {}, dict.fromkeys(names, REQ), fanout=True).token != plan.token  # per run
    assert plan_fleet(names, dict.fromkeys(names, held()), dict.fromkeys(names, REQ), fanout=True).token == ""


def test_fetch_request_reads_the_typed_settings():
    """Every host's request comes from WeightsSettings: None keeps meaning never prune (also for the other hosts
    of a fan-out plan), text from --data is read as the number it says, a boolean is no count."""
    from tasks.settings.weights import WeightsSettings
    from tasks.spec import load_spec
    from tasks.weights.deploy import _request_for

    spec = load_spec("qwen30b", {})
    assert _request_for(spec, WeightsSettings.of({"weights_prune_keep": None})).prune_keep is None
    req = _request_for(spec, WeightsSettings.of({"weights_root": "/data", "weights_max_workers": "4"}))
    assert (req.prune_keep, req.max_workers, req.dest) == (2, 4, "/data/Qwen--Qwen3-30B-A3B")
    found = WeightsSettings.problems({"weights_prune_keep": True, "weights_fanout_width": True}, "h")
    assert [(p.field, "boolean" in p.message) for p in found] == [("weights_fanout_width", True),
                                                                  ("weights_prune_keep", True)]
