"""Prometheus, alert rules and Alertmanager configuration as text, from the fleet (pure).

Each vLLM rule is written with the names each replica's version exports
(``tasks.vllm.metrics.names_for``): one clause per distinct set of names the rule uses, selecting its
replicas by their ``vllm_version`` target label, the clauses joined with ``or``. A fleet in the
middle of an upgrade (0.10.1 beside 0.18.0) is watched under both names; a rule never asks for a
name a replica does not export.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Callable

import yaml

from tasks.monitoring.fleet import (ALERTMANAGER_PORT, DCGM_EXPORTER_PORT, GATEWAY_EXPORTER_PORT, GATEWAY_UPSTREAMS_PORT,
                                    NODE_EXPORTER_PORT, NPU_EXPORTER_PORT, PROMETHEUS_PORT, Fleet, Head)
from tasks.settings.monitoring import MonitoringSettings
from tasks.vllm.metrics import MetricNames
from tasks.vllm.versions import Version

RULES_PATH = "/etc/prometheus/llmfleet.rules.yml"
FABRIC_MANAGER_UNIT = "nvidia-fabricmanager.service"


def _dump(obj: Any) -> str:
    return "# Managed by llmfleet (tasks/monitoring): changes are overwritten.\n" + yaml.safe_dump(
        obj, sort_keys=False, default_flow_style=False, width=1000)


def _alternatives(values: list[str]) -> str:
    # Versions, host names and paths hold no regex metacharacter but "." (matching itself among
    # these values), and PromQL strings reject "\." escapes: the values go in as they are.
    return "|".join(sorted(set(values)))


def per_generation(heads: list[Head], clause: Callable[[MetricNames, str], str]) -> str | None:
    """``clause(names, selector)`` once per distinct clause among ``heads``' versions, joined with ``or``.

    Versions whose names give the same clause share one (selected by ``vllm_version=~"a|b"``); None
    without heads.
    """
    marker = "\0SELECTOR\0"
    versions: dict[str, list[str]] = defaultdict(list)
    for h in heads:
        versions[clause(h.names, marker)].append(h.vllm_version)
    parts = [text.replace(marker, f'job="vllm",vllm_version=~"{_alternatives(vs)}"')
             for text, vs in sorted(versions.items(), key=lambda kv: min(map(Version.parse, kv[1])))]
    return " or ".join(f"({p})" for p in parts) if parts else None


def prometheus_config(fleet: Fleet, opts: MonitoringSettings) -> str:
    """prometheus.yml: every target of the fleet with its labels, the Alertmanagers, the rules."""
    def static(members, port):
        return [{"targets": [f"{m.address}:{port}"], "labels": {"host": m.name}} for m in members]

    heads = [{"targets": [f"{h.address}:{h.port}"],
              "labels": {"recipe": h.recipe, "replica": h.replica, "host": h.host, "vllm_version": h.vllm_version,
                         "model": h.model}} for h in fleet.heads]
    jobs = [("prometheus", [{"targets": [f"localhost:{PROMETHEUS_PORT}"]}]),
            ("node", static(fleet.members, NODE_EXPORTER_PORT)),
            ("dcgm", static(fleet.with_accelerator("nvidia"), DCGM_EXPORTER_PORT)),
            ("npu", static(fleet.with_accelerator("ascend"), NPU_EXPORTER_PORT)),
            ("gateway", static(fleet.gateways, GATEWAY_EXPORTER_PORT)),
            ("gateway_upstreams", static(fleet.gateways, GATEWAY_UPSTREAMS_PORT)),
            ("vllm", heads)]
    config = {
        "global": {"scrape_interval": opts.monitoring_scrape_interval,
                   "evaluation_interval": opts.monitoring_evaluation_interval,
                   "external_labels": {"fleet": opts.monitoring_fleet_name}},
        "alerting": {"alertmanagers": [{"static_configs": [
            {"targets": [f"{m.address}:{ALERTMANAGER_PORT}" for m in fleet.alertmanagers]}]}]},
        "rule_files": [RULES_PATH],
        "scrape_configs": [{"job_name": job, "static_configs": targets} for job, targets in jobs if targets],
    }
    return _dump(config)


def _rule(name: str, expr: str, for_: str, severity: str, summary: str) -> dict[str, Any]:
    return {"alert": name, "expr": expr, "for": for_, "labels": {"severity": severity},
            "annotations": {"summary": summary}}


def rules(fleet: Fleet, opts: MonitoringSettings) -> str:
    """The alert rules file (``promtool check rules`` accepts it)."""
    heads = list(fleet.heads)
    down, slow = opts.monitoring_down_for, opts.monitoring_alert_for
    out = [_rule("LlmfleetReplicaDown", 'up{job="vllm"} == 0', down, "critical",
                 "vLLM replica {{ $labels.replica }} ({{ $labels.recipe }}) does not answer /metrics")]
    vllm = [
        ("LlmfleetKvCacheHigh", lambda n, s: f'{n.kv_cache_usage}{{{s}}} > {opts.monitoring_kv_cache_high}',
         "warning", "KV cache of {{ $labels.replica }} above {{ $value | humanizePercentage }}"),
        ("LlmfleetRequestsWaiting",
         lambda n, s: f'{n.waiting}{{{s}}} > {opts.monitoring_waiting_high}',
         "warning", "{{ $value }} requests waiting on {{ $labels.replica }}"),
        ("LlmfleetGenerationStalled",
         lambda n, s: (f"{n.running}{{{s}}} > 0 and on (job, instance) "
                       f"rate({n.generation_tokens}{{{s}}}[{slow}]) == 0"),
         "critical", "{{ $labels.replica }} runs requests but generates no token"),
    ]
    for name, clause, severity, summary in vllm:
        expr = per_generation(heads, clause)
        if expr:
            out.append(_rule(name, expr, slow, severity, summary))
    by_budget: dict[tuple[str, float], list[Head]] = defaultdict(list)
    for h in heads:
        by_budget[(h.recipe, h.ttft_budget_s)].append(h)
    ttft = [per_generation(hs, lambda n, s, r=r, b=b: (
        f'histogram_quantile(0.95, sum by (le, recipe, replica, host, vllm_version) '
        f'(rate({n.ttft}_bucket{{{s},recipe="{r}"}}[{slow}]))) > {b}'))
        for (r, b), hs in sorted(by_budget.items())]
    if ttft:
        out.append(_rule("LlmfleetTtftP95OverBudget", " or ".join(f"({t})" for t in ttft), slow, "warning",
                         "TTFT p95 of {{ $labels.replica }} ({{ $labels.recipe }}) is {{ $value }} s"))
    if fleet.with_accelerator("nvidia"):
        out += [
            _rule("LlmfleetGpuXid", 'max_over_time(DCGM_FI_DEV_XID_ERRORS{job="dcgm"}[5m]) > 0', "0m", "critical",
                  "GPU {{ $labels.gpu }} of {{ $labels.host }} reported XID {{ $value }}"),
            _rule("LlmfleetGpuTemperature",
                  f'DCGM_FI_DEV_GPU_TEMP{{job="dcgm"}} > {opts.monitoring_gpu_temp_c}', slow, "warning",
                  "GPU {{ $labels.gpu }} of {{ $labels.host }} at {{ $value }} C"),
            _rule("LlmfleetGpuMemoryErrors",
                  'DCGM_FI_DEV_ROW_REMAP_FAILURE{job="dcgm"} > 0 '
                  'or increase(DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS{job="dcgm"}[1h]) > 0 '
                  'or increase(DCGM_FI_DEV_ECC_DBE_VOL_TOTAL{job="dcgm"}[1h]) > 0', "0m", "critical",
                  "GPU {{ $labels.gpu }} of {{ $labels.host }}: row remapping failed or uncorrectable errors"),
            _rule("LlmfleetFabricManagerDown",
                  f'node_systemd_unit_state{{job="node",name="{FABRIC_MANAGER_UNIT}",state="active"}} == 0', down,
                  "critical", "nvidia-fabricmanager is not active on NVSwitch host {{ $labels.host }}"),
        ]
    if fleet.with_accelerator("ascend"):
        out.append(_rule("LlmfleetNpuUnhealthy", 'npu_chip_info_health_status{job="npu"} != 1', down, "critical",
                         "NPU {{ $labels.id }} of {{ $labels.host }} is not healthy"))
    if fleet.gateways:
        out.append(_rule("LlmfleetGatewayDown", 'up{job="gateway"} == 0 or nginx_up{job="gateway"} == 0', down,
                         "critical", "the gateway on {{ $labels.host }} (nginx) does not answer"))
    by_root: dict[str, list[str]] = defaultdict(list)
    for m in fleet.members:
        by_root[m.weights_root].append(m.name)
    free = opts.monitoring_disk_free_min
    disk = []
    for root, hosts in sorted(by_root.items()):
        parts = root.rstrip("/").split("/")
        mounts = ["/".join(parts[:i]) or "/" for i in range(len(parts), 0, -1)]
        sel = f'job="node",host=~"{_alternatives(hosts)}",mountpoint=~"{_alternatives(mounts)}",fstype!="tmpfs"'
        disk.append(f"node_filesystem_avail_bytes{{{sel}}} / node_filesystem_size_bytes{{{sel}}} < {free}")
    out.append(_rule("LlmfleetWeightsDiskNearlyFull", " or ".join(f"({d})" for d in disk), slow, "warning",
                     "{{ $labels.mountpoint }} on {{ $labels.host }} (weights) has "
                     "{{ $value | humanizePercentage }} free"))
    return _dump({"groups": [{"name": "llmfleet", "rules": out}]})


def alertmanager_config(receivers: list[dict[str, str]], opts: MonitoringSettings) -> str:
    """alertmanager.yml; ``receivers`` are ``{"name", "url"}`` with the webhook URLs already read.

    Every alert goes to every receiver (``continue: true``); without receivers alerts stay in
    Alertmanager (API and UI) and go nowhere.
    """
    named = [{"name": r["name"], "webhook_configs": [{"url": r["url"], "send_resolved": True}]} for r in receivers]
    route: dict[str, Any] = {"receiver": "llmfleet-none", "group_by": ["alertname", "recipe", "host"],
                             "group_wait": opts.monitoring_group_wait,
                             "group_interval": opts.monitoring_group_interval,
                             "repeat_interval": opts.monitoring_repeat_interval}
    if named:
        route["routes"] = [{"receiver": r["name"], "continue": True} for r in named]
    return _dump({"route": route, "receivers": [{"name": "llmfleet-none"}, *named]})


__all__ = ["FABRIC_MANAGER_UNIT", "RULES_PATH", "alertmanager_config", "per_generation",
           "prometheus_config", "rules"]
