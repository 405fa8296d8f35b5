"""What the monitoring hosts watch, built from the inventory alone (pure, no host is asked).

Every inventory host (the whole inventory, not only ``--limit``: a limited run never drops
targets) is a scrape target for node exporter; NVIDIA hosts add dcgm-exporter, Ascend hosts
npu-exporter, gateway hosts (``gateway_group``) nginx's exporter; a host whose data names the
recipe it serves (``monitoring_recipe``, usually group data beside the group's other ``serve_*``
data) adds its vLLM head, labelled with recipe, replica, host, vLLM version and served model. The
spec is loaded exactly as the model deploy loads it (recipe + ``serve_*`` host data), so port and
version are the ones the replica runs.

Bad data (an unknown recipe, a spec that does not validate, an address that is no host name)
raises :class:`tasks.spec.SpecError` naming the host and the field, before any host is touched.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable

from tasks.settings.gateway import GatewaySettings
from tasks.settings.monitoring import MonitoringSettings
from tasks.settings.runtime import RuntimeSettings
from tasks.settings.weights import WeightsSettings
from tasks.spec import SpecError, load_spec
from tasks.vllm.metrics import MetricNames, names_for

NODE_EXPORTER_PORT = 9100
DCGM_EXPORTER_PORT = 9400
NPU_EXPORTER_PORT = 8082
GATEWAY_EXPORTER_PORT = 9113
#: mtail (Debian's default port) on gateways: per-replica counts from the upstream logs.
GATEWAY_UPSTREAMS_PORT = 3903
PROMETHEUS_PORT = 9090
ALERTMANAGER_PORT = 9093
_ADDRESS = re.compile(r"^[A-Za-z0-9_.:\[\]-]+$")


@dataclass(frozen=True)
class Head:
    """One vLLM head a monitoring host scrapes."""

    recipe: str
    replica: str
    host: str
    address: str
    port: int
    vllm_version: str
    model: str
    ttft_budget_s: float

    @property
    def names(self) -> MetricNames:
        return names_for(self.vllm_version)


@dataclass(frozen=True)
class Member:
    """One inventory host: where Prometheus reaches it and which exporters it runs."""

    name: str
    address: str
    accelerator: str  # "nvidia", "ascend" or "none"
    weights_root: str
    monitoring: bool
    gateway: bool


@dataclass(frozen=True)
class Fleet:
    members: tuple[Member, ...]
    heads: tuple[Head, ...]

    def with_accelerator(self, kind: str) -> list[Member]:
        return [m for m in self.members if m.accelerator == kind]

    @property
    def gateways(self) -> list[Member]:
        return [m for m in self.members if m.gateway]

    @property
    def alertmanagers(self) -> list[Member]:
        return [m for m in self.members if m.monitoring]


def address_of(data: Any, name: str) -> str:
    """Where Prometheus reaches a host: ``monitoring_address``, ``ssh_hostname``, else its name."""
    address = str(MonitoringSettings.of(data, name).monitoring_address or data.get("ssh_hostname") or name)
    if not _ADDRESS.match(address):
        raise SpecError(f"{name}: monitoring_address", f"{address!r} is not a host name or address")
    return address


def _head(name: str, data: Any, address: str, recipe: str) -> tuple[Head, str]:
    """The replica's head and its accelerator, from its recipe and ``serve_*`` data."""
    try:
        spec = load_spec(recipe, data)
    except SpecError as exc:
        field = {"recipe": "monitoring_recipe"}
        problems = [(f"{name}: {field.get(f, f)}", m) for f, m in exc.problems]
        raise SpecError(*problems[0], *problems[1:]) from None
    budget = MonitoringSettings.of(data, name).monitoring_ttft_p95_budget_s
    return Head(recipe=recipe, replica=name, host=name, address=address, port=int(spec.port),
                vllm_version=str(spec.version), model=str(spec.served_model_name),
                ttft_budget_s=budget), str(spec.accelerator)


def build(hosts: Iterable[tuple[str, Any, list[str]]]) -> Fleet:
    """The fleet from ``(name, data, groups)`` of every inventory host.

    + hosts: e.g. ``[(h.name, h.data, h.groups) for h in state.inventory]``

    Example:

    .. code:: python

        build([("gpu-01", {"monitoring_recipe": "qwen30b", "runtime_accelerator": "nvidia"}, ["qwen30b"]),
               ("mon-01", {}, ["monitoring"])])
    """
    members, heads, problems = [], [], []
    for name, data, groups in hosts:
        # The settings this module reads, checked first: problems are listed together, by key.
        found = [p for model in (MonitoringSettings, RuntimeSettings, GatewaySettings, WeightsSettings)
                 for p in model.problems(data, name)]
        if found:
            problems += [(f"{name}: {p.field}", p.message if p.given is None or p.given in p.message
                          else f"{p.given}: {p.message}") for p in found]
            continue
        settings = MonitoringSettings.of(data, name)
        try:
            address = address_of(data, name)
            recipe = settings.monitoring_recipe
            accelerator = RuntimeSettings.of(data, name).runtime_accelerator or "none"
            if recipe is not None:
                if not recipe:
                    raise SpecError(f"{name}: monitoring_recipe", f"{recipe!r}: the name of a recipe")
                head, accelerator = _head(name, data, address, recipe)
                heads.append(head)
            gateway_group = GatewaySettings.of(data, name).gateway_group
            members.append(Member(name=name, address=address, accelerator=accelerator,
                                  weights_root=WeightsSettings.of(data, name).weights_root,
                                  monitoring=settings.monitoring_group in (groups or []),
                                  gateway=gateway_group in (groups or [])))
        except SpecError as exc:
            problems += exc.problems
    if problems:
        raise SpecError(*problems[0], *problems[1:])
    return Fleet(members=tuple(members), heads=tuple(heads))


def from_state(state: Any) -> Fleet:
    """The fleet of a pyinfra run's inventory (every host, active or not)."""
    return build((h.name, h.data.dict(), list(h.groups or [])) for h in state.inventory)


__all__ = ["ALERTMANAGER_PORT", "DCGM_EXPORTER_PORT", "Fleet", "GATEWAY_EXPORTER_PORT", "GATEWAY_UPSTREAMS_PORT",
           "Head", "Member", "NODE_EXPORTER_PORT", "NPU_EXPORTER_PORT", "PROMETHEUS_PORT", "address_of", "build", "from_state"]
