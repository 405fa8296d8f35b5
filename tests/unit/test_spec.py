"""The serving spec: structure checks, overrides from host data, readable errors."""

import pytest

from tasks.spec import ServingSpec, SpecError, apply_overrides, list_recipes, load_spec

BASE = {
    "model": {"hub": "modelscope", "repo_id": "Qwen/Qwen3-30B-A3B", "revision": "abc123"},
    "served_model_name": "coder",
    "image": "vllm/vllm-openai:v0.10.1.1",
}


def spec(**fields) -> ServingSpec:
    return load_spec({**BASE, **fields})


def error_of(**fields) -> SpecError:
    with pytest.raises(SpecError) as exc:
        spec(**fields)
    return exc.value


def test_all_recipes_load():
    names = list_recipes()
    assert set(names) >= {"qwen235b_awq", "qwen235b_gptq", "qwen30b", "qwen30b_yarn", "qwen30b_fp8",
                          "glm5", "qwen32b_awq", "qwen3_ascend"}
    for name in names:
        s = load_spec(name)
        assert s.name == name
        assert s.image.tag and s.image.tag != "latest"


def test_recipes_keep_a_seed_comment():
    """A seed's recipe says which seed and what it changed; a recipe from no seed says why it exists."""
    from tasks.spec import RECIPES_DIR
    for path in RECIPES_DIR.glob("*.yaml"):
        head = path.read_text().splitlines()[0]
        if head.startswith("# Not from a seed (issue "):
            assert "Why:" in path.read_text(), path.name
            continue
        assert head.startswith("# Seed 00"), path.name
        assert "Changed from the seed" in path.read_text(), path.name


def test_version_from_tag_and_explicit():
    assert str(spec().version) == "0.10.1.1"
    with pytest.raises(SpecError, match="contradicts the image tag"):
        spec(vllm_version="0.9.2")
    e = error_of(image="registry.local/custom-vllm:prod1")
    assert e.field == "vllm_version" and "set vllm_version" in str(e)
    assert str(spec(image="registry.local/custom-vllm:prod1", vllm_version="0.12.0").version) == "0.12.0"


@pytest.mark.parametrize("image,why", [
    ("vllm/vllm-openai:latest", "'latest' is not allowed"),
    ("vllm/vllm-openai", "untagged"),
    ("vllm/vllm-openai@sha256:1234", "64 hex"),
])
def test_image_must_be_pinned(image, why):
    e = error_of(image=image)
    assert e.field.startswith("image") and why in str(e)


def test_image_digest_pins():
    s = spec(image="vllm/vllm-openai:v0.10.1.1@sha256:" + "a" * 64)
    assert s.image.ref.endswith("a" * 64)


def test_dtype_fp8_refused_with_fix():
    e = error_of(dtype="fp8")
    assert e.field == "dtype"
    for hint in ("FP8 checkpoint", "quantization: fp8", "kv_cache_dtype: fp8", "auto, half"):
        assert hint in str(e)


def test_unknown_field_names_allowed_ones():
    e = error_of(max_len=4096)
    assert e.field == "max_len" and "allowed:" in str(e) and "max_model_len" in str(e)
    e = error_of(model={**BASE["model"], "branch": "x"})
    assert e.field == "model.branch" and "revision" in str(e)


@pytest.mark.parametrize("fields,field,text", [
    ({"gpu_memory_utilization": 0}, "gpu_memory_utilization", "greater than 0"),
    ({"gpu_memory_utilization": 1.2}, "gpu_memory_utilization", "less than or equal to 1"),
    ({"model": {**BASE["model"], "hub": "github"}}, "model.hub", "'modelscope' or 'huggingface'"),
    ({"model": {**BASE["model"], "revision": "latest"}}, "model.revision", "pin a commit"),
    ({"port": 70000}, "port", "65535"),
    ({"api_key_secret": "token 123456"}, "api_key_secret", "NAME of a secret file"),
    ({"extra_env": {"HF_TOKEN": "x"}}, "extra_env", "looks like a secret"),
    ({"extra_env": {"VLLM_API_KEY": "x"}}, "extra_env", "looks like a secret"),
    ({"extra_args": ["--api-key", "x"]}, "extra_args", "argv"),
    ({"extra_args": ["--max-model-len", "1"]}, "extra_args", "max_model_len"),
    ({"shm_size": "16g", "ipc_host": True}, "shm_size/ipc_host", "set one"),
    ({"devices": [0, 1], "tensor_parallel_size": 4}, "devices", "exactly 4"),
    ({"enable_auto_tool_choice": True}, "enable_auto_tool_choice", "needs tool_call_parser"),
    ({"reasoning_parser": "r2"}, "reasoning_parser", "deepseek_r1"),
    ({"accelerator": "ascend"}, "accelerator", "vllm-ascend image"),
    ({"thinking": {"default": False, "chat_template": "x.txt"}}, "thinking.chat_template", ".jinja"),
])
def test_field_errors_name_the_field(fields, field, text):
    e = error_of(**fields)
    assert e.field == field, str(e)
    assert text in str(e)
    assert "pydantic" not in str(e) and "errors.pydantic.dev" not in str(e)


def test_glm5_needs_new_vllm_and_transformers():
    glm = {"model": {"hub": "huggingface", "repo_id": "zai-org/GLM-5", "revision": "abc"}}
    e = error_of(**glm, image="vllm/vllm-openai:v0.16.0")
    assert e.field == "build.transformers_version" and "5.2.0" in str(e)
    e = error_of(**glm, image="vllm/vllm-openai:v0.12.0")
    assert e.field == "vllm_version" and "0.16.0" in str(e)
    ok = spec(**glm, image="me/glm5:v0.16.0-tf", build={"base_image": "vllm/vllm-openai:v0.16.0",
                                                        "transformers_version": "5.4.0"})
    assert str(ok.version) == "0.16.0"
    e = error_of(**glm, image="me/glm5:x", build={"base_image": "vllm/vllm-openai:v0.16.0",
                                                   "transformers_version": ">=5.2"})
    assert e.field == "build.transformers_version" and "exact version" in str(e)


def test_overrides_from_host_data():
    s = load_spec("qwen30b", {"serve_max_model_len": 16384, "serve_port": 8001,
                              "serve_model__revision": "0123abcd", "ssh_user": "root",
                              "lab_profile": "an inventory's own key", "docker_ce_version": None})
    assert (s.max_model_len, s.port, s.model.revision) == (16384, 8001, "0123abcd")
    assert s.model.repo_id == "Qwen/Qwen3-30B-A3B"  # sibling fields kept


@pytest.mark.parametrize("key, hint", [
    ("weights_fanoutt", "did you mean weights_fanout?"),  # a capability's prefix, no such setting
    ("servee_max_model_len", "did you mean serve_max_model_len?"),  # a typo in the prefix
    ("weigths_fanout", "did you mean weights_fanout?"),
    ("docker_registry_mirror", "did you mean docker_registry_mirrors?"),
    ("gateway_qqqqqqqqq", "see the settings table in README.md"),
])
def test_setting_typos_refused_with_the_nearest_key(key, hint):
    with pytest.raises(SpecError) as exc:
        load_spec("qwen30b", {key: True, "ssh_user": "root"})
    assert exc.value.problems == [(key, f"unknown setting; {hint}")]


def test_every_documented_setting_is_accepted():
    from tasks import settings

    rows = settings.collect()
    assert len(rows) > 50
    assert settings.unknown_keys([key for _, key, _, _, _ in rows]) == []


def test_override_unknown_key_names_it():
    with pytest.raises(SpecError) as exc:
        load_spec("qwen30b", {"serve_max_len": 1})
    assert exc.value.field == "serve_max_len" and "serve_max_model_len" in str(exc.value)


def test_override_invalid_value_names_field():
    with pytest.raises(SpecError) as exc:
        load_spec("qwen30b", {"serve_gpu_memory_utilization": 1.5})
    assert exc.value.field == "gpu_memory_utilization"


def test_override_image_rederives_version():
    s = load_spec("qwen30b", {"serve_image": "vllm/vllm-openai:v0.12.0"})
    assert str(s.version) == "0.12.0"


def test_version_dependent_problem_surfaces_in_load_spec():
    # block size 48 is not a choice before 0.12; load_spec renders and refuses at plan time
    with pytest.raises(SpecError) as exc:
        load_spec("qwen30b", {"serve_block_size": 48})
    assert exc.value.field == "block_size" and "1, 8, 16, 32, 64, 128" in str(exc.value)


def test_unknown_recipe():
    with pytest.raises(SpecError, match="unknown recipe 'nope'; allowed: .*qwen30b"):
        load_spec("nope")


def test_apply_overrides_does_not_mutate():
    data = {"model": {"revision": "a"}}
    out = apply_overrides(data, {"serve_model__revision": "b"})
    assert data["model"]["revision"] == "a" and out["model"]["revision"] == "b"


def test_spec_is_frozen():
    s = spec()
    with pytest.raises(Exception):
        s.port = 1  # type: ignore[misc]
