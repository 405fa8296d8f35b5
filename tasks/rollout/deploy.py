"""A host's rollout operations, in batch order: gateway drain -> restart -> gate (-> roll back) ->
put back, the same lines on every host so that pyinfra orders the batches (``tasks.rollout``)."""

from __future__ import annotations

from typing import Any

from pyinfra import host, logger
from pyinfra.api import deploy

from tasks import gateway as gw
from tasks import removal
from tasks.pyinfra_ext import change_known
from tasks.removal import ABSENT
from tasks.rollout.operations import barrier, finished, gate, rollback_point, rolled_back, weights_held
from tasks.rollout.plan import Handles, Plan, ReplicaGate, desired_service, progress_of
from tasks.rollout.service_version import Paths, point_unneeded
from tasks.service import Layout, needs_restart, options as service_options, serve
from tasks.settings.rollout import RolloutSettings
from tasks.spec import ServingSpec


def _replica_ops(plan: Plan, b: int, spec: ServingSpec, image_ref: str, model_dir: str) -> None:
    n = len(plan.batches)
    layout = Layout.of(spec, service_options(host.data))
    paths = Paths.of(layout, model_dir)
    live = plan.observed.get(host.name) or {}  # read at plan time (make_plan)
    reasons = plan.pending.get(host.name) or []
    logger.info(f"{host.print_prefix}rollout {spec.name}: {'; '.join(reasons)}")
    served = serve(spec, image_ref, model_dir, restart=needs_restart(reasons), role=plan.roles.get(host.name))
    logger.info(f"{host.print_prefix}{upgrade_summary(spec, image_ref, live, served.unit, f'{b + 1}/{n}')}")
    wait = RolloutSettings.value(host, "rollout_gate_wait_s")  # None: the recipe's start-up budget
    name = spec.name
    checked = gate(name=f"{name}: verify endpoint", paths=paths, wait_s=wait, _if=served.started,
                   _ignore_errors=True)
    role = plan.roles.get(host.name)
    if role is not None:  # a multi-node replica rolls back whole: any member's failed gate fails them all
        others = tuple(m for m, r in plan.roles.items() if r.replica == role.replica and m != host.name)
        checked = ReplicaGate(checked, progress_of(plan), others)
    rolled_back(name=f"{name}: roll back to the previous version", paths=paths, _if=checked.did_error)
    again = gate(name=f"{name}: verify the previous version", paths=paths, wait_s=wait, _if=checked.did_error,
                 _ignore_errors=True)
    progress_of(plan).register(host.name, Handles(restart=tuple(getattr(served, "changes", ()) or (served.unit,)),
                                                  checked=checked, again=again))
    finished(name=f"{name}: rollout result", paths=paths, service=plan.name,
             batch=f"{b + 1}/{n}", later=plan.later_hosts(b), image=image_ref, checked=checked, again=again,
             changed=what_changed(spec, image_ref, live, reasons, paths), _if=served.started)


def what_changed(spec: ServingSpec, image_ref: str, live: dict, reasons: list[str], paths: Paths) -> str:
    """What a replica's restart brings, from the plan's read of it: the image, the weights, the unit
    and the service's other files; a part that stays is said to stay (a failed gate names these)."""
    wanted = f"{spec.model.repo_id}@{spec.model.revision}"
    if not live.get("live_unit"):
        return f"new service: image {image_ref}, weights {wanted}"
    old_image, old_weights = live.get("live_image"), live.get("live_label")
    parts = [f"image {old_image or '(not running)'} -> {image_ref}" if old_image != image_ref
             else f"image {image_ref} unchanged",
             f"weights {old_weights} -> {wanted}" if old_weights != wanted else f"weights {wanted} unchanged"]
    files = {paths.unit_file: "unit", paths.env_file: "API key env file", paths.verify_config: "verification config"}
    edited = [what for path, what in files.items() if any(r.startswith(path + " ") for r in reasons)]
    if any(r.startswith(paths.template_dir) for r in reasons):
        edited.append("chat templates")
    parts.append(f"{', '.join(edited)} changed" if edited else "unit unchanged")
    return "; ".join(parts)


def upgrade_summary(spec: ServingSpec, image_ref: str, live: dict, unit_op: Any, batch: str) -> str:
    """One line per replica: what its batch would change (image, weights, unit)."""
    wanted = f"{spec.model.repo_id}@{spec.model.revision}"
    parts = []
    if not live.get("live_unit"):
        parts.append(f"new service: image {image_ref}, weights {wanted}")
    else:
        old = live.get("live_image") or "(not running)"
        parts.append(f"image {old} -> {image_ref}" if old != image_ref else f"image {image_ref} unchanged")
        have = live.get("live_label")
        parts.append(f"weights {have} -> {wanted} (fetched before the restart)" if have != wanted
                     else f"weights {wanted} unchanged")
    change = change_known(unit_op)
    parts.append("unit changes: restart" if change else "unit unchanged" if change is False else "unit: decided at run")
    return f"rollout {spec.name} batch {batch}: " + "; ".join(parts)


def rolling(plan: Plan, spec: ServingSpec | None, image_ref: str | None, model_dir: str | None) -> None:
    """
    The rollout part of ``deploy_model``, called by every host of the run from one line (replicas
    with their spec, gateways with None): gateway set-up, then per batch drain -> restart -> gate
    (-> rollback) -> put back, then the weights link of replicas the rollout did not reach. A
    replica in no batch (its service is converged) gets no operation.

    + plan: the rollout of the run's fleet plan (``tasks.fleet.fleet_plan(recipe).rollout``)
    + spec, image_ref, model_dir: this replica's (None on a gateway host)

    Example:

    .. code:: python

        rolling(plan, spec, image_ref, model_dir)   # in tasks.model.deploy_model
    """
    me = host.name
    progress = progress_of(plan)  # what pyinfra's results say while the run executes
    if spec is not None and plan.batch_of(me) is None and me in plan.pending:
        logger.info(f"{host.print_prefix}rollout {spec.name}: service converged (image {image_ref}, "
                    f"weights {spec.model.repo_id}@{spec.model.revision}, unit active): nothing to roll out")
    is_gateway = me in plan.gateways
    gopts = gw.options(host.data)
    gpaths = gw.paths(plan.name, gopts)
    if plan.leaving:  # replicas taken off (serve_state: absent): drained before anything stops
        if is_gateway:
            gw.upstream(name=f"{plan.name}: drain removed replicas", path=gpaths["upstream"], service=plan.name,
                        replicas=list(plan.draining_replicas), opts=gopts, drain=lambda: list(plan.leaving))
        if plan.gateways:
            barrier(name=f"{plan.name}: removed replicas drained", label=f"{plan.name}: removed replicas drained")
    if spec is not None and spec.state == ABSENT:
        if me in plan.leaving:
            want, paths = desired_service(spec, host.data, plan.roles.get(me))
            removal.remove_service(spec.name, paths.unit_name, paths.unit_file, want.watch_file, plan.leaving[me])
        else:
            logger.info(f"{host.print_prefix}{spec.name}: absent, nothing of it left on this host")
        return
    if is_gateway:
        gw.gateway(plan.model)
    n = len(plan.batches)
    synced = n > 1 or bool(plan.gateways)
    for b in host.loop(range(n)):
        members = plan.batches[b]
        label = f"{plan.name} batch {b + 1}/{n} ({', '.join(members)})"
        if synced:
            barrier(name=f"{label}: begin", label=f"{label}: begin")
        if is_gateway:
            gw.upstream(name=f"{plan.name}: drain batch {b + 1}/{n}", path=gpaths["upstream"],
                        service=plan.name, replicas=list(plan.model.replicas), opts=gopts, drain=progress.to_drain(b),
                        _if=[progress.opener(b)])
        if synced:
            barrier(name=f"{label}: drained", label=f"{label}: drained")
        if me in members and spec is not None:
            if n > 1:
                def body(plan=plan, b=b):
                    _replica_ops(plan, b, spec, image_ref, model_dir)

                deploy(f"Batch {b + 1}/{n}")(body)(_if=[progress.opener(b)])
            else:
                _replica_ops(plan, b, spec, image_ref, model_dir)
        if synced:
            barrier(name=f"{label}: gated", label=f"{label}: gated")
        if is_gateway:
            gw.upstream(name=f"{plan.name}: put back batch {b + 1}/{n}", path=gpaths["upstream"],
                        service=plan.name, replicas=list(plan.model.replicas), opts=gopts, restore=progress.to_restore(b))
    if spec is not None and n > 1 and plan.batch_of(me) is not None:
        layout = Layout.of(spec, service_options(host.data))
        weights_held(name=f"{spec.name}: weights of a replica the rollout did not reach",
                     paths=Paths.of(layout, model_dir), _if=progress.skipped(me))


def point_kept(plan: Plan, spec: ServingSpec, model_dir: str) -> None:
    """Before staging: keep the running version as the rollback point (``deploy_model`` hook).

    Decided on the plan's read of the service: when the point is already the running version (or
    nothing runs) no operation is added; otherwise ``rollback_point`` reads the host again when it
    runs, as every operation does.
    """
    paths = Paths.of(Layout.of(spec, service_options(host.data)), model_dir)
    why_not = point_unneeded(paths, plan.observed.get(host.name) or {})
    if why_not:
        logger.debug(f"{host.print_prefix}{why_not}")
        return
    rollback_point(name=f"{spec.name}: rollback point (running version)", paths=paths)

