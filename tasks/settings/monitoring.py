"""Monitoring settings (host data, prefix ``monitoring_``): read by tasks.monitoring.deploy."""

from __future__ import annotations

import re
from typing import Annotated, ClassVar

from annotated_types import Ge, Le

from pydantic import Field

from tasks.settings.base import AbsPath, Duration, PinnedImage, Port, Seconds, Settings, checked


Size = checked(lambda v: bool(re.match(r"^\d+(B|KB|MB|GB|TB|PB|EB)$", v)), "a size like 50GB, 500MB, 2TB")


class MonitoringSettings(Settings):
    """Monitoring: every ``monitoring_*`` key of the host data."""

    prefix: ClassVar[str] = "monitoring_"
    title: ClassVar[str] = "Monitoring"

    monitoring_group: str = Field(
        "monitoring", description="inventory group of the hosts running Prometheus and Alertmanager")
    monitoring_recipe: str | None = Field(
        None, description="(replica host or group data) the recipe the host serves; its vLLM head is scraped")
    monitoring_address: str | None = Field(
        None, description="address Prometheus reaches the host at; None: ``ssh_hostname``, else the host name")
    monitoring_fleet_name: str = Field(
        "llmfleet", description="``fleet`` external label of every series and alert")
    monitoring_scrape_interval: Duration = Field(
        "15s", description="Prometheus scrape interval")
    monitoring_evaluation_interval: Duration = Field(
        "15s", description="rule evaluation interval")
    monitoring_retention_time: Duration = Field(
        "30d", description="``--storage.tsdb.retention.time``")
    monitoring_retention_size: Size = Field(
        "50GB", description="``--storage.tsdb.retention.size``: the disk the metrics may use")
    monitoring_storage_dir: AbsPath = Field(
        "/var/lib/prometheus/metrics2", description="``--storage.tsdb.path`` (owned by prometheus)")
    monitoring_down_for: Duration = Field(
        "1m", description="``for`` of replica-down, fabric manager and NPU health alerts")
    monitoring_alert_for: Duration = Field(
        "5m", description="``for`` (and rate window) of the load and hardware alerts")
    monitoring_kv_cache_high: Annotated[float, Ge(0), Le(1)] = Field(
        0.9, description="KV cache usage (0-1) that alerts")
    monitoring_waiting_high: Annotated[int, Ge(0)] = Field(
        10, description="requests waiting above this alert")
    monitoring_ttft_p95_budget_s: Seconds = Field(
        5.0, description="(replica group data: per recipe) TTFT p95 budget in seconds")
    monitoring_gpu_temp_c: Annotated[int, Ge(20), Le(150)] = Field(
        85, description="GPU temperature that alerts")
    monitoring_disk_free_min: Annotated[float, Ge(0), Le(1)] = Field(
        0.1, description="free fraction of the weights filesystem below which it alerts")
    monitoring_receivers: list[dict[str, str]] = Field(
        [], json_schema_extra={"allowed": "a list of {name, webhook_secret}"},
        description='Alertmanager webhook receivers: ``{"name", "webhook_secret"}`` (secret file holding the URL)')
    monitoring_group_wait: Duration = Field(
        "30s", description="Alertmanager ``group_wait``")
    monitoring_group_interval: Duration = Field(
        "5m", description="Alertmanager ``group_interval``")
    monitoring_repeat_interval: Duration = Field(
        "4h", description="Alertmanager ``repeat_interval``")
    monitoring_dcgm_image: PinnedImage = Field(
        "nvcr.io/nvidia/k8s/dcgm-exporter:4.2.3-4.1.3-ubuntu22.04", description="pinned dcgm-exporter image")
    monitoring_dcgm_profiling: bool = Field(
        True, description="keep ``SYS_ADMIN`` for the ``DCGM_FI_PROF_*`` fields")
    monitoring_npu_exporter_image: PinnedImage = Field(
        "swr.cn-south-1.myhuaweicloud.com/ascendhub/npu-exporter:v6.0.0", description="pinned MindCluster "
                                                                                      "npu-exporter image")
    monitoring_grafana: bool = Field(
        False, description="(monitoring host data) run Grafana with the provisioned dashboard")
    monitoring_grafana_image: PinnedImage = Field(
        "grafana/grafana:11.3.0", description="pinned Grafana image")
    monitoring_grafana_port: Port = Field(
        3000, description="Grafana's port")
