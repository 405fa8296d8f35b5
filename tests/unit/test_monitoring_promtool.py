"""The generated rules and Prometheus configuration through Debian's promtool (bin/setup unpacks it
into .venv/bin): ``check rules``, ``check config`` and ``test rules`` with input series carrying the
old metric names (a 0.8.5 replica) beside the new ones (0.18.0)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tasks.monitoring import fleet, render
from tasks.settings.monitoring import MonitoringSettings

PROMTOOL = Path(sys.executable).with_name("promtool")
OLD, NEW = "vllm/vllm-openai:v0.8.5", "vllm/vllm-openai:v0.18.0"
OPTS = MonitoringSettings(monitoring_alert_for="1m", monitoring_down_for="30s", monitoring_waiting_high=5)


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    assert PROMTOOL.exists(), f"{PROMTOOL} is missing: run bin/setup"
    return subprocess.run([str(PROMTOOL), *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def whole_fleet() -> fleet.Fleet:
    return fleet.build([
        ("old", {"monitoring_recipe": "qwen30b", "serve_image": OLD, "monitoring_ttft_p95_budget_s": 2}, []),
        ("new", {"monitoring_recipe": "qwen30b", "serve_image": NEW, "monitoring_ttft_p95_budget_s": 2}, []),
        ("npu", {"monitoring_recipe": "qwen3_ascend", "weights_root": "/data/models"}, []),
        ("gw", {}, ["gateway"]), ("mon", {}, ["monitoring"])])


def labels(replica: str, version: str) -> dict[str, str]:
    return {"job": "vllm", "recipe": "qwen30b", "replica": replica, "host": replica,
            "instance": f"{replica}:8000", "vllm_version": version}


def series(name: str, lab: dict[str, str]) -> str:
    return name + "{" + ",".join(f'{k}="{v}"' for k, v in lab.items()) + "}"


def test_rules_and_config_pass_promtool_check(tmp_path):
    f = whole_fleet()
    (tmp_path / "rules.yml").write_text(render.rules(f, OPTS))
    checked = promtool("check", "rules", "rules.yml", cwd=tmp_path)
    assert checked.returncode == 0 and "SUCCESS: 12 rules found" in checked.stdout, checked.stdout + checked.stderr
    config = render.prometheus_config(f, OPTS).replace(render.RULES_PATH, str(tmp_path / "rules.yml"))
    (tmp_path / "prometheus.yml").write_text(config)
    checked = promtool("check", "config", "prometheus.yml", cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def alert(name: str, lab: dict[str, str], severity: str, summary: str) -> dict:
    return {"exp_labels": {"severity": severity, **lab}, "exp_annotations": {"summary": summary}}


def rule_test(old_kv_name: str) -> dict:
    old, new = labels("old", "0.8.5"), labels("new", "0.18.0")
    buckets = {"0.5": "0+1x20", "1": "0+2x20", "5": "0+10x20", "+Inf": "0+10x20"}  # p95 between 1 and 5 s
    inputs = [
        {"series": series(old_kv_name, old), "values": "0.5 0.95x20"},
        {"series": series("vllm:kv_cache_usage_perc", new), "values": "0.5 0.97x20"},
        {"series": series("vllm:num_requests_waiting", old), "values": "0 9x20"},
        {"series": series("vllm:num_requests_waiting", new), "values": "0x21"},
        {"series": series("vllm:num_requests_running", old), "values": "3x21"},
        {"series": series("vllm:generation_tokens_total", old), "values": "100x21"},  # stalled
        {"series": series("vllm:num_requests_running", new), "values": "3x21"},
        {"series": series("vllm:generation_tokens_total", new), "values": "0+50x20"},  # generating
        {"series": series("up", old), "values": "1 1 0x19"},
        {"series": series("up", new), "values": "1x21"},
    ] + [{"series": series("vllm:time_to_first_token_seconds_bucket", {**new, "le": le}), "values": v}
         for le, v in buckets.items()]
    return {"interval": "15s", "input_series": inputs, "alert_rule_test": [
        {"eval_time": "3m", "alertname": "LlmfleetKvCacheHigh", "exp_alerts": [
            alert("", old, "warning", "KV cache of old above 95%"),
            alert("", new, "warning", "KV cache of new above 97%")]},
        {"eval_time": "3m", "alertname": "LlmfleetRequestsWaiting", "exp_alerts": [
            alert("", old, "warning", "9 requests waiting on old")]},
        {"eval_time": "4m", "alertname": "LlmfleetGenerationStalled", "exp_alerts": [
            alert("", old, "critical", "old runs requests but generates no token")]},
        {"eval_time": "3m", "alertname": "LlmfleetReplicaDown", "exp_alerts": [
            alert("", old, "critical", "vLLM replica old (qwen30b) does not answer /metrics")]},
        {"eval_time": "3m", "alertname": "LlmfleetTtftP95OverBudget", "exp_alerts": [
            {"exp_labels": {"severity": "warning", "recipe": "qwen30b", "replica": "new", "host": "new",
                            "vllm_version": "0.18.0"},
             "exp_annotations": {"summary": "TTFT p95 of new (qwen30b) is 4.75 s"}}]},
    ]}


@pytest.mark.parametrize("old_kv_name, passes", [("vllm:gpu_cache_usage_perc", True),
                                                 ("vllm:kv_cache_usage_perc", False)])
def test_rules_fire_on_old_and_new_metric_names(tmp_path, old_kv_name, passes):
    """With the 0.8.5 replica's KV cache series under its real (old) name both replicas alert; under the
    new name (which 0.8.5 does not export) the rule for 0.8.5 would not see it and the test fails."""
    (tmp_path / "rules.yml").write_text(render.rules(whole_fleet(), OPTS))
    (tmp_path / "test.yml").write_text(yaml.safe_dump(
        {"rule_files": ["rules.yml"], "evaluation_interval": "15s", "tests": [rule_test(old_kv_name)]},
        sort_keys=False))
    result = promtool("test", "rules", "test.yml", cwd=tmp_path)
    assert (result.returncode == 0) == passes, result.stdout + result.stderr
    if passes:
        assert "SUCCESS" in result.stdout
    else:
        assert "LlmfleetKvCacheHigh" in result.stdout + result.stderr
