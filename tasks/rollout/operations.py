"""The rollout's own operations: keep the rollback point, gate on the endpoint probe, roll back,
record the outcome, hold the weights link of a replica not reached, and the batch barrier."""

from __future__ import annotations

import io
import json
import shlex
import time
from typing import Any

from pyinfra import host
from pyinfra.api import FileUploadCommand, StringCommand, operation

from tasks.rollout import ROLLBACK_FAILED, ROLLED_BACK, UPGRADED
from tasks.rollout.service_version import Paths, fact_of, point_is_current, point_unneeded
from tasks.service import PROBE_PATH


def _save_script(p: Paths, v: dict) -> str:
    q = shlex.quote
    state = json.dumps({"image": v.get("live_image"), "weights": v.get("live_weights"), "model_dir": p.model_dir,
                        "unit_sha256": v.get("live_unit"), "saved_at": int(time.time())}, sort_keys=True)
    d, t = q(p.previous), q(p.previous + ".new")
    return (
        f"set -e; rm -rf {t}; install -d -m 750 -o root -g root {t}; cp -p {q(p.unit_file)} {t}/unit; "
        f"if [ -f {q(p.env_file)} ]; then cp -p {q(p.env_file)} {t}/env; chmod 600 {t}/env; fi; "
        f"if [ -d {q(p.template_dir)} ]; then cp -a {q(p.template_dir)} {t}/templates; fi; "
        f"if [ -f {q(p.verify_config)} ]; then cp -p {q(p.verify_config)} {t}/verify.json; fi; "
        f"printf '%s\\n' {q(state)} > {t}/state.json; "
        f"rm -rf {d}.old; if [ -d {d} ]; then mv {d} {d}.old; fi; mv {t} {d}; rm -rf {d}.old"
    )


@operation()
def rollback_point(paths: Paths):
    """
    Keep the running, verified version of a service as its rollback point
    (``<etc>/<name>.previous/``): unit, env file, chat templates, verification config, image and
    weights link. Nothing to do when no service runs, or when the point is already this version.

    + paths: ``Paths.of(layout, model_dir)``

    Example:

    .. code:: python

        rollback_point(paths=Paths.of(Layout.of(spec, service.options(host.data)), model_dir))
    """
    v = fact_of(paths)
    why_not = point_unneeded(paths, v)
    if why_not:
        host.noop(why_not)
        return
    yield _save_script(paths, v)


def _restore_script(p: Paths, saved: dict) -> str:
    q = shlex.quote
    d = q(p.previous)
    link = ""
    if saved.get("weights"):
        cur = q(f"{p.model_dir}/current")
        link = f"ln -sfn {q(saved['weights'])} {cur}.rollback && mv -Tf {cur}.rollback {cur}; "
    return (
        f"set -e; cp -p {d}/unit {q(p.unit_file)}; "
        f"if [ -f {d}/env ]; then cp -p {d}/env {q(p.env_file)}; else rm -f {q(p.env_file)}; fi; "
        f"rm -rf {q(p.template_dir)}; if [ -d {d}/templates ]; then cp -a {d}/templates {q(p.template_dir)}; fi; "
        f"if [ -f {d}/verify.json ]; then cp -p {d}/verify.json {q(p.verify_config)}; fi; {link}"
        f"systemctl daemon-reload; systemctl reset-failed {q(p.unit_name)} 2>/dev/null || true; "
        f"systemctl restart {q(p.unit_name)}"
    )


@operation(is_idempotent=False)
def rolled_back(paths: Paths):
    """
    Put a service back to its rollback point (unit, env file, templates, verification config,
    ``current`` link) and restart it. Without a rollback point (a first install failed its gate)
    the service is stopped: there is no older version to serve.

    + paths: ``Paths.of(layout, model_dir)``

    Example:

    .. code:: python

        rolled_back(paths=paths, _if=gate.did_error)
    """
    v = fact_of(paths)
    if not v.get("saved_unit"):
        yield (f"systemctl stop {shlex.quote(paths.unit_name)}; echo 'llmfleet rollout: no rollback point for "
               f"{paths.unit_name}: stopped it' >&2")
        return
    yield _restore_script(paths, v.get("saved") or {})


@operation(is_idempotent=False)
def gate(paths: Paths, wait_s: int | None = None):
    """
    The verification gate: the endpoint probe for the service, its JSON result kept in
    ``<etc>/<name>.last-verify.json``; fails unless every check passed.

    + paths: ``Paths.of(layout, model_dir)``
    + wait_s: seconds to wait for /health (default: the recipe's start-up budget)

    Example:

    .. code:: python

        gate(paths=paths, _if=served.started, _ignore_errors=True)
    """
    q = shlex.quote
    wait = f" --wait {int(wait_s)}" if wait_s is not None else ""
    r = q(paths.last_verify)
    yield (f"python3 {q(PROBE_PATH)} --config {q(paths.verify_config)}{wait} > {r}.tmp; rc=$?; "
           f"chmod 644 {r}.tmp; mv -f {r}.tmp {r}; cat {r}; exit $rc")


def probe_error(meta: Any) -> str:
    """The probe's reason from a gate's output (its JSON line), else its last line."""
    try:
        lines = list(meta.stdout_lines) + list(meta.stderr_lines)
    except RuntimeError:
        return "not run"
    for line in reversed(lines):
        line = line.strip()
        if line.startswith("{"):
            try:
                return str(json.loads(line).get("error") or "failed")
            except ValueError:
                continue
    return lines[-1].strip() if lines else "failed"


def outcome_of(checked: Any, again: Any) -> str:
    """A restarted replica's outcome from pyinfra's results of its gate (``checked``) and of the
    re-verification after a roll back (``again``): UPGRADED, ROLLED_BACK or ROLLBACK_FAILED."""
    if checked.did_succeed():
        return UPGRADED
    return ROLLED_BACK if again.did_succeed() and again.executed else ROLLBACK_FAILED


@operation(is_idempotent=False)
def finished(paths: Paths, service: str, batch: str, later: list[str], image: str,
             checked: Any, again: Any, changed: str = ""):
    """
    Record a replica's rollout outcome on the host (``<etc>/<name>.rollout.json``) and, when the
    gate failed, fail the host with the reason. (The gateway's put-back reads the same outcome off
    pyinfra's results of the gates: ``tasks.rollout.plan.Progress``.)

    Passed: the running version becomes the rollback point. Failed: ``rolled_back`` when the old
    version verified again, else ``rollback_failed``.

    + paths: ``Paths.of(layout, model_dir)``
    + service: the service's name (in the failure message)
    + batch: "2/3"
    + later: replicas of later batches (left on the old version when this host fails)
    + image: the image this rollout brought
    + checked: the gate's ``OperationMeta``
    + again: the re-verification's ``OperationMeta``
    + changed: what this run changed on the replica (:func:`what_changed`), named when it fails

    Example:

    .. code:: python

        finished(paths=paths, service="qwen30b", batch="1/3", later=["h2", "h3"], image=ref,
                 checked=first, again=second, _if=served.started)
    """
    from pyinfra.context import ctx_state

    if not ctx_state.get().is_executing:
        # Planning: the outcome is only known once the gate ran.
        yield StringCommand("true")
        return
    v = fact_of(paths)
    outcome = outcome_of(checked, again)
    reason = "" if outcome == UPGRADED else probe_error(checked)
    record = {"outcome": outcome, "batch": batch, "image": image, "reason": reason, "at": int(time.time()),
              "running_image": v.get("live_image"), "weights": v.get("live_weights")}
    if outcome == UPGRADED and not point_is_current(v) and v.get("live_active") == "active":
        yield _save_script(paths, v)
    yield FileUploadCommand(io.BytesIO((json.dumps(record, sort_keys=True) + "\n").encode()), paths.record)
    if outcome != UPGRADED:
        left = f"; not upgraded (still on the old version): {', '.join(later)}" if later else ""
        back = (f"rolled back to {v.get('live_image')} and verified again" if outcome == ROLLED_BACK
                else "rollback did not verify: the host stays drained")
        message = (f"llmfleet rollout of {service} stopped at {host.name} (batch {batch}): its change "
                   f"({changed or 'image ' + image}) failed its verification: {reason}; {back}{left}")
        yield f"echo {shlex.quote(message)} >&2; exit 1"


@operation()
def weights_held(paths: Paths):
    """
    Put ``<model_dir>/current`` back to the rollback point's target (a replica the rollout did not
    reach keeps serving, and restarting, the old weights).

    + paths: ``Paths.of(layout, model_dir)``

    Example:

    .. code:: python

        weights_held(paths=paths, _if=progress.skipped(host.name))
    """
    v = fact_of(paths)
    target = (v.get("saved") or {}).get("weights")
    if not target or target == v.get("live_weights"):
        host.noop(f"{paths.model_dir}/current is the running version's")
        return
    cur = shlex.quote(f"{paths.model_dir}/current")
    yield f"ln -sfn {shlex.quote(target)} {cur}.rollback && mv -Tf {cur}.rollback {cur}"


@operation()
def barrier(label: str):
    """
    A point every host of the run passes at the same time: orders the batches (no command).

    + label: what the point separates

    Example:

    .. code:: python

        barrier(label="qwen30b batch 1/3 (h1): begin")
    """
    host.noop(label)
    yield from ()



__all__ = ["barrier", "finished", "gate", "outcome_of", "probe_error", "rollback_point", "rolled_back",
           "weights_held"]
