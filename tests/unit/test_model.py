"""deploy_model's plan-time parts: requirement per recipe, fleet-wide validation before any host
is touched (on @fake hosts)."""

from __future__ import annotations

import sys
import types

import pytest
from pyinfra.api import Config, Inventory, State
from pyinfra.api.connect import connect_all
from pyinfra.api.deploy import add_deploy

from tasks.bad_input import BadInput
from tasks.model import deploy_model, variant_recipe
from tasks.requirement import model_config_for, requirement_from_spec
from tasks.weights.deploy import model_dest
from tasks.spec import SpecError, list_recipes, load_spec


@pytest.mark.parametrize("recipe", list_recipes())
def test_every_recipe_has_a_valid_requirement(recipe):
    spec = load_spec(recipe)
    req = requirement_from_spec(spec, model_dest(spec, {}))
    req.validate()
    assert req.serving.tp == spec.tensor_parallel_size and req.vllm_version == str(spec.version)
    assert req.model_dir.startswith("/srv/models/") and req.accelerator == spec.accelerator


def test_checkpoint_quantization_from_the_name():
    assert model_config_for(load_spec("qwen30b_fp8"))["quantization_config"] == {"quant_method": "fp8"}
    assert model_config_for(load_spec("qwen235b_gptq"))["quantization_config"]["quant_method"] == "gptq"
    assert "quantization_config" not in model_config_for(load_spec("qwen30b"))


def test_weights_estimate_and_override():
    spec = load_spec("qwen30b")
    estimate = requirement_from_spec(spec, "/m").weights_bytes
    assert 55e9 < estimate < 66e9  # Qwen3-30B-A3B bf16 is 61 GB
    fp8 = requirement_from_spec(load_spec("qwen30b_fp8"), "/m").weights_bytes
    assert 29e9 < fp8 < 36e9
    assert requirement_from_spec(spec, "/m", {"preflight_weights_bytes": 1000}).weights_bytes == 1000


def test_ipc_host_requires_host_shm_only_with_several_gpus():
    assert requirement_from_spec(load_spec("qwen30b"), "/m").shm_bytes_needed == 1 << 30
    assert requirement_from_spec(load_spec("qwen30b_fp8"), "/m").shm_bytes_needed == 0  # --shm-size


def test_variant_recipe():
    choose = variant_recipe("qwen235b", ("awq", "gptq"), default="awq")
    assert choose({}) == "qwen235b_awq" and choose({"model_variant": "gptq"}) == "qwen235b_gptq"
    with pytest.raises(SpecError, match="model_variant"):
        choose({"model_variant": "int8"})


@pytest.fixture
def weights_module(monkeypatch):
    module = types.ModuleType("tasks.weights.deploy")
    module.fetch_weights = lambda spec, model_dir: None
    monkeypatch.setitem(sys.modules, "tasks.weights.deploy", module)


def _fake(name, **data):
    return (f"@fake/{name}", {"fake_delay": 0, "fake_delay_jitter": 0, **data})


def test_one_bad_host_stops_the_run_before_any_command(weights_module):
    hosts = [_fake("good"), _fake("bad", serve_block_size=48)]
    state = State(Inventory((hosts, {})), Config())
    connect_all(state)
    with pytest.raises(BadInput) as err:
        add_deploy(state, deploy_model, "qwen30b")
    assert "@fake/bad: serve_block_size: " in str(err.value) and "got 48" in str(err.value) and "@fake/good" not in str(err.value)
    for host in state.inventory:
        assert host.connector.executed_commands == []


def test_missing_secret_stops_the_run_before_any_command(weights_module, tmp_path):
    hosts = [_fake("a", secrets_dir=str(tmp_path))]
    state = State(Inventory((hosts, {})), Config())
    connect_all(state)
    with pytest.raises(BadInput, match=r"@fake/a: api_key_secret: no secret file 'qwen235b_api_key'"):
        add_deploy(state, deploy_model, variant_recipe("qwen235b", ("awq", "gptq"), "awq"))
    assert state.inventory.get_host("@fake/a").connector.executed_commands == []


def test_missing_image_builder_is_named(weights_module, monkeypatch):
    monkeypatch.setitem(sys.modules, "tasks.image_build", None)  # None in sys.modules: ImportError
    state = State(Inventory(([_fake("g")], {})), Config())
    connect_all(state)
    with pytest.raises(BadInput, match="tasks.image_build cannot be imported"):
        add_deploy(state, deploy_model, "glm5")


def test_recipe_choosers_read_the_typed_settings():
    from tasks.model import recipe_in, variant_recipe
    from tasks.spec import SpecError

    choose = variant_recipe("qwen235b", ("awq", "gptq"), "awq")
    assert choose({}) == "qwen235b_awq" and choose({"model_variant": "gptq"}) == "qwen235b_gptq"
    with pytest.raises(SpecError, match="model_variant"):
        choose({"model_variant": 5})
    assert recipe_in("preflight_recipe", required=False)({"preflight_recipe": None}) is None
    assert recipe_in("preflight_recipe")({"preflight_recipe": "qwen30b"}) == "qwen30b"
    with pytest.raises(SpecError, match="preflight_recipe"):
        recipe_in("preflight_recipe")({})
