"""The service unit: docker command line per accelerator, systemd quoting, secrets handling."""

from __future__ import annotations

import shlex

import pytest

from tasks import service
from tasks.secrets import env_file_content
from tasks.settings.service import ServiceSettings
from tasks.service import Layout, docker_run_argv, exec_start, systemd_quote
from tasks.spec import SpecError, load_spec
from tasks.vllm.cmdline import render

OPTS = ServiceSettings()  # the defaults


def argv(recipe: str, **overrides) -> tuple[list[str], Layout]:
    spec = load_spec(recipe, {f"serve_{k}": v for k, v in overrides.items()})
    layout = Layout.of(spec, OPTS)
    lines = docker_run_argv(spec, spec.image.ref, "/srv/models/x", render(spec), layout, OPTS,
                            bool(spec.api_key_secret))
    return [w for group in lines for w in group], layout


def systemd_split(text: str) -> list[str]:
    """systemd's ExecStart word splitting for what systemd_quote produces: double quotes with
    backslash escapes, doubled % and $ (shlex in POSIX mode handles the quoting the same way)."""
    words = shlex.split(text.replace(" \\\n    ", " "))
    return [w.replace("%%", "%").replace("$$", "$") for w in words]


def test_nvidia_devices_use_gpus_with_inner_quotes_and_never_privileged():
    words, _ = argv("glm5")
    i = words.index("--gpus")
    assert words[i + 1] == '"device=0,1,2,3"'
    assert "--privileged" not in words and "--pid=host" not in words
    assert ["--shm-size", "16g"] == words[words.index("--shm-size"):words.index("--shm-size") + 2]
    assert "--ipc=host" not in words


def test_all_gpus_ipc_host_ulimits_weights_and_caches():
    words, layout = argv("qwen30b")
    assert words[words.index("--gpus") + 1] == "all"
    assert "--ipc=host" in words and "--shm-size" not in words
    assert "memlock=-1" in words and "stack=67108864" in words
    assert "/srv/models/x/current:/model:ro" in words
    assert f"{layout.cache_dir}:/llmfleet-cache" in words and layout.cache_dir == "/var/cache/llmfleet/qwen30b"
    assert "TRITON_CACHE_DIR=/llmfleet-cache/triton" in words
    assert "--env-file" not in words  # qwen30b has no API key
    assert words[words.index("-p") + 1] == "8000:8000"


def test_api_key_goes_through_env_file_not_argv():
    words, layout = argv("qwen235b_awq")
    assert words[words.index("--env-file") + 1] == "/etc/llmfleet/qwen235b_awq.env"
    assert "--api-key" not in words and not any("VLLM_API_KEY" in w for w in words)
    assert "30000:30000" in words


def test_ascend_devices_driver_mounts_and_visible_devices():
    words, _ = argv("qwen3_ascend")
    devices = [words[i + 1] for i, w in enumerate(words) if w == "--device"]
    assert devices == ["/dev/davinci0", "/dev/davinci1", "/dev/davinci2", "/dev/davinci3",
                       "/dev/davinci_manager", "/dev/devmm_svm", "/dev/hisi_hdc"]
    assert "--gpus" not in words and "--privileged" not in words
    assert "/usr/local/Ascend/driver/lib64:/usr/local/Ascend/driver/lib64:ro" in words
    assert "ASCEND_RT_VISIBLE_DEVICES=0,1,2,3" in words
    image = words.index("quay.io/ascend/vllm-ascend:v0.11.0")
    assert words[image + 1:image + 4] == ["vllm", "serve", "/model"]


def test_chat_template_mounted_read_only():
    words, layout = argv("qwen32b_awq")
    mount = f"{layout.template_dir}/qwen3_nonthinking.jinja:/llmfleet/chat-templates/qwen3_nonthinking.jinja:ro"
    assert mount in words
    assert words[words.index("--chat-template") + 1] == "/llmfleet/chat-templates/qwen3_nonthinking.jinja"


@pytest.mark.parametrize("word", ['{"enable_thinking": false}', '"device=0,1"', "50%", "$HOME", "a\\b", "plain"])
def test_systemd_quote_round_trips(word):
    assert systemd_split(systemd_quote(word)) == [word]


def test_exec_start_round_trips_a_whole_command_line():
    spec = load_spec("qwen30b_yarn", {"serve_image": "vllm/vllm-openai:v0.12.0"})
    lines = docker_run_argv(spec, spec.image.ref, "/m", render(spec), Layout.of(spec, OPTS), OPTS, False)
    words = [w for g in lines for w in g]
    assert systemd_split(exec_start(lines)) == words
    assert any(w.startswith('{"rope_parameters"') for w in words)


def test_control_characters_refused():
    with pytest.raises(ValueError, match="control characters"):
        systemd_quote("a\nb")


def test_ulimits_checked():
    from tasks.bad_input import BadInput

    with pytest.raises(BadInput, match="service_ulimits.*'lots': allowed: an integer or soft:hard"):
        service.options({"service_ulimits": {"memlock": "lots"}})
    with pytest.raises(BadInput, match="service_ulimits.*allowed: a mapping of any of core"):
        service.options({"service_ulimits": {"memlok": "1"}})
    assert service.options({"service_ulimits": {"nofile": "1024:4096"}}).service_ulimits == {"nofile": "1024:4096"}


def test_missing_secret_names_the_file(tmp_path):
    spec = load_spec("qwen235b_awq")
    with pytest.raises(SpecError, match="no secret file 'qwen235b_api_key'") as err:
        service.secret_files(spec, {"secrets_dir": str(tmp_path)})
    assert err.value.field == "api_key_secret"


def test_secret_file_env_content_and_dir_precedence(tmp_path, monkeypatch):
    (tmp_path / "qwen235b_api_key").write_text("sk-123 456\n")
    (tmp_path / "qwen235b_api_key").chmod(0o600)
    spec = load_spec("qwen235b_awq")
    monkeypatch.setenv("LLMFLEET_SECRETS_DIR", str(tmp_path))
    secrets = service.secret_files(spec, {})
    assert env_file_content(secrets) == b"VLLM_API_KEY=sk-123 456\n"
    with pytest.raises(SpecError):  # host data wins over the environment
        service.secret_files(spec, {"secrets_dir": str(tmp_path / "elsewhere")})


def test_multiline_secret_refused(tmp_path):
    (tmp_path / "k").write_text("one\ntwo\n")
    (tmp_path / "k").chmod(0o600)
    with pytest.raises(SpecError, match="exactly one non-empty line"):
        service.secret_files(load_spec("qwen30b", {"serve_api_key_secret": "k"}), {"secrets_dir": str(tmp_path)})


