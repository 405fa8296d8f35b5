"""Watch the fleet: Prometheus and Alertmanager (Debian's packages) on the hosts of the inventory group
``monitoring``, node exporter on every host, dcgm-exporter on NVIDIA hosts, npu-exporter on Ascend
hosts, Grafana where ``monitoring_grafana`` asks. ``pyinfra INV deploys/monitoring.py``.

Choices, and why:

- Targets come from the inventory (``tasks.monitoring.fleet``): a replica names the recipe it serves
  in ``monitoring_recipe`` (group data), its spec gives port and vLLM version. Rules and dashboard
  use the metric names of each replica's version (``tasks.vllm.metrics``): run this deploy again
  after an upgrade that crosses a rename.
- Configuration is checked before it is put in place (``promtool check rules|config`` on a
  temporary file); a refused file leaves the running one untouched.
  Prometheus and Alertmanager reload on a changed file and restart on changed arguments.
- Exporters in containers run from pinned images pulled through the mirrors (``image_mirrors``:
  ``nvcr.io`` for dcgm-exporter). dcgm-exporter gets ``--gpus all``, every capability dropped but
  ``SYS_ADMIN``, which DCGM needs for the profiling fields ``DCGM_FI_PROF_*``
  (``monitoring_dcgm_profiling: False`` drops it too). Docker must be there (the model deploy or
  ``deploys/bringup.py`` installs it).
- Gateway hosts (``gateway_group``, after the model deploy put nginx there): nginx's
  ``stub_status`` on 127.0.0.1:8079 only, read by Debian's prometheus-nginx-exporter on :9113
  (the gateway's totals); per replica, Debian's mtail on :3903 counts requests, errors and retries
  from each model's upstream log (``templates/monitoring/gateway.mtail.j2``). mtail rather than
  prometheus-nginxlog-exporter: that one is not in Debian 12; nginx's own per-upstream counters
  are nginx Plus only.
- NVSwitch hosts (``NvidiaFabric``) let node exporter report ``nvidia-fabricmanager.service``
  (systemd collector, that unit only): the fabric-manager alert reads it.
- Alertmanager receivers are data: ``monitoring_receivers: [{"name": "oncall", "webhook_secret":
  "am_webhook"}]``; the webhook URL is a control-machine secret file, so ``alertmanager.yml`` is
  installed through ``tasks.secrets.secret_file``: 0640 root:prometheus (the daemon's group reads
  it), never shown in a diff or in output.

Settings (host data, prefix ``monitoring_``): ``tasks.settings.monitoring.MonitoringSettings``, each key
described there once (README.md's settings table is generated from it).
"""

from __future__ import annotations

import io
import shlex
from pathlib import Path
from typing import Any

from pyinfra import host
from pyinfra.api import FileUploadCommand, deploy, operation
from pyinfra.facts.files import Sha256File
from pyinfra.operations import apt, files, systemd
from pyinfra.operations.util import any_changed

from tasks import gateway as gw
from tasks import image as image_task
from tasks.facts.nvidia import NvidiaFabric
from tasks.monitoring import dashboard, render
from tasks.monitoring.fleet import (DCGM_EXPORTER_PORT, GATEWAY_EXPORTER_PORT, GATEWAY_UPSTREAMS_PORT,
                                    NODE_EXPORTER_PORT, NPU_EXPORTER_PORT, Fleet, build, from_state)
from tasks.secrets import local_secret, read_secret, secret_file
from tasks.service import reset_failed
from tasks.spec import SpecError
from tasks.settings.gateway import GatewaySettings
from tasks.settings.monitoring import MonitoringSettings

REPO_ROOT = Path(__file__).resolve().parents[2]
UNIT_TEMPLATE = REPO_ROOT / "templates" / "monitoring" / "container.service.j2"
MTAIL_TEMPLATE = REPO_ROOT / "templates" / "monitoring" / "gateway.mtail.j2"
GRAFANA_DIR = "/etc/llmfleet/grafana"
#: nginx's stub_status for the exporter, on loopback only.
STUB_STATUS = "127.0.0.1:8079"

DEFAULTS: dict[str, Any] = MonitoringSettings.defaults()


def options(data: Any) -> MonitoringSettings:
    """The ``monitoring_*`` settings of a host (its Host, HostData or a mapping), validated: BadInput
    naming the host and key otherwise."""
    return MonitoringSettings.of(data)


def receivers(opts: MonitoringSettings, data: Any) -> list[tuple[str, Path]]:
    """(name, control-machine secret file) per receiver; SpecError naming the field otherwise."""
    out = []
    for i, r in enumerate(opts.monitoring_receivers):
        field = f"monitoring_receivers[{i}]"
        if set(r) != {"name", "webhook_secret"}:
            raise SpecError(field, "exactly the keys name and webhook_secret")
        if not str(r["name"]).replace("-", "").replace("_", "").isalnum() or r["name"] == "llmfleet-none":
            raise SpecError(f"{field}.name", f"{r['name']!r}: letters, digits, '-', '_' (not llmfleet-none)")
        try:
            path = local_secret(str(r["webhook_secret"]), f"{field}.webhook_secret", data)
        except ValueError as exc:
            raise SpecError(f"{field}.webhook_secret", str(exc).split(": ", 1)[1]) from None
        if not read_secret(path).startswith(("http://", "https://")):
            raise SpecError(f"{field}.webhook_secret", f"secret file {path} must hold an http(s) URL")
        out.append((str(r["name"]), path))
    return out


def alertmanager_content(named: list[tuple[str, Path]], opts: MonitoringSettings) -> bytes:
    """alertmanager.yml with the webhook URLs read from their secret files (called inside the operation)."""
    return render.alertmanager_config([{"name": n, "url": read_secret(p)} for n, p in named], opts).encode()


@operation()
def checked_file(path: str, content: str, check: str, mode: str = "644", group: str = "root"):
    """
    Put ``content`` at ``path`` only if ``check <temporary file>`` accepts it; unchanged when equal.

    + path: the file on the host
    + content: what it should hold
    + check: a command the temporary file's path is appended to (``promtool check rules``)
    + mode/group: of the installed file (owner root)

    Example:

    .. code:: python

        checked_file(path="/etc/prometheus/prometheus.yml", content=text, check="promtool check config")
    """
    import hashlib

    if host.get_fact(Sha256File, path=path) == hashlib.sha256(content.encode()).hexdigest():
        host.noop(f"{path} is up to date")
        return
    temp = f"{path}.llmfleet-new"
    yield FileUploadCommand(io.BytesIO(content.encode()), temp)
    t, p = shlex.quote(temp), shlex.quote(path)
    yield (f"chown root:{shlex.quote(group)} {t} && chmod {mode} {t} && "
           f"if {check} {t} >&2; then mv -f {t} {p}; else rm -f {t}; "
           f"echo 'llmfleet monitoring: {check} refused {path}' >&2; exit 1; fi")


def _defaults_file(name: str, path: str, args: list[str]) -> Any:
    text = f"# Managed by llmfleet (tasks/monitoring): changes are overwritten.\nARGS={shlex.quote(' '.join(args))}\n"
    return files.put(name=name, src=io.StringIO(text), dest=path, user="root", group="root", mode="644")


def _debian_service(label: str, package: str, args: list[str]) -> None:
    """A Debian package whose unit reads ``ARGS`` from /etc/default/<package>; restarted when either changed.

    The arguments go in before the package: its postinst starts the daemon, and with Debian's
    defaults the nginx exporter (stub_status on :8080) exits at once and hits its start limit.
    """
    conf = _defaults_file(f"{label} arguments", f"/etc/default/{package}", args)
    pkg = apt.packages(name=f"{label} package", packages=[package], no_recommends=True, update=True,
                       cache_time=86400)
    reset_failed(name=f"{label}: clear a failed state", unit=f"{package}.service")
    systemd.service(name=f"{label} restart", service=f"{package}.service", running=True, restarted=True,
                    _if=any_changed(conf, pkg))
    systemd.service(name=f"{label} running", service=f"{package}.service", running=True, enabled=True)


def _container(name: str, description: str, image: str, argv: list[str]) -> None:
    """A pinned image pulled through the mirrors and a unit running it; restarted when either changed."""
    pulled = image_task.pulled(name=f"{description}: image {image}", image=image)
    unit = files.template(name=f"{description}: unit", src=str(UNIT_TEMPLATE),
                          dest=f"/etc/systemd/system/{name}.service", user="root", group="root", mode="644",
                          name_=name, description=description, exec_start=" ".join(shlex.quote(a) for a in argv))
    systemd.daemon_reload(name=f"{description}: reload units", _if=unit.did_change)
    systemd.service(name=f"{description}: restart", service=f"{name}.service", running=True, restarted=True,
                    _if=any_changed(unit, pulled))
    systemd.service(name=f"{description}: running", service=f"{name}.service", running=True, enabled=True)


@deploy("Node exporter", data_defaults=DEFAULTS)
def node_exporter(nvidia: bool) -> None:
    """
    Debian's prometheus-node-exporter on :9100; on NVSwitch hosts it also reports fabric manager's unit.

    + nvidia: the host has NVIDIA GPUs (then NVSwitches are looked for)

    Example:

    .. code:: python

        node_exporter(nvidia=True)
    """
    args = []
    if nvidia and host.get_fact(NvidiaFabric).get("nvswitch_count", 0) > 0:
        unit = render.FABRIC_MANAGER_UNIT.replace(".", "[.]")
        args = ["--collector.systemd", f"--collector.systemd.unit-include={unit}"]
    _debian_service("node exporter", "prometheus-node-exporter", args)


@deploy("dcgm-exporter", data_defaults=DEFAULTS)
def dcgm_exporter() -> None:
    """
    NVIDIA's dcgm-exporter on :9400 from its pinned image, ``--gpus all``, capabilities dropped.

    Example:

    .. code:: python

        dcgm_exporter()
    """
    opts = options(host.data)
    caps = ["--cap-drop", "ALL"] + (["--cap-add", "SYS_ADMIN"] if opts.monitoring_dcgm_profiling else [])
    image = opts.monitoring_dcgm_image
    _container("llmfleet-dcgm-exporter", "dcgm-exporter", image,
               ["/usr/bin/docker", "run", "--rm", "--name", "llmfleet-dcgm-exporter", "--gpus", "all", *caps,
                "-p", f"{DCGM_EXPORTER_PORT}:{DCGM_EXPORTER_PORT}", image, "-a", f":{DCGM_EXPORTER_PORT}"])


@deploy("npu-exporter", data_defaults=DEFAULTS)
def npu_exporter() -> None:
    """
    MindCluster npu-exporter on :8082 from its pinned image, with the Ascend devices and driver mounts
    read-only (not ``--privileged``).

    Example:

    .. code:: python

        npu_exporter()
    """
    image = options(host.data).monitoring_npu_exporter_image
    devices = ["/dev/davinci_manager", "/dev/devmm_svm", "/dev/hisi_hdc"]
    mounts = ["/usr/local/Ascend/driver", "/usr/local/dcmi", "/usr/local/bin/npu-smi"]
    argv = ["/usr/bin/docker", "run", "--rm", "--name", "llmfleet-npu-exporter",
            "-p", f"{NPU_EXPORTER_PORT}:{NPU_EXPORTER_PORT}"]
    for d in devices:
        argv += ["--device", d]
    for m in mounts:
        argv += ["-v", f"{m}:{m}:ro"]
    argv += [image, "npu-exporter", f"-port={NPU_EXPORTER_PORT}", "-ip=0.0.0.0"]
    _container("llmfleet-npu-exporter", "npu-exporter", image, argv)


@deploy("Gateway exporter", data_defaults=DEFAULTS)
def gateway_exporter() -> None:
    """
    nginx's ``stub_status`` on loopback and Debian's prometheus-nginx-exporter on :9113 (gateway hosts),
    and Debian's mtail on :3903 counting requests, errors and retries per replica from the upstream logs.

    Example:

    .. code:: python

        gateway_exporter()
    """
    conf = files.put(name="nginx stub_status (loopback)", src=io.StringIO(
        "# Managed by llmfleet (tasks/monitoring): nginx's counters for prometheus-nginx-exporter.\n"
        f"server {{\n    listen {STUB_STATUS};\n    access_log off;\n"
        "    location = /stub_status { stub_status; }\n}\n"),
        dest="/etc/nginx/conf.d/llmfleet-stub-status.conf", user="root", group="root", mode="644")
    gw.reloaded(name="reload nginx (stub_status)", _if=conf.did_change)
    _debian_service("nginx exporter", "prometheus-nginx-exporter",
                    [f"-nginx.scrape-uri=http://{STUB_STATUS}/stub_status",
                     f"-web.listen-address=:{GATEWAY_EXPORTER_PORT}"])
    # Debian's mtail unit reads LOGS/PORT from /etc/default/mtail and every program in /etc/mtail;
    # it runs as user mtail, in group adm, which reads /var/log/nginx.
    logs = files.put(name="mtail: the gateway's upstream logs", src=io.StringIO(
        "# Managed by llmfleet (tasks/monitoring): changes are overwritten.\n"
        f"LOGS={gw.UPSTREAM_LOG_DIR}/llmfleet-*.upstreams.log\nPORT={GATEWAY_UPSTREAMS_PORT}\n"),
        dest="/etc/default/mtail", user="root", group="root", mode="644")
    prog = files.template(name="mtail: per-replica counts program", src=str(MTAIL_TEMPLATE),
                          dest="/etc/mtail/llmfleet-gateway.mtail", user="root", group="root", mode="644",
                          tries=GatewaySettings.of(host).gateway_next_upstream_tries)
    pkg = apt.packages(name="mtail package", packages=["mtail"], no_recommends=True, update=True, cache_time=86400)
    reset_failed(name="mtail: clear a failed state", unit="mtail.service")
    systemd.service(name="mtail restart", service="mtail.service", running=True, restarted=True,
                    _if=any_changed(logs, prog, pkg))
    systemd.service(name="mtail running", service="mtail.service", running=True, enabled=True)


@deploy("Prometheus", data_defaults=DEFAULTS)
def prometheus_server(fleet: Fleet) -> None:
    """
    Prometheus and Alertmanager (Debian's packages) watching ``fleet``; Grafana when asked.

    + fleet: ``tasks.monitoring.fleet.from_state(state)``

    Example:

    .. code:: python

        prometheus_server(from_state(state))
    """
    opts = options(host.data)
    named = receivers(opts, host.data)
    me = next(m for m in fleet.members if m.name == host.name)
    storage = opts.monitoring_storage_dir
    args = _defaults_file("Prometheus arguments", "/etc/default/prometheus", [
        f"--storage.tsdb.path={storage}", f"--storage.tsdb.retention.time={opts.monitoring_retention_time}",
        f"--storage.tsdb.retention.size={opts.monitoring_retention_size}",
        f"--web.external-url=http://{me.address}:9090/"])
    peers = [f"--cluster.peer={m.address}:9094" for m in fleet.alertmanagers if m.name != host.name]
    am_args = _defaults_file("Alertmanager arguments", "/etc/default/prometheus-alertmanager",
                             [f"--web.external-url=http://{me.address}:9093/", *peers])
    pkgs = apt.packages(name="Prometheus and Alertmanager packages",
                        packages=["prometheus", "prometheus-alertmanager"], no_recommends=True, update=True,
                        cache_time=86400)
    files.directory(name="metrics storage", path=storage, user="prometheus", group="prometheus", mode="750")
    rules = checked_file(name="alert rules", path=render.RULES_PATH, content=render.rules(fleet, opts),
                         check="promtool check rules")
    config = checked_file(name="Prometheus configuration", path="/etc/prometheus/prometheus.yml",
                          content=render.prometheus_config(fleet, opts), check="promtool check config")
    am_conf = secret_file(name="Alertmanager configuration (receivers)", dest="/etc/prometheus/alertmanager.yml",
                          content_of=lambda: alertmanager_content(named, opts), mode="640", group="prometheus",
                          dir_mode="755")
    for unit, restart, reload in (("prometheus", any_changed(args, pkgs), any_changed(rules, config)),
                                  ("prometheus-alertmanager", any_changed(am_args, pkgs), am_conf.did_change)):
        reset_failed(name=f"{unit}: clear a failed state", unit=f"{unit}.service")
        systemd.service(name=f"{unit} restart", service=f"{unit}.service", running=True, restarted=True,
                        _if=restart)
        systemd.service(name=f"{unit} reload", service=f"{unit}.service", running=True, reloaded=True,
                        _if=lambda reload=reload, restart=restart: reload() and not restart())
        systemd.service(name=f"{unit} running", service=f"{unit}.service", running=True, enabled=True)
    grafana(fleet, opts)


def grafana(fleet: Fleet, opts: MonitoringSettings) -> None:
    """Grafana provisioning (datasource, fleet dashboard) under /etc/llmfleet/grafana, always (a Grafana
    elsewhere can use it); Grafana itself from its pinned image where ``monitoring_grafana`` asks."""
    port, image = opts.monitoring_grafana_port, opts.monitoring_grafana_image
    prov = f"{GRAFANA_DIR}/provisioning"
    for d in (GRAFANA_DIR, prov, f"{prov}/datasources", f"{prov}/dashboards", f"{GRAFANA_DIR}/dashboards"):
        files.directory(name=f"Grafana directory {d}", path=d, user="root", group="root", mode="755")
    changed = [
        files.put(name="Grafana datasource", src=io.StringIO(dashboard.datasource_yaml()),
                  dest=f"{prov}/datasources/llmfleet.yaml", mode="644"),
        files.put(name="Grafana dashboard provider",
                  src=io.StringIO(dashboard.dashboards_yaml("/var/lib/grafana/dashboards")),
                  dest=f"{prov}/dashboards/llmfleet.yaml", mode="644"),
        files.put(name="Grafana fleet dashboard", src=io.StringIO(dashboard.dashboard(fleet)),
                  dest=f"{GRAFANA_DIR}/dashboards/fleet.json", mode="644"),
    ]
    if not opts.monitoring_grafana:
        return
    files.directory(name="Grafana data", path="/var/lib/llmfleet-grafana", user="472", group="0", mode="750")
    _container("llmfleet-grafana", "Grafana", image, [
        "/usr/bin/docker", "run", "--rm", "--name", "llmfleet-grafana", "--network", "host",
        "-e", f"GF_SERVER_HTTP_PORT={port}", "-v", f"{prov}:/etc/grafana/provisioning:ro",
        "-v", f"{GRAFANA_DIR}/dashboards:/var/lib/grafana/dashboards:ro",
        "-v", "/var/lib/llmfleet-grafana:/var/lib/grafana", image])
    systemd.service(name="Grafana: reload provisioning", service="llmfleet-grafana.service", running=True,
                    restarted=True, _if=any_changed(*changed))


def monitor() -> None:
    """
    What ``deploys/monitoring.py`` runs on each host: node exporter, the accelerator's exporter, nginx's
    on gateways, and on the hosts of ``monitoring_group`` Prometheus, Alertmanager and Grafana's files.
    A host checks its own data; a monitoring host builds (and checks) the fleet from the whole
    inventory, at plan time, before any host is touched.

    Example:

    .. code:: python

        monitor()
    """
    options(host)
    (me,) = build([(host.name, host.data.dict(), list(host.groups or []))]).members
    fleet = from_state(host.state) if me.monitoring else None  # checked before this host is read
    node_exporter(nvidia=me.accelerator == "nvidia")
    if me.accelerator == "nvidia":
        dcgm_exporter()
    elif me.accelerator == "ascend":
        npu_exporter()
    if me.gateway:
        gateway_exporter()
    if fleet is not None:
        prometheus_server(fleet)


__all__ = ["DEFAULTS", "alertmanager_content", "checked_file", "dcgm_exporter", "gateway_exporter", "monitor",
           "node_exporter", "npu_exporter", "options", "prometheus_server", "receivers", "validate"]
