"""Monitoring: the fleet from the inventory (bad data refused naming host and field), rules and dashboard
per vLLM version, receivers from secrets, and the whole deploy on @fake hosts."""

from __future__ import annotations

import yaml
import pytest
from pyinfra.api import Config, Inventory, State
from pyinfra.api.connect import connect_all
from pyinfra.api.deploy import add_deploy
from pyinfra.api.operations import run_ops

from tasks.monitoring import dashboard, fleet, render
from tasks.bad_input import BadInput
from tasks.monitoring.deploy import monitor, options, receivers
from tasks.settings.monitoring import MonitoringSettings
from tasks.spec import SpecError

OLD, NEW = "vllm/vllm-openai:v0.8.5", "vllm/vllm-openai:v0.18.0"

OPTS = MonitoringSettings()  # the defaults


def _fleet(*heads: tuple[str, str], **extra) -> fleet.Fleet:
    hosts = [(name, {"monitoring_recipe": "qwen30b", "serve_image": image, **extra}, ["qwen30b"])
             for name, image in heads]
    return fleet.build(hosts + [("mon", {}, ["monitoring"])])


def test_heads_carry_recipe_replica_host_version_and_the_spec_port():
    f = _fleet(("g1", OLD), ("g2", NEW), serve_port=8123, ssh_hostname="10.1.0.7")
    config = yaml.safe_load(render.prometheus_config(f, OPTS))
    jobs = {j["job_name"]: j["static_configs"] for j in config["scrape_configs"]}
    assert jobs["vllm"] == [
        {"targets": ["10.1.0.7:8123"], "labels": {"recipe": "qwen30b", "replica": "g1", "host": "g1",
                                                  "vllm_version": "0.8.5", "model": "coder"}},
        {"targets": ["10.1.0.7:8123"], "labels": {"recipe": "qwen30b", "replica": "g2", "host": "g2",
                                                  "vllm_version": "0.18.0", "model": "coder"}}]
    assert [t["labels"]["host"] for t in jobs["dcgm"]] == ["g1", "g2"]  # the recipe's accelerator
    assert [t["labels"]["host"] for t in jobs["node"]] == ["g1", "g2", "mon"]
    assert "npu" not in jobs
    assert config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["mon:9093"]


def test_rules_use_each_versions_names():
    rules = {r["alert"]: r["expr"] for r in yaml.safe_load(render.rules(_fleet(("g1", OLD), ("g2", NEW)), OPTS))
             ["groups"][0]["rules"]}
    assert rules["LlmfleetKvCacheHigh"] == (
        '(vllm:gpu_cache_usage_perc{job="vllm",vllm_version=~"0.8.5"} > 0.9) or '
        '(vllm:kv_cache_usage_perc{job="vllm",vllm_version=~"0.18.0"} > 0.9)')
    # Names common to both versions: one clause for both.
    assert rules["LlmfleetRequestsWaiting"] == '(vllm:num_requests_waiting{job="vllm",vllm_version=~"0.18.0|0.8.5"} > 10)'
    assert set(rules) >= {"LlmfleetReplicaDown", "LlmfleetTtftP95OverBudget", "LlmfleetGenerationStalled",
                          "LlmfleetGpuXid", "LlmfleetGpuTemperature", "LlmfleetGpuMemoryErrors",
                          "LlmfleetFabricManagerDown", "LlmfleetWeightsDiskNearlyFull"}
    only_new = yaml.safe_load(render.rules(_fleet(("g2", NEW)), OPTS))["groups"][0]["rules"]
    assert "gpu_cache_usage_perc" not in str(only_new)


def test_ttft_budget_per_recipe_from_group_data():
    f = fleet.build([("a", {"monitoring_recipe": "qwen30b", "monitoring_ttft_p95_budget_s": 2}, ["qwen30b"]),
                     ("b", {"monitoring_recipe": "qwen32b_awq", "monitoring_ttft_p95_budget_s": 8}, ["qwen32b"])])
    expr = next(r["expr"] for r in yaml.safe_load(render.rules(f, OPTS))["groups"][0]["rules"]
                if r["alert"] == "LlmfleetTtftP95OverBudget")
    assert 'recipe="qwen30b"}[5m]))) > 2.0' in expr and 'recipe="qwen32b_awq"}[5m]))) > 8.0' in expr


def test_dashboard_reads_both_names_while_a_fleet_upgrades():
    board = dashboard.dashboard(_fleet(("g1", OLD), ("g2", NEW)))
    exprs = dict(dashboard.queries(board))
    assert "vllm:time_per_output_token_seconds_bucket" in exprs["Inter-token latency p95"]
    assert "vllm:inter_token_latency_seconds_bucket" in exprs["Inter-token latency p95"]
    assert "vllm:gpu_prefix_cache_hits_total" in exprs["Prefix cache hit rate"]
    assert set(exprs) >= {"Running requests", "Waiting requests", "Generated tokens/s", "TTFT p50", "TTFT p95",
                          "Inter-token latency p50", "KV cache usage", "GPU utilisation", "GPU memory used",
                          "GPU temperature", "GPU XID (last error)"}


@pytest.mark.parametrize("data, field", [
    ({"monitoring_recipe": "nope"}, "g1: monitoring_recipe"),
    ({"monitoring_recipe": "qwen30b", "serve_port": 0}, "g1: port"),
    ({"monitoring_recipe": "qwen30b", "monitoring_ttft_p95_budget_s": -1}, "g1: monitoring_ttft_p95_budget_s"),
    ({"ssh_hostname": "10.0.0.1; rm -rf /"}, "g1: monitoring_address"),
    ({"runtime_accelerator": "tpu"}, "g1: runtime_accelerator"),
])
def test_bad_inventory_data_is_refused_naming_host_and_field(data, field):
    with pytest.raises(SpecError) as err:
        fleet.build([("g1", data, [])])
    assert err.value.problems[0][0] == field


def test_receivers_come_from_secret_files(tmp_path):
    (tmp_path / "hook").write_text("https://hooks.internal/T0/abc\n")
    (tmp_path / "notaurl").write_text("hello\n")
    for name in ("hook", "notaurl"):
        (tmp_path / name).chmod(0o600)  # secret files are the owner's only (tasks.secrets)
    data = {"secrets_dir": str(tmp_path)}
    opts = MonitoringSettings(monitoring_receivers=[{"name": "oncall", "webhook_secret": "hook"}])
    assert receivers(opts, data) == [("oncall", tmp_path / "hook")]
    for bad, field in ([{"name": "x", "webhook_secret": "missing"}], "monitoring_receivers[0].webhook_secret"), \
                      ([{"name": "x", "webhook_secret": "notaurl"}], "monitoring_receivers[0].webhook_secret"), \
                      ([{"name": "x y", "webhook_secret": "hook"}], "monitoring_receivers[0].name"), \
                      ([{"name": "x", "url": "https://a"}], "monitoring_receivers[0]"):
        with pytest.raises(SpecError) as err:
            receivers(MonitoringSettings(monitoring_receivers=bad), data)
        assert err.value.field == field


def _run(tmp_path, monkeypatch, **mon) -> tuple[State, dict[str, str]]:
    from pyinfra.connectors.fake import FakeConnector

    uploads: dict[str, str] = {}

    def put_file(self, filename_or_io, remote_filename, *args, **kwargs):
        data = filename_or_io.read() if hasattr(filename_or_io, "read") else open(filename_or_io, "rb").read()
        uploads[f"{self.host.name}:{remote_filename}"] = data.decode() if isinstance(data, bytes) else data
        return True

    monkeypatch.setattr(FakeConnector, "put_file", put_file)
    (tmp_path / "hook").write_text("https://hooks.internal/T0/secret-part\n")
    (tmp_path / "hook").chmod(0o600)
    fake = {"fake_delay": 0, "fake_delay_jitter": 0}
    hosts = [("@fake/gpu1", {**fake, "monitoring_recipe": "qwen30b", "monitoring_address": "10.0.0.1"}),
             ("@fake/npu1", {**fake, "monitoring_recipe": "qwen3_ascend", "monitoring_address": "10.0.0.2"}),
             ("@fake/mon", {**fake, "secrets_dir": str(tmp_path), "monitoring_address": "10.0.0.3", **mon,
                            "monitoring_receivers": [{"name": "oncall", "webhook_secret": "hook"}]}),
             ("@fake/gw", {**fake, "monitoring_address": "10.0.0.4"})]
    state = State(Inventory((hosts, {}), monitoring=(["@fake/mon"], {}), gateway=(["@fake/gw"], {})), Config())
    connect_all(state)
    add_deploy(state, monitor)
    run_ops(state)
    return state, uploads


def test_deploy_on_fake_hosts(tmp_path, monkeypatch):
    state, uploads = _run(tmp_path, monkeypatch, monitoring_grafana=True)
    commands = {h.name: "\n".join(map(str, h.connector.executed_commands)) for h in state.inventory}
    assert "prometheus-node-exporter" in commands["@fake/gpu1"] and "prometheus-node-exporter" in commands["@fake/npu1"]
    assert "docker pull -q nvcr.io/nvidia/k8s/dcgm-exporter:4.2.3-4.1.3-ubuntu22.04" in commands["@fake/gpu1"]
    dcgm = uploads["@fake/gpu1:/etc/systemd/system/llmfleet-dcgm-exporter.service"]
    assert "--gpus all --cap-drop ALL --cap-add SYS_ADMIN -p 9400:9400" in dcgm
    assert not any("dcgm" in k for k in uploads if k.startswith("@fake/npu1"))
    npu = uploads["@fake/npu1:/etc/systemd/system/llmfleet-npu-exporter.service"]
    assert "--device /dev/davinci_manager" in npu and "--privileged" not in npu
    assert "-v /usr/local/Ascend/driver:/usr/local/Ascend/driver:ro" in npu
    mon = commands["@fake/mon"]
    assert "promtool check rules" in mon and "promtool check config" in mon
    assert "grafana/grafana:11.3.0" in uploads["@fake/mon:/etc/systemd/system/llmfleet-grafana.service"]
    config = yaml.safe_load(uploads["@fake/mon:/etc/prometheus/prometheus.yml.llmfleet-new"])
    assert {j["job_name"] for j in config["scrape_configs"]} == {"prometheus", "node", "dcgm", "npu", "gateway",
                                                                 "gateway_upstreams", "vllm"}
    assert [j["static_configs"] for j in config["scrape_configs"] if j["job_name"] == "gateway_upstreams"] == [
        [{"targets": ["10.0.0.4:3903"], "labels": {"host": "@fake/gw"}}]]
    assert "LOGS=/var/log/nginx/llmfleet-*.upstreams.log\nPORT=3903\n" in uploads["@fake/gw:/etc/default/mtail"]
    assert "counter llmfleet_gateway_upstream_retries_total" in uploads["@fake/gw:/etc/mtail/llmfleet-gateway.mtail"]
    assert "mtail" in commands["@fake/gw"] and "mtail" not in commands["@fake/gpu1"]
    assert "listen 127.0.0.1:8079;" in uploads["@fake/gw:/etc/nginx/conf.d/llmfleet-stub-status.conf"]
    assert "prometheus-nginx-exporter" in commands["@fake/gw"] and "nginx -s reload" in commands["@fake/gw"]
    assert "prometheus-nginx-exporter" not in commands["@fake/gpu1"]
    # The webhook URL: only in the Alertmanager file's upload (0640 root:prometheus), nowhere else.
    holding = [k for k, v in uploads.items() if "secret-part" in v]
    assert holding == ["@fake/mon:/etc/prometheus/.alertmanager.yml.new"]
    assert "secret-part" not in "\n".join(commands.values())
    assert "chown root:prometheus /etc/prometheus/.alertmanager.yml.new && chmod 640" in mon
    assert "prometheus" not in commands["@fake/gpu1"].replace("prometheus-node-exporter", "")


def test_bad_replica_data_stops_the_run_before_any_host_is_touched(tmp_path):
    fake = {"fake_delay": 0, "fake_delay_jitter": 0}
    hosts = [("@fake/gpu1", {**fake, "monitoring_recipe": "qwen30b", "monitoring_address": "10.0.0.1",
                             "serve_max_model_len": -5}),
             ("@fake/mon", {**fake, "monitoring_address": "10.0.0.3"})]
    state = State(Inventory((hosts, {}), monitoring=(["@fake/mon"], {})), Config())
    connect_all(state)
    with pytest.raises(SpecError) as err:
        add_deploy(state, monitor)
    assert err.value.field == "@fake/gpu1: max_model_len"
    assert all(not h.connector.executed_commands for h in state.inventory)


@pytest.mark.parametrize("key, value", [("monitoring_alert_for", "5 minutes"), ("monitoring_retention_size", "lots"),
                                        ("monitoring_kv_cache_high", 90), ("monitoring_gpu_temp_c", "hot"),
                                        ("monitoring_dcgm_image", "nvcr.io/nvidia/k8s/dcgm-exporter:latest"),
                                        ("monitoring_storage_dir", "metrics")])
def test_bad_settings_are_refused_naming_the_key(key, value):
    assert options({}) == MonitoringSettings()
    with pytest.raises(BadInput) as err:
        options({key: value})
    assert [(p.field, p.given) for p in err.value.problems] == [(key, repr(value))]
    assert "allowed" in err.value.problems[0].message
