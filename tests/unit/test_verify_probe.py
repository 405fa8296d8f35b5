"""The endpoint probe (tasks/probe/verify_endpoint.py) against the stand-in vLLM server on loopback."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from tests.unit.test_vllm_standin import model_dir, running  # noqa: F401  (fixtures)

from tasks.verify import EndpointChecks, row, table

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("verify_endpoint", ROOT / "tasks/probe/verify_endpoint.py")
probe = importlib.util.module_from_spec(spec)
spec.loader.exec_module(probe)

KEY = "sk-probe-test-0b7e"
TEMPLATE = str(ROOT / "templates/chat/qwen3_nonthinking.jinja")


def config(tmp_path, port, key=KEY, **extra):
    env = tmp_path / "m.env"
    env.write_text(f"VLLM_API_KEY={key}\n")
    return {"name": "m", "unit": "llmfleet-m-test-absent.service", "container": "llmfleet-m-test-absent",
            "progress_dir": str(tmp_path / "progress"),
            "port": port, "served_model_name": "coder", "env_file": str(env), "startup_budget_s": 30, **extra}


def test_non_thinking_server_passes_with_key(tmp_path, model_dir, running):
    srv = running("0.8.5", ["--model", str(model_dir), "--served-model-name", "coder",
                            "--chat-template", TEMPLATE], VLLM_API_KEY=KEY)
    result = probe.run(config(tmp_path, srv.port, non_thinking=True), wait=10)
    assert result["ok"], result
    assert result["checks"]["models"] == ["coder"] and result["checks"]["chat"]["thinking"] is False
    assert "ok" == row(result)["ok"] and "no thinking" in row(result)["detail"]


def test_thinking_answer_fails_a_non_thinking_recipe(tmp_path, model_dir, running):
    srv = running("0.8.5", ["--model", str(model_dir), "--served-model-name", "coder"], VLLM_API_KEY=KEY)
    result = probe.run(config(tmp_path, srv.port, non_thinking=True), wait=10)
    assert not result["ok"] and "thinks" in result["error"]
    assert result["log_tail"]  # something is always shown, even without docker


def test_reasoning_field_fails_a_non_thinking_recipe(tmp_path, model_dir, running):
    # deepseek_r1 on a non-thinking answer puts it all into reasoning_content (seed 000's trap)
    srv = running("0.8.5", ["--model", str(model_dir), "--served-model-name", "coder", "--enable-reasoning",
                            "--reasoning-parser", "deepseek_r1", "--chat-template", TEMPLATE], VLLM_API_KEY=KEY)
    result = probe.run(config(tmp_path, srv.port, non_thinking=True), wait=10)
    assert not result["ok"] and "reasoning" in result["error"]


def test_tool_call_parsed(tmp_path, model_dir, running):
    srv = running("0.18.0", ["--model", str(model_dir), "--served-model-name", "coder",
                             "--enable-auto-tool-choice", "--tool-call-parser", "hermes"], VLLM_API_KEY=KEY)
    result = probe.run(config(tmp_path, srv.port, tool_calls=True), wait=10)
    assert result["ok"], result
    assert result["checks"]["tool_call"] == {"name": "get_weather", "arguments": {"city": "stand-in"}}


def test_tool_recipe_without_parser_fails(tmp_path, model_dir, running):
    srv = running("0.18.0", ["--model", str(model_dir), "--served-model-name", "coder"], VLLM_API_KEY=KEY)
    result = probe.run(config(tmp_path, srv.port, tool_calls=True), wait=10)
    assert not result["ok"] and "tool call" in result["error"]


def test_wrong_key_and_wrong_name_fail_without_leaking_the_key(tmp_path, model_dir, running):
    srv = running("0.8.5", ["--model", str(model_dir), "--served-model-name", "other"], VLLM_API_KEY=KEY)
    bad = probe.run(config(tmp_path, srv.port, key="sk-wrong-1234"), wait=10)
    assert not bad["ok"] and "HTTP 401" in bad["error"] and "sk-wrong-1234" not in json.dumps(bad)
    named = probe.run(config(tmp_path, srv.port), wait=10)
    assert not named["ok"] and "not the served name 'coder'" in named["error"]


def test_nothing_listening_fails_within_the_wait(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = probe.run(config(tmp_path, port), wait=3)
    assert not result["ok"] and "/health" in result["error"] and result["elapsed_s"] < 10


def test_main_prints_json_and_host_on_failure(tmp_path, capsys):
    path = tmp_path / "c.json"
    path.write_text(json.dumps(config(tmp_path, 1)))
    assert probe.main(["--config", str(path), "--wait", "1"]) == 1
    out, err = capsys.readouterr()
    assert json.loads(out)["ok"] is False
    assert err.startswith("llmfleet verify FAILED on host ") and "last 30 lines" in err


def test_fact_parses_probe_lines_and_table():
    line = json.dumps({"host": "h", "name": "m", "port": 8000, "served_model_name": "coder", "ok": True,
                       "checks": {"health_s": 1.0}})
    results = EndpointChecks().process(["noise", line])
    assert len(results) == 1
    text = table([row(r) for r in results])
    assert "coder" in text.splitlines()[2] and "healthy in 1.0 s" in text
