"""Hardening pieces one by one: preflight's device and context checks, the rollout's account of what
changed, secret file modes, recipe files (YAML errors, paths), CANN pins, dockerd's planned restart,
and the contract of the pyinfra internals tasks/pyinfra_ext.py relies on."""

from __future__ import annotations

import inspect
import types

import pytest
from pyinfra.api import Config, Inventory, State
from pyinfra.api.connect import connect_all
from pyinfra.api.exceptions import ConnectError, PyinfraError
from pyinfra.api.operations import run_ops
from pyinfra.api.state import StateStage

from tasks import pyinfra_ext
from tasks.plan import bundled_config
from tasks.preflight import Requirement, evaluate
from tasks.requirement import context_limit, requirement_from_spec
from tasks.secrets import read_secret
from tasks.spec import SpecError, load_spec
from tests.unit.test_preflight import ascend_facts, nvidia_facts, seed_001  # noqa: F401 - fixtures


# --- preflight ------------------------------------------------------------------------------------------

def test_devices_beyond_the_gpu_count_are_refused(nvidia_facts):
    facts = nvidia_facts("gpu22gx4")
    verdict = evaluate(facts, seed_001(devices=(0, 1, 2, 7)))
    assert not verdict.go
    assert "devices: serve_devices [0, 1, 2, 7]: GPU7 not on this host, it has 4 GPU(s) (allowed indices 0-3)" \
        in verdict.reasons
    ok = evaluate(facts, seed_001(devices=(3, 2, 1, 0)))
    assert ("devices", "ok") in {(c.name, c.status) for c in ok.checks}


def test_context_row_and_refusal(nvidia_facts):
    facts = nvidia_facts("gpu22gx4")
    assert ("context", "ok") in {(c.name, c.status) for c in evaluate(facts, seed_001(context_limit=40960)).checks}
    verdict = evaluate(facts, seed_001(context_limit=16384))
    assert "context: max_model_len 32768 > the model's limit 16384: vLLM exits" in verdict.reasons


def test_context_limit_follows_vllm():
    qwen = bundled_config("Qwen3-30B-A3B")
    assert context_limit(load_spec("qwen30b"), qwen) == (40960, "max_position_embeddings 40960")
    # YaRN: vLLM scales original_max_position_embeddings (32768 x 4), not max_position_embeddings.
    limit, how = context_limit(load_spec("qwen30b_yarn"), qwen)
    assert limit == 131072 and "original_max_position_embeddings 32768 x factor 4" in how
    with pytest.raises(SpecError, match="at most 131072") as err:
        requirement_from_spec(load_spec("qwen30b_yarn", {"serve_max_model_len": 131073}), "/m")
    assert err.value.field == "max_model_len"
    assert requirement_from_spec(load_spec("qwen30b"), "/m").context_limit == 40960


def test_requirement_rejects_bad_devices():
    with pytest.raises(ValueError, match="distinct"):
        seed_001(devices=(0, 0, 1, 2)).validate()


# --- rollout --------------------------------------------------------------------------------------------

def test_what_changed_names_unit_image_and_weights():
    from tasks.rollout import Paths, what_changed

    spec = load_spec("qwen30b")
    paths = Paths("u.service", "/etc/systemd/system/u.service", "/etc/llmfleet/m.env", "/etc/llmfleet/m.templates",
                  "/etc/llmfleet/m.verify.json", "/etc/llmfleet/m.previous", "x", "y", "/srv/m")
    wanted = f"{spec.model.repo_id}@{spec.model.revision}"
    live = {"live_unit": "abc", "live_image": spec.image.ref, "live_label": wanted}
    text = what_changed(spec, spec.image.ref, live, ["/etc/systemd/system/u.service differs"], paths)
    assert text == f"image {spec.image.ref} unchanged; weights {wanted} unchanged; unit changed"
    text = what_changed(spec, "vllm/vllm-openai:v0.9.2", {**live, "live_label": "Q/M@old"},
                        ["/etc/llmfleet/m.env differs"], paths)
    assert text == (f"image {spec.image.ref} -> vllm/vllm-openai:v0.9.2; weights Q/M@old -> {wanted}; "
                    "API key env file changed")
    assert what_changed(spec, "i:1", {}, [], paths).startswith("new service")


# --- secrets --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_secret_readable_by_others_is_refused_with_the_chmod(tmp_path, mode):
    path = tmp_path / "key"
    path.write_text("sk-0123456789\n")
    path.chmod(mode)
    with pytest.raises(ValueError) as err:
        read_secret(path, "api_key_secret")
    text = str(err.value)
    assert f"mode {mode:04o}" in text and f"chmod 600 {path}" in text and "sk-0123456789" not in text
    path.chmod(0o600)
    assert read_secret(path) == "sk-0123456789"
    path.chmod(0o400)
    assert read_secret(path) == "sk-0123456789"


# --- recipe files ---------------------------------------------------------------------------------------

def test_yaml_error_names_file_line_and_opening(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model:\n  hub: modelscope\n  repo_id: [x\nport: 1\n")
    with pytest.raises(SpecError) as err:
        load_spec(str(recipe))
    assert err.value.field == "recipe"
    assert f"{recipe}, line 4, column 5: not valid YAML" in str(err.value)
    assert "flow sequence at line 3" in str(err.value)
    assert isinstance(err.value, PyinfraError)  # pyinfra's CLI prints it without a traceback


def test_recipe_file_by_path_takes_its_name(tmp_path):
    recipe = tmp_path / "site-qwen.yaml"
    recipe.write_text((load_spec.__globals__["RECIPES_DIR"] / "qwen30b.yaml").read_text())
    assert load_spec(str(recipe)).name == "site-qwen"


# --- CANN -----------------------------------------------------------------------------------------------

def test_cann_pins_must_be_sha256():
    from tasks.bad_input import BadInput
    from tasks.settings.ascend import AscendSettings

    pins = {"a.run": "0" * 64}
    assert AscendSettings.of({"ascend_cann_sha256": pins}).ascend_cann_sha256 == pins
    for bad in ({"a.run": "0" * 63}, {"a.run": "Z" * 64}, ["a.run"]):
        with pytest.raises(BadInput, match="ascend_cann_sha256"):
            AscendSettings.of({"ascend_cann_sha256": bad}, "h1")


# --- dockerd's restart at plan time ---------------------------------------------------------------------

class _Meta:
    def __init__(self, will: bool) -> None:
        self.will_change = will

    def did_change(self) -> bool:
        return self.will_change


@pytest.mark.parametrize("will", [False, True])
def test_restart_is_planned_only_when_what_it_follows_changes(will):
    from pyinfra.api.operation import add_op

    from tasks.converge import units_running

    state = State(Inventory(([("@fake/h", {"fake_delay": 0, "fake_delay_jitter": 0})], {})), Config(),
                  check_for_changes=True)
    connect_all(state)
    state.set_stage(StateStage.Prepare)
    follows = [_Meta(will)]
    add_op(state, units_running, units=["docker"], restarted=True, restart_after=follows,
           _if=lambda: follows[0].did_change())
    host = state.inventory.get_host("@fake/h")
    (op_data,) = state.ops[host].values()
    assert op_data.operation_meta._maybe_is_change is will
    state.set_stage(StateStage.Execute)
    run_ops(state)
    restarts = [c for c in host.connector.executed_commands if "restart" in str(c)]
    assert bool(restarts) is will


# --- tasks/pyinfra_ext.py: the pyinfra internals it relies on -------------------------------------------

def test_contract_ssh_connector_reads_the_key_through_the_module_function():
    from pyinfra.connectors import ssh

    params = list(inspect.signature(ssh.get_private_key).parameters)
    assert params[:3] == ["state", "key_filename", "key_password"]
    source = inspect.getsource(ssh.SSHConnector.make_paramiko_kwargs)
    assert "get_private_key(" in source and "ssh.get_private_key" not in source  # the module's global name
    connect = inspect.getsource(ssh.SSHConnector.connect)
    assert "_connect()" in connect
    from pyinfra.api.host import Host

    assert "except ConnectError" in inspect.getsource(Host.connect)  # a ConnectError fails only its host


def test_missing_key_is_a_connect_error_naming_it(tmp_path):
    from pyinfra.connectors import ssh

    pyinfra_ext.name_missing_keys()
    pyinfra_ext.name_missing_keys()  # once: not wrapped twice
    assert not hasattr(ssh.get_private_key.llmfleet_wrapped, "llmfleet_wrapped")
    with pytest.raises(ConnectError, match="ssh_key '/nonexistent/k': no such private key file"):
        ssh.get_private_key(None, key_filename="/nonexistent/k")
    with pytest.raises(ConnectError, match="ssh_key 'k'"):  # relative: to pyinfra's working directory
        ssh.get_private_key(types.SimpleNamespace(cwd="/nonexistent"), key_filename="k")
    with pytest.raises(PyinfraError):  # an existing file reaches pyinfra's own loader
        (tmp_path / "k").write_text("not a key\n")
        ssh.get_private_key(types.SimpleNamespace(private_keys={}, cwd=str(tmp_path)), key_filename=str(tmp_path / "k"))


def test_dry_with_yes_turns_change_detection_back_on():
    import click

    state = State(check_for_changes=False)
    with click.Context(click.Command("pyinfra")) as ctx:
        ctx.params = {"dry": True, "yes": True}
        assert "--dry with -y" in pyinfra_ext.dry_run_shows_changes(state)
    assert state.check_for_changes is True
    state = State(check_for_changes=False)
    with click.Context(click.Command("pyinfra")) as ctx:
        ctx.params = {"dry": False, "yes": True}
        assert pyinfra_ext.dry_run_shows_changes(state) is None
    assert state.check_for_changes is False


def test_requirement_fields_default_empty():
    req = Requirement(recipe="r", vllm_version="0.8.5", model_config=bundled_config("Qwen3-30B-A3B"),
                      weights_bytes=1, model_dir="/m")
    assert req.devices == () and req.context_limit == 0


def test_ascend_devices_checked_once(ascend_facts):
    """Too few NPUs for the default devices: the count check says it, not a second 'devices' refusal;
    an explicit index beyond the NPUs is named."""
    from tests.unit.test_preflight import ascend_req

    reasons = evaluate(ascend_facts(), ascend_req(tp=16, devices=tuple(range(16)))).reasons
    assert [r.split(":")[0] for r in reasons if "needs 16" in r or r.startswith("devices")] == ["npu count"]
    verdict = evaluate(ascend_facts(), ascend_req(devices=(0, 1, 2, 8)))
    assert "devices: serve_devices [0, 1, 2, 8]: NPU8 not on this host, it has 8 NPU(s) (allowed indices 0-7)" \
        in verdict.reasons
