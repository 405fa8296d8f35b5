"""Fleet status: one row per served model per host (and one per gateway endpoint), read in one
round trip per host, printed as a table and written as JSON. Changes nothing.

Per service (``/etc/llmfleet/*.verify.json`` on the host, written by ``tasks.service``):
host, model (served name; a member of a multi-node replica adds its replica, rank and whether it
joined: a headless worker's health and version are its head's), image the container runs, vLLM version (``GET /version`` on the
endpoint), unit state (``ActiveState``), health (``GET /health``), last verification (the gate's
``<name>.last-verify.json``: ok/FAIL and when), weights (the unit's ``org.llmfleet.weights``
label and the ``current`` link's target), last rollout (``<name>.rollout.json``: upgraded,
rolled_back with its reason, rollback_failed). Live columns, read from the head's ``/metrics``
(``tasks.monitoring.live``, the names of its vLLM version): running and waiting requests, KV cache
%, generated tokens/s and TTFT p95 since the last read (the previous report in
``status_report_dir``). Gateway hosts add a row per endpoint: nginx state and the replicas in/out of
its upstream. Long work in progress on a host (a weights fetch: phase, bytes / total, rate, ETA; an
image pull: layers; ``tasks/progress.py``) is listed under the table, as the pyinfra run doing it
prints it.

Settings (host data, prefix ``status_``): ``tasks.settings.status.StatusSettings``, each key
described there once (README.md's settings table is generated from it).
"""

from __future__ import annotations

import json
import shlex
import time
from pathlib import Path
from typing import Any

from pyinfra import logger
from pyinfra.api import FactBase

from tasks import progress
from tasks.monitoring import live
from tasks.pyinfra_ext import run_store
from tasks.vllm.metrics import all_names
from tasks.settings.gateway import GatewaySettings
from tasks.settings.service import ServiceSettings
from tasks.settings.status import StatusSettings

DEFAULTS: dict[str, Any] = StatusSettings.defaults()
COLUMNS = ("host", "model", "image", "vllm", "unit", "health", *live.LIVE_COLUMNS, "verified", "weights", "rollout")

#: Runs on the host (python3, stdlib): one JSON line per service, then one per gateway endpoint.
SCRIPT = r'''
import glob, json, os, re, subprocess, sys, time, urllib.request
etc, nginx_dir, timeout = sys.argv[1], sys.argv[2], float(sys.argv[3])
names = json.loads(sys.argv[4]) if len(sys.argv) > 4 else []
def run(*cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=15).stdout.strip()
    except Exception:
        return ""
def load(path):
    try:
        with open(path) as fh:
            return json.load(fh)
    except Exception:
        return None
def get(port, path, limit=2000, address="127.0.0.1"):
    try:
        with urllib.request.urlopen(f"http://{address}:{port}{path}", timeout=timeout) as r:
            return r.status, r.read(limit).decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, ""
    except Exception as e:
        return None, e.__class__.__name__
for cfg_path in sorted(glob.glob(os.path.join(etc, "*.verify.json"))):
    cfg = load(cfg_path) or {}
    name, unit, container, port = cfg.get("name"), cfg.get("unit"), cfg.get("container"), cfg.get("port")
    if not name:
        continue
    row = {"kind": "service", "name": name, "model": cfg.get("served_model_name"), "port": port, "unit": unit}
    row["unit_state"] = run("systemctl", "show", "-p", "ActiveState", "--value", unit) or "unknown"
    row["image"] = run("docker", "inspect", "-f", "{{.Config.Image}}", container) or None
    unit_text = ""
    try:
        with open(f"/etc/systemd/system/{unit}") as fh:
            unit_text = fh.read()
    except OSError:
        pass
    m = re.search(r"org\.llmfleet\.weights=(\S+)", unit_text)
    row["weights"] = m.group(1) if m else None
    m = re.search(r"-v (\S+)/current:", unit_text)
    row["weights_current"] = os.readlink(m.group(1) + "/current") if m and os.path.islink(m.group(1) + "/current") else None
    row["replica"] = {k: cfg[k] for k in ("replica", "rank", "nnodes", "head") if k in cfg} or None
    # A headless worker serves no HTTP: it is as healthy as its head, which answers only once all joined.
    where = cfg.get("head") or "127.0.0.1"
    status, _ = get(port, "/health", address=where)
    row["health"] = status
    status, body = get(port, "/version", address=where)
    try:
        row["vllm_version"] = json.loads(body).get("version") if status == 200 else None
    except ValueError:
        row["vllm_version"] = None
    if names and row["health"] == 200:
        status, body = get(port, "/metrics", 4 << 20)
        keep = tuple(n + s for n in names for s in ("{", " ", "_bucket{"))
        row["metrics"] = [ln for ln in body.splitlines() if ln.startswith(keep)] if status == 200 else None
        row["metrics_at"] = time.time()
    last = load(os.path.join(etc, f"{name}.last-verify.json"))
    row["last_verify"] = ({"ok": bool(last.get("ok")), "error": last.get("error"),
                           "at": int(os.path.getmtime(os.path.join(etc, f"{name}.last-verify.json")))}
                          if isinstance(last, dict) else None)
    row["rollout"] = load(os.path.join(etc, f"{name}.rollout.json"))
    print(json.dumps(row, sort_keys=True))
for up in sorted(glob.glob(os.path.join(nginx_dir, "*.upstream.conf"))):
    servers = {}
    with open(up) as fh:
        for line in fh:
            m = re.match(r"\s*server\s+(\S+)\s+([^#]*?);\s*#\s*(\S+)", line)
            if m:
                servers[m.group(3)] = {"address": m.group(1), "down": "down" in m.group(2).split()}
    name = os.path.basename(up)[:-len(".upstream.conf")]
    conf = f"/etc/nginx/conf.d/llmfleet-{name}.conf"
    port = None
    try:
        with open(conf) as fh:
            m = re.search(r"listen (\d+);", fh.read())
            port = int(m.group(1)) if m else None
    except OSError:
        pass
    print(json.dumps({"kind": "gateway", "name": name, "port": port, "servers": servers,
                      "unit_state": run("systemctl", "show", "-p", "ActiveState", "--value", "nginx.service"),
                      "health": get(port, "/health")[0] if port else None}, sort_keys=True))
''' + progress.read_script()


class FleetStatus(FactBase):
    """
    Every llmfleet service (and gateway endpoint) of the host as a list of dicts (see the module
    docstring); [] when there is none. Side-effect free: reads files, ``systemctl show``,
    ``docker inspect``, ``GET /health`` and ``GET /version`` on loopback.
    """

    default = list
    requires_command = "python3"

    def command(self, etc_dir: str = "/etc/llmfleet", nginx_dir: str = "/etc/nginx/llmfleet",
                timeout_s: float = 3, metric_names: list[str] | None = None) -> str:
        return (f"python3 -c {shlex.quote(SCRIPT)} {shlex.quote(etc_dir)} {shlex.quote(nginx_dir)} "
                f"{float(timeout_s)} {shlex.quote(json.dumps(metric_names or []))} 2>/dev/null; true")

    def process(self, output):
        rows = []
        for line in output:
            line = line.strip()
            if line.startswith("{"):
                try:
                    rows.append(json.loads(line))
                except ValueError:
                    continue
        return rows


def _ago(at: Any, now: float) -> str:
    if not isinstance(at, (int, float)):
        return "?"
    s = max(0, int(now - at))
    return f"{s}s ago" if s < 120 else f"{s // 60}m ago" if s < 7200 else f"{s // 3600}h ago"


def row(host: str, r: dict, now: float | None = None, before: dict | None = None) -> dict[str, str]:
    """One table row of a status record; ``before`` is the same service's record of the previous read."""
    now = time.time() if now is None else now
    if r.get("kind") == "gateway":
        servers = r.get("servers") or {}
        up = sorted(h for h, s in servers.items() if not s.get("down"))
        down = sorted(h for h, s in servers.items() if s.get("down"))
        return {**live.columns(None, now), "host": host, "model": f"gateway {r.get('name')} :{r.get('port')}",
                "image": "nginx", "vllm": "-",
                "unit": str(r.get("unit_state") or "?"), "health": str(r.get("health") or "-"), "verified": "-",
                "weights": "-",
                "rollout": f"in: {', '.join(up) or '-'}" + (f"; drained: {', '.join(down)}" if down else "")}
    last = r.get("last_verify") or {}
    verified = "-" if not last else (("ok " if last.get("ok") else "FAIL ") + _ago(last.get("at"), now))
    ro = r.get("rollout") or {}
    rollout = "-"
    if ro:
        rollout = f"{ro.get('outcome')} (batch {ro.get('batch')}, {_ago(ro.get('at'), now)})"
        if ro.get("outcome") != "upgraded":
            rollout += f": {ro.get('image')} failed: {ro.get('reason')}"
    weights = str(r.get("weights") or "?")
    if r.get("weights_current"):
        weights += f" -> {r['weights_current']}"
    cols = live.columns(r.get("live"), float(r.get("metrics_at") or now), (before or {}).get("live"),
                        (before or {}).get("metrics_at"))
    model = str(r.get("model") or r.get("name"))
    member = r.get("replica") or {}
    if member:  # a member of a multi-node replica: which, its rank, and whether it joined (the head's view)
        role = "head" if member.get("rank") == 0 else f"worker of {member.get('head')}"
        joined = "joined" if r.get("health") == 200 and r.get("unit_state") == "active" else "not joined"
        model += f" [replica {member.get('replica')} rank {member.get('rank')}/{member.get('nnodes')} {role}, {joined}]"
    return {**cols, "host": host, "model": model,
            "image": str(r.get("image") or "(not running)"),
            "vllm": str(r.get("vllm_version") or "?"), "unit": str(r.get("unit_state") or "?"),
            "health": str(r.get("health") or "down"), "verified": verified, "weights": weights, "rollout": rollout}


def table(rows: list[dict[str, str]]) -> str:
    if not rows:
        return "no llmfleet services found"
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in COLUMNS}
    lines = ["  ".join(c.ljust(widths[c]) for c in COLUMNS), "  ".join("-" * widths[c] for c in COLUMNS)]
    lines += ["  ".join(r[c].ljust(widths[c]) for c in COLUMNS).rstrip() for r in rows]
    return "\n".join(lines)


def in_progress(hosts: dict[str, list[dict]]) -> str:
    """The long work under way, one line per host and entry (``tasks.progress.describe``); "" if none."""
    lines = [(name, progress.describe(r)) for name, records in hosts.items() for r in records
             if r.get("kind") == "progress"]
    width = max((len(name) for name, _ in lines), default=0)
    return "\n".join(f"{name.ljust(width)}  {text}" for name, text in lines)


def previous_reads(report_dir: Path) -> dict[tuple, dict]:
    """(host, kind, name) -> record of the newest report in ``report_dir`` (the last read); {} if none."""
    reports = sorted(report_dir.glob("*.json")) if report_dir.is_dir() else []
    for path in reversed(reports):
        try:
            hosts = json.loads(path.read_text()).get("hosts") or {}
        except (OSError, ValueError):
            continue
        return {(h, r.get("kind"), r.get("name")): r for h, records in hosts.items() for r in records}
    return {}


def status_host() -> list[dict]:
    """
    Plan-time, per host (``deploys/status.py``): read the host's status, and once every active
    host has answered, print the fleet table and write ``<status_report_dir>/<timestamp>.json``.
    Adds no operation: the run reports no change.
    """
    from pyinfra.context import ctx_host

    real = ctx_host.get()
    settings = StatusSettings.of(real)
    records = real.get_fact(FleetStatus, etc_dir=ServiceSettings.of(real).service_etc_dir,
                            nginx_dir=GatewaySettings.of(real).gateway_conf_dir,
                            timeout_s=settings.status_http_timeout_s, metric_names=all_names())
    for r in records:
        text = r.pop("metrics", None)
        if text is not None and r.get("vllm_version"):
            r["live"] = live.sample("\n".join(text), str(r["vllm_version"]))
    run = run_store(real.state).setdefault("status", {"started": time.time(), "hosts": {}})
    run["hosts"][real.name] = records
    alive = {h.name for h in real.state.inventory.get_active_hosts()}
    active = [h.name for h in real.state.inventory if h.name in alive]
    if set(active) <= set(run["hosts"]):
        now = time.time()
        report_dir = Path(settings.status_report_dir)
        before = previous_reads(report_dir)
        rows = [row(name, r, now, before.get((name, r.get("kind"), r.get("name"))))
                for name in active for r in run["hosts"][name] if r.get("kind") != "progress"]
        logger.info("llmfleet fleet status:\n" + table(rows))
        working = in_progress({name: run["hosts"][name] for name in active})
        if working:
            logger.info("in progress:\n" + working)
        report_dir.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(run["started"]))
        path = report_dir / f"{stamp}.json"
        path.write_text(json.dumps({"at": int(now), "hosts": {n: run["hosts"][n] for n in active}, "rows": rows},
                                   indent=2, sort_keys=True) + "\n")
        logger.info(f"status report: {path}")
    return records


__all__ = ["COLUMNS", "DEFAULTS", "FleetStatus", "in_progress", "row", "status_host", "table"]
