"""Monitoring end to end in the lab ("mo": h1, h2 replicas on rtx4090x2, h3 the monitoring host and gateway).

Real Prometheus, Alertmanager, node exporter and promtool from Debian's packages on the lab hosts; the
replicas run the stand-in vLLM images (h1 v0.10.1.1, which exports the old inter-token latency
name, h2 v0.18.0) and the stand-in dcgm-exporter image under its real name. Every target is up
(Prometheus' HTTP API), requests show per-replica series, every dashboard panel's query returns
data, a stopped replica fires the replica-down alert into Alertmanager and resolves once restarted,
the deployed rules pass ``promtool check``, a second run changes nothing,
and the webhook URL (a secret) is in no output and only in a 0640 root:prometheus file.
Grafana is not in the lab (no image): its provisioning files are written and walked here.
"""

from __future__ import annotations

import json
import secrets
import time
import urllib.parse
import urllib.request

import pytest

from bench.client_loop import ClientLoop
from tasks.monitoring import dashboard

from .helpers import pyinfra, own_lab, secrets_env, ssh, wait_for

PROFILES = ["rtx4090x2", "rtx4090x2", "cpu"]
OLD, NEW = "vllm/vllm-openai:v0.10.1.1", "vllm/vllm-openai:v0.18.0"
KEY_SECRET, HOOK_SECRET = "mo_api_key", "mo_webhook"
UNIT = "llmfleet-qwen30b_fp8.service"
MONITORING = {"monitoring_scrape_interval": "2s", "monitoring_evaluation_interval": "2s",
              "monitoring_down_for": "4s", "monitoring_alert_for": "1m", "monitoring_group_wait": "1s",
              "monitoring_receivers": [{"name": "oncall", "webhook_secret": HOOK_SECRET}]}


def inventory_text(lab_inventory: str) -> str:
    """The lab's inventory plus what an operator's would say: the replicas' recipe and images, the monitoring group."""
    return lab_inventory + (
        "\nfor _name, _data in rtx4090x2:\n"
        "    _data.update(monitoring_recipe='qwen30b_fp8', serve_api_key_secret=%r)\n"
        "rtx4090x2[0][1]['serve_image'] = %r\nrtx4090x2[1][1]['serve_image'] = %r\n"
        "cpu[0][1].update(%r)\nreplicas = rtx4090x2\nmonitoring = cpu\ngateway = cpu\n"
    ) % (KEY_SECRET, OLD, NEW, MONITORING)


@pytest.fixture(scope="module")
def mo(tmp_path_factory):
    work = tmp_path_factory.mktemp("mo")
    key, hook = "sk-mo-" + secrets.token_hex(16), f"http://127.0.0.1:9/hook-{secrets.token_hex(8)}"
    with own_lab("mo", PROFILES) as state, secrets_env(work / "secrets", **{KEY_SECRET: key, HOOK_SECRET: hook}):
        inv = work / "inventory.py"
        inv.write_text(inventory_text(open(state["inventory"]).read()))
        # h1, h2, h3 -> the lab's host names (they carry the lab's name)
        ips = {f"h{i}": h["ip"] for i, h in enumerate(state["hosts"], 1)}
        names = {f"h{i}": h["name"] for i, h in enumerate(state["hosts"], 1)}
        started = time.monotonic()
        pyinfra(inv, "deploys/qwen30b_fp8.py", data={"preflight_weights_bytes": 1_000_000}, timeout=900)
        model_s = time.monotonic() - started
        first = pyinfra(inv, "deploys/monitoring.py", timeout=600)
        again = pyinfra(inv, "deploys/monitoring.py", timeout=300)
        yield {"ips": ips, "names": names, "key": key, "hook": hook, "first": first, "again": again, "work": work,
               "timing": {"model": model_s, "monitoring": time.monotonic() - started - model_s}}


def api(mo, port: int, path: str, **params) -> dict | list:
    url = f"http://{mo['ips']['h3']}:{port}{path}"
    if params:
        url += "?" + urllib.parse.urlencode(params)
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


def query(mo, expr: str) -> list[dict]:
    return api(mo, 9090, "/api/v1/query", query=expr)["data"]["result"]


def down_alerts(mo) -> list[dict]:
    return [a for a in api(mo, 9093, "/api/v2/alerts", active="true")
            if a["labels"].get("alertname") == "LlmfleetReplicaDown"]


def test_converged_and_second_run_changes_nothing(mo):
    changed = mo["first"].changed()
    assert any(name.endswith("Prometheus configuration") for name in changed)
    assert any(name.endswith("dcgm-exporter: unit") for name in changed)
    assert mo["again"].changed() == {}
    text = "".join(r.stdout + r.stderr for r in (mo["first"], mo["again"]))
    assert mo["hook"] not in text
    h3 = mo["ips"]["h3"]
    assert ssh(h3, "stat -c '%a %U:%G' /etc/prometheus/alertmanager.yml").stdout.split() == ["640", "root:prometheus"]
    assert mo["hook"] in ssh(h3, "cat /etc/prometheus/alertmanager.yml").stdout
    print(f"\nmonitoring lab timing: model deploy {mo['timing']['model']:.0f} s, "
          f"monitoring first + second run {mo['timing']['monitoring']:.0f} s")


def test_every_target_up(mo):
    def all_up():
        targets = api(mo, 9090, "/api/v1/targets")["data"]["activeTargets"]
        return targets if targets and all(t["health"] == "up" for t in targets) else None

    targets = wait_for(all_up, 60)
    assert targets, api(mo, 9090, "/api/v1/targets")["data"]["activeTargets"]
    h1, h2, h3 = (mo["names"][h] for h in ("h1", "h2", "h3"))
    jobs = sorted((t["labels"]["job"], t["labels"].get("host", "")) for t in targets)
    assert jobs == [("dcgm", h1), ("dcgm", h2), ("gateway", h3), ("gateway_upstreams", h3), ("node", h1),
                    ("node", h2), ("node", h3), ("prometheus", ""), ("vllm", h1), ("vllm", h2)]
    heads = {t["labels"]["replica"]: t["labels"] for t in targets if t["labels"]["job"] == "vllm"}
    assert heads[h1]["vllm_version"] == "0.10.1.1" and heads[h2]["vllm_version"] == "0.18.0"
    assert {h["recipe"] for h in heads.values()} == {"qwen30b_fp8"}


def test_requests_show_per_replica_series_and_every_panel_has_data(mo):
    # Through the gateway (its requests/s panel) and to each replica directly (per-replica series).
    for base in (mo["ips"]["h3"], mo["ips"]["h1"], mo["ips"]["h2"]):
        loop = ClientLoop(f"http://{base}:8000", mo["key"], "qwen-30b", threads=2, max_requests=10, max_seconds=30)
        assert loop.run().served == 10
    series = wait_for(lambda: query(mo, "sum by (replica) (increase(vllm:generation_tokens_total[1m])) > 0")
                      if len(query(mo, "sum by (replica) (increase(vllm:generation_tokens_total[1m])) > 0")) == 2
                      else None, 30)
    assert series and sorted(s["metric"]["replica"] for s in series) == sorted([mo["names"]["h1"], mo["names"]["h2"]])
    board = ssh(mo["ips"]["h3"], "cat /etc/llmfleet/grafana/dashboards/fleet.json").stdout
    panels = dashboard.queries(board)
    assert len(panels) == 17
    # errors and retries per replica have no series before a replica failed (the next test makes one);
    # a rate needs two scrapes of a series mtail only creates at the first log line, hence the bounded wait
    expected = ["Gateway errors/s per replica", "Gateway retries/s per replica"]

    def empty_panels():
        return [title for title, expr in panels if not query(mo, expr)]

    wait_for(lambda: empty_panels() == expected, 30)
    assert empty_panels() == expected
    per_replica = wait_for(lambda: query(mo, 'llmfleet_gateway_upstream_requests_total{status="200"}'), 30)
    assert sorted(r["metric"]["replica"] for r in per_replica) == sorted(
        f"{mo['ips'][h]}:8000" for h in ("h1", "h2"))
    # Both inter-token latency names are read: the old one from 0.10.1.1, the new one from 0.18.0.
    itl = dict(panels)["Inter-token latency p95"]
    assert "time_per_output_token_seconds" in itl and "inter_token_latency_seconds" in itl
    assert sorted(r["metric"]["replica"] for r in query(mo, itl)) == sorted([mo["names"]["h1"], mo["names"]["h2"]])


def test_stopped_replica_fires_alert_in_alertmanager_and_resolves(mo):
    h1 = mo["ips"]["h1"]
    ssh(h1, f"systemctl stop {UNIT}")
    try:
        fired = wait_for(lambda: down_alerts(mo), 90)
        assert fired and [a["labels"]["replica"] for a in fired] == [mo["names"]["h1"]]
        assert fired[0]["labels"]["recipe"] == "qwen30b_fp8" and fired[0]["status"]["state"] == "active"
        # Through the gateway meanwhile: nothing fails, and the gateway's per-replica counts show h1's
        # refused attempts as errors and retries (mtail on the gateway, job gateway_upstreams).
        loop = ClientLoop(f"http://{mo['ips']['h3']}:8000", mo["key"], "qwen-30b", threads=2, max_requests=20,
                          max_seconds=30)
        assert loop.run().served == 20
        h1_addr = f"{mo['ips']['h1']}:8000"
        for what in ("errors", "retries"):
            series = wait_for(lambda: query(mo, f'llmfleet_gateway_upstream_{what}_total{{replica="{h1_addr}"}} > 0'),
                              30)
            assert series, what
    finally:
        ssh(h1, f"systemctl start {UNIT}")
    resolved = wait_for(lambda: not down_alerts(mo) and not query(mo, 'ALERTS{alertname="LlmfleetReplicaDown"}'), 120)
    assert resolved


def test_deployed_rules_and_config_pass_promtool(mo):
    """On the monitoring host, with its own promtool (tests/unit/test_monitoring_promtool.py runs the same
    Debian promtool on rules for old and new metric names)."""
    h3 = mo["ips"]["h3"]
    assert "SUCCESS: 11 rules found" in ssh(h3, "promtool check rules /etc/prometheus/llmfleet.rules.yml").stdout
    assert ssh(h3, "promtool check config /etc/prometheus/prometheus.yml", check=False).returncode == 0
