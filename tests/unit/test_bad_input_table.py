"""The bad-input table: inventory, host data, recipe fields, recipe files, secrets and ssh, each case
through pyinfra's own CLI (``bench/counting_pyinfra.py``, which counts every command sent to a host).

Each case is one host of an inventory of @fake hosts (a case's host data holds its one mistake), so
one CLI process per deploy (a model, deploys/preflight.py, deploys/bringup.py) checks many cases: llmfleet validates every host before it touches any and prints
every problem in one block. Each case asserts the content of its line (host, field, what was given,
what is allowed) and that no command ran on its host; the run as a whole: a non-zero exit, one
block, no traceback. The missing-ssh-key cases use pyinfra's SSH connector (no network is reached:
the key is read first).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.counting_pyinfra import counts_in

REPO = Path(__file__).resolve().parents[2]
COUNTING = [sys.executable, str(REPO / "bench" / "counting_pyinfra.py")]
FAKE = {"fake_delay": 0, "fake_delay_jitter": 0}

# host -> (host data, fragments its problem line must hold). Recipe qwen30b (tp 4, vLLM 0.8.5) unless
# the case names another with case_recipe.
MODEL_CASES: dict[str, tuple[dict, tuple[str, ...]]] = {
    # recipe fields, through host data
    "len-text": ({"serve_max_model_len": "abc"}, ("serve_max_model_len", "valid integer", "'abc'")),
    "len-over-model": ({"serve_max_model_len": 65536},
                       ("serve_max_model_len", "65536 is more than", "max_position_embeddings 40960", "at most 40960")),
    "len-zero": ({"serve_max_model_len": 0}, ("serve_max_model_len", "greater than 0")),
    "devices-dup": ({"serve_devices": [0, 1, 1, 2]}, ("serve_devices", "[0, 1, 1, 2]", "distinct")),
    "devices-count": ({"serve_devices": [0, 1]}, ("serve_devices", "[0, 1]", "list exactly 4")),
    "devices-negative": ({"serve_devices": [-1, 0, 1, 2]}, ("serve_devices", ">= 0")),
    "port-range": ({"serve_port": 70000}, ("serve_port", "70000", "65535")),
    "image-latest": ({"serve_image": "vllm/vllm-openai:latest"}, ("serve_image", "'latest' is not allowed")),
    "image-untagged": ({"serve_image": "vllm/vllm-openai"}, ("serve_image", "untagged")),
    "dtype-fp8": ({"serve_dtype": "fp8"}, ("serve_dtype", "'fp8'", "FP8")),
    "kv-dtype": ({"serve_kv_cache_dtype": "int3"}, ("serve_kv_cache_dtype", "'int3'", "allowed: auto")),
    "tp-zero": ({"serve_tensor_parallel_size": 0}, ("serve_tensor_parallel_size", "greater than or equal to 1")),
    "gpu-util": ({"serve_gpu_memory_utilization": 1.5}, ("serve_gpu_memory_utilization", "1.5", "less than or equal to 1")),
    "reasoning-parser": ({"serve_reasoning_parser": "nope"}, ("serve_reasoning_parser", "'nope'", "allowed:")),
    "tool-parser": ({"serve_tool_call_parser": "nope"}, ("serve_tool_call_parser", "'nope'", "allowed:")),
    "auto-tool": ({"serve_enable_auto_tool_choice": True}, ("enable_auto_tool_choice", "needs tool_call_parser")),
    "env-secret": ({"serve_extra_env": {"HF_TOKEN": "x"}}, ("serve_extra_env", "looks like a secret")),
    "args-api-key": ({"serve_extra_args": ["--api-key", "x"]}, ("serve_extra_args", "argv", "api_key_secret")),
    "revision-latest": ({"serve_model__revision": "latest"}, ("serve_model__revision", "'latest'", "pin a commit")),
    "repo-id": ({"serve_model__repo_id": "no repo"}, ("serve_model__repo_id", "'no repo'", "owner/name")),
    "hub": ({"serve_model__hub": "github"}, ("serve_model__hub", "'github'", "modelscope")),
    "unknown-field": ({"serve_max_len": 1}, ("serve_max_len", "no such serving field", "serve_max_model_len")),
    "shm-size": ({"serve_shm_size": "lots"}, ("serve_shm_size", "'lots'", "16g")),
    "secret-name": ({"serve_api_key_secret": "../etc/passwd"}, ("serve_api_key_secret", "NAME of a secret file")),
    "accelerator": ({"serve_accelerator": "ascend"}, ("accelerator", "vllm-ascend image")),
    "swap-space": ({"serve_swap_space": -1}, ("serve_swap_space", "greater than or equal to 0")),
    "startup-budget": ({"serve_startup_budget_s": 5}, ("serve_startup_budget_s", "greater than or equal to 30")),
    "block-size": ({"serve_block_size": 48}, ("serve_block_size", "48")),
    # capability settings (host data)
    "docker-source": ({"docker_source": "snap"}, ("docker_source", "'snap'", "allowed: distro, docker-ce")),
    "mirrors-type": ({"docker_registry_mirrors": "http://m"}, ("docker_registry_mirrors", "list of strings")),
    "mirrors-scheme": ({"docker_registry_mirrors": ["m:5000"]}, ("docker_registry_mirrors", "'m:5000'", "http://")),
    "daemon-extra": ({"docker_daemon_extra": "x"}, ("docker_daemon_extra", "mapping")),
    "toolkit-version": ({"nvidia_toolkit_version": "latest"}, ("nvidia_toolkit_version", "'latest'", "1.17.8-1")),
    "toolkit-url": ({"nvidia_toolkit_repo_url": "ftp://x"}, ("nvidia_toolkit_repo_url", "'ftp://x'", "http(s)")),
    "batch-size": ({"rollout_batch_size": "zero"}, ("rollout_batch_size", "'zero'", "percentage")),
    "typo-key": ({"docker_mirrors": ["http://m"]}, ("docker_mirrors", "did you mean docker_registry_mirrors")),
    "prune-keep": ({"weights_prune_keep": 0}, ("weights_prune_keep", "0", "an integer >= 1")),
    "fanout-width": ({"weights_fanout_width": "wide"}, ("weights_fanout_width", "'wide'", "an integer >= 1")),
    "gateway-port": ({"gateway_port": "eighty"}, ("gateway_port", "'eighty'", "an integer >= 1 and <= 65535 or None")),
    "ulimit-name": ({"service_ulimits": {"memlok": "1"}}, ("service_ulimits", "'memlok'", "memlock")),
    "alert-for": ({"monitoring_alert_for": "5 minutes"}, ("monitoring_alert_for", "'5 minutes'", "Prometheus duration")),
    "weights-typo": ({"weights_fanoutt": True}, ("weights_fanoutt", "did you mean weights_fanout?")),
    "cann-packages": ({"case_recipe": "qwen3_ascend", "ascend_cann_packages": ["foo"]},
                      ("ascend_cann_packages", "'foo'", "toolkit, kernels, nnal")),
    "cann-sha256": ({"case_recipe": "qwen3_ascend", "ascend_cann_sha256": {"x.run": "abc"}},
                    ("ascend_cann_sha256", "'abc'", "64 lowercase hex")),
    # secrets (files under each host's secrets_dir, written by the fixture)
    "secret-0644": ({"serve_api_key_secret": "open"}, ("serve_api_key_secret", "mode 0644", "chmod 600", "/open")),
    "secret-0640": ({"serve_api_key_secret": "group"}, ("serve_api_key_secret", "mode 0640", "chmod 600")),
    "secret-missing": ({"serve_api_key_secret": "absent"}, ("serve_api_key_secret", "no secret file 'absent'")),
    "secret-lines": ({"serve_api_key_secret": "two"}, ("serve_api_key_secret", "exactly one non-empty line")),
    "token-0644": ({"weights_token_secret": "open"}, ("weights_token_secret", "mode 0644", "chmod 600")),
    "token-missing": ({"weights_token_secret": "absent"}, ("weights_token_secret", "no secret file 'absent'")),
    # recipe files (case_recipe: a .yaml path the fixture writes)
    "yaml-syntax": ({"case_recipe": "broken.yaml"}, ("recipe", "broken.yaml, line 4, column 18", "not valid YAML", "flow sequence", "line 3")),
    "yaml-list": ({"case_recipe": "list.yaml"}, ("recipe", "list.yaml must hold a mapping", "got list")),
    "yaml-missing": ({"case_recipe": "nowhere.yaml"}, ("recipe", "no recipe file", "nowhere.yaml")),
    "recipe-unknown": ({"case_recipe": "qwen31b"}, ("recipe", "unknown recipe 'qwen31b'", "qwen30b_yarn")),
    "recipe-field": ({"case_recipe": "extra.yaml"}, ("max_len", "unknown field", "max_model_len")),
    "recipe-required": ({"case_recipe": "nomodel.yaml"}, ("model", "required field is missing")),
    # inventory: replicas that are one machine
    "same-port-b": ({"ssh_hostname": "10.9.9.9"}, ("serve_port", "port 8000 is also @fake/same-port-a's", "10.9.9.9")),
    "same-gpu-b": ({"ssh_hostname": "10.9.9.8", "serve_port": 8001, "serve_devices": [3, 4, 5, 6]},
                   ("serve_devices", "device 3 is also @fake/same-gpu-a's", "10.9.9.8")),
}
# Hosts whose input is good: named by no problem (the cases' partners and a plain host).
GOOD = {"good": {}, "same-port-a": {"ssh_hostname": "10.9.9.9"},
        "same-gpu-a": {"ssh_hostname": "10.9.9.8", "serve_devices": [0, 1, 2, 3]}}

RECIPE_FILES = {
    "broken.yaml": "model:\n  hub: modelscope\n  repo_id: [Qwen/Qwen3-30B-A3B\nserved_model_name: x\n",
    "list.yaml": "- a\n- b\n",
    "extra.yaml": ("model: {hub: modelscope, repo_id: Qwen/Qwen3-30B-A3B, revision: abc}\nserved_model_name: x\n"
                   "image: vllm/vllm-openai:v0.8.5\nmax_len: 4\n"),
    "nomodel.yaml": "served_model_name: x\nimage: vllm/vllm-openai:v0.8.5\n",
}
DEPLOY = 'from tasks.model import deploy_model\n\ndeploy_model(lambda data: data.get("case_recipe", "qwen30b"))\n'


def _cli(tmp: Path, hosts: list[tuple[str, dict]], deploy: str, *args: str) -> subprocess.CompletedProcess:
    """pyinfra's CLI from the repository root (its config.py applies), counting commands per host."""
    inventory = tmp / "inventory.py"
    inventory.write_text(f"hosts = {hosts!r}\n")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("LLMFLEET_SECRETS_DIR", None)
    return subprocess.run([*COUNTING, str(inventory), deploy, "-y", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120, env=env)


def _secrets(tmp: Path) -> Path:
    directory = tmp / "secrets"
    directory.mkdir()
    for name, text, mode in (("open", "sk-0123456789\n", 0o644), ("group", "sk-0123456789\n", 0o640),
                             ("two", "a\nb\n", 0o600)):
        (directory / name).write_text(text)
        (directory / name).chmod(mode)
    return directory


@pytest.fixture(scope="module")
def model_run(tmp_path_factory):
    """One CLI run of a model deploy over every model case."""
    tmp = tmp_path_factory.mktemp("bad_input")
    secrets = _secrets(tmp)
    for name, text in RECIPE_FILES.items():
        (tmp / name).write_text(text)
    (tmp / "deploy.py").write_text(DEPLOY)
    hosts = []
    for name, data in [*GOOD.items(), *((n, d) for n, (d, _) in MODEL_CASES.items())]:
        data = {**FAKE, "secrets_dir": str(secrets), **data}
        if str(data.get("case_recipe", "")).endswith(".yaml"):
            data["case_recipe"] = str(tmp / data["case_recipe"])
        hosts.append((f"@fake/{name}", data))
    return _cli(tmp, hosts, str(tmp / "deploy.py"))


def _problem_lines(proc: subprocess.CompletedProcess) -> dict[str, str]:
    lines = {}
    for line in proc.stderr.splitlines() + proc.stdout.splitlines():
        line = line.strip()
        if line.startswith("- @fake/"):
            host, _, rest = line[2:].partition(": ")
            lines[host] = rest
    return lines


def _assert_case(run: subprocess.CompletedProcess, fragments: tuple[str, ...], case: str, good: str) -> None:
    """One block, no traceback; the case's line holds every fragment; the good host is not named; no
    command ran on the case's host."""
    text = run.stdout + run.stderr
    assert run.returncode != 0 and "Traceback" not in text and text.count("--> pyinfra error") == 1
    lines = _problem_lines(run)
    line = lines.get(f"@fake/{case}")
    assert line is not None, text[-3000:]
    for fragment in fragments:
        assert fragment in line, f"{fragment!r} not in {line!r}"
    assert f"@fake/{good}" not in lines
    counts = counts_in(run.stderr)
    assert counts is not None and not counts.get(f"@fake/{case}", {}).get("commands"), counts


def test_the_run_stops_with_one_block_and_no_traceback(model_run):
    text = model_run.stdout + model_run.stderr
    assert model_run.returncode != 0
    assert "Traceback" not in text
    assert text.count("--> pyinfra error") == 1
    assert f"bad input, no host was touched ({len(MODEL_CASES)} problems)" in text
    assert set(_problem_lines(model_run)) == {f"@fake/{name}" for name in MODEL_CASES}


@pytest.mark.parametrize("case", sorted(MODEL_CASES))
def test_case(model_run, case):
    _assert_case(model_run, MODEL_CASES[case][1], case, "good")


def test_the_counter_counts_fake_hosts(tmp_path):
    """The control: a command that does run on a @fake host is counted (so zero above means none ran)."""
    proc = _cli(tmp_path, [("@fake/a", FAKE)], "exec", "--", "true")
    assert proc.returncode == 0 and counts_in(proc.stderr) == {"@fake/a": {"commands": 1}}, proc.stderr[-2000:]


def test_no_host_ran_a_command(model_run):
    counts = counts_in(model_run.stderr)
    assert counts is not None
    assert all(not c.get("commands") and not c.get("uploads") for c in counts.values()), counts


def test_debug_adds_the_traceback(tmp_path):
    proc = _cli(tmp_path, [("@fake/a", {**FAKE, "serve_max_model_len": "abc"})], "deploys/qwen30b.py", "--debug")
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "serve_max_model_len" in proc.stderr


# deploys/preflight.py: the recipe comes from host data preflight_recipe.
PREFLIGHT_CASES: dict[str, tuple[dict, tuple[str, ...]]] = {
    "pf-unset": ({}, ("preflight_recipe", "not set", "qwen30b_yarn", "--data preflight_recipe=qwen30b")),
    "pf-unknown": ({"preflight_recipe": "qwen31b"}, ("recipe", "unknown recipe 'qwen31b'")),
    "pf-context": ({"preflight_recipe": "qwen30b", "serve_max_model_len": 50000},
                   ("serve_max_model_len", "50000 is more than", "at most 40960")),
    "pf-yarn": ({"preflight_recipe": "qwen30b_yarn", "serve_max_model_len": 200000},
                ("serve_max_model_len", "original_max_position_embeddings 32768 x factor 4", "at most 131072")),
}
# deploys/bringup.py: a host without a recipe gets the runtime its data names.
BRINGUP_CASES: dict[str, tuple[dict, tuple[str, ...]]] = {
    "bu-accelerator": ({"runtime_accelerator": "tpu"}, ("runtime_accelerator", "'tpu'", "nvidia, ascend, cpu, none")),
    "bu-docker": ({"runtime_accelerator": "none", "docker_source": "snap"}, ("docker_source", "'snap'")),
    "bu-cann": ({"runtime_accelerator": "ascend", "ascend_cann_sha256": {"a.run": "x"}},
                ("ascend_cann_sha256", "64 lowercase hex")),
    "bu-recipe": ({"preflight_recipe": "qwen30b", "serve_devices": [0, 1]}, ("serve_devices", "list exactly 4")),
}


@pytest.fixture(scope="module")
def preflight_run(tmp_path_factory):
    hosts = [(f"@fake/{name}", {**FAKE, **data}) for name, (data, _) in PREFLIGHT_CASES.items()]
    hosts.append(("@fake/pf-good", {**FAKE, "preflight_recipe": "qwen30b"}))
    return _cli(tmp_path_factory.mktemp("preflight"), hosts, "deploys/preflight.py")


@pytest.mark.parametrize("case", sorted(PREFLIGHT_CASES))
def test_preflight_case(preflight_run, case):
    _assert_case(preflight_run, PREFLIGHT_CASES[case][1], case, "pf-good")


@pytest.fixture(scope="module")
def bringup_run(tmp_path_factory):
    hosts = [(f"@fake/{name}", {**FAKE, **data}) for name, (data, _) in BRINGUP_CASES.items()]
    hosts.append(("@fake/bu-good", {**FAKE, "runtime_accelerator": "ascend", "nvidia_toolkit_version": "not read"}))
    return _cli(tmp_path_factory.mktemp("bringup"), hosts, "deploys/bringup.py")


@pytest.mark.parametrize("case", sorted(BRINGUP_CASES))
def test_bringup_case(bringup_run, case):
    _assert_case(bringup_run, BRINGUP_CASES[case][1], case, "bu-good")


SSH_CASES = {
    "key-missing": ({"ssh_key": "/nonexistent/llmfleet-test-key"}, ("ssh_key", "/nonexistent/llmfleet-test-key",
                                                                     "no such private key file")),
    "key-dir": ({"ssh_key": "/"}, ("ssh_key", "'/'", "no such private key file")),
}


@pytest.fixture(scope="module")
def ssh_run(tmp_path_factory):
    hosts = [(name, {"ssh_hostname": "127.0.0.1", "ssh_port": 9, **data}) for name, (data, _) in SSH_CASES.items()]
    return _cli(tmp_path_factory.mktemp("ssh"), hosts, "deploys/qwen30b.py")


@pytest.mark.parametrize("case", sorted(SSH_CASES))
def test_ssh_case(ssh_run, case):
    text = ssh_run.stdout + ssh_run.stderr
    assert ssh_run.returncode != 0 and "Traceback" not in text
    line = next((ln for ln in text.splitlines() if f"[{case}]" in ln), "")
    for fragment in SSH_CASES[case][1]:
        assert fragment in line, f"{fragment!r} not in {line!r}\n{text[-2000:]}"
    counts = counts_in(ssh_run.stderr) or {}
    assert not counts.get(case, {}).get("commands")
