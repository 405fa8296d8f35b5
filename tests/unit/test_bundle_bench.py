"""Bundles (save/load ops) and the fleet benchmark's pieces (container args, command, table)."""

from __future__ import annotations

import json

import pytest
from pyinfra.api import Config, Inventory, State
from pyinfra.api.connect import connect_all
from pyinfra.api.deploy import add_deploy
from pyinfra.api.exceptions import PyinfraError
from pyinfra.api.operations import run_ops

from tasks import bench, bundle

IMG = "llmfleet/glm5:0123456789ab"
IMG_ID = "sha256:" + "b" * 64


def _run(data, func, *args):
    inventory = Inventory(([("@fake/h", {"fake_delay": 0, "fake_delay_jitter": 0, **data})], {}))
    state = State(inventory, Config())
    connect_all(state)
    add_deploy(state, func, *args)
    run_ops(state)
    return inventory.get_host("@fake/h").connector.executed_commands


def test_bundle_name():
    assert bundle.bundle_name(IMG) == "llmfleet_glm5-0123456789ab"
    assert bundle.bundle_name("vllm/vllm-openai:v0.18.0") == "vllm_vllm-openai-v0.18.0"


def test_make_bundle_saves_then_is_a_noop_when_the_tar_holds_the_image(tmp_path):
    data = {"bundle_local_dir": str(tmp_path), "fake_responses": {"docker images": [f"{IMG} {IMG_ID}"]}}
    cmds = _run(data, bundle.make_bundle, IMG)
    save = [c for c in cmds if "docker save" in c]
    assert len(save) == 1 and f"docker save -o /var/cache/llmfleet/bundles/llmfleet_glm5-0123456789ab.tar.partial {IMG}" in save[0]
    data["fake_responses"][".tar.id"] = [IMG_ID]
    assert not [c for c in _run(data, bundle.make_bundle, IMG) if "docker save" in c]


def test_make_bundle_refuses_an_absent_image(tmp_path):
    with pytest.raises(PyinfraError):
        _run({"bundle_local_dir": str(tmp_path), "fake_responses": {"docker images": []}}, bundle.make_bundle, IMG)


def test_saved_image_id_fact():
    fact = bundle.SavedImageId()
    assert fact.process([IMG_ID]) == IMG_ID and fact.process([]) is None
    assert "glm5.tar.id" in fact.command("/b/glm5.tar")


ARGS = ["--model", "/model", "--served-model-name", "glm5", "--host", "0.0.0.0", "--port", "8001",
        "--tensor-parallel-size", "4"]


def test_endpoint_from_args_both_launchers_and_non_vllm():
    assert bench.endpoint_from_args("llmfleet-glm5", ARGS) == bench.Endpoint("llmfleet-glm5", "/model", "glm5", 8001)
    ascend = bench.endpoint_from_args("llmfleet-q", ["vllm", "serve", "/model", "--port=9000"])
    assert ascend == bench.Endpoint("llmfleet-q", "/model", "/model", 9000)
    assert bench.endpoint_from_args("llmfleet-smoke", []) is None


def test_serving_containers_fact_parses_docker_inspect():
    lines = [f"/llmfleet-glm5\t{json.dumps(ARGS)}", "/llmfleet-smoke\tnull", "/garbage\t{"]
    assert bench.ServingContainers().process(lines) == [bench.Endpoint("llmfleet-glm5", "/model", "glm5", 8001)]


def test_bench_command_has_no_secret_and_real_flags():
    ep = bench.Endpoint("llmfleet-glm5", "/model", "glm5", 8001)
    cmd = bench.bench_command(ep, "/tmp/r.json", 20, 128, 32, max_concurrency=4)
    assert cmd.startswith('OPENAI_API_KEY="${VLLM_API_KEY:-}" exec vllm bench serve ')
    for flag in ("--base-url http://127.0.0.1:8001", "--model /model", "--served-model-name glm5",
                 "--num-prompts 20", "--random-input-len 128", "--random-output-len 32",
                 "--save-result", "--result-filename /tmp/r.json", "--max-concurrency 4"):
        assert flag in cmd


def test_fleet_table_and_report(tmp_path):
    run = tmp_path / "r1"
    run.mkdir()
    for host, ttft, rps in (("h1", 10.0, 5.0), ("h2", 30.0, 3.0)):
        (run / f"{host}__llmfleet-glm5.json").write_text(json.dumps({
            "served_model_name": "glm5", "median_ttft_ms": ttft, "p99_ttft_ms": ttft * 2, "mean_tpot_ms": 1.5,
            "request_throughput": rps, "output_throughput": rps * 64, "completed": 20, "num_prompts": 20}))
    printed = []
    report = bench.write_report(run, tmp_path / "r1.json", printer=printed.append)
    table = printed[0].splitlines()[1:]
    assert table[0].split() == ["host", "model", "TTFT", "p50", "ms", "TTFT", "p99", "ms", "TPOT", "ms",
                                "req/s", "tok/s", "ok/n"]
    assert table[2].split() == ["h1", "glm5", "10.0", "20.0", "1.50", "5.00", "320.0", "20/20"]
    assert table[4].split()[:2] == ["fleet", "2"] and table[4].split()[-3:] == ["8.00", "512.0", "40/40"]
    saved = json.loads((tmp_path / "r1.json").read_text())
    assert saved == report and [e["host"] for e in saved["endpoints"]] == ["h1", "h2"]
