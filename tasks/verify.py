"""Verification of served endpoints: after a (re)start, and on demand for the whole fleet.

Both run the same probe on the host (``tasks/probe/verify_endpoint.py``, installed by the
service task at ``/usr/local/lib/llmfleet/verify_endpoint.py``) against the service's
``/etc/llmfleet/<name>.verify.json``: /health within the start-up budget, /v1/models lists the
served name, a real chat completion with the API key (read by the probe from the root-only env
file, never argv), no thinking for non-thinking recipes, a parsed tool call for tool recipes.

- ``endpoint_verified`` (operation): runs only when the service (re)started in this run
  (``_if=served.started``), so a run with nothing to change reports no changes; a failure fails
  the host with the probe's message naming the host and the last 30 lines of the container log.
- ``EndpointChecks`` (fact): the probe for every service on a host, read as data; the on-demand
  deploy (``deploys/verify.py``) prints a fleet table from it without changing anything.

Settings (host data, prefix ``verify_``): ``tasks.settings.verify.VerifySettings``, each key
described there once (README.md's settings table is generated from it).
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

from pyinfra import host, logger
from pyinfra.api import FactBase, StringCommand, operation

from tasks.pyinfra_ext import run_store
from tasks.service import PROBE_PATH
from tasks.settings.service import ServiceSettings
from tasks.settings.verify import VerifySettings

DEFAULTS: dict[str, Any] = VerifySettings.defaults()
COLUMNS = ("host", "name", "port", "served_model_name", "ok", "detail")


@operation(is_idempotent=False)
def endpoint_verified(config_path: str, wait_s: int | None = None):
    """
    Run the endpoint probe for one service; fails (non-zero exit) unless every check passed.

    Not idempotent by nature (it proves a fresh start): guard it with ``_if`` on the restart.

    + config_path: the service's ``/etc/llmfleet/<name>.verify.json``
    + wait_s: seconds to wait for /health (default: the recipe's start-up budget)

    Example:

    .. code:: python

        endpoint_verified(config_path="/etc/llmfleet/qwen30b.verify.json", _if=served.started)
    """
    bits: list[Any] = ["python3", PROBE_PATH, "--config", config_path]
    if wait_s is not None:
        bits += ["--wait", str(int(wait_s))]
    yield StringCommand(*bits)


class EndpointChecks(FactBase):
    """
    The probe's result for every service of the host (``/etc/llmfleet/*.verify.json``), as a
    list of dicts (``host``, ``name``, ``ok``, ``checks``, ``error``, ``log_tail``); [] when
    none is installed. Side-effect free.
    """

    default = list
    requires_command = "python3"

    def command(self, wait_s: int = 30, etc_dir: str = "/etc/llmfleet") -> str:
        probe = shlex.quote(PROBE_PATH)
        pattern = f"{shlex.quote(etc_dir.rstrip('/'))}/*.verify.json"
        return (f"for f in {pattern}; do [ -f \"$f\" ] || continue; "
                f"python3 {probe} --config \"$f\" --wait {int(wait_s)} 2>/dev/null; done; true")

    def process(self, output):
        results = []
        for line in output:
            line = line.strip()
            if line.startswith("{"):
                try:
                    results.append(json.loads(line))
                except ValueError:
                    continue
        return results


def row(result: dict) -> dict[str, str]:
    """One table row of a probe result."""
    checks = result.get("checks") or {}
    if result.get("ok"):
        extra = []
        if "chat" in checks and checks["chat"].get("thinking") is False:
            extra.append("no thinking")
        if "tool_call" in checks:
            extra.append("tool call parsed")
        detail = f"healthy in {checks.get('health_s', '?')} s" + (f"; {', '.join(extra)}" if extra else "")
    else:
        detail = str(result.get("error") or "failed")
    return {"host": str(result.get("host", "?")), "name": str(result.get("name", "?")),
            "port": str(result.get("port", "?")), "served_model_name": str(result.get("served_model_name", "?")),
            "ok": "ok" if result.get("ok") else "FAIL", "detail": detail}


def table(rows: list[dict[str, str]]) -> str:
    """The fleet table: one line per service."""
    if not rows:
        return "no llmfleet services found"
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in COLUMNS}
    lines = ["  ".join(c.ljust(widths[c]) for c in COLUMNS), "  ".join("-" * widths[c] for c in COLUMNS)]
    lines += ["  ".join(r[c].ljust(widths[c]) for c in COLUMNS) for r in rows]
    return "\n".join(lines)


def verify_fleet_host() -> list[dict]:
    """
    Plan-time, per host (the on-demand deploy): probe every service of the host, log its rows,
    write ``<verify_report_dir>/<host>.json``, fail the host if a service failed, and print the
    fleet table once every active host has answered. Adds no operation: reports no change.
    """
    from pyinfra.context import ctx_host

    real = ctx_host.get()
    settings = VerifySettings.of(real)
    results = real.get_fact(EndpointChecks, wait_s=settings.verify_wait_s,
                            etc_dir=ServiceSettings.of(real).service_etc_dir)
    for result in results:
        result["inventory_host"] = real.name
        if not result.get("ok"):
            tail = "\n".join(f"{real.print_prefix}  | {ln}" for ln in result.get("log_tail") or [])
            logger.error(f"{real.print_prefix}verify FAILED on {real.name}: {result.get('name')}: "
                         f"{result.get('error')}\n{real.print_prefix}last lines of the container log:\n{tail}")
    report_dir = Path(settings.verify_report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    safe = "".join(ch if ch.isalnum() or ch in "-_.@" else "_" for ch in real.name)
    (report_dir / f"{safe}.json").write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")

    fleet = run_store(real.state).setdefault("verify", {})  # host -> its rows, this run's
    fleet[real.name] = results
    active = {h.name for h in real.state.inventory.get_active_hosts()}
    if active <= set(fleet):
        rows = [row({**r, "host": name}) for name in sorted(fleet) for r in fleet[name]]
        logger.info("llmfleet endpoints:\n" + table(rows))
    if any(not r.get("ok") for r in results):
        real.state.fail_hosts({real})
    return results
